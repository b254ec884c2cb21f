"""A real Mosquitto broker for tests: own config, free 127.0.0.1 port, persistence in a tmp dir.

Why: the delivery tests must stop and restart the broker (and other tests must not share a broker that
may already run on :1883), so every test starts its own `mosquitto` (see MOSQUITTO below).

Usage::

    from tests.support.mosquitto import Mosquitto

    with Mosquitto(tmp_path / "broker") as broker:      # started on a free port
        url = broker.url                                # "mqtt://127.0.0.1:PORT"
        broker.stop(); broker.start()                   # same port, persisted state survives
        broker.restart()

or the pytest fixture (`from tests.support.mosquitto import mosquitto` in a test module or conftest)::

    def test_x(mosquitto: Mosquitto) -> None: ...

TLS: `Mosquitto(dir, tls=BrokerTls(ca_file, cert_file, key_file, require_certificate=True))` gives an
`mqtts://` listener (see `tls_files` for trustme certificates). `users={"name": "password"}` refuses
anonymous clients. The config sets `max_queued_messages 0`
(no limit: Mosquitto otherwise drops QoS 1 messages to a slow subscriber beyond 1000), `set_tcp_nodelay true`
(else Nagle + delayed ACK add ~40 ms per hop, as in production: see docs/operations.md) and `user root`
(run as root Mosquitto would drop to user `mosquitto`, which cannot write the tmp dir).

Bridge: `Mosquitto(dir, bridge=Bridge(central.port, topics))` makes this broker a site broker that bridges to
another one on loopback (`topics`: the `topic ...` lines of deploy/mosquitto/site-bridge.conf).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from tests.support.ci import tool_missing

# GCMK_MOSQUITTO, else `mosquitto` on PATH, else where Debian puts it (/usr/sbin is not on every PATH); the same
# lookup as .ci/run, which installs it when none is found.
MOSQUITTO = os.environ.get("GCMK_MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


def free_port() -> int:
    """An OS-assigned free TCP port on 127.0.0.1 (free at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BrokerTls:
    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False  # True: clients must present a certificate signed by ca_file


@dataclass(frozen=True)
class Bridge:
    """A bridge from this broker to `remote_port` on 127.0.0.1 (one `connection` section)."""

    remote_port: int
    topics: tuple[str, ...]  # `topic PATTERN out|in|both QOS` lines
    name: str = "central"
    protocol: str = "mqttv50"  # bridge_protocol_version: mqttv50 or mqttv311
    client_id: str = "gcmk-site-bridge"

    def config_lines(self) -> list[str]:
        return [
            f"connection {self.name}",
            f"address {HOST}:{self.remote_port}",
            f"bridge_protocol_version {self.protocol}",
            f"remote_clientid {self.client_id}",
            "cleansession false",
            "try_private true",
            "notifications false",
            "keepalive_interval 5",
            "restart_timeout 1 5",  # reconnect after 1 s, backing off to 5 s (the central broker restarts)
            *self.topics,
        ]


def tls_files(directory: Path, *, hostname: str = HOST) -> tuple[BrokerTls, Path, tuple[Path, Path]]:
    """Makes a trustme CA, a server certificate for `hostname` and a client certificate.

    Returns (broker TLS settings, CA file for clients, (client cert file, client key file)).
    """
    import trustme  # test-only dependency

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(hostname, "localhost")
    client = ca.issue_cert("gcmk-gateway-test")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_cert, server_key = directory / "server.pem", directory / "server.key"
    server.cert_chain_pems[0].write_to_path(str(server_cert))
    server.private_key_pem.write_to_path(str(server_key))
    client_cert, client_key = directory / "client.pem", directory / "client.key"
    client.cert_chain_pems[0].write_to_path(str(client_cert))
    client.private_key_pem.write_to_path(str(client_key))
    return BrokerTls(ca_file, server_cert, server_key), ca_file, (client_cert, client_key)


class Mosquitto:
    """One Mosquitto process; `start`/`stop`/`kill`/`restart` keep the same port and data directory."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: BrokerTls | None = None,
        port: int | None = None,
        users: dict[str, str] | None = None,
        extra_config: str = "",
        bridge: Bridge | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.bridge = bridge
        self.tls = tls
        self.port = port or free_port()
        self.extra_config = extra_config
        self.users = users  # username -> password; when given, anonymous clients are refused
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence true",
            f"persistence_location {self.workdir / 'data'}/",
            "max_queued_messages 0",
            "set_tcp_nodelay true",
            "max_queued_bytes 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        if self.users:
            lines.append(f"password_file {self._password_file()}")
        if self.extra_config:
            lines.append(self.extra_config)
        if self.bridge is not None:  # last: every line after `connection` belongs to the bridge
            lines += self.bridge.config_lines()
        return "\n".join(lines) + "\n"

    def _password_file(self) -> Path:
        path = self.workdir / "passwords"
        path.write_text("")
        for user, password in (self.users or {}).items():
            subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True)
        return path

    def start(self, timeout: float = 10.0) -> None:
        """Starts the broker and returns once its port accepts connections."""
        if self.running:
            return
        if shutil.which(MOSQUITTO) is None:
            tool_missing(f"mosquitto ({MOSQUITTO})", "apt-get install -y mosquitto, or GCMK_MOSQUITTO=PATH")
        config = self.workdir / "mosquitto.conf"
        config.write_text(self.config_text())
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.process.returncode}):\n{self.log_file.read_text()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)  # polling the listening condition, bounded by the deadline
        self.kill()
        raise TimeoutError(f"mosquitto did not listen on {HOST}:{self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Clean stop (SIGTERM): Mosquitto saves its persistence file."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def kill(self) -> None:
        """Hard stop (SIGKILL): state since the last save is lost, as after a crash."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self, timeout: float = 10.0) -> None:
        self.stop(timeout)
        self.start(timeout)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain (no TLS) broker on a free port, stopped after the test."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
