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
from tests.support.sites import MINIMAL_SITE, OPERATOR_PORT_0, minimal_site


async def test_run_prints_events_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    simulator = SiteSimulator(minimal_site())
    await simulator.start()
    try:
        overlay = tmp_path / "overlay.yaml"
        with overlay.open("w") as out:
            YAML(typ="safe").dump({**simulator.overlay(), **OPERATOR_PORT_0}, out)  # never a fixed port
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


async def test_a_data_dir_under_a_regular_file_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    """The journal's directory cannot be made (a file where a directory must be): one line naming it, no
    traceback, exit 1 -- before any device or broker is touched."""
    from gateway.tools.demo import gateway_overlay
    from tests.support.mosquitto import free_port

    blocker = tmp_path / "state"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "journal"
    overlay = tmp_path / "overlay.yaml"
    with overlay.open("w") as out:
        YAML(typ="safe").dump(gateway_overlay({}, f"mqtt://127.0.0.1:{free_port()}", data_dir, 0), out)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli.main", "run", "--site", str(MINIMAL_SITE), "--overlay", str(overlay),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    async with asyncio.timeout(30):
        _out, err = await process.communicate()
    text = err.decode()
    assert process.returncode == 1, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    (line,) = [line for line in text.splitlines() if str(data_dir) in line]
    assert line.startswith(f"{MINIMAL_SITE}: journal: cannot create the journal directory {data_dir}"), line
    assert "Not a directory" in line, line
