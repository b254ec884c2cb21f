"""A receiver tier of three members sharing six sites (real DeliverySinks: journal + publisher, one per site),
one member SIGKILLed mid-stream: the survivors take its sites over, and the tier's combined stores hold every
accepted event of every site once by seq (the same event_id wherever it is held), gap-free, each member's
part in seq order; every site ends fully confirmed: none left unserved. And a member that stops cleanly (no will:
DISCONNECT suppresses it) hands its sites over too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.models import SiteConfig
from gateway.delivery.sink import DeliverySink
from gateway.domain.state import Batch
from gateway.testing import wait_until
from gateway.tools.receiver_tier import owner
from tests.support.delivery_harness import make_event, site_config
from tests.support.mosquitto import Mosquitto, mosquitto
from tests.support.paths import REPO

__all__ = ["mosquitto"]

SITES = [f"site-{n}" for n in range(6)]
MEMBERS = ["a", "b", "c"]
EVENTS = 400  # per site
CONFIRMED = {"confirm": "meldkamer", "receivers": ["meldkamer"], "confirm_timeout": "1s"}


def gateway_config(tmp: Path, url: str, site_id: str) -> SiteConfig:
    base = site_config(tmp / site_id, url, delivery=CONFIRMED, supervision={"heartbeat_interval": "0.5s"})
    return base.model_copy(update={"site": base.site.model_copy(update={"id": site_id})})


@contextlib.asynccontextmanager
async def member(url: str, state_dir: Path, name: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.receiver_member", url, str(state_dir), "tier", name,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def produce(sink: DeliverySink, site_id: str, accepted: list[str], count: int) -> None:
    for n in range(0, count, 5):
        events = tuple(make_event(n + i).model_copy(update={"site": site_id}) for i in range(5))
        accepted += [str(e.event_id) for e in await sink.accept(Batch(events=events))]
        await asyncio.sleep(0.01)  # ~500 ev/s per site: a stream, not one burst (pacing, not synchronisation)


def positions(state_dir: Path, name: str) -> dict[str, tuple[int, list[int]]]:
    db = sqlite3.connect(state_dir / f"meldkamer-tier-{name}.receiver.sqlite3")
    try:
        return {site: (up_to, json.loads(above)) for site, up_to, above in db.execute(
            "SELECT site, up_to, above FROM positions")}
    finally:
        db.close()


def stored(state_dir: Path, name: str) -> list[tuple[str, int, str, dict[str, Any]]]:
    db = sqlite3.connect(state_dir / f"meldkamer-tier-{name}.receiver.sqlite3")
    try:
        rows = db.execute("SELECT site, seq, event_id, payload FROM events ORDER BY rowid").fetchall()
    finally:
        db.close()
    return [(site, seq, event_id, json.loads(payload)) for site, seq, event_id, payload in rows]


@pytest.mark.slow
async def test_a_member_killed_mid_stream_loses_nothing_and_leaves_no_site_unserved(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    state_dir = tmp_path / "tier"
    by_owner = {m: [s for s in SITES if owner(s, set(MEMBERS)) == m] for m in MEMBERS}
    victim = max(MEMBERS, key=lambda m: len(by_owner[m]))
    assert by_owner[victim], "the member to kill serves at least one site"
    sinks = {s: DeliverySink(gateway_config(tmp_path, mosquitto.url, s), config_hash="t", version="t",
                             devices=lambda: (1, 1)) for s in SITES}
    accepted: dict[str, list[str]] = {s: [] for s in SITES}
    async with contextlib.AsyncExitStack() as stack:
        procs = {m: await stack.enter_async_context(member(mosquitto.url, state_dir, m)) for m in MEMBERS}
        async with asyncio.TaskGroup() as tg:
            for sink in sinks.values():
                await sink.load_state()
            runs = [tg.create_task(sink.run()) for sink in sinks.values()]
            half = [tg.create_task(produce(sinks[s], s, accepted[s], EVENTS // 2)) for s in SITES]
            await asyncio.gather(*half)
            # mid-stream: the victim has confirmed part of its sites' streams, and more is in flight
            await wait_until(lambda: all(sinks[s].stats.confirmed_seq > 50 for s in SITES), 30, what="tier serving")
            rest = [tg.create_task(produce(sinks[s], s, accepted[s], EVENTS // 2)) for s in SITES]
            await asyncio.sleep(0.1)  # the moment of the kill: while the second half streams (not synchronisation)
            procs[victim].kill()
            await procs[victim].wait()
            await asyncio.gather(*rest)
            await wait_until(
                lambda: all(sinks[s].stats.confirmed_seq == sinks[s].stats.last_seq == EVENTS for s in SITES),
                60,
                what="every site fully confirmed by the survivors",
            )
            for sink in sinks.values():
                await sink.close()
            for run in runs:
                with contextlib.suppress(asyncio.CancelledError):
                    await run
    held: dict[str, dict[int, str]] = {s: {} for s in SITES}
    overlap = 0
    taken_after_kill = set()
    for name in MEMBERS:
        rows = stored(state_dir, name)
        for site, seq, event_id, _doc in rows:
            if seq in held[site]:
                overlap += 1
                assert held[site][seq] == event_id, f"{site} seq {seq}: two different events"
            held[site][seq] = event_id
        for site in SITES:  # each member's part of a site: live events in seq order
            live = [seq for s, seq, _e, doc in rows if s == site and not doc["redelivered"]]
            assert live == sorted(live), f"{name} stored {site} out of order"
        if name != victim:
            taken_after_kill |= {site for site, *_ in rows if site in by_owner[victim]}
            # the hand-over position: a survivor knows the tier holds what the victim stored and confirmed, so
            # its position of a taken site is whole (no replay asked of what the tier already holds)
            for site, (up_to, above) in positions(state_dir, name).items():
                if site in by_owner[victim]:
                    assert (up_to, above) == (EVENTS, []), f"{name}'s position of {site}: {up_to} {above[:5]}"
    for site in SITES:
        assert sorted(held[site]) == list(range(1, EVENTS + 1)), f"{site}: gaps in the tier's stores"
        assert set(held[site].values()) == set(accepted[site]), f"{site}: stored events are not the accepted ones"
    assert taken_after_kill == set(by_owner[victim]), "the survivors took over every site of the killed member"
    assert overlap <= 0.2 * EVENTS * len(by_owner[victim]), f"{overlap} events held twice: more than a hand-over"


async def test_a_member_that_stops_cleanly_hands_its_sites_over(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A clean stop sends DISCONNECT, so no will: the member clears its presence itself."""
    from gateway.tools.receiver import ReceiverState
    from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions

    sinks = [DeliverySink(gateway_config(tmp_path, mosquitto.url, s), config_hash="t", version="t") for s in SITES]
    links = {
        m: ReceiverLink(mosquitto.url, ReceiverState(), lambda _n: None,
                        ReceiverOptions(state_dir=tmp_path / "tier", group="tier", member=m))
        for m in ("a", "b")
    }
    stops = {m: asyncio.Event() for m in links}
    async with asyncio.TaskGroup() as tg:
        for sink in sinks:
            await sink.load_state()
        runs = [tg.create_task(sink.run()) for sink in sinks]
        members = {m: tg.create_task(link.run(stops[m])) for m, link in links.items()}
        a, b = links["a"], links["b"]
        def both_see_both() -> bool:
            return all(link.membership is not None and link.membership.ready
                       and link.membership.members == {"a", "b"} for link in links.values())

        await wait_until(lambda: both_see_both() and len(a.state.sites) == len(SITES), 20, what="a and b see both")
        assert all(a.serves(s) != b.serves(s) for s in SITES), "every site served by exactly one of them"
        assert any(b.serves(s) for s in SITES), "b serves some sites"
        stops["b"].set()
        await members["b"]
        await wait_until(lambda: all(a.serves(s) for s in SITES), 10, what="a serves every site after b left")
        stops["a"].set()
        for sink in sinks:
            await sink.close()
        for run in runs:
            with contextlib.suppress(asyncio.CancelledError):
                await run


