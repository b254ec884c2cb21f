"""Raw values as devices report them, shared by the config, the core and the adapters."""

from __future__ import annotations

# A raw value as a device reports it: a number (register field, bit) or an enumeration name (BACnet).
RawValue = int | str
