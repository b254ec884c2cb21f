"""One member of a receiver tier in a process of its own, so tests and benchmarks can SIGKILL it (a clean
stop would send DISCONNECT and suppress the will that tells the other members to take over).

    python -m tests.support.receiver_member BROKER_URL STATE_DIR GROUP MEMBER [--reorder-timeout S]

Prints `ready` once it runs, and a JSON line with its counters when stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from gateway.tools.receiver import ReceiverState
from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions


async def _run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    options = ReceiverOptions(
        identifier=args.identifier,
        state_dir=args.state_dir,
        reorder_timeout=args.reorder_timeout,
        group=args.group,
        member=args.member,
    )
    link = ReceiverLink(args.broker, ReceiverState(lost_after=60), lambda _n: None, options)
    print("ready", flush=True)
    await link.run(stop)
    counters = {"confirms_sent": link.confirms_sent, "replays_asked": link.replays_asked, "taken": link.sites_taken}
    print(json.dumps(counters), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("broker")
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("group")
    parser.add_argument("member")
    parser.add_argument("--identifier", default="meldkamer")
    parser.add_argument("--reorder-timeout", type=float, default=0.5)
    args = parser.parse_args()
    from gateway.ops.logs import configure_logging

    configure_logging("warning", json=True, stream=sys.stderr)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
