"""`gcmk-gateway demo`: four buildings, live, in one command.

It starts an embedded broker (unless `--broker` names one), the simulated devices of every building,
one gateway process per building exactly as deployed (`gcmk-gateway run --site ... --overlay ...`) and the
meldkamer-side receiver as a live console; then it plays a scenario. With `--for` it stops after that
time and prints a summary; the exit code says whether every scenario event arrived without a seq gap.
With `--dc09` every building also sends its alarms and restores over SIA DC-09 (AES-128, one account per
building) to the reference DC-09 receiver (gateway/tools/dc09_receiver.py), shown beside the MQTT events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from ruamel.yaml import YAML

from gateway.config.loader import load_site
from gateway.config.models import SiteConfig
from gateway.core.lifecycle import wait_event
from gateway.tools.dc09_receiver import Dc09Receiver, Received
from gateway.tools.receiver import Notice, ReceiverState, print_notice
from gateway.tools.receiver_link import ReceiverOptions, receive
from simulators.scenario import SCENARIOS, Expected, Scenario, load_scenario

log = structlog.get_logger(__name__)

# The four buildings' site configs ship inside the package (config/sites/ in a checkout links to them), so
# the demo runs from a plain install as well as from a checkout.
SITES_DIR = Path(__file__).resolve().parent.parent / "sites"
DEFAULT_SITES = [SITES_DIR / f"{s}.yaml" for s in ("turfmarkt-147", "rijnstraat-8", "hoftoren", "resident")]
DEFAULT_SCENARIO = SCENARIOS / "demo.yaml"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the OS considers free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Building:
    """One building in the demo: its simulator process and its gateway process, as deployed."""

    path: Path
    site: SiteConfig
    sim_overlay: Path
    gateway_overlay: Path
    metrics_port: int
    simulator: asyncio.subprocess.Process | None = None
    gateway: asyncio.subprocess.Process | None = None


@dataclass
class Dc09Demo:
    """The demo's DC-09 side: one receiver, one account per building, what arrived per building."""

    receiver: Dc09Receiver
    port: int
    key_file: Path
    accounts: dict[str, str]  # site id -> account
    arrived: Counter[str]  # site id -> DC-09 messages ACKed

    def section(self, site_id: str) -> dict[str, Any]:
        """The `dc09:` section of one building's overlay (short intervals, so that a fault shows quickly)."""
        receiver = {
            "id": "demo-ats",
            "host": "127.0.0.1",
            "port": self.port,
            "account": self.accounts[site_id],
            "key_file": str(self.key_file),
            "supervision": 10.0,
            "ack_timeout": 3.0,
        }
        return {"format": "sia-dcs", "receivers": [receiver]}


async def start_dc09(sites: list[str], work: Path, as_json: bool) -> Dc09Demo:
    key = secrets.token_bytes(16)
    key_file = work / "dc09.key"
    key_file.write_text(key.hex() + "\n", encoding="ascii")
    key_file.chmod(0o600)
    accounts = {site: f"{0x1000 + i:04X}" for i, site in enumerate(sites)}
    site_of = {account: site for site, account in accounts.items()}
    arrived: Counter[str] = Counter()

    def on_message(message: Received) -> None:
        site = site_of.get(message.account, message.account)
        arrived[site] += 1
        text = f"dc09  {site:<14} #{message.account} seq {message.seq:04d} {message.token} {message.data}"
        if as_json:
            print(json.dumps({"kind": "dc09", "site": site, "account": message.account, "data": message.data}))
        else:
            print(text, flush=True)

    receiver = Dc09Receiver(dict.fromkeys(accounts.values(), key), on_message)
    port = await receiver.start()
    return Dc09Demo(receiver, port, key_file, accounts, arrived)


def dc09_expected(expected: list[Expected]) -> Counter[str]:
    """Per building, how many scenario events go over DC-09 (alarms and restores: the default routing)."""
    need: Counter[str] = Counter()
    for exp in expected:
        if exp.state != "info":
            need[exp.site] += exp.count
    return need


