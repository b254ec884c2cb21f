"""`gcmk-gateway discover modbus`: which unit ids answer at an endpoint, and which table ranges they have.

Read-only: only read requests (FC 1-4). Modbus cannot say what an address means, so every address found
becomes a point with a plain `TODO` type. Bounded, so 247 unit ids do not take forever:
- a unit id is probed with one one-address read per table; silence (timeout) or "gateway target absent"
  (exception 0A/0B) ends its probe at once, so an absent unit costs at most one request timeout;
- an answering unit's tables are read in blocks (125 registers, 2000 bits) across the address range; a block
  answered with exception 02/03 is halved down to pieces of GRAIN addresses, whose first address is then
  read alone, and each range found is extended address by address to its exact ends. A range shorter than
  GRAIN that starts inside such a piece can be missed (said in the notes), unless `thorough`: then every
  address of a refused piece is read alone (one request per address at worst). `worst_case` gives the bound.
Requests go through adapters/modbus/link.py, so errors arrive as the gateway's typed errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from adapters.modbus.link import ModbusLink
from gateway.config.models import MODBUS_MAX_BITS, MODBUS_MAX_REGISTERS, ModbusDevice
from gateway.domain.errors import (
    ConfigurationFault,
    DeviceBusy,
    DeviceError,
    DeviceTimeout,
    DeviceUnreachable,
    MalformedReply,
)
from gateway.tools.skeleton import Skeleton, SkeletonDevice, modbus_points

TABLES = ("coil", "discrete_input", "holding", "input")
BIT_TABLES = ("coil", "discrete_input")
GRAIN = {"coil": 16, "discrete_input": 16, "holding": 8, "input": 8}
BLOCK = {
    "coil": MODBUS_MAX_BITS,
    "discrete_input": MODBUS_MAX_BITS,
    "holding": MODBUS_MAX_REGISTERS,
    "input": MODBUS_MAX_REGISTERS,
}
ANSWERS_04 = "exception 04 to every read (pymodbus and some gateways answer so for a unit id they do not serve)"
ABSENT_CODES = (0x02, 0x03)  # "no such address" (some devices say 03 for a count that runs past the end)


@dataclass(frozen=True)
class ModbusProbe:
    host: str
    port: int = 502
    units: tuple[int, ...] = tuple(range(1, 248))
    first_address: int = 0
    last_address: int = 999
    timeout: float = 0.3
    transport: str = "tcp"  # or rtu_over_tcp
    thorough: bool = False  # read every address of a refused piece alone (finds single registers; slower)


@dataclass
class UnitFindings:
    unit: int
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # table -> [(first, last)]
    notes: list[str] = field(default_factory=list)

    def addresses(self, table: str) -> list[int]:
        return [a for first, last in self.ranges.get(table, []) for a in range(first, last + 1)]


@dataclass
class ModbusFindings:
    probe: ModbusProbe
    units: list[UnitFindings] = field(default_factory=list)
    absent: Counter[str] = field(default_factory=Counter)  # reason -> unit ids
    requests: int = 0
    seconds: float = 0.0
    unreachable: str | None = None  # why the endpoint itself could not be reached


def parse_units(text: str) -> tuple[int, ...]:
    """'1-247', '1,2,5-7' -> sorted unit ids (0-255)."""
    units: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"unit ids '{text}': write numbers and ranges like 1-247 or 1,2,5-7") from None
        if not 0 <= first <= last <= 255:
            raise ValueError(f"unit ids '{part}': a Modbus unit id is 0..255 (1..247 on a serial line)")
        units.update(range(first, last + 1))
    if not units:
        raise ValueError("no unit ids given")
    return tuple(sorted(units))


def worst_case(probe: ModbusProbe) -> tuple[float, int]:
    """(seconds all absent-but-silent units can take, requests one answering unit can take at most)."""
    span = probe.last_address - probe.first_address + 1
    per_unit = 0
    for table in TABLES:
        blocks = math.ceil(span / BLOCK[table])
        size = min(span, BLOCK[table])
        leaves = math.ceil(size / GRAIN[table])
        singles = size if probe.thorough else leaves  # each refused piece's addresses (or its first) alone
        per_block = 2 * leaves - 1 + singles  # the halving tree of a block with gaps, and the single reads
        per_unit += 1 + blocks * per_block + 2 * GRAIN[table]  # presence probe, blocks, edge refinement
    return len(probe.units) * probe.timeout * 2, per_unit


def _unit_device(probe: ModbusProbe, unit: int) -> ModbusDevice:
    return ModbusDevice(
        protocol="modbus",
        id=f"modbus-{unit}",
        name=f"unit {unit}",
        transport=probe.transport,
        host=probe.host,
        port=probe.port,
        unit_id=unit,
        timeout=probe.timeout,
        poll_interval=max(1.0, probe.timeout * 2),
    )


Read = Callable[[int, int], Awaitable[list[int]]]


async def discover_modbus(probe: ModbusProbe) -> ModbusFindings:
    """Probe every unit id of `probe` in turn (one bus: one request at a time) and scan the ones that answer."""
    findings = ModbusFindings(probe)
    started = time.monotonic()
    problem = await _endpoint_problem(probe)
    if problem is not None:
        findings.unreachable = problem
        findings.seconds = time.monotonic() - started
        return findings
    link = ModbusLink(f"discover:{probe.host}:{probe.port}", _unit_device(probe, probe.units[0]))
    try:
        for unit in probe.units:
            device = _unit_device(probe, unit)

            async def read(table: str, address: int, count: int, device: ModbusDevice = device) -> list[int]:
                return await link.read(device, table, address, count)

            unit_findings = await _probe_unit(unit, probe, read, findings.absent)
            if unit_findings is not None:
                findings.units.append(unit_findings)
    finally:
        findings.requests = link.requests
        link.close()
        findings.seconds = time.monotonic() - started
    return findings


async def _endpoint_problem(probe: ModbusProbe) -> str | None:
    """Why the endpoint cannot be reached at all (so no unit id is probed), or None."""
    try:
        async with asyncio.timeout(max(1.0, probe.timeout * 3)):
            _reader, writer = await asyncio.open_connection(probe.host, probe.port)
    except TimeoutError:
        return f"{probe.host}:{probe.port}: no TCP connection within {max(1.0, probe.timeout * 3):g}s"
    except OSError as exc:
        return f"{probe.host}:{probe.port}: cannot connect: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def _probe_unit(
    unit: int, probe: ModbusProbe, read: Callable[[str, int, int], Awaitable[list[int]]], absent: Counter[str]
) -> UnitFindings | None:
    """None when the unit does not answer (the reason counted in `absent`)."""
    answered: list[str] = []
    busy = 0
    for table in TABLES:
        try:
            await read(table, probe.first_address, 1)
            answered.append(table)
        except ConfigurationFault as exc:
            # 02/03: the unit is there, this address is not; 01 illegal function: the unit is, the table is not
            answered.append(table if exc.code in ABSENT_CODES else "")
        except DeviceTimeout:
            if answered:
                continue
            absent["no answer within the timeout"] += 1
            return None
        except DeviceUnreachable:
            absent["gateway says the target is absent (exception 0A/0B)"] += 1
            return None
        except DeviceBusy as exc:
            if exc.code == 0x04:
                busy += 1
                continue
            answered.append("")
        except MalformedReply:
            if answered:
                continue
            absent["an answer that is not Modbus (wrong framing? try --transport rtu_over_tcp)"] += 1
            return None
    tables = [t for t in answered if t]
    if not answered:
        if busy:
            absent[ANSWERS_04] += 1
        return None
    findings = UnitFindings(unit)
    for table in tables:

        async def table_read(address: int, count: int, table: str = table) -> list[int]:
            return await read(table, address, count)

        try:
            runs = await scan_table(
                table_read, probe.first_address, probe.last_address, BLOCK[table], GRAIN[table], probe.thorough
            )
        except DeviceError as exc:
            findings.notes.append(f"unit {unit} {table}: scan stopped: {exc}")
            continue
        if runs:
            findings.ranges[table] = runs
    return findings


async def scan_table(
    read: Read, first: int, last: int, block: int, grain: int, thorough: bool = False
) -> list[tuple[int, int]]:
    """The address ranges [(first, last)] between `first` and `last` that the table answers."""
    present: set[int] = set()

    async def answers(address: int, count: int) -> bool:
        try:
            await read(address, count)
        except ConfigurationFault as exc:
            if exc.code in ABSENT_CODES:
                return False
            raise
        return True

    async def probe(address: int, count: int) -> None:
        if await answers(address, count):
            present.update(range(address, address + count))
        elif count > grain:
            half = count // 2
            await probe(address, half)
            await probe(address + half, count - half)
        elif thorough:
            for single in range(address, address + count):
                if count > 1 and await answers(single, 1):
                    present.add(single)
        elif count > 1 and await answers(address, 1):  # a short range at the start of this piece
            present.add(address)

    for start in range(first, last + 1, block):
        await probe(start, min(block, last + 1 - start))
    for run_first, run_last in _runs(present):
        address = run_last + 1
        while address <= last and address not in present and address - run_last < grain:
            if not await answers(address, 1):
                break
            present.add(address)
            address += 1
        address = run_first - 1
        while address >= first and address not in present and run_first - address < grain:
            if not await answers(address, 1):
                break
            present.add(address)
            address -= 1
    return _runs(present)


def _runs(addresses: set[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for address in sorted(addresses):
        if runs and runs[-1][1] == address - 1:
            runs[-1] = (runs[-1][0], address)
        else:
            runs.append((address, address))
    return runs


def modbus_skeleton(findings: ModbusFindings, command: str) -> Skeleton:
    """The findings as a site-config skeleton: one device per unit, one point per address found."""
    probe = findings.probe
    skeleton = Skeleton(command=command, protocol="modbus", scanned={f"{probe.host}:{probe.port}"})
    for unit in findings.units:
        device_id = f"modbus-{unit.unit}"
        entry: dict[str, object] = {"protocol": "modbus", "id": device_id, "name": f"Modbus unit {unit.unit}"}
        if probe.transport != "tcp":
            entry["transport"] = probe.transport
        entry.update(host=probe.host, port=probe.port, unit_id=unit.unit)
        found = ", ".join(
            f"{table} {a}-{b}" if a != b else f"{table} {a}" for table, runs in unit.ranges.items() for a, b in runs
        )
        device = SkeletonDevice(entry=entry, note=f"found: {found or 'answers, but no address in range'}")
        for table in TABLES:
            device.points.extend(modbus_points(device_id, table, unit.addresses(table)))
        skeleton.devices.append(device)
        skeleton.notes.extend(unit.notes)
    for reason, count in findings.absent.items():
        skeleton.skipped[f"unit id(s) not answering: {reason}"] += count
    if probe.thorough:
        skeleton.notes.append(f"addresses {probe.first_address}-{probe.last_address} probed, every address")
    else:
        skeleton.notes.append(
            f"addresses {probe.first_address}-{probe.last_address} probed; a range shorter than "
            f"{GRAIN['holding']} registers ({GRAIN['coil']} bits) between absent addresses can be missed"
            " (--thorough finds them)"
        )
    skeleton.notes.append("Modbus cannot say what an address means: every type is TODO, alarm 1 / normal 0 guessed")
    return skeleton
