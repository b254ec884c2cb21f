"""A real `gcmk-gateway run` process of the minimal test site on its simulators, as systemd starts it.

NOTIFY_SOCKET and WATCHDOG_USEC are set as systemd sets them; `prefix` runs it under another command (e.g.
`unshare` to make it PID 1). Its log goes to tmp_path/gateway.log: a pipe nobody reads would block it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from ruamel.yaml import YAML

from gateway.tools.demo import gateway_overlay
from simulators.site import SiteSimulator
from tests.support.notify import NotifySocket
from tests.support.sites import MINIMAL_SITE, minimal_site

WATCHDOG_USEC = 600_000  # 0.6 s: the gateway pings every 0.3 s
SITE_ID = "test-site"  # tests/data/minimal-site.yaml


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, broker_url: str, notify: NotifySocket, prefix: Sequence[str] = ()
) -> AsyncIterator[tuple[asyncio.subprocess.Process, SiteSimulator]]:
    """The minimal site's gateway on its simulators, journal in tmp_path/journal; killed if still running."""
    simulator = SiteSimulator(minimal_site())
    await simulator.start()
    process: asyncio.subprocess.Process | None = None
    try:
        overlay = tmp_path / "overlay.yaml"
        with overlay.open("w") as out:
            YAML(typ="safe").dump(gateway_overlay(simulator.overlay(), broker_url, tmp_path / "journal", 0), out)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": notify.address,
               "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        with (tmp_path / "gateway.log").open("wb") as log:  # a file: a pipe nobody reads would block the gateway
            process = await asyncio.create_subprocess_exec(
                *prefix, sys.executable, "-m", "gateway", "run", "--site", str(MINIMAL_SITE), "--overlay",
                str(overlay), stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env,
            )
        yield process, simulator
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await simulator.stop()


def log_of(tmp_path: Path) -> str:
    return (tmp_path / "gateway.log").read_text(errors="replace")


def journal_file(tmp_path: Path) -> Path:
    return tmp_path / "journal" / f"{SITE_ID}.journal.sqlite3"
