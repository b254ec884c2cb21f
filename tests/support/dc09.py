"""Helpers for the DC-09 path tests: a site with a `dc09:` section, a journal host without MQTT, and a
pysiaalarm receiver (independent of our code) on a loopback port that can be stopped and started again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pysiaalarm import CommunicationsProtocol, SIAAccount, SIAEvent
from pysiaalarm.aio import SIAClient

from gateway.config.models import Dc09Config, SiteConfig
from gateway.delivery.journal import Journal
from gateway.domain.event import Event
from gateway.domain.state import Batch

T = TypeVar("T")

ACCOUNT = "4711"
KEY_TEXT = "GCMK-test-key-16"  # 16 printable bytes: pysiaalarm takes the key as text, we as hex of its bytes
KEY_TEXT_256 = "GCMK-test-key-for-AES-256-32byte"


def with_dc09(
    site: SiteConfig,
    tmp_path: Path,
    port: int,
    *,
    key: bool = True,
    key_text: str = KEY_TEXT,
    fmt: str = "sia-dcs",
    **receiver: Any,
) -> SiteConfig:
    """`site` with one DC-09 receiver on 127.0.0.1:`port` (AES-128 by default; short intervals)."""
    spec: dict[str, Any] = {
        "id": "ats",
        "host": "127.0.0.1",
        "port": port,
        "account": ACCOUNT,
        "supervision": 1.0,
        "ack_timeout": 0.3,
    }
    if key:
        key_file = tmp_path / "dc09.key"
        key_file.write_text(key_text.encode().hex() + "\n", encoding="ascii")
        spec["key_file"] = str(key_file)
    else:
        spec["insecure"] = True
    spec.update(receiver)
    dc09 = Dc09Config.model_validate({"format": fmt, "receivers": [spec]})
    return SiteConfig.model_validate({**site.model_dump(mode="json", exclude_none=True), "dc09": dc09.model_dump()})


class JournalHost:
    """The part of DeliverySink a DC-09 path uses (journal thread, commits, listeners), without MQTT."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._executor = ThreadPoolExecutor(max_workers=1)
        self._listeners: list[Callable[[int], None]] = []
        journal.open()

    async def journal_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    def add_commit_listener(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    async def accept(self, batch: Batch) -> Sequence[Event]:
        result = await self.journal_call(partial(self.journal.commit, [batch], now=_now(), link_down=False))
        for listener in self._listeners:
            listener(self.journal.last_seq)
        return result.per_batch[0]

    async def close(self) -> None:
        await self.journal_call(self.journal.close)
        self._executor.shutdown()


def _now() -> float:
    import time

    return time.time()


@dataclass
class SiaReceiver:
    """pysiaalarm's asyncio TCP receiver; `events` collects what it parsed (and ACKed), across restarts."""

    key: str | None = KEY_TEXT
    port: int = 0
    events: list[SIAEvent] = field(default_factory=list)
    _client: SIAClient | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    nulls: int = 0  # NULL (supervision) messages: pysiaalarm reports them as events with code RP

    async def _on_event(self, event: SIAEvent) -> None:
        if str(event.message_type).upper().endswith("NULL"):
            self.nulls += 1
            return
        self.events.append(event)
        self.arrived.set()

    async def start(self) -> int:
        client = SIAClient(
            "127.0.0.1",
            self.port,
            [SIAAccount(ACCOUNT, self.key)],
            function=self._on_event,
            protocol=CommunicationsProtocol.TCP,
        )
        await client.async_start()
        server = getattr(client, "server", None)  # pysiaalarm's asyncio server (test-only use of its attribute)
        self.port = int(server.sockets[0].getsockname()[1]) if server is not None else self.port
        self._client = client
        return self.port

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.async_stop()
            self._client = None

    def codes(self) -> list[str]:
        return [str(e.code) for e in self.events if e.code]