def gateway_overlay(sim_overlay: dict[str, Any], broker_url: str, data_dir: Path, metrics_port: int) -> dict[str, Any]:
    """Point a site config at the simulators, the demo broker (plain TCP on loopback) and a scratch journal."""
    overlay = dict(sim_overlay)
    overlay["mqtt"] = {
        "url": broker_url,
        "insecure": True,
        "tls": None,
        "username": None,
        "password_file": None,
        "password_env": None,
        "protocol": "auto",
    }
    overlay["journal"] = {"data_dir": str(data_dir)}
    overlay["metrics"] = {"listen": "127.0.0.1", "port": metrics_port}
    return overlay


class Console:
    """The meldkamer side's live view: every notice as a line, and a status table now and then."""

    def __init__(self, state: ReceiverState, *, as_json: bool) -> None:
        self.state = state
        self.as_json = as_json
        self.arrived: Counter[tuple[str, str, str]] = Counter()
        self.changed = asyncio.Event()
        self.muted = False

    def __call__(self, notice: Notice) -> None:
        if self.muted:
            return
        if notice.event is not None and notice.kind == "event":
            self.arrived[(notice.site, notice.event.point.id, notice.event.state.value)] += 1
        print_notice(notice, as_json=self.as_json)
        self.changed.set()

    def table(self) -> str:
        lines = [f"{'building':<14} {'status':<8} {'devices':>8} {'events':>7} {'last seq':>8} {'in alarm':>8}"]
        for name, view in sorted(self.state.sites.items()):
            hb = view.heartbeat
            devices = f"{hb.devices_online}/{hb.devices_total}" if hb else "-"
            status = "LOST" if view.lost else (view.status.status if view.status else "?")
            lines.append(
                f"{name:<14} {status:<8} {devices:>8} {view.events:>7} {view.seqs.highest:>8} "
                f"{len(view.in_alarm):>8}"
            )
        return "\n".join(lines)


def missing(expected: list[Expected], arrived: Counter[tuple[str, str, str]]) -> list[Expected]:
    """Expected events that have not (all) arrived; several expectations for one key add up."""
    need: Counter[tuple[str, str, str]] = Counter()
    for exp in expected:
        need[(exp.site, exp.point_id, exp.state)] += exp.count
    return [Expected(s, p, st, n - arrived[(s, p, st)]) for (s, p, st), n in need.items() if arrived[(s, p, st)] < n]


