"""The short loss drill across a bridged broker pair (bench/drill_brokers.py, shortened): the site or the central
Mosquitto SIGKILLed under load and started again; every event the gateway acknowledged ends up stored at the
receiver, exactly seq 1..last_seq. The long version and the three-node RabbitMQ cluster: bench/README.md."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.drill_brokers import bridged


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["site", "central", "site-backlog"])
async def test_a_broker_of_the_bridged_pair_killed_under_load_loses_nothing(tmp_path: Path, victim: str) -> None:
    result = await bridged(victim, argparse.Namespace(rate=300.0, seconds=4.0, down=1.0), tmp_path)
    assert result["last_seq"] == result["accepted"] > 0, result
    assert result["lost"] == 0 and result["seqs_exact"], result
