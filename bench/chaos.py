"""Chaos drill: devices change continuously and log each change; the gateway, the broker and the receiver are
killed and restarted at random moments; at the end every change the devices made must be held (stored and
confirmed) at the meldkamer's reference receiver, in the order the device made them.

    .venv/bin/python bench/chaos.py --minutes 5                    # 50 gateway SIGKILLs, 10 broker, 10 receiver
    .venv/bin/python bench/chaos.py --minutes 0.67 --gateway-kills 10 --broker-kills 3 --receiver-restarts 3  # = test
    .venv/bin/python bench/chaos.py --minutes 5 --json --workdir /tmp/chaos   # keep logs, truth log, stores

What runs (all on 127.0.0.1, OS-assigned ports):
- one building (site `chaos`), one Modbus TCP device with 8 alarm points (4 bits of a holding register,
  2 coils, 2 discrete inputs), polled every 100 ms, in a process of its own: `python -m simulators.churn`
  flips each point between alarm and normal, on and on, and writes every change with its time to a truth log
  (simulators/truth.py). A Modbus poller sees only values that hold across its reads, and a gateway being
  restarted reads nothing: each value holds until the device answered >= 0.5 s (>= 5 polls) of uninterrupted
  reads of it, then 0..0.5 s more (simulators/churn.py). So every change was on show to a running gateway for
  at least 0.5 s; changes pause while no gateway polls.
- the gateway exactly as deployed: `python -m gateway run --site ... --overlay ...` (journal in the workdir,
  `delivery: {confirm: meldkamer, confirm_timeout: 1s}`, heartbeat 1 s), SIGKILLed and started again at once;
- Mosquitto with persistence (`autosave_interval 2`, so a restarted broker comes back with a snapshot up to 2 s
  old: stale sessions, stale queues), SIGKILLed and started again after 0.2-3 s;
- the reference receiver (gateway.tools.receiver_link) in this process on one state dir, restarted
  (alternately a clean stop and a cancellation of its task), down for 0-2 s.
The moments: for each of the three, as many as asked for, drawn uniformly over the first 92 % of the drill,
independently of each other and of the devices; a fifth of the gateway incarnations are killed sooner, within
a second of their start (importing, opening the journal, reconnecting, sending what the previous one left).
Each kill of the gateway records how far that incarnation had got (from its log): importing, starting, running.

At the end the devices stop changing (SIGUSR1), the drill waits until the receiver holds every change and the
gateway's heartbeat says nothing is unconfirmed, and compares, per point, the ordered alarm/restore states the
receiver stored (de-duplicated by event_id) with the truth log: each event is matched to the device change
whose hold interval contains its `detected_at` and whose value is its `source.raw`. Reported: changes, events,
missing and unexpected ones, order errors, duplicates (messages received again, and distinct events for one
change), delay from the device's change to the receiver's durable store (p50 / p99 / max, with what happened
around the worst), replays asked, and errors in the gateway logs. Exit code 0 only if nothing is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ruamel.yaml import YAML  # noqa: E402

from gateway.ops.logs import configure_logging  # noqa: E402
from gateway.tools.demo import gateway_overlay  # noqa: E402
from gateway.tools.receiver import Notice, ReceiverState  # noqa: E402
from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions  # noqa: E402
from simulators import truth as truthlog  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

SITE = "chaos"
RECEIVER = "meldkamer"
TOLERANCE = 0.15  # s: an event's detected_at may trail the end of its change's hold by one read's round trip


def site_document(poll: float, confirm_timeout: float) -> dict[str, Any]:
    """The drill's building; endpoints, broker and journal come from the overlay."""

    def point(n: int, kind: str, table: str, address: int, bit: int | None = None) -> dict[str, Any]:
        source: dict[str, Any] = {"protocol": "modbus", "table": table, "address": address}
        if bit is not None:
            source["bit"] = bit
        return {
            "id": f"{kind}-{n}",
            "name": f"{kind} {n}",
            "device": "panel-1",
            "tenant": "jv",
            "zone": "z1",
            "type": kind,
            "source": source,
            "alarm": [1],
            "normal": [0],
        }

    points = [point(i + 1, "burglary", "holding", 100, bit=i) for i in range(4)]
    points += [point(i + 1, "tamper", "coil", 10 + i) for i in range(2)]
    points += [point(i + 1, "door_forced", "discrete_input", 20 + i) for i in range(2)]
    return {
        "version": 1,
        "site": {"id": SITE, "name": "Chaosgebouw", "address": "Teststraat 1, Den Haag"},
        "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
        "zones": [{"id": "z1", "name": "Zone 1", "tenant": "jv"}],
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "insecure": True},
        "journal": {"data_dir": "var/chaos"},
        "supervision": {"heartbeat_interval": 1.0},
        "delivery": {"confirm": "meldkamer", "receivers": [RECEIVER], "confirm_timeout": confirm_timeout},
        "metrics": {"listen": "127.0.0.1", "port": 0},
        "devices": [
            {
                "protocol": "modbus",
                "id": "panel-1",
                "name": "Inbraakcentrale",
                "host": "127.0.0.1",
                "port": 502,
                "poll_interval": poll,
                "timeout": poll * 0.9,
                "offline_after_failures": 5,
            }
        ],
        "points": points,
    }