async def run_demo(
    *,
    sites: list[Path],
    broker_url: str | None,
    duration: float | None,
    scenario_path: Path,
    workdir: Path | None,
    as_json: bool,
    lost_after: float = 15.0,
    dc09: bool = False,
) -> int:
    scenario: Scenario = load_scenario(scenario_path)
    work = workdir or Path(tempfile.mkdtemp(prefix="gcmk-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    buildings = []
    for path in sites:
        site = load_site(path)
        name = site.site.id
        buildings.append(Building(path, site, work / f"{name}.sim.yaml", work / f"{name}.overlay.yaml", free_port()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _say(f"demo of {len(buildings)} buildings; journals, overlays and logs in {work}", as_json)
    async with contextlib.AsyncExitStack() as stack:
        dc09_demo = None
        if dc09:
            dc09_demo = await start_dc09([b.site.site.id for b in buildings], work, as_json)
            stack.push_async_callback(dc09_demo.receiver.close)
            _say(f"DC-09 receiver on 127.0.0.1:{dc09_demo.port} (TCP, AES-128)", as_json)
        if broker_url is None:
            port = free_port()
            broker = await _spawn(
                [sys.executable, "-m", "gateway.tools.embedded_broker", str(port)], work / "broker.log"
            )
            stack.push_async_callback(_terminate, broker)
            broker_url = f"mqtt://127.0.0.1:{port}"
            await _wait_for_port(port, broker)
        for b in buildings:  # each building's simulated devices in a process of their own, as in the field
            b.sim_overlay.unlink(missing_ok=True)
            b.simulator = await _spawn(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli.main",
                    "--log-level",
                    "warning",
                    "simulate",
                    "--site",
                    str(b.path),
                    "--overlay-out",
                    str(b.sim_overlay),
                    "--scenario",
                    str(scenario_path),
                    "--scenario-on-signal",
                ],
                work / f"{b.site.site.id}.sim.log",
            )
            stack.push_async_callback(_terminate, b.simulator)
        for b in buildings:
            await _wait_for_file(b.sim_overlay, b.simulator)
            overlay = gateway_overlay(
                YAML(typ="safe").load(b.sim_overlay.read_text()), broker_url, work / b.site.site.id, b.metrics_port
            )
            if dc09_demo is not None:
                overlay["dc09"] = dc09_demo.section(b.site.site.id)
            with b.gateway_overlay.open("w", encoding="utf-8") as out:
                YAML(typ="safe").dump(overlay, out)

        state = ReceiverState(lost_after=lost_after)
        console = Console(state, as_json=as_json)
        receiver_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            options = ReceiverOptions(identifier="meldkamer", state_dir=work / "receiver")
            tg.create_task(receive(broker_url, state, console, stop=receiver_stop, options=options))
            for b in buildings:
                b.gateway = await _spawn(
                    [
                        sys.executable,
                        "-m",
                        "gateway.cli.main",
                        "--log-level",
                        "warning",
                        "run",
                        "--site",
                        str(b.path),
                        "--overlay",
                        str(b.gateway_overlay),
                    ],
                    work / f"{b.site.site.id}.log",
                )
            try:
                code = await _drive(buildings, scenario, state, console, stop, duration, work, as_json, dc09_demo)
            finally:
                receiver_stop.set()
                for b in buildings:
                    if b.gateway is not None:
                        await _terminate(b.gateway)
    return code


async def _drive(
    buildings: list[Building],
    scenario: Scenario,
    state: ReceiverState,
    console: Console,
    stop: asyncio.Event,
    duration: float | None,
    work: Path,
    as_json: bool,
    dc09: Dc09Demo | None = None,
) -> int:
    started = time.monotonic()
    deadline = None if duration is None else started + duration
    names = {b.site.site.id for b in buildings}
    online = await _wait(
        lambda: all(
            n in state.sites and state.sites[n].heartbeat is not None and not state.sites[n].lost for n in names
        ),
        console,
        stop,
        deadline if deadline is not None else started + 120,
    )
    if not online:
        _say(f"not every gateway came online; logs in {work}", as_json)
        return 1
    for b in buildings:
        _say(f"{b.site.site.id}: metrics on http://127.0.0.1:{b.metrics_port}/metrics", as_json)
    expected = [e for e in scenario.expected() if e.site in names]  # the buildings in this demo (--site)
    dc09_need = dc09_expected(expected)

    def dc09_missing() -> dict[str, int]:
        if dc09 is None:
            return {}
        return {site: n - dc09.arrived[site] for site, n in dc09_need.items() if dc09.arrived[site] < n}

    for b in buildings:  # every building plays its part of the scenario from now
        if b.simulator is not None and b.simulator.returncode is None:
            b.simulator.send_signal(signal.SIGUSR1)
    _say(f"playing scenario '{scenario.name}': {sum(e.count for e in expected)} events expected", as_json)
    scenario_end = time.monotonic() + scenario.duration
    last_table = time.monotonic()
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        for b in buildings:
            if b.gateway is not None and b.gateway.returncode is not None:
                _say(f"{b.site.site.id}: gateway exited with {b.gateway.returncode}; log in {work}", as_json)
                stop.set()
        done = (
            time.monotonic() > scenario_end
            and not missing(expected, console.arrived)
            and _no_gaps(state)
            and not dc09_missing()
        )
        if deadline is not None and done:
            break  # everything arrived: no need to wait out the full duration
        console.changed.clear()
        await wait_event(console.changed, 1.0)
        if not as_json and time.monotonic() - last_table > 10:
            print(console.table(), flush=True)
            last_table = time.monotonic()
    summary = state.summary()
    absent = missing(expected, console.arrived)
    summary["scenario"] = {
        "name": scenario.name,
        "expected": sum(e.count for e in expected),
        "missing": [dataclasses.asdict(e) for e in absent],
    }
    if dc09 is not None:
        summary["dc09"] = {
            "sites": {
                site: {"account": dc09.accounts[site], "received": dc09.arrived[site], "expected": dc09_need[site]}
                for site in sorted(dc09.accounts)
            },
            "nulls": dc09.receiver.stats.nulls,
            "bad_frames": dict(dc09.receiver.stats.bad_frames),
            "missing": dc09_missing(),
        }
    if not as_json:
        print(console.table(), flush=True)  # the live view, before the gateways are stopped
    # Stop the gateways as a service manager would (SIGTERM): each must flush, say offline and exit 0.
    console.muted = True  # their 'offline' statuses are expected now, not news for the operator
    exits = {}
    for b in buildings:
        if b.gateway is not None:
            await _terminate(b.gateway)
            exits[b.site.site.id] = b.gateway.returncode
    summary["gateway_exit_codes"] = exits
    ok = (
        not absent
        and _no_gaps(state)
        and all(s["invalid"] == 0 for s in summary["sites"].values())
        and all(code == 0 for code in exits.values())
        and not dc09_missing()
    )
    summary["ok"] = ok
    if as_json:
        print(json.dumps({"summary": summary}), flush=True)
    else:
        print(_summary_text(summary), flush=True)
    return 0 if ok else 1


def _no_gaps(state: ReceiverState) -> bool:
    return all(not view.missing_seqs() for view in state.sites.values())


def _summary_text(summary: dict[str, Any]) -> str:
    lines = ["", "summary:"]
    for name, s in summary["sites"].items():
        lines.append(
            f"  {name:<14} events {s['events']:>5}  seq {s['seq_first']}..{s['seq_last']}  gaps {len(s['seq_gaps'])}  "
            f"duplicates {s['duplicates']}  latency p50 {s['latency_ms_p50']} ms  p99 {s['latency_ms_p99']} ms"
        )
    sc = summary["scenario"]
    lines.append(f"  scenario '{sc['name']}': {sc['expected']} events expected, {len(sc['missing'])} missing")
    for m in sc["missing"]:
        lines.append(f"    missing: {m}")
    if "dc09" in summary:
        for name, d in summary["dc09"]["sites"].items():
            lines.append(
                f"  {name:<14} DC-09 #{d['account']}: {d['received']} messages ACKed ({d['expected']} scenario"
                " alarms/restores expected)"
            )
        lines.append(f"  DC-09 NULL messages {summary['dc09']['nulls']}, bad frames {summary['dc09']['bad_frames']}")
    lines.append(f"  gateway exit codes on SIGTERM: {summary['gateway_exit_codes']}")
    lines.append("  OK" if summary["ok"] else "  FAILED")
    return "\n".join(lines)


def _say(text: str, as_json: bool) -> None:
    print(json.dumps({"kind": "demo", "text": text}) if as_json else text, flush=True)


async def _wait(predicate: Any, console: Console, stop: asyncio.Event, deadline: float) -> bool:
    while not predicate():
        if stop.is_set() or time.monotonic() > deadline:
            return False
        console.changed.clear()
        await wait_event(console.changed, 0.5)
    return True


async def _spawn(argv: list[str], log_path: Path) -> asyncio.subprocess.Process:
    out = log_path.open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        out.close()


async def _terminate(process: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _wait_for_file(path: Path, process: asyncio.subprocess.Process | None, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(path.exists):
        if (process is not None and process.returncode is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} did not appear: see {path.with_suffix('.log')}")
        await asyncio.sleep(0.05)


async def _wait_for_port(port: int, process: asyncio.subprocess.Process, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the embedded broker did not start on port {port}") from None
            await asyncio.sleep(0.05)
