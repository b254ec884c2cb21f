"""Stable import path of the Modbus site simulator (the implementation lives in simulators/modbus/)."""

from simulators.modbus import FaultyServer, ModbusSiteSimulator, RequestRecord, serve

__all__ = ["FaultyServer", "ModbusSiteSimulator", "RequestRecord", "serve"]
