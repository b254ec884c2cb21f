"""What BACnet allows, read from bacpypes3's own tables (public API only): object types, property identifiers,
the properties of each standard object type, and the enumeration names a property can report.

The gateway's BACnet adapter reports enumerated values by these names (`active`, `forced-open`, ...), so a
site config that maps a name bacpypes3 does not have can never match a reading.
"""

from __future__ import annotations

import functools
from typing import Any

from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.primitivedata import Boolean, Enumerated, ObjectType, Unsigned
from bacpypes3.vendor import get_vendor_info

MAX_INSTANCE = 4_194_302  # 22-bit object instance; 4194303 means "no instance" (clause 12.11.1)


def enumeration_names(enumeration: type[Enumerated]) -> tuple[str, ...]:
    """The names of a bacpypes3 enumeration in value order, spelt as bacpypes3 reports them ('forced-open')."""
    values: dict[int, str] = {}
    for klass in reversed(enumeration.__mro__):
        if isinstance(klass, type) and issubclass(klass, Enumerated):
            for attr, value in vars(klass).items():
                if not attr.startswith("_") and isinstance(value, int) and not isinstance(value, bool):
                    values[value] = enumeration(value).asn1
    return tuple(values[v] for v in sorted(values))


def enumeration_value(enumeration: type[Enumerated], name: str) -> int:
    return int(enumeration(name))


OBJECT_TYPES: tuple[str, ...] = enumeration_names(ObjectType)
PROPERTY_IDENTIFIERS: tuple[str, ...] = enumeration_names(PropertyIdentifier)


@functools.cache
def _object_class(object_type: str) -> Any:
    if object_type not in OBJECT_TYPES:
        return None
    return get_vendor_info(0).get_object_class(ObjectType(object_type))


@functools.cache
def properties_of(object_type: str) -> tuple[str, ...] | None:
    """Standard properties of an object type, or None when bacpypes3 has no class for it (then any
    property identifier is accepted)."""
    klass = _object_class(object_type)
    if klass is None:
        return None
    return tuple(p for p in PROPERTY_IDENTIFIERS if klass.get_property_type(PropertyIdentifier(p)) is not None)


def property_datatype(object_type: str, prop: str) -> Any:
    """bacpypes3's datatype of a standard property, or None when unknown."""
    klass = _object_class(object_type)
    if klass is None or prop not in PROPERTY_IDENTIFIERS:
        return None
    return klass.get_property_type(PropertyIdentifier(prop))


def is_enumeration(datatype: Any) -> bool:
    return isinstance(datatype, type) and issubclass(datatype, Enumerated)


def is_boolean(datatype: Any) -> bool:
    return isinstance(datatype, type) and issubclass(datatype, Boolean)


def is_unsigned(datatype: Any) -> bool:
    return isinstance(datatype, type) and issubclass(datatype, Unsigned)
