"""The reference receiver checks its SUBACKs (tests/support/refusing_broker.py refuses every SUBSCRIBE)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from gateway.testing import wait_until
from gateway.tools.receiver import ReceiverState
from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions
from tests.support.refusing_broker import RefusingBroker


async def test_a_subscription_the_broker_refuses_is_said_once_per_topic_and_counted(tmp_path: Path) -> None:
    """The receiver's SUBACKs are checked (a broker ACL without the meldkamer's topics): never a silent receiver."""
    async with RefusingBroker() as broker:
        link = ReceiverLink(
            f"mqtt://127.0.0.1:{broker.port}",
            ReceiverState(),
            lambda _n: None,
            ReceiverOptions(identifier="meldkamer", state_dir=tmp_path),
        )
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(link.run(stop))
                await wait_until(lambda: link.subscriptions_refused >= 1, 10, what="a refused SUBACK counted")
                stop.set()
    refused = [e for e in logs if e["event"] == "receiver_subscription_refused"]
    assert refused and len({e["topic"] for e in refused}) == len(refused), "one line per topic"