@dataclass
class Settings:
    seconds: float = 300.0
    gateway_kills: int = 50
    broker_kills: int = 10
    receiver_restarts: int = 10
    poll: float = 0.1
    hold: float = 0.5
    jitter: float = 0.5
    confirm_timeout: float = 1.0
    reorder_timeout: float = 0.5
    autosave: int = 2  # Mosquitto autosave_interval (s)
    broker_down: tuple[float, float] = (0.2, 3.0)
    receiver_down: tuple[float, float] = (0.0, 2.0)
    settle_within: float = 120.0  # s after the devices stopped changing
    seed: int = 1
    workdir: Path | None = None


@dataclass
class Action:
    t: float  # wall clock
    kind: str
    detail: str = ""


@dataclass
class Report:
    ok: bool = False
    seconds: float = 0.0
    seed: int = 0
    workdir: str = ""
    gateway_kills: int = 0
    gateway_starts: int = 0
    gateway_kills_by_phase: dict[str, int] = field(default_factory=dict)  # importing, starting, running
    gateway_self_exits: list[str] = field(default_factory=list)
    gateway_final_exit: int | None = None
    broker_kills: int = 0
    receiver_restarts: int = 0
    changes: int = 0
    changes_per_point: dict[str, int] = field(default_factory=dict)
    events_stored: int = 0  # at the receiver, de-duplicated (the store keys on seq; event_ids checked too)
    other_events: dict[str, int] = field(default_factory=dict)  # not of a churned point (comm_loss, ...)
    missing: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    order_errors: list[dict[str, Any]] = field(default_factory=list)
    sequences_equal: bool = False
    same_change_twice: list[dict[str, Any]] = field(default_factory=list)  # distinct event_ids, one change
    duplicate_event_ids_in_store: int = 0
    seq_gaps: list[int] = field(default_factory=list)
    last_seq: int = 0
    messages_received: int = 0  # event messages the receivers got, all incarnations
    duplicates_received: int = 0  # of those, copies of an event_id already received
    redelivered_flagged: int = 0  # received copies flagged redelivered (confirm timeout or replay)
    replays_asked: int = 0
    written_off: int = 0
    confirms_sent: int = 0
    delay_p50: float | None = None  # s, device change -> stored at the receiver (then confirmed)
    delay_p99: float | None = None
    delay_max: float | None = None
    worst: list[dict[str, Any]] = field(default_factory=list)
    final_heartbeat: dict[str, Any] | None = None
    gateway_log_errors: dict[str, int] = field(default_factory=dict)
    tracebacks: int = 0
    problems: list[str] = field(default_factory=list)


# --- the processes -------------------------------------------------------------------------------------


