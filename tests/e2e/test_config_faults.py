"""A site config that cannot work never gets as far as a restart loop: what validation can see (a BACnet
address the stack would refuse or crash on) stops `validate` and `run` with `file:line: path: what` and exit
code 1; what only the machine can tell (a metrics port held by another process) stops `run` with one line
naming the setting and exit code 2. Never a traceback."""

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
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")  # JSON is YAML
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


def _validate(site: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(site)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def _line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_a_bacnet_address_whose_port_contradicts_port_is_refused_before_start(tmp_path: Path) -> None:
    site = _site(tmp_path, bacnet={"address": "127.0.0.1:47810", "port": 47809})
    expected = (
        f"{site}:{_line_of(site, '127.0.0.1:47810')}: devices[1].address: '127.0.0.1:47810' ends in port 47810"
        " but port: says another; write address: 127.0.0.1 and the port once, under port:"
    )
    code, output = _validate(site)
    assert (code, output.splitlines()[0]) == (1, expected), output
    code, stderr, took = _run(site)
    assert code == 1, stderr[-2000:]
    assert expected in stderr.splitlines()
    assert "Traceback" not in stderr
    assert "restarting" not in stderr
    assert took < 20


def test_a_bacnet_address_that_is_a_host_name_is_refused_before_start(tmp_path: Path) -> None:
    # bacpypes3 would look the name up when the device is set up and raise RuntimeError: a crash loop.
    site = _site(tmp_path, bacnet={"address": "panel.invalid"})
    code, stderr, _took = _run(site)
    assert code == 1, stderr[-2000:]
    line = _line_of(site, "panel.invalid")
    assert any(
        entry.startswith(f"{site}:{line}: devices[1].address: 'panel.invalid' is not an IPv4 address")
        for entry in stderr.splitlines()
    ), stderr[-2000:]
    assert "Traceback" not in stderr


def test_the_ip_port_shorthand_validates(tmp_path: Path) -> None:
    site = _site(tmp_path, bacnet={"address": "127.0.0.1:47810"})
    doc = json.loads(site.read_text())
    del next(d for d in doc["devices"] if d["protocol"] == "bacnet")["port"]
    site.write_text(json.dumps(doc, indent=2))
    code, output = _validate(site)
    assert code == 0, output
    assert "ok (test-site" in output


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
