"""BACnet/IP adapter: COV subscriptions, event notifications, resync, polling fallback, AcknowledgeAlarm."""

from adapters.bacnet.adapter import BacnetAdapter
from adapters.bacnet.plan import DeviceCounters

__all__ = ["BacnetAdapter", "DeviceCounters"]