class Gateway:
    """`python -m gateway run`, one log file per incarnation."""

    def __init__(self, site: Path, overlay: Path, logs: Path) -> None:
        self.site, self.overlay, self.logs = site, overlay, logs
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.log: Path | None = None

    async def start(self) -> None:
        self.starts += 1
        self.log = self.logs / f"gateway-{self.starts:03d}.log"
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "--log-level", "info", "run",
                "--site", str(self.site), "--overlay", str(self.overlay),
                cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def phase(self) -> str:
        """How far the incarnation got, from its log: importing (no line yet), starting (not yet polling and
        connected), running."""
        text = self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""
        if not text:
            return "importing"
        return "running" if '"mqtt_connected"' in text and '"modbus_device_online"' in text else "starting"

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def terminate(self, grace: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


class Receiver:
    """The reference receiver in this process; every start is a new ReceiverLink (and ReceiverState) on the
    same state dir, as a restarted receiver process would be."""

    def __init__(self, url: str, state_dir: Path, reorder_timeout: float) -> None:
        self.url, self.state_dir, self.reorder_timeout = url, state_dir, reorder_timeout
        self.link: ReceiverLink | None = None
        self.state: ReceiverState | None = None
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.received: Counter[str] = Counter()  # event_id -> copies received, all incarnations
        self.notices: Counter[str] = Counter()
        self.redelivered = 0
        self.replays_asked = 0
        self.confirms_sent = 0
        self.failures: list[str] = []

    def start(self) -> None:
        self.state = ReceiverState(site=SITE, lost_after=15.0)
        self.link = ReceiverLink(
            self.url,
            self.state,
            self._notice,
            ReceiverOptions(identifier=RECEIVER, state_dir=self.state_dir, reorder_timeout=self.reorder_timeout),
        )
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self.link.run(self._stop))

    def _notice(self, notice: Notice) -> None:
        self.notices[notice.kind] += 1
        if notice.kind in ("event", "duplicate") and notice.event is not None:
            self.received[str(notice.event.event_id)] += 1
            self.redelivered += notice.event.redelivered

    async def stop(self, *, hard: bool = False) -> None:
        task, link = self.task, self.link
        if task is None or link is None:
            return
        if task.done():
            self.failures.append(f"receiver task ended by itself: {task.exception() if not task.cancelled() else ''}")
        elif hard:
            task.cancel()
        else:
            self._stop.set()
        done, _ = await asyncio.wait({task}, timeout=15)
        if not done:
            self.failures.append("receiver task did not end within 15 s of its stop")
            task.cancel()
        elif not task.cancelled() and task.exception() is not None:
            self.failures.append(f"receiver task failed: {task.exception()!r}")
        self.replays_asked += link.replays_asked
        self.confirms_sent += link.confirms_sent
        self.task = self.link = None

    def heartbeat(self) -> dict[str, Any] | None:
        view = self.state.sites.get(SITE) if self.state is not None else None
        if view is None or view.heartbeat is None:
            return None
        data: dict[str, Any] = json.loads(view.heartbeat.model_dump_json())
        return data


# --- the drill -----------------------------------------------------------------------------------------


