"""A site config that validates but cannot work fails at start: one line naming the config path and what is
wrong, exit code 2, no traceback, no restart loop."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from simulators.bacnet_sim import free_udp_port
from tests.support.paths import REPO


def _site(tmp_path: Path, **changes: Any) -> Path:
    doc = YAML(typ="safe").load((REPO / "tests" / "data" / "minimal-site.yaml").read_text())
    doc["journal"] = {"data_dir": str(tmp_path / "journal")}
    doc["metrics"] = {"listen": "127.0.0.1", "port": 0}
    doc["bacnet"] = {"address": "127.0.0.1", "port": free_udp_port()}
    for device in doc["devices"]:
        device.update(changes.get(device["protocol"], {}))
    doc.update(changes.get("site", {}))
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    return path


def _run(site: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--site", str(site), "--sink", "stdout"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def _problem_lines(stderr: str, site: Path) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{site}: ")]


def test_a_bacnet_address_with_a_port_stops_the_gateway_at_once(tmp_path: Path) -> None:
    site = _site(tmp_path, bacnet={"address": "127.0.0.1:47809"})
    code, stderr, took = _run(site)
    assert code == 2, stderr[-2000:]
    assert _problem_lines(stderr, site) == [
        f"{site}: devices[fire-1].address: '127.0.0.1:47809' is not an IP address the BACnet stack accepts"
        " (write the port under port:, not after a colon)"
    ]
    assert "Traceback" not in stderr
    assert "restarting" not in stderr
    assert took < 20  # the restart loop it replaces took ~17 s before it gave up


def test_a_metrics_port_held_by_another_process_is_named(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other_gateway:
        other_gateway.bind(("127.0.0.1", 0))
        other_gateway.listen()
        port = other_gateway.getsockname()[1]
        site = _site(tmp_path, site={"metrics": {"listen": "127.0.0.1", "port": port}})
        code, stderr, _took = _run(site)
    assert code == 2, stderr[-2000:]
    (line,) = _problem_lines(stderr, site)
    assert line.startswith(f"{site}: metrics.port: cannot listen on 127.0.0.1:{port}: ")
    assert "every gateway on one host needs its own metrics.port" in line
    assert "Traceback" not in stderr
