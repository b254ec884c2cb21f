"""Loss drills across brokers: a broker (node) SIGKILLed under load, 0 events lost at the receiver.

    .venv/bin/python bench/drill_brokers.py --drill site       # site Mosquitto of a bridged pair: ~40 s
    .venv/bin/python bench/drill_brokers.py --drill central    # central Mosquitto of the pair: ~40 s
    .venv/bin/python bench/drill_brokers.py --drill site-backlog   # central down, then the site broker with the
                                                               # bridge's backlog: ~40 s
    .venv/bin/python bench/drill_brokers.py --drill rabbit     # one node of a 3-node RabbitMQ cluster: ~3 min
    .venv/bin/python bench/drill_brokers.py --drill all [--rate 200] [--seconds 20] [--down 3]

Every drill: the real gateway delivery path (tests/support/delivery_harness.py: DeliverySink, SQLite journal,
publisher, `delivery: {confirm: meldkamer, confirm_timeout: 2s}`) in a process of its own, printing every
event id the moment `accept` acknowledged it; the reference receiver (gateway.tools.receiver_link: persistent
session, SQLite store, confirm after commit, replay requests) in this process. The gateway produces --rate
events/s for --seconds; at a third of the run the broker (node) is SIGKILLed and started again --down seconds
later (site-backlog: the central broker is SIGKILLed, 1 s later the site broker holding the bridge's backlog,
then both start again); the gateway then drains and exits once everything is confirmed. Checked: every
acknowledged event id is in the receiver's store, the store holds exactly seq 1..last_seq. Reported: the
longest delay (detection -> stored at the receiver), p50 / p99, the gateway's publications beyond one per event.

Topologies (all on loopback, own ports, own data dirs):
- site / central: gateway -> site Mosquitto -> bridge (MQTT 5, cleansession false, QoS 1, the `topic` lines of
  deploy/mosquitto/site-bridge.conf) -> central Mosquitto <- receiver; confirmations bridged back in.
  Mosquitto persists periodically (autosave), so a SIGKILL loses what it held: the gateway's journal and the
  confirmation must make up for it.
- rabbit: three RabbitMQ 3.10.8 nodes rabbit-drill-1..3@localhost (own epmd port, cookie, mnesia dirs), joined
  with `rabbitmqctl join_cluster`, `rabbitmq_mqtt` with `mqtt.durable_queue_type = quorum` (supported by
  3.10.8's plugin schema: the persistent sessions' subscription queues become quorum queues over the three
  nodes). Clients connect through a small TCP proxy in this script that picks the first live node, as a load
  balancer in front of a cluster would. The node killed is the leader of the receiver's queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.testing import wait_until  # noqa: E402
from gateway.tools.receiver import ReceiverState  # noqa: E402
from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions  # noqa: E402
from tests.support.delivery_harness import SITE, site_config  # noqa: E402
from tests.support.mosquitto import HOST, Bridge, Mosquitto, free_port  # noqa: E402

DELIVERY = {"confirm": "meldkamer", "receivers": ["meldkamer"], "confirm_timeout": "2s"}


def bridge_topics() -> tuple[str, ...]:
    """The bridge's `topic` lines as deploy/mosquitto/site-bridge.conf ships them (this site's topics only)."""
    text = (ROOT / "deploy" / "mosquitto" / "site-bridge.conf").read_text()
    return tuple(line.replace("SITE", SITE) for line in text.splitlines() if line.startswith("topic "))


# --- a TCP proxy in front of a cluster -------------------------------------------------------------------


class FirstLiveProxy:
    """Forwards each client connection to the first backend that accepts it (a load balancer's failover)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FirstLiveProxy:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
            except (OSError, TimeoutError):
                continue
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
            return
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


# --- one drill -------------------------------------------------------------------------------------------


async def gateway(config: Path, rate: float, count: int, accepted: list[str]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.delivery_harness", str(config), "--rate", str(rate),
        "--count", str(count), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    report: dict[str, Any] = {}
    while line := await proc.stdout.readline():
        word, _, rest = line.decode().strip().partition(" ")
        if word == "accepted":
            accepted.append(rest)
        elif line.startswith(b"{"):
            report = json.loads(line)
    await proc.wait()
    return report


def stored(state_dir: Path) -> list[tuple[int, str, float, datetime]]:
    db = sqlite3.connect(state_dir / "meldkamer.receiver.sqlite3")
    try:
        rows = db.execute("SELECT seq, event_id, received_at, payload FROM events WHERE site = ?", (SITE,)).fetchall()
    finally:
        db.close()
    return [(seq, eid, at, datetime.fromisoformat(json.loads(p)["detected_at"])) for seq, eid, at, p in rows]


async def drill(
    name: str, gateway_url: str, receiver_url: str, work: Path, args: argparse.Namespace, kill: Any, revive: Any
) -> dict[str, Any]:
    site = site_config(work / "journal", gateway_url, delivery=DELIVERY, supervision={"heartbeat_interval": "1s"})
    config = work / "site.json"
    config.write_text(site.model_dump_json())
    state_dir = work / "receiver"
    link = ReceiverLink(
        receiver_url, ReceiverState(), lambda _n: None,
        ReceiverOptions(identifier="meldkamer", state_dir=state_dir, reorder_timeout=1.0),
    )
    stop = asyncio.Event()
    accepted: list[str] = []
    count = int(args.rate * args.seconds)
    async with asyncio.TaskGroup() as tg:
        receiving = tg.create_task(link.run(stop))
        producing = tg.create_task(gateway(config, args.rate, count, accepted))
        await asyncio.sleep(args.seconds / 3)  # the moment of the kill, under load (not synchronisation)
        killed_at = time.time()
        await asyncio.get_running_loop().run_in_executor(None, kill)
        await asyncio.sleep(args.down)  # the outage (not synchronisation)
        await asyncio.get_running_loop().run_in_executor(None, revive)
        revived_at = time.time()
        report = await asyncio.wait_for(producing, args.seconds + 600)
        last_seq = int(report.get("last_seq", 0))
        with contextlib.suppress(TimeoutError):  # the harness exits once confirmed: the store has it all by now
            await wait_until(lambda: len(stored(state_dir)) >= last_seq, 20, interval=0.2, what="all stored")
        stop.set()
        await receiving
    rows = stored(state_dir)
    ids = {eid for _s, eid, _a, _d in rows}
    missing = set(accepted) - ids
    delays = sorted(at - detected.timestamp() for _s, _e, at, detected in rows)
    q = statistics.quantiles(delays, n=100, method="inclusive") if len(delays) > 1 else [0.0] * 99
    return {
        "drill": name,
        "accepted": len(accepted),
        "last_seq": last_seq,
        "stored": len(rows),
        "lost": len(missing),
        "seqs_exact": sorted(s for s, *_ in rows) == list(range(1, last_seq + 1)),
        "outage_s": round(revived_at - killed_at, 1),
        "longest_delay_s": round(delays[-1], 2) if delays else None,
        "delay_p50_s": round(q[49], 3),
        "delay_p99_s": round(q[98], 2),
        "replays_asked": link.replays_asked,
        "republished": int(report.get("published", last_seq)) - last_seq,  # the gateway's publications beyond one each
    }


async def bridged(kind: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    central = Mosquitto(work / "central")
    central.start()
    site = Mosquitto(work / "site", bridge=Bridge(central.port, bridge_topics(), client_id=f"gcmk-bridge-{SITE}"))
    site.start()
    victim = site if kind == "site" else central

    def kill_with_backlog() -> None:
        """The central broker dies first: the bridge's backlog is held by the site broker alone, then it dies too."""
        central.kill()
        time.sleep(1.0)  # the backlog builds up at the site broker (drill timing, not synchronisation)
        site.kill()

    def revive_both() -> None:
        site.start()
        central.start()

    try:
        if kind == "site-backlog":
            return await drill(kind, site.url, central.url, work, args, kill_with_backlog, revive_both)
        return await drill(kind, site.url, central.url, work, args, victim.kill, victim.start)
    finally:
        site.stop()
        central.stop()


def rabbit(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Forms the three-node cluster (blocking: boots and rabbitmqctl), runs the drill, stops the cluster."""
    from tests.support.rabbitmq import RabbitMQ

    epmd_port = free_port()
    cookie = secrets.token_hex(16)
    nodes = []
    for n in (1, 2, 3):
        node = RabbitMQ(work / f"rabbit-{n}", extra_config="mqtt.durable_queue_type = quorum")
        node.node = f"rabbit-drill-{n}@localhost"
        node.epmd_port = epmd_port
        home = node.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        (home / ".erlang.cookie").write_text(cookie)
        (home / ".erlang.cookie").chmod(0o400)
        nodes.append(node)
    # one epmd of our own for the three nodes (on its own port, never the machine's 4369), started before them so
    # that killing the first node's process group cannot take it along
    epmd = shutil.which("epmd") or "epmd"
    subprocess.run([epmd, "-port", str(epmd_port), "-address", HOST, "-daemon"], env=nodes[0].env(), check=True)
    try:
        began = time.monotonic()
        for node in nodes:
            node.start()
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", nodes[0].node)
            node.ctl("start_app")
        for node in nodes:
            node.start()  # no-op when running; waits for MQTT
        formed = round(time.monotonic() - began)
        print(f"cluster of 3 formed in {formed} s", file=sys.stderr, flush=True)
        result = asyncio.run(_rabbit_drill(nodes, args, work))
        result["cluster_formed_s"] = formed
        return result
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(Exception):
                node.stop()
        subprocess.run([epmd, "-port", str(epmd_port), "-kill"], env=nodes[0].env(), capture_output=True, check=False)


async def _rabbit_drill(nodes: list[Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    async with FirstLiveProxy([n.mqtt_port for n in nodes]) as proxy:
        url = f"mqtt://{HOST}:{proxy.port}"
        holder: dict[str, Any] = {}

        def kill() -> None:
            leader = nodes[0].node
            try:
                listing = nodes[0].ctl("list_queues", "name", "type", "leader", "--quiet", "--no-table-headers")
                print(listing, file=sys.stderr, flush=True)
                lines = [line.split() for line in listing.splitlines() if "meldkamer" in line]
                leader = next((f[2] for f in lines if len(f) > 2), leader)
            except RuntimeError as exc:
                print(f"queue leader unknown ({exc}); killing {leader}", file=sys.stderr, flush=True)
            holder["queues"] = listing if "listing" in locals() else ""
            victim = next(n for n in nodes if n.node == leader)
            holder["victim"] = victim
            victim.kill()

        def revive() -> None:
            began = time.monotonic()
            holder["victim"].start(timeout=300)
            holder["restart_s"] = round(time.monotonic() - began, 1)

        result = await drill("rabbit", url, url, work, args, kill, revive)
        result["killed"] = holder["victim"].node
        result["restart_s"] = holder.get("restart_s")
        result["queues"] = holder.get("queues", "")
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drill", choices=["site", "central", "site-backlog", "rabbit", "all"], default="all")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s from the gateway")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--down", type=float, default=3.0, help="seconds the killed broker stays down")
    args = parser.parse_args()
    from gateway.ops.logs import configure_logging

    configure_logging("error", json=True, stream=sys.stderr)
    print(f"loadavg at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    drills = ["site", "central", "site-backlog", "rabbit"] if args.drill == "all" else [args.drill]
    for name in drills:
        with tempfile.TemporaryDirectory(prefix=f"gcmk-drill-{name}-") as tmp:
            work = Path(tmp)
            result = rabbit(args, work) if name == "rabbit" else asyncio.run(bridged(name, args, work))
        print(json.dumps(result), flush=True)
    print(f"loadavg at end: {Path('/proc/loadavg').read_text().strip()}", flush=True)


if __name__ == "__main__":
    main()