class Drill:
    def __init__(self, settings: Settings, work: Path) -> None:
        self.s = settings
        self.work = work
        self.rng = random.Random(settings.seed)
        self.actions: list[Action] = []
        self.report = Report(workdir=str(work), seed=settings.seed)
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.truth = work / "truth.jsonl"
        self.broker = Mosquitto(
            work / "broker", extra_config=f"autosave_interval {settings.autosave}\nmax_inflight_messages 0"
        )
        self.site = work / "site.yaml"
        self.site.write_text(json.dumps(site_document(settings.poll, settings.confirm_timeout), indent=1))
        self.sim_overlay = work / "sim.overlay.yaml"
        self.overlay = work / "gateway.overlay.yaml"
        self.gateway = Gateway(self.site, self.overlay, work / "logs")
        self.receiver = Receiver(self.broker.url, work / "receiver", settings.reorder_timeout)
        self.simulator: asyncio.subprocess.Process | None = None

    def act(self, kind: str, detail: str = "") -> None:
        self.actions.append(Action(time.time(), kind, detail))

    async def run(self) -> Report:
        started = time.monotonic()
        await asyncio.to_thread(self.broker.start)
        try:
            await self._start_simulator()
            self.receiver.start()
            await self.gateway.start()
            self.act("gateway_start", "1")
            chaos_end = time.monotonic() + self.s.seconds
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._gateway_chaos())
                tg.create_task(self._broker_chaos())
                tg.create_task(self._receiver_chaos())
            await self._until(chaos_end)  # the devices go on changing to the end, the last seconds in peace
            await self._settle()
        finally:
            await self._teardown()
            self.report.seconds = round(time.monotonic() - started, 1)
            (self.work / "actions.jsonl").write_text("".join(json.dumps(asdict(a)) + "\n" for a in self.actions))
        self._analyse()
        return self.report

    async def _start_simulator(self) -> None:
        with (self.work / "logs" / "simulator.log").open("wb") as out:
            self.simulator = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "simulators.churn", "--site", str(self.site),
                "--overlay-out", str(self.sim_overlay), "--truth-log", str(self.truth),
                "--hold", str(self.s.hold), "--jitter", str(self.s.jitter), "--seed", str(self.s.seed),
                "--gap", str(self.s.poll * 3.5),
                cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.sim_overlay.exists():
            if self.simulator.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start: see {self.work / 'logs' / 'simulator.log'}")
            await asyncio.sleep(0.05)  # polling for the file, bounded by the deadline
        sim = YAML(typ="safe").load(self.sim_overlay.read_text())
        overlay = gateway_overlay(sim, self.broker.url, self.work / "journal", 0)
        with self.overlay.open("w", encoding="utf-8") as out:
            YAML(typ="safe").dump(overlay, out)

    def _schedule(self, count: int) -> list[float]:
        """`count` random moments (monotonic time) within the drill, the last 8 % of it left in peace."""
        begin = time.monotonic()
        span = self.s.seconds * 0.9
        return sorted(begin + self.s.seconds * 0.02 + self.rng.uniform(0.0, span) for _ in range(count))

    async def _until(self, moment: float) -> None:
        await asyncio.sleep(max(0.0, moment - time.monotonic()))  # the random moment of the next action

    async def _gateway_chaos(self) -> None:
        """SIGKILL at each scheduled moment; a fifth of the incarnations die sooner, within a second of their start
        (importing, opening the journal, reconnecting, sending what the previous one left)."""
        for scheduled in self._schedule(self.s.gateway_kills):
            proc = self.gateway.proc
            assert proc is not None
            moment = scheduled
            if self.rng.random() < 0.2:
                moment = min(scheduled, time.monotonic() + self.rng.uniform(0.05, 1.0))
            try:
                await asyncio.wait_for(proc.wait(), max(0.0, moment - time.monotonic()))
                note = f"incarnation {self.gateway.starts} exited by itself with {proc.returncode}"
                self.report.gateway_self_exits.append(note)
                self.act("gateway_exited", note)
            except TimeoutError:
                phase = self.gateway.phase()
                await self.gateway.kill()
                self.report.gateway_kills += 1
                self.report.gateway_kills_by_phase[phase] = self.report.gateway_kills_by_phase.get(phase, 0) + 1
                self.act("gateway_kill", f"{self.gateway.starts} ({phase})")
            await self.gateway.start()
            self.act("gateway_start", str(self.gateway.starts))

    async def _broker_chaos(self) -> None:
        for moment in self._schedule(self.s.broker_kills):
            await self._until(moment)
            self.broker.kill()
            self.report.broker_kills += 1
            self.act("broker_kill", str(self.report.broker_kills))
            await asyncio.sleep(self.rng.uniform(*self.s.broker_down))  # how long it stays down
            await asyncio.to_thread(self.broker.start)
            self.act("broker_start")

    async def _receiver_chaos(self) -> None:
        for moment in self._schedule(self.s.receiver_restarts):
            await self._until(moment)
            hard = self.report.receiver_restarts % 2 == 1
            await self.receiver.stop(hard=hard)
            self.report.receiver_restarts += 1
            self.act("receiver_stop", "cancelled" if hard else "stopped")
            await asyncio.sleep(self.rng.uniform(*self.s.receiver_down))  # how long it stays away
            self.receiver.start()
            self.act("receiver_start")

    async def _settle(self) -> None:
        """Devices stop changing; wait until the receiver holds every change and nothing is unconfirmed."""
        assert self.simulator is not None
        self.simulator.send_signal(signal.SIGUSR1)
        self.act("devices_settle")
        deadline = time.monotonic() + 30
        while not any(r.get("kind") == "settled" for r in truthlog.records(self.truth)):
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator did not settle")
            await asyncio.sleep(0.1)  # polling the truth log, bounded by the deadline
        deadline = time.monotonic() + self.s.settle_within
        while time.monotonic() < deadline:
            if self.receiver.task is not None and self.receiver.task.done():
                self.receiver.failures.append("receiver task ended by itself while settling")
                await self.receiver.stop()
                self.receiver.start()
            if not self.gateway.running:
                self.report.gateway_self_exits.append(f"incarnation {self.gateway.starts} exited while settling")
                await self.gateway.start()
            beat = self.receiver.heartbeat()
            if beat is not None and beat["journal_depth"] == 0 and beat["confirmed_seq"] == beat["last_seq"]:
                analysis = analyse(self.truth, _stored(self.work / "receiver"), self.actions)
                if not analysis["missing"] and beat["last_seq"] == analysis["last_seq"]:
                    self.act("settled", f"last_seq {beat['last_seq']}")
                    return
            await asyncio.sleep(0.5)  # polling the receiver's store, bounded by the deadline
        self.report.problems.append(f"not settled within {self.s.settle_within:g} s after the devices stopped")

    async def _teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.report.final_heartbeat = self.receiver.heartbeat()
        if self.gateway.proc is not None:
            self.report.gateway_final_exit = await self.gateway.terminate()
        with contextlib.suppress(Exception):
            await self.receiver.stop()
        if self.simulator is not None and self.simulator.returncode is None:
            self.simulator.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.simulator.wait(), 10)
            except TimeoutError:
                self.simulator.kill()
                await self.simulator.wait()
        await asyncio.to_thread(self.broker.stop)

    def _analyse(self) -> None:
        r = self.report
        r.gateway_starts = self.gateway.starts
        r.replays_asked = self.receiver.replays_asked
        r.confirms_sent = self.receiver.confirms_sent
        r.written_off = self.receiver.notices["written_off"]
        r.messages_received = sum(self.receiver.received.values())
        r.duplicates_received = r.messages_received - len(self.receiver.received)
        r.redelivered_flagged = self.receiver.redelivered
        r.problems += self.receiver.failures
        result = analyse(self.truth, _stored(self.work / "receiver"), self.actions)
        for key, value in result.items():
            setattr(r, key, value)
        r.gateway_log_errors, r.tracebacks = _log_errors(self.work / "logs")
        if r.gateway_kills < self.s.gateway_kills:
            r.problems.append(f"only {r.gateway_kills} gateway kills")
        if r.broker_kills < self.s.broker_kills:
            r.problems.append(f"only {r.broker_kills} broker kills")
        if r.receiver_restarts < self.s.receiver_restarts:
            r.problems.append(f"only {r.receiver_restarts} receiver restarts")
        if r.written_off:
            r.problems.append(f"{r.written_off} written-off notices: the receiver gave up on seqs")
        if r.gateway_self_exits:
            r.problems.append(f"gateway exited by itself: {r.gateway_self_exits}")
        if r.gateway_final_exit != 0:
            r.problems.append(f"the last gateway exited with {r.gateway_final_exit} on SIGTERM")
        beat = r.final_heartbeat
        if beat is None or beat["journal_depth"] != 0 or beat["confirmed_seq"] != beat["last_seq"]:
            r.problems.append(f"unconfirmed events at the end: heartbeat {beat}")
        elif beat["last_seq"] != r.last_seq:
            r.problems.append(f"the gateway journaled seq 1..{beat['last_seq']}, the receiver holds up to {r.last_seq}")
        r.ok = not (
            r.missing
            or r.unexpected
            or r.order_errors
            or r.same_change_twice
            or r.duplicate_event_ids_in_store
            or r.seq_gaps
            or r.problems
            or not r.sequences_equal
        )


