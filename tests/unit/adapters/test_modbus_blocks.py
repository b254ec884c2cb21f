"""Block coalescing and decoding (pure functions)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from adapters.modbus.blocks import Block, BlockPoint, plan_blocks, split_block, table_limit
from gateway.config.models import ModbusSource


def src(table: str, address: int, bit: int | None = None, width: int = 1) -> ModbusSource:
    return ModbusSource(protocol="modbus", table=table, address=address, bit=bit, width=width)


def test_neighbours_within_gap_share_a_block_and_tables_never_mix() -> None:
    blocks = plan_blocks(
        [
            ("a", src("holding", 100, 0)),
            ("b", src("holding", 100, 1)),
            ("c", src("holding", 105)),
            ("d", src("holding", 120)),  # 14 unused addresses after 105: beyond max_gap 8
            ("e", src("coil", 100)),
            ("f", src("input", 101)),
        ],
        max_gap=8,
    )
    assert [(b.table, b.address, b.count, b.point_ids) for b in blocks] == [
        ("coil", 100, 1, ("e",)),
        ("holding", 100, 6, ("a", "b", "c")),
        ("holding", 120, 1, ("d",)),
        ("input", 101, 1, ("f",)),
    ]


def test_gap_of_exactly_max_gap_joins_one_more_splits() -> None:
    joined = plan_blocks([("a", src("holding", 0)), ("b", src("holding", 9))], max_gap=8)
    split = plan_blocks([("a", src("holding", 0)), ("b", src("holding", 10))], max_gap=8)
    assert [b.count for b in joined] == [10]
    assert [b.count for b in split] == [1, 1]


def test_protocol_limits_split_long_runs() -> None:
    regs = plan_blocks([(f"r{i}", src("holding", i)) for i in range(300)], max_gap=8)
    bits = plan_blocks([(f"c{i}", src("discrete_input", i)) for i in range(4100)], max_gap=8)
    assert [b.count for b in regs] == [125, 125, 50]
    assert [b.count for b in bits] == [2000, 2000, 100]


def test_decode_every_kind() -> None:
    reg = Block(
        "holding",
        10,
        2,
        (BlockPoint("whole", 10), BlockPoint("bit3", 11, 3), BlockPoint("field", 11, 4, 3)),
    )
    assert reg.decode([0xBEEF, 0b1101_1000]) == [("whole", 0xBEEF), ("bit3", 1), ("field", 0b101)]
    coils = Block("coil", 0, 3, (BlockPoint("c0", 0), BlockPoint("c2", 2)))
    assert coils.decode([1, 0, 0]) == [("c0", 1), ("c2", 0)]


@st.composite
def configured_points(draw: st.DrawFn) -> list[tuple[str, ModbusSource]]:
    table = draw(st.sampled_from(["coil", "discrete_input", "holding", "input"]))
    addresses = draw(st.lists(st.integers(0, 5000), min_size=1, max_size=200, unique=True))
    return [(f"p{a}", src(table, a)) for a in addresses]


@given(configured_points(), st.integers(0, 100))
def test_every_point_in_exactly_one_block_within_limits(
    points: list[tuple[str, ModbusSource]], max_gap: int
) -> None:
    blocks = plan_blocks(points, max_gap)
    covered = [pid for b in blocks for pid in b.point_ids]
    assert sorted(covered) == sorted(pid for pid, _ in points)
    for block in blocks:
        assert 1 <= block.count <= table_limit(block.table)
        addresses = [p.address for p in block.points]
        assert addresses[0] == block.address and addresses[-1] == block.address + block.count - 1
        assert all(b - a - 1 <= max_gap for a, b in itertools.pairwise(addresses))
    # Minimal: two consecutive blocks could not have been merged.
    for first, second in itertools.pairwise(blocks):
        if first.table == second.table:
            gap = second.address - (first.address + first.count)
            assert gap > max_gap or second.address + second.count - first.address > table_limit(first.table)


def test_split_gives_one_block_per_address_and_keeps_bit_fields_of_a_register_together() -> None:
    (block,) = plan_blocks(
        [("a", src("holding", 10, bit=0)), ("b", src("holding", 10, bit=3)), ("c", src("holding", 14))], max_gap=8
    )
    parts = split_block(block)
    assert [(p.address, p.count, p.point_ids) for p in parts] == [(10, 1, ("a", "b")), (14, 1, ("c",))]
    assert [pid for p in parts for pid, _ in p.decode([0b1001])] == ["a", "b", "c"]
