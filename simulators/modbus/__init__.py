"""Simulated Modbus devices (pymodbus SimDevice servers) with fault injection, generated from a site config."""

from simulators.modbus.server import FaultyServer, RequestRecord
from simulators.modbus.site import ModbusSiteSimulator, endpoint_key, serve

__all__ = ["FaultyServer", "ModbusSiteSimulator", "RequestRecord", "endpoint_key", "serve"]
