"""The commissioning subcommands: `check` (every point read once before go-live) and `walktest` (which points
were seen in alarm and restore since a given time, from the journal)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.config.loader import Overlay, load_overlay, load_site
from gateway.domain.errors import SiteConfigFault


def add_parsers(commands: Any) -> None:
    """Add `check` and `walktest` to the `gcmk-gateway` subcommands."""
    check = commands.add_parser(
        "check", help="read every configured point once and say what the gateway will see (before go-live)"
    )
    check.add_argument("--site", required=True, type=Path, metavar="FILE")
    check.add_argument("--overlay", action="append", default=[], type=Path, metavar="FILE", help="may repeat")
    check.add_argument("--json", action="store_true", help="a JSON report instead of the table")
    check.set_defaults(handler=_check)

    walk = commands.add_parser("walktest", help="walk-test report from the journal: points seen in alarm and restore")
    walk.add_argument("--site", required=True, type=Path, metavar="FILE")
    walk.add_argument("--overlay", action="append", default=[], type=Path, metavar="FILE", help="may repeat")
    walk.add_argument(
        "--since", required=True, metavar="TIME", help="ISO time (2026-12-01T09:00, local time of the site) or e.g. 2h"
    )
    walk.add_argument("--journal", type=Path, metavar="DIR", help="the journal's directory (default: journal.data_dir)")
    out = walk.add_mutually_exclusive_group()
    out.add_argument("--csv", type=Path, metavar="FILE", help="write the report as CSV (for the sign-off)")
    out.add_argument("--html", type=Path, metavar="FILE", help="write the report as an HTML page (for the sign-off)")
    walk.set_defaults(handler=_walktest)


def _check(args: argparse.Namespace) -> int:
    from gateway.tools.check import check_site, exit_code, render

    overlays: list[Overlay] = [load_overlay(p) for p in args.overlay]
    site = load_site(args.site, overlays)
    problems: list[str] = []
    try:
        report = asyncio.run(check_site(site))
    except* SiteConfigFault as group:  # e.g. an address the BACnet stack refuses: one line, no traceback
        problems += [str(fault) for fault in group.exceptions]
    except* TimeoutError:
        problems.append("cannot bind BACnet/IP on bacnet.address (not an address of this host?)")
    if problems:
        for problem in problems:
            print(f"{args.site}: {problem}", file=sys.stderr)
        return 2
    print(render(report, args.json))
    return exit_code(report)


def _walktest(args: argparse.Namespace) -> int:
    from gateway.delivery.journal import JournalError
    from gateway.tools.walktest import parse_since, run_walktest

    overlays: list[Overlay] = [load_overlay(p) for p in args.overlay]
    site = load_site(args.site, overlays)
    try:
        since = parse_since(args.since, site)
        return run_walktest(site, since, journal_dir=args.journal, csv=args.csv, html=args.html)
    except ValueError as exc:  # --since neither a time nor a duration
        print(exc, file=sys.stderr)
        return 2
    except JournalError as exc:  # no journal there, or not readable
        print(f"{args.site}: journal: {exc}", file=sys.stderr)
        return 1