@dataclass(frozen=True)
class Stored:
    seq: int
    event_id: str
    received_at: float
    doc: dict[str, Any]


def _stored(state_dir: Path) -> list[Stored]:
    """The receiver's store, read-only (the receiver may be writing)."""
    path = state_dir / f"{RECEIVER}.receiver.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, event_id, received_at, payload FROM events WHERE site = ? ORDER BY seq", (SITE,))
        return [Stored(int(s), str(e), float(t), json.loads(p)) for s, e, t, p in rows]
    finally:
        db.close()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def analyse(truth_path: Path, stored: list[Stored], actions: list[Action]) -> dict[str, Any]:
    """Per point: the truth log's changes against the events the receiver stored (see the module docstring)."""
    records = truthlog.records(truth_path)
    start = next((r for r in records if r.get("kind") == "start"), None)
    points: list[str] = list(start["points"]) if start else []
    held = {}  # (point, index of the change whose value was held) -> the churn's `held` line
    count: Counter[str] = Counter()
    for rec in records:
        if rec.get("kind") == "held":
            held[(rec["point"], count[rec["point"]])] = rec
            count[rec["point"]] += 1
    truth: dict[str, list[truthlog.Change]] = {p: [] for p in points}
    for change in truthlog.changes(truth_path):
        if change.point in truth:
            truth[change.point].append(change)
    out: dict[str, Any] = {
        "changes": sum(max(len(c) - 1, 0) for c in truth.values()),
        "changes_per_point": {p: max(len(c) - 1, 0) for p, c in truth.items()},
        "events_stored": len(stored),
        "last_seq": stored[-1].seq if stored else 0,
        "seq_gaps": sorted(set(range(1, (stored[-1].seq if stored else 0) + 1)) - {s.seq for s in stored})[:50],
        "duplicate_event_ids_in_store": len(stored) - len({s.event_id for s in stored}),
    }
    other: Counter[str] = Counter()
    by_point: dict[str, list[Stored]] = {p: [] for p in points}
    for s in stored:
        pid = s.doc["point"]["id"]
        if pid in by_point and s.doc["state"] in ("alarm", "restore"):
            by_point[pid].append(s)
        else:
            other[f"{s.doc['type']} {s.doc['state']} ({pid})"] += 1
    out["other_events"] = dict(other)
    missing, unexpected, order_errors, twice = [], [], [], []
    delays: list[tuple[float, str, int, truthlog.Change, Stored]] = []
    equal = True
    for pid in points:
        changes = truth[pid]
        initial = changes[0].value if changes else None
        assigned: dict[int, list[Stored]] = {}
        last_index = 0
        for s in by_point[pid]:
            detected, raw = _ts(s.doc["detected_at"]), s.doc["source"].get("raw")
            index = None
            for i in range(1, len(changes)):
                end = changes[i + 1].t if i + 1 < len(changes) else float("inf")
                if changes[i].value == raw and changes[i].t - TOLERANCE <= detected < end + TOLERANCE:
                    index = i
                    break
            want = None if index is None else ("restore" if changes[index].value == initial else "alarm")
            if index is None or s.doc["state"] != want:
                unexpected.append({"point": pid, "seq": s.seq, "state": s.doc["state"], "raw": raw,
                                   "detected_at": s.doc["detected_at"], "matched_change": index})  # fmt: skip
                continue
            if index <= last_index:
                order_errors.append({"point": pid, "seq": s.seq, "change": index, "after_change": last_index})
            last_index = max(last_index, index)
            assigned.setdefault(index, []).append(s)
        for i in range(1, len(changes)):
            got = assigned.get(i)
            if not got:
                missing.append(_missing(pid, i, changes, held.get((pid, i)), actions))
                continue
            if len(got) > 1:
                twice.append({"point": pid, "change": i, "t": changes[i].t, "seqs": [s.seq for s in got]})
            first = min(got, key=lambda s: s.received_at)
            delays.append((first.received_at - changes[i].t, pid, i, changes[i], first))
        want_states = ["restore" if c.value == initial else "alarm" for c in changes[1:]]
        got_states = [s.doc["state"] for s in by_point[pid]]
        equal = equal and want_states == got_states
    out.update(missing=missing, unexpected=unexpected, order_errors=order_errors, same_change_twice=twice)
    out["sequences_equal"] = equal
    if delays:
        values = sorted(d[0] for d in delays)
        out["delay_p50"] = round(statistics.median(values), 3)
        out["delay_p99"] = round(values[max(0, int(len(values) * 0.99) - 1)], 3)
        out["delay_max"] = round(values[-1], 3)
        out["worst"] = [
            {
                "point": pid,
                "change": i,
                "delay_s": round(d, 3),
                "t": round(c.t, 3),
                "detected_after_s": round(_ts(s.doc["detected_at"]) - c.t, 3),
                "seq": s.seq,
                "redelivered": s.doc.get("redelivered", False),
                "around": _around(actions, c.t, c.t - 2, s.received_at + 0.5),
            }
            for d, pid, i, c, s in sorted(delays, key=lambda d: -d[0])[:3]
        ]
    return out


