"""`gcmk-gateway`: validate site configs, print schemas, run (and reload) a building's gateway, simulate its devices."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway import __version__
from gateway.cli.commissioning import add_parsers as add_commissioning_parsers
from gateway.cli.discover import add_parsers as add_onboarding_parsers
from gateway.config.loader import config_hash, load_site
from gateway.config.models import SiteConfig
from gateway.config.source import SiteSource
from gateway.config.types import parse_duration
from gateway.delivery.journal import JournalError
from gateway.domain.errors import ConfigError, SiteConfigFault
from gateway.ops.logs import configure_logging

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2  # also: the site config validated but cannot work at run time (SiteConfigFault)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return EXIT_OK
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcmk-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gcmk-gateway {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check site configs; every problem with file:line")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_validate)

    schema = commands.add_parser("schema", help="print a JSON Schema: 'site' (config) or 'event'")
    schema.add_argument("which", choices=["site", "event"])
    schema.set_defaults(handler=_schema)

    run = commands.add_parser("run", help="run one building's gateway")
    run.add_argument("--site", required=True, type=Path, metavar="FILE")
    run.add_argument(
        "--overlay",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="replace endpoints (e.g. written by 'simulate'); may repeat",
    )
    run.add_argument(
        "--sink",
        choices=["mqtt", "stdout"],
        default="mqtt",
        help="stdout: print events as JSON lines (commissioning), no journal",
    )
    run.set_defaults(handler=_run)

    reload = commands.add_parser(
        "reload", help="validate a site config, then make the running gateway reload it (without systemd)"
    )
    reload.add_argument("--site", required=True, type=Path, metavar="FILE")
    reload.add_argument("--overlay", action="append", default=[], type=Path, metavar="FILE", help="may repeat")
    reload.add_argument(
        "--url",
        metavar="URL",
        help="the gateway's operator endpoint (default: http://<metrics.listen>:<metrics.port> of FILE)",
    )
    reload.add_argument("--timeout", type=parse_duration, default=60.0, metavar="DURATION")
    reload.set_defaults(handler=_reload)

    simulate = commands.add_parser("simulate", help="start simulated devices of a building on loopback")
    simulate.add_argument("--site", required=True, type=Path, metavar="FILE")
    simulate.add_argument(
        "--overlay-out", type=Path, metavar="FILE", help="write the overlay that points a gateway at the simulators"
    )
    simulate.add_argument("--scenario", type=Path, metavar="FILE", help="play a scenario (simulators/scenarios/)")
    simulate.add_argument("--scenario-on-signal", action="store_true", help="start the scenario on SIGUSR1")
    simulate.set_defaults(handler=_simulate)

    demo = commands.add_parser("demo", help="four buildings, live: broker, simulators, gateways, meldkamer console")
    demo.add_argument("--broker", metavar="URL", help="use this broker instead of the embedded one")
    demo.add_argument(
        "--for",
        dest="duration",
        type=parse_duration,
        metavar="DURATION",
        help="stop after this time (e.g. 90s) and exit 0 only if every scenario event arrived",
    )
    demo.add_argument(
        "--site",
        dest="sites",
        action="append",
        type=Path,
        metavar="FILE",
        help="site configs (default: the four buildings)",
    )
    demo.add_argument("--scenario", type=Path, metavar="FILE", help="default: simulators/scenarios/demo.yaml")
    demo.add_argument("--workdir", type=Path, metavar="DIR", help="journals, overlays and logs (default: a temp dir)")
    demo.add_argument("--json", action="store_true", help="JSON lines instead of the console view")
    demo.add_argument(
        "--dc09", action="store_true", help="also send alarms over SIA DC-09 to a reference DC-09 receiver"
    )
    demo.set_defaults(handler=_demo)

    dc09 = commands.add_parser("dc09", help="SIA DC-09: the zone and area table (docs/dc09.md)")
    dc09_commands = dc09.add_subparsers(required=True, metavar="WHAT")
    zones = dc09_commands.add_parser("zones", help="print the site's DC-09 zone and area numbers as CSV")
    zones.add_argument("--site", required=True, type=Path, metavar="FILE")
    zones.add_argument(
        "--journal", type=Path, metavar="DIR", help="the journal's directory (default: journal.data_dir of the site)"
    )
    zones.set_defaults(handler=_dc09_zones)

    receive = commands.add_parser("receive", help="the meldkamer-side reference receiver")
    receive.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port or mqtts://host:port")
    receive.add_argument("--ca-file", metavar="FILE", help="CA to verify an mqtts:// broker (default: system CAs)")
    receive.add_argument("--site", metavar="ID", help="only this building")
    receive.add_argument("--for", dest="duration", type=parse_duration, metavar="DURATION")
    receive.add_argument(
        "--lost-after",
        type=parse_duration,
        default=15.0,
        metavar="DURATION",
        help="declare a site lost after this long without a heartbeat (default 15s)",
    )
    receive.add_argument(
        "--id", default="meldkamer", metavar="ID", help="receiver id: MQTT client id and the id it confirms as"
    )
    receive.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="where the receiver stores events and its position (SQLite); it resumes from there",
    )
    receive.add_argument(
        "--reorder-timeout",
        type=parse_duration,
        default=2.0,
        metavar="DURATION",
        help="a gap older than this is asked for again with a replay request (default 2s)",
    )
    receive.add_argument(
        "--group",
        metavar="NAME",
        help="one member of a receiver tier: the group's live members share the sites (docs/deployment.md)",
    )
    receive.add_argument("--member", metavar="ID", help="this member's id in --group (unique in the group)")
    receive.add_argument("--json", action="store_true", help="JSON lines, and a JSON summary at the end")
    receive.set_defaults(handler=_receive)

    add_onboarding_parsers(commands)  # discover bacnet|modbus, ede import|export (gateway/cli/discover.py)
    add_commissioning_parsers(commands)  # check, walktest (gateway/cli/commissioning.py)
    return parser


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            site = load_site(path)
        except ConfigError as exc:
            failed += 1
            for problem in exc.problems:
                print(problem)
            continue
        print(
            f"{path}: ok ({site.site.id}: {len(site.devices)} devices, {len(site.points)} points;"
            f" config hash {config_hash(path)})"
        )
    if failed:
        print(f"{failed} of {len(args.files)} file(s) invalid", file=sys.stderr)
    return EXIT_INVALID if failed else EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    if args.which == "site":
        from gateway.config.loader import site_json_schema

        schema: dict[str, Any] = site_json_schema()
    else:
        from gateway.domain.event import event_json_schema

        schema = event_json_schema()
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    source = SiteSource(args.site, tuple(args.overlay))
    loaded = source.load()  # the same load-and-validate as a reload (gateway/config/source.py)
    site = loaded.config
    faults: list[SiteConfigFault] = []
    journal: list[JournalError] = []
    # What exists now (the imported libraries, the validated config) lives as long as the process: out of the
    # collector's way, so a full collection never walks it again. Without this, a gen-2 collection of the
    # bacpypes3/pydantic heap stalls the loop for 30-140 ms (bench/README.md, BACnet at 1,000 changes/s).
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(_run_gateway(site, args.sink, loaded.hash, source))
    except* SiteConfigFault as group:
        faults = _leaves(group)
    except* JournalError as group:
        journal = _leaves(group)
    for fault in faults:
        print(f"{args.site}: {fault}", file=sys.stderr)
    for error in journal:  # e.g. a journal written by a newer release: one line, no traceback
        print(f"{args.site}: journal: {error}", file=sys.stderr)
    return EXIT_USAGE if faults else EXIT_INVALID


async def _run_gateway(site: SiteConfig, sink_name: str, cfg_hash: str, source: SiteSource) -> int:
    import structlog

    from gateway.app.service import run_until_signalled
    from gateway.app.wiring import build_gateway
    from gateway.ops.sdnotify import SystemdNotifier

    structlog.contextvars.bind_contextvars(site=site.site.id)  # on every log line of this process

    gateway = build_gateway(
        site,
        sink="stdout" if sink_name == "stdout" else "mqtt",
        config_hash=cfg_hash,
        notifier=SystemdNotifier.from_environment(),  # None unless run by systemd as a Type=notify unit
        source=source,  # SIGHUP and POST /-/reload read it again
    )
    async with asyncio.TaskGroup() as tg:
        freezing = tg.create_task(_freeze_once_started(gateway.started))
        await run_until_signalled(gateway)
        freezing.cancel()
    return EXIT_OK


async def _freeze_once_started(started: asyncio.Event) -> None:
    """Once the gateway runs (adapters, their protocol stacks, the normaliser's state built: they live as long
    as the process), freeze the heap again, as before the loop: a full collection then walks only what is new."""
    await started.wait()
    gc.collect()
    gc.freeze()


def _reload(args: argparse.Namespace) -> int:
    from gateway.cli.reload import request_reload

    return request_reload(args.site, args.overlay, url=args.url, timeout=args.timeout)


E = TypeVar("E", bound=BaseException)


def _leaves(group: BaseExceptionGroup[E]) -> list[E]:
    leaves: list[E] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _simulate(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    return asyncio.run(_simulate_site(site, args.overlay_out, args.scenario, args.scenario_on_signal))


def _demo(args: argparse.Namespace) -> int:
    from gateway.tools.demo import DEFAULT_SCENARIO, DEFAULT_SITES, run_demo

    return asyncio.run(
        run_demo(
            sites=args.sites or DEFAULT_SITES,
            broker_url=args.broker,
            duration=args.duration,
            scenario_path=args.scenario or DEFAULT_SCENARIO,
            workdir=args.workdir,
            as_json=args.json,
            dc09=args.dc09,
        )
    )


def _dc09_zones(args: argparse.Namespace) -> int:
    """The zone table as the gateway uses it: assigns numbers to points and tenants seen for the first time
    (the same rule as at run time, so the export is what the receiver will get), then prints CSV."""
    import csv
    import time

    from gateway.delivery.dc09_path import numbers
    from gateway.delivery.sink import open_journal

    site = load_site(args.site)
    dc09 = site.dc09
    if dc09 is None:
        print(f"{args.site}: no dc09: section: the site sends nothing over DC-09", file=sys.stderr)
        return EXIT_INVALID
    if args.journal is not None:
        site = site.model_copy(update={"journal": site.journal.model_copy(update={"data_dir": args.journal})})
    journal = open_journal(site)
    try:
        journal.open()
        zones, areas = numbers(journal, site, time.time())
    except SiteConfigFault as fault:
        print(f"{args.site}: {fault}", file=sys.stderr)
        return EXIT_USAGE
    except JournalError as error:
        print(f"{args.site}: journal: {error}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        journal.close()
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["kind", "number", "id", "name", "tenant", "zone", "source", "account"])
    accounts = dc09.accounts
    default_account = dc09.receivers[0].account
    for tenant in site.tenants:
        source = "override" if tenant.dc09_area is not None else "derived"
        account = accounts.get(tenant.id, default_account)
        out.writerow(["area", areas[tenant.id], tenant.id, tenant.name, tenant.id, "", source, account])
    for point in site.points:
        source = "override" if point.dc09_zone is not None else "derived"
        account = accounts.get(point.tenant, default_account)
        out.writerow(["zone", zones[point.id], point.id, point.name, point.tenant, point.zone, source, account])
    return EXIT_OK


def _receive(args: argparse.Namespace) -> int:
    return asyncio.run(_receive_until(args))


async def _receive_until(args: argparse.Namespace) -> int:
    import signal

    from gateway.tools.receiver import ReceiverState, print_notice
    from gateway.tools.receiver_link import ReceiverOptions, receive

    state = ReceiverState(lost_after=args.lost_after, site=args.site)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.duration is not None:
        loop.call_later(args.duration, stop.set)
    if (args.group is None) != (args.member is None):
        print("receive: --group and --member go together (a tier member needs both)", file=sys.stderr)
        return EXIT_USAGE
    options = ReceiverOptions(
        identifier=args.id,
        state_dir=args.state_dir,
        reorder_timeout=args.reorder_timeout,
        ca_file=args.ca_file,
        group=args.group,
        member=args.member,
    )
    await receive(args.broker, state, lambda n: print_notice(n, as_json=args.json), stop=stop, options=options)
    summary = state.summary()
    print(json.dumps({"summary": summary}) if args.json else json.dumps(summary, indent=2), flush=True)
    return EXIT_OK


async def _simulate_site(
    site: SiteConfig, overlay_out: Path | None, scenario_path: Path | None, on_signal: bool = False
) -> int:
    """Serve the building's simulated devices; optionally play its part of a scenario (at once, or on
    SIGUSR1 so that a demo can start every building's part when all gateways are online)."""
    import signal

    from ruamel.yaml import YAML

    from simulators.scenario import load_scenario, play
    from simulators.site import SiteSimulator

    scenario = load_scenario(scenario_path).for_site(site.site.id) if scenario_path is not None else None
    simulator = SiteSimulator(site)
    await simulator.start()
    try:
        overlay = simulator.overlay()
        for device_id, endpoint in overlay.get("devices", {}).items():
            print(f"{device_id}: {endpoint.get('host') or endpoint.get('address')}:{endpoint['port']}", flush=True)
        if overlay_out is not None:
            partial = overlay_out.with_suffix(".partial")
            with partial.open("w", encoding="utf-8") as out:
                YAML(typ="safe").dump(overlay, out)
            partial.replace(overlay_out)  # appears whole or not at all: a demo waits for it
            print(f"overlay written to {overlay_out}", flush=True)
        stop = asyncio.Event()
        go = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, go.set)
        print("simulating; Ctrl-C to stop", flush=True)
        if scenario is not None:
            if on_signal:
                await _first(go, stop)
            if not stop.is_set():
                print(f"playing scenario '{scenario.name}' ({len(scenario.steps)} steps)", flush=True)
                player = asyncio.create_task(play(scenario, {site.site.id: simulator}, default_site=site.site.id))
                await _first(player, stop)
                if player.done():
                    player.result()  # a step that failed ends the simulator loudly, not silently
                    print("scenario done", flush=True)
                else:
                    player.cancel()
                    await asyncio.gather(player, return_exceptions=True)
                    print("scenario stopped", flush=True)
        await stop.wait()
    finally:
        await simulator.stop()
    return EXIT_OK


async def _first(*waitables: asyncio.Event | asyncio.Task[None]) -> None:
    """Wait until the first of these events is set or tasks is done."""
    tasks = [w if isinstance(w, asyncio.Task) else asyncio.create_task(w.wait()) for w in waitables]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task, waitable in zip(tasks, waitables, strict=True):
        if task is not waitable:
            task.cancel()


if __name__ == "__main__":
    sys.exit(main())
