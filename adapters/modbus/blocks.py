"""Block coalescing and decoding: the pure part of Modbus polling.

Reading every point with its own request would cost one round trip per point (and on a shared RTU bus,
one bus slot per point). The configured points of a device are therefore merged into the fewest block
reads per table that stay within the protocol limits and span at most `max_gap` unused addresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.config.models import MODBUS_MAX_BITS, MODBUS_MAX_REGISTERS, ModbusSource

Table = Literal["coil", "discrete_input", "holding", "input"]
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete_input"})
TABLES: tuple[Table, ...] = ("coil", "discrete_input", "holding", "input")


def table_limit(table: str) -> int:
    """Most addresses one read request of this table may cover."""
    return MODBUS_MAX_BITS if table in BIT_TABLES else MODBUS_MAX_REGISTERS


@dataclass(frozen=True, slots=True)
class BlockPoint:
    """One configured point as a block sees it."""

    point_id: str
    address: int
    bit: int | None = None
    width: int = 1

    def extract(self, word: int, *, bits_table: bool) -> int:
        """The point's raw value from its register (or bit) as read."""
        if bits_table:
            return 1 if word else 0
        if self.bit is None:
            return word & 0xFFFF
        return (word >> self.bit) & ((1 << self.width) - 1)


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` addresses of `table` from `address`, and the points it serves."""

    table: Table
    address: int
    count: int
    points: tuple[BlockPoint, ...]

    @property
    def ref(self) -> str:
        return f"{self.table}:{self.address}+{self.count}"

    @property
    def point_ids(self) -> tuple[str, ...]:
        return tuple(p.point_id for p in self.points)

    def decode(self, values: Sequence[int | bool]) -> list[tuple[str, int]]:
        """(point id, raw value) for every point of the block, from the values read."""
        if len(values) < self.count:
            raise ValueError(f"{self.ref}: got {len(values)} values, expected {self.count}")
        bits = self.table in BIT_TABLES
        return [(p.point_id, p.extract(int(values[p.address - self.address]), bits_table=bits)) for p in self.points]


def split_block(block: Block) -> list[Block]:
    """One block per address of `block` (points sharing a register stay together): a device that answers a
    block with exception 02 because one of its addresses does not exist would otherwise blind every point
    the block serves."""
    by_address: dict[int, list[BlockPoint]] = {}
    for point in block.points:
        by_address.setdefault(point.address, []).append(point)
    return [Block(block.table, address, 1, tuple(points)) for address, points in sorted(by_address.items())]


def plan_blocks(points: Iterable[tuple[str, ModbusSource]], max_gap: int) -> list[Block]:
    """Merge points into block reads per table, in table then address order.

    A block grows while the next point lies at most `max_gap` unused addresses beyond the block's end and
    the block stays within the per-request limit (125 registers, 2000 bits). Several points may share an
    address (bit-fields of one register).
    """
    if max_gap < 0:
        raise ValueError("max_gap cannot be negative")
    by_table: dict[str, list[BlockPoint]] = {t: [] for t in TABLES}
    for point_id, src in points:
        by_table[src.table].append(BlockPoint(point_id, src.address, src.bit, src.width))
    blocks: list[Block] = []
    for table in TABLES:
        members = sorted(by_table[table], key=lambda p: (p.address, p.bit or 0, p.point_id))
        limit = table_limit(table)
        current: list[BlockPoint] = []
        for point in members:
            if current:
                start, end = current[0].address, current[-1].address
                if point.address - end - 1 <= max_gap and point.address - start + 1 <= limit:
                    current.append(point)
                    continue
                blocks.append(_block(table, current))
            current = [point]
        if current:
            blocks.append(_block(table, current))
    return blocks


def _block(table: Table, points: list[BlockPoint]) -> Block:
    start = points[0].address
    return Block(table, start, points[-1].address - start + 1, tuple(points))