def _missing(
    pid: str, i: int, changes: list[truthlog.Change], held: dict[str, Any] | None, actions: list[Action]
) -> dict[str, Any]:
    """A change without its event, with what the device and the drill know about it."""
    c = changes[i]
    end = changes[i + 1].t if i + 1 < len(changes) else None
    return {
        "point": pid,
        "change": i,
        "value": c.value,
        "t": round(c.t, 3),
        "held_s": None if end is None else round(end - c.t, 3),
        "reads": None if held is None else held["reads"],
        "read_from": None if held is None or held["run_from"] is None else round(held["run_from"] - c.t, 3),
        "read_to": None if held is None or held["run_to"] is None else round(held["run_to"] - c.t, 3),
        "around": _around(actions, c.t, c.t - 3, (end if end is not None else c.t) + 3),
    }


def _around(actions: list[Action], t0: float, lo: float, hi: float) -> list[str]:
    """The drill's actions between lo and hi, timed relative to t0."""
    return [f"{a.t - t0:+.2f}s {a.kind} {a.detail}".strip() for a in actions if lo <= a.t <= hi]


def _log_errors(logs: Path) -> tuple[dict[str, int], int]:
    """Error-level log events of all gateway incarnations, by event name; and tracebacks."""
    errors: Counter[str] = Counter()
    tracebacks = 0
    for path in sorted(logs.glob("gateway-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            tracebacks += line.startswith("Traceback")
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a line torn by the SIGKILL
            if doc.get("level") in ("error", "critical"):
                errors[str(doc.get("event"))] += 1
    return dict(errors), tracebacks


async def run_drill(settings: Settings) -> Report:
    if settings.workdir is not None:
        settings.workdir.mkdir(parents=True, exist_ok=True)
        return await Drill(settings, settings.workdir).run()
    with tempfile.TemporaryDirectory(prefix="gcmk-chaos-") as tmp:
        return await Drill(settings, Path(tmp)).run()


def summary(r: Report) -> str:
    lines = [
        f"chaos drill: {r.seconds:.0f} s; gateway SIGKILLs {r.gateway_kills} (by phase {r.gateway_kills_by_phase}),"
        f" broker SIGKILLs {r.broker_kills}, receiver restarts {r.receiver_restarts}",
        f"device changes {r.changes} ({', '.join(f'{p} {n}' for p, n in r.changes_per_point.items())})",
        f"events held by the receiver {r.events_stored} (seq 1..{r.last_seq}, gaps {len(r.seq_gaps)}); other events"
        f" {r.other_events or 'none'}",
        f"missing {len(r.missing)}, unexpected {len(r.unexpected)}, order errors {len(r.order_errors)}, per-point"
        f" sequences equal to the truth: {r.sequences_equal}",
        f"duplicates: {r.duplicates_received} of {r.messages_received} event messages received were copies"
        f" ({r.redelivered_flagged} flagged redelivered); distinct events for one change {len(r.same_change_twice)};"
        f" duplicate event_ids in the store {r.duplicate_event_ids_in_store}",
        f"replays asked {r.replays_asked}, written off {r.written_off}, confirmations sent {r.confirms_sent}",
        f"delay device change -> stored and confirmed at the receiver: p50 {r.delay_p50} s, p99 {r.delay_p99} s,"
        f" max {r.delay_max} s",
    ]
    for w in r.worst[:1]:
        lines.append(f"  worst: {w['point']} change {w['change']} after {w['delay_s']} s: {'; '.join(w['around'])}")
    lines.append(f"gateway log errors {r.gateway_log_errors or 'none'}; tracebacks {r.tracebacks}")
    for m in r.missing[:10]:
        lines.append(f"  MISSING {m}")
    for u in r.unexpected[:10]:
        lines.append(f"  UNEXPECTED {u}")
    for p in r.problems:
        lines.append(f"  PROBLEM {p}")
    lines.append(("OK" if r.ok else "FAILED") + f" (seed {r.seed}, workdir {r.workdir})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--gateway-kills", type=int, default=50)
    parser.add_argument("--broker-kills", type=int, default=10)
    parser.add_argument("--receiver-restarts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="the full report as JSON")
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    # The in-process receiver's warnings (reconnecting, ...) go to a file, not between the drill's lines.
    receiver_log = (args.workdir or Path(tempfile.gettempdir())) / "chaos-receiver.log"
    configure_logging("info", json=True, stream=receiver_log.open("a", encoding="utf-8"))
    settings = Settings(
        seconds=args.minutes * 60,
        gateway_kills=args.gateway_kills,
        broker_kills=args.broker_kills,
        receiver_restarts=args.receiver_restarts,
        seed=args.seed,
        workdir=args.workdir,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: the drill tears its processes down
    report = asyncio.run(run_drill(settings))
    print(json.dumps(asdict(report), indent=1) if args.json else summary(report), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