async def test_a_member_that_died_without_a_will_loses_its_sites_when_its_lease_runs_out(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A member that died while the broker was down never gets its will published: its retained presence
    comes back with the broker. The lease (an announcement every presence_refresh, gone after 3 of them
    missed) moves its sites to the members still announcing, instead of leaving them unserved for ever."""
    import aiomqtt

    from gateway.tools.receiver import ReceiverState
    from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions
    from gateway.tools.receiver_tier import presence_payload, presence_topic

    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ghost-left-behind") as ghost:
        await ghost.publish(presence_topic("tier", "ghost"), presence_payload("ghost", "old"), qos=1, retain=True)
    sinks = [DeliverySink(gateway_config(tmp_path, mosquitto.url, s), config_hash="t", version="t") for s in SITES]
    options = ReceiverOptions(state_dir=tmp_path / "tier", group="tier", member="a", presence_refresh=0.3)
    link = ReceiverLink(mosquitto.url, ReceiverState(), lambda _n: None, options)
    stop = asyncio.Event()
    ghosts = [s for s in SITES if owner(s, {"a", "ghost"}) == "ghost"]
    assert ghosts, "the ghost owns some of the sites while it counts as alive"
    async with asyncio.TaskGroup() as tg:
        for sink in sinks:
            await sink.load_state()
        runs = [tg.create_task(sink.run()) for sink in sinks]
        running = tg.create_task(link.run(stop))
        await wait_until(
            lambda: link.membership is not None and link.membership.ready and len(link.state.sites) == len(SITES),
            20,
            what="a is ready and knows the sites",
        )
        await wait_until(lambda: all(link.serves(s) for s in SITES), 10, what="a serves every site: the lease ran out")
        assert link.membership is not None and link.membership.members == {"a"}
        stop.set()
        await running
        for sink in sinks:
            await sink.close()
        for run in runs:
            with contextlib.suppress(asyncio.CancelledError):
                await run
