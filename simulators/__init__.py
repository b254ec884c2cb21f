"""Simulated building devices (real Modbus TCP and BACnet/IP on loopback) for tests and the demo."""
