"""Which raw values a point's source can produce, per protocol: the one table behind both the validation of
`alarm`/`normal`/`fault`/`other_alarms`/`events` and the table in docs/onboarding.md.

A BACnet enumerated property reports a bacpypes3 name ('active', 'forced-open'); a BACnet Boolean 0 or 1, an
Unsigned a whole number; a Modbus coil or discrete input 0 or 1, a bit field 0 .. 2^width-1, a whole register
0 .. 65535. A configured value outside that set can never match a reading, so the point would never alarm.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from gateway.config import bacnet_tables as bt
from gateway.config.suggest import closest, one_of
from gateway.domain.values import RawValue

MODBUS_TABLE_WORDS = {
    "coil": "coil",
    "discrete_input": "discrete input",
    "holding": "holding register",
    "input": "input register",
}


@dataclass(frozen=True)
class Domain:
    """The values one source can report: enumeration names (with their numbers), or whole numbers lo..hi."""

    what: str  # "binary-input present-value", "a coil", "a 2-bit field (bits 4-5)"
    names: tuple[str, ...] = ()
    numbers: tuple[int, ...] = ()  # the numbers of `names`, same order
    low: int | None = None
    high: int | None = None
    proprietary_above: int | None = None  # enumerations vendors extend: numbers above this are accepted

    @property
    def allowed(self) -> str:
        if self.names:
            return one_of(self.names, limit=60)
        if self.high is None:
            return f"whole numbers from {self.low}"
        if self.high - (self.low or 0) <= 3:
            return ", ".join(str(n) for n in range(self.low or 0, self.high + 1))
        return f"{self.low} to {self.high}"

    def problem(self, value: RawValue) -> str | None:
        """Why `value` cannot come from this source (with a suggestion), or None when it can."""
        if self.names:
            return self._enumerated_problem(value)
        number = _as_int(value)
        if number is None:
            hint = ""
            if isinstance(value, str) and value.strip().lower() in ("active", "on", "true", "alarm"):
                hint = "; did you mean 1?"
            elif isinstance(value, str) and value.strip().lower() in ("inactive", "off", "false", "normal"):
                hint = "; did you mean 0?"
            return f"'{value}' cannot occur: {self.what} reports a number ({self.allowed}){hint}"
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            return f"{number} cannot occur: {self.what} reports {self.allowed}"
        return None

    def _enumerated_problem(self, value: RawValue) -> str | None:
        if isinstance(value, str) and value in self.names:
            return None
        number = _as_int(value)
        if number is not None:
            if number in self.numbers:
                name = self.names[self.numbers.index(number)]
                return (
                    f"{number} cannot occur: {self.what} reports names, not numbers ({self.allowed});"
                    f" did you mean '{name}' (value {number})?"
                )
            if self.proprietary_above is not None and number > self.proprietary_above:
                return None  # a vendor's own value, reported as its number
            return f"{number} cannot occur: {self.what} reports one of: {self.allowed}"
        match = closest(value, self.names)
        hint = f"; did you mean '{match}'?" if match is not None else ""
        return f"'{value}' cannot occur: {self.what} reports one of: {self.allowed}{hint}"


def _as_int(value: RawValue) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return None


# --- Modbus ---------------------------------------------------------------------------------------------


def modbus_domain(table: str, bit: int | None, width: int) -> Domain:
    if table in ("coil", "discrete_input"):
        return Domain(f"{_article(MODBUS_TABLE_WORDS[table])} (one bit)", low=0, high=1)
    if bit is None:
        return Domain(f"a whole {MODBUS_TABLE_WORDS[table]} (16 bits)", low=0, high=65535)
    if width == 1:
        return Domain(f"a single bit of {_article(MODBUS_TABLE_WORDS[table])}", low=0, high=1)
    return Domain(f"a {width}-bit field of {_article(MODBUS_TABLE_WORDS[table])}", low=0, high=(1 << width) - 1)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


# --- BACnet ---------------------------------------------------------------------------------------------

# Enumerations BACnet lets vendors extend (ASHRAE 135 clause 23): numbers above the standard ones are a
# vendor's own states and are reported as numbers. The two-valued binary enumerations are not extensible.
_CLOSED_ENUMERATIONS = frozenset({"BinaryPV", "Polarity"})


@functools.cache
def bacnet_domain(object_type: str, prop: str) -> Domain | None:
    """What `prop` of `object_type` reports, or None when bacpypes3 does not know (then nothing is checked)."""
    datatype = bt.property_datatype(object_type, prop)
    if datatype is None:
        return None
    what = f"{object_type} {prop}"
    if bt.is_enumeration(datatype):
        names = bt.enumeration_names(datatype)
        numbers = tuple(bt.enumeration_value(datatype, n) for n in names)
        extensible = datatype.__name__ not in _CLOSED_ENUMERATIONS
        return Domain(what, names=names, numbers=numbers, proprietary_above=max(numbers) if extensible else None)
    if bt.is_boolean(datatype):
        return Domain(f"{what} (true/false)", low=0, high=1)
    if bt.is_unsigned(datatype):
        low = 1 if object_type.startswith("multi-state") and prop in ("present-value", "relinquish-default") else 0
        return Domain(f"{what} (a state number)" if low else what, low=low)
    return None


def source_domain(source: Any) -> Domain | None:
    """The domain of a validated `ModbusSource` or `BacnetSource`."""
    if source.protocol == "modbus":
        return modbus_domain(source.table, source.bit, source.width)
    object_type = str(source.object).split(",", 1)[0]
    return bacnet_domain(object_type, source.property)


# --- the table in docs/onboarding.md ----------------------------------------------------------------------

# The objects and properties security equipment maps alarms from (docs/sites.md, the four buildings).
DOCUMENTED_BACNET: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("binary-input", ("present-value",)),
    ("binary-value", ("present-value",)),
    ("multi-state-input", ("present-value",)),
    ("multi-state-value", ("present-value",)),
    ("life-safety-point", ("present-value", "mode")),
    ("life-safety-zone", ("present-value", "mode")),
    ("access-door", ("door-alarm-state", "present-value", "door-status", "lock-status")),
    ("access-point", ("access-event",)),
    ("binary-input", ("event-state", "reliability", "out-of-service")),
)
# Properties every object type has: shown once, for binary-input.
_EVERY_OBJECT = {("binary-input", "event-state"), ("binary-input", "reliability"), ("binary-input", "out-of-service")}
DOCUMENTED_MODBUS: tuple[tuple[str, int | None, int], ...] = (
    ("coil", None, 1),
    ("discrete_input", None, 1),
    ("holding", 3, 1),
    ("holding", 4, 2),
    ("input", 0, 4),
    ("holding", None, 1),
    ("input", None, 1),
)


def raw_value_table() -> str:
    """The markdown tables of docs/onboarding.md's "Raw values per protocol" (a test keeps them equal)."""
    lines = ["| BACnet object | property | raw values |", "|---|---|---|"]
    for object_type, props in DOCUMENTED_BACNET:
        for prop in props:
            domain = bacnet_domain(object_type, prop)
            if domain is None:
                continue
            values = ", ".join(f"`{n}`" for n in domain.names) if domain.names else domain.allowed
            if domain.proprietary_above is not None:
                values += f" (a vendor's own state: its number, above {domain.proprietary_above})"
            shown = "any object type that has it" if (object_type, prop) in _EVERY_OBJECT else object_type
            lines.append(f"| {shown} | {prop} | {values} |")
    lines += ["", "| Modbus source | raw values |", "|---|---|"]
    for table, bit, width in DOCUMENTED_MODBUS:
        domain = modbus_domain(table, bit, width)
        source = f"`table: {table}`" + ("" if bit is None else f", `bit: {bit}`")
        source += "" if width == 1 else f", `width: {width}`"
        lines.append(f"| {source}: {domain.what} | {domain.allowed} |")
    return "\n".join(lines)
