"""The sd_notify client against a fake notify socket: a real AF_UNIX datagram socket bound by the test."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.ops.sdnotify import SystemdNotifier


def _receive(sock: socket.socket) -> list[str]:
    sock.settimeout(2.0)
    return sock.recv(4096).decode().split("\n")


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify")
    sock.bind(address)
    with sock:
        yield sock, address


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"gcmk-test-notify-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    with sock:
        yield sock, "@" + name


def test_no_notify_socket_means_no_notifier() -> None:
    assert SystemdNotifier.from_environment({}) is None
    assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": ""}) is None


def test_sends_to_a_path_socket(path_socket: tuple[socket.socket, str]) -> None:
    sock, address = path_socket
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier is not None
    notifier.send("READY=1", "STATUS=up")
    assert _receive(sock) == ["READY=1", "STATUS=up"]


def test_sends_to_an_abstract_socket(abstract_socket: tuple[socket.socket, str]) -> None:
    sock, address = abstract_socket
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier is not None
    notifier.ready()
    assert _receive(sock) == ["READY=1"]


def test_each_notification(path_socket: tuple[socket.socket, str]) -> None:
    sock, address = path_socket
    notifier = SystemdNotifier(address)
    notifier.stopping()
    assert _receive(sock) == ["STOPPING=1"]
    notifier.watchdog()
    assert _receive(sock) == ["WATCHDOG=1"]
    notifier.status("mqtt connected\ndevices 3/4")
    assert _receive(sock) == ["STATUS=mqtt connected devices 3/4"]  # one line: a newline would end it
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    reloading, monotonic = _receive(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading == "RELOADING=1"
    key, _, usec = monotonic.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after  # systemd compares it with CLOCK_MONOTONIC


def test_a_failed_send_never_raises_and_logs_once(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens"))
    with capture_logs() as logs:
        notifier.ready()
        notifier.watchdog()
        notifier.status("x")
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 20.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another process
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@x", **environ})
    assert notifier is not None
    assert notifier.watchdog_interval == expected
