"""`gcmk-gateway discover bacnet|modbus` and `gcmk-gateway ede import|export`: onboarding a building.

Read-only towards the devices. The skeleton (YAML) goes to stdout or --out; warnings, what was skipped and
how long it took go to stderr, so `discover ... > site.yaml` keeps the file clean. Exit 3 when nothing
answered (or an EDE file held no usable row): an empty skeleton must never look like a result.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config.types import parse_duration

EXIT_OK = 0
EXIT_NOTHING_FOUND = 3


def add_parsers(commands: Any) -> None:
    """Add `discover` and `ede` to the top-level subparsers of gcmk-gateway."""
    discover = commands.add_parser("discover", help="find devices and their points; write a site-config skeleton")
    protocols = discover.add_subparsers(required=True, metavar="PROTOCOL")

    bacnet = protocols.add_parser("bacnet", help="Who-Is, then every device's objects (read-only)")
    where = bacnet.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", metavar="HOST[:PORT]", help="one device (or router) by unicast")
    where.add_argument("--broadcast", action="store_true", help="every device on the local subnet")
    bacnet.add_argument(
        "--local",
        default="0.0.0.0",
        metavar="IP[/PREFIX]",
        help="local interface; a broadcast needs the prefix (e.g. 192.168.10.5/24)",
    )
    bacnet.add_argument(
        "--local-port", type=int, metavar="PORT", help="local UDP port (default: any; 47808 with --broadcast)"
    )
    bacnet.add_argument("--bbmd", metavar="HOST[:PORT]", help="register as a foreign device at this BBMD first")
    bacnet.add_argument("--ttl", type=int, default=60, metavar="SECONDS", help="foreign-device registration TTL")
    bacnet.add_argument("--timeout", type=parse_duration, default=2.0, metavar="DURATION", help="per request")
    bacnet.add_argument(
        "--wait", type=parse_duration, default=3.0, metavar="DURATION", help="how long to listen for I-Am answers"
    )
    _output_arguments(bacnet)
    bacnet.set_defaults(handler=_discover_bacnet)

    modbus = protocols.add_parser("modbus", help="which unit ids answer, which table ranges exist (read-only)")
    modbus.add_argument("--host", required=True)
    modbus.add_argument("--port", type=int, default=502)
    modbus.add_argument("--units", default="1-247", metavar="LIST", help="unit ids, e.g. 1-247 or 1,2,10-12")
    modbus.add_argument(
        "--addresses", default="0-999", metavar="FIRST-LAST", help="address range probed in every table"
    )
    modbus.add_argument("--timeout", type=parse_duration, default=0.3, metavar="DURATION", help="per request")
    modbus.add_argument("--transport", choices=["tcp", "rtu_over_tcp"], default="tcp")
    modbus.add_argument(
        "--thorough", action="store_true", help="read every address of a refused block alone (finds lone registers)"
    )
    _output_arguments(modbus)
    modbus.set_defaults(handler=_discover_modbus)

    ede = commands.add_parser("ede", help="EDE (B.I.G.-EU engineering data exchange) import and export")
    actions = ede.add_subparsers(required=True, metavar="ACTION")
    ede_import = actions.add_parser("import", help="EDE main file (and state texts) -> site-config skeleton")
    ede_import.add_argument("file", type=Path, metavar="EDE.csv")
    ede_import.add_argument("--state-texts", type=Path, metavar="FILE", help="the EDE state-text file")
    _output_arguments(ede_import)
    ede_import.set_defaults(handler=_ede_import)
    ede_export = actions.add_parser("export", help="site config -> <site>_EDE.csv and <site>_StateTexts.csv")
    ede_export.add_argument("--site", required=True, type=Path, metavar="FILE")
    ede_export.add_argument("--out", required=True, type=Path, metavar="DIR")
    ede_export.set_defaults(handler=_ede_export)


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the skeleton here (default: stdout)")
    parser.add_argument(
        "--diff", type=Path, metavar="FILE", help="instead of the skeleton: what differs from this site config"
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _emit(skeleton: Any, args: argparse.Namespace) -> int:
    """The skeleton (or its diff) to stdout / --out; the skipped counts to stderr."""
    from gateway.config.loader import load_site
    from gateway.tools.skeleton import diff

    for reason, count in sorted(skeleton.skipped.items()):
        _say(f"skipped {count}: {reason}")
    if args.diff is not None:
        lines = diff(skeleton, load_site(args.diff))
        print("\n".join(lines) if lines else f"no differences from {args.diff}")
        return EXIT_OK
    text = skeleton.render()
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        _say(f"skeleton written to {args.out}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _discover_bacnet(args: argparse.Namespace) -> int:
    from gateway.tools.discover_bacnet import BacnetProbe, bacnet_skeleton, broadcast_warning, discover_bacnet

    local_port = args.local_port if args.local_port is not None else (47808 if args.broadcast else 0)
    probe = BacnetProbe(
        target=args.target,
        broadcast=args.broadcast,
        local=args.local,
        local_port=local_port,
        bbmd=args.bbmd,
        ttl=args.ttl,
        timeout=args.timeout,
        wait=args.wait,
    )
    warning = broadcast_warning(probe)
    if warning is not None:
        _say(f"warning: {warning}")
    findings = asyncio.run(discover_bacnet(probe))
    for text in findings.warnings:
        if text != warning:
            _say(f"warning: {text}")
    for text in findings.failed:
        _say(f"answered Who-Is, but not the reads: {text}")
    for device in findings.devices:
        how = "entry by entry" if device.object_list_by_index else "whole"
        _say(
            f"device,{device.instance} at {device.address}: {len(device.objects)} objects in {device.seconds:.2f}s,"
            f" {device.requests} requests (max APDU {device.max_apdu}, {device.segmentation}; Object_List {how};"
            f" up to {device.batch_size} objects per ReadPropertyMultiple)"
        )
        for note in device.notes:
            _say(f"  {note}")
    if not findings.devices:
        where = "on the local subnet" if args.broadcast else f"at {args.target}"
        _say(f"no BACnet device answered {where} within {args.wait:g}s ({findings.seconds:.1f}s in all)")
        if warning is not None:
            _say("(see the warning above: the broadcast was probably never sent)")
        return EXIT_NOTHING_FOUND
    _say(f"discovery took {findings.seconds:.2f}s")
    how = "--broadcast" if args.broadcast else f"--target {args.target}"
    return _emit(bacnet_skeleton(findings, f"gcmk-gateway discover bacnet {how}"), args)


def _discover_modbus(args: argparse.Namespace) -> int:
    from gateway.tools.discover_modbus import ModbusProbe, discover_modbus, modbus_skeleton, parse_units, worst_case

    try:
        units = parse_units(args.units)
        first_text, _, last_text = args.addresses.partition("-")
        first, last = int(first_text), int(last_text or first_text)
        if not 0 <= first <= last <= 65535:
            raise ValueError
    except ValueError as exc:
        _say(f"discover modbus: {exc or f'--addresses {args.addresses}: write FIRST-LAST within 0-65535'}")
        return 2
    probe = ModbusProbe(
        host=args.host,
        port=args.port,
        units=units,
        first_address=first,
        last_address=last,
        timeout=args.timeout,
        transport=args.transport,
        thorough=args.thorough,
    )
    silent_seconds, per_unit = worst_case(probe)
    _say(
        f"probing {len(units)} unit id(s) at {args.host}:{args.port}, addresses {first}-{last}: at most"
        f" {silent_seconds:.0f}s for unit ids that do not answer ({args.timeout:g}s timeout each), and at most"
        f" {per_unit} requests per unit id that answers"
    )
    findings = asyncio.run(discover_modbus(probe))
    if findings.unreachable is not None:
        _say(f"discover modbus: {findings.unreachable}")
        return EXIT_NOTHING_FOUND
    for unit in findings.units:
        ranges = ", ".join(f"{t} {a}-{b}" for t, runs in unit.ranges.items() for a, b in runs) or "no address in range"
        _say(f"unit {unit.unit}: {ranges}")
        for note in unit.notes:
            _say(f"  {note}")
    _say(f"{findings.requests} requests in {findings.seconds:.2f}s")
    if not findings.units:
        _say(f"no unit id answered at {args.host}:{args.port}")
        return EXIT_NOTHING_FOUND
    command = f"gcmk-gateway discover modbus --host {args.host} --port {args.port} --units {args.units}"
    return _emit(modbus_skeleton(findings, command), args)


def _ede_import(args: argparse.Namespace) -> int:
    from gateway.tools.ede import ede_skeleton, read_ede, read_state_texts

    for path in (args.file, args.state_texts):
        if path is not None and not path.is_file():
            _say(f"{path}: no such file")
            return 2
    ede = read_ede(args.file)
    texts: dict[int, list[str]] | None = None
    if args.state_texts is not None:
        texts, skipped_texts = read_state_texts(args.state_texts)
        for line in skipped_texts:
            _say(f"skipped {line}")
    command = f"gcmk-gateway ede import {args.file.name}"
    skeleton = ede_skeleton(ede, texts, command=command, state_file=str(args.state_texts or ""))
    for note in ede.notes:
        _say(f"note: {note}")
    for line in ede.skipped:
        _say(f"skipped {line}")
    _say(f"{args.file}: separator {ede.separator!r}, layout {ede.layout or '?'}, {len(ede.rows)} row(s) read")
    if not skeleton.points:
        _say(f"{args.file}: no object the gateway can map")
        return EXIT_NOTHING_FOUND
    return _emit(skeleton, args)


def _ede_export(args: argparse.Namespace) -> int:
    from gateway.config.loader import load_site
    from gateway.tools.ede import export_ede

    site = load_site(args.site)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    main, states = export_ede(site, args.out, timestamp=stamp, author=f"gcmk-gateway {__version__}")
    _say(f"written {main} and {states}")
    return EXIT_OK
