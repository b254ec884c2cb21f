"""Modbus TCP / RTU-over-TCP / serial RTU polling: block coalescing, bus serialisation, supervision, writes."""

from adapters.modbus.adapter import ModbusAdapter
from adapters.modbus.blocks import Block, BlockPoint, plan_blocks
from adapters.modbus.link import ModbusLink, exception_error
from adapters.modbus.poller import DevicePoller, PollTuning
from adapters.modbus.stats import DeviceStats

__all__ = [
    "Block",
    "BlockPoint",
    "DevicePoller",
    "DeviceStats",
    "ModbusAdapter",
    "ModbusLink",
    "PollTuning",
    "exception_error",
    "plan_blocks",
]
