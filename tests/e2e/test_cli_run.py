"""`gcmk-gateway run` as deployed: a real process against simulated devices; SIGTERM ends it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from ruamel.yaml import YAML

from simulators.site import SiteSimulator
from tests.support.sites import MINIMAL_SITE, minimal_site


async def test_run_prints_events_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    simulator = SiteSimulator(minimal_site())
    await simulator.start()
    try:
        overlay = tmp_path / "overlay.yaml"
        with overlay.open("w") as out:
            YAML(typ="safe").dump(simulator.overlay(), out)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli.main", "run", "--site", str(MINIMAL_SITE), "--overlay", str(overlay),
            "--sink", "stdout",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            await simulator.raise_alarm("pir-02")
            async with asyncio.timeout(30):
                while "pir-02" not in (line := (await process.stdout.readline()).decode()):
                    assert line, "the gateway ended before it printed the event"
            event = json.loads(line)
            assert (event["type"], event["state"], event["seq"]) == ("burglary", "alarm", 1)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                _out, err = await process.communicate()
            assert process.returncode == 0, err.decode()[-2000:]
            assert b"Traceback" not in err
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        await simulator.stop()
