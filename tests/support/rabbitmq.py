"""A real RabbitMQ node with the `rabbitmq_mqtt` plugin for tests: its own node name, ports, data dir and epmd.

Why: the contract must run on a broker other than Mosquitto (RabbitMQ 3.10 speaks MQTT 3.1.1 only, keeps
subscriptions in queues and retained messages in its own store). The machine may already run a RabbitMQ node
(5672/25672, epmd on 4369): this one shares nothing with it. Its own `ERL_EPMD_PORT` (so it starts, and at the
end stops, an epmd of its own), node name, AMQP / distribution / MQTT ports on free loopback ports, mnesia and
log directories, config file, enabled_plugins file and a private HOME with its own .erlang.cookie.

A node takes several seconds to boot (measured: see docs/deployment.md), so tests share one per module::

    from tests.support.rabbitmq import RabbitMQ, rabbitmq

    def test_x(rabbitmq: RabbitMQ) -> None:       # module-scoped fixture
        rabbitmq.mqtt_port; rabbitmq.ctl("list_queues")

Readiness is a real MQTT CONNECT answered with a CONNACK (the listener accepting TCP is not enough: the
plugin answers only once the node has booted), bounded by a timeout.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.support.ci import tool_missing
from tests.support.mosquitto import HOST, free_port

# GCMK_RABBITMQ_HOME: the directory with rabbitmq-server and rabbitmqctl. Debian's /usr/sbin wrappers switch
# to the `rabbitmq` user and its fixed directories when run as root: call the scripts behind them instead.
RABBITMQ_BIN = Path(os.environ.get("GCMK_RABBITMQ_HOME") or "/usr/lib/rabbitmq/bin")
INSTALL = "apt-get install -y rabbitmq-server, or GCMK_RABBITMQ_HOME=DIR of rabbitmq-server"
BOOT_TIMEOUT = 90.0


def _mqtt_connack(port: int, timeout: float) -> bool:
    """True when an MQTT 3.1.1 CONNECT (clean session, no credentials) gets a CONNACK."""
    client_id = b"gcmk-ready-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x05"  # protocol name, level 4, clean session, keepalive 5 s
    payload = len(client_id).to_bytes(2, "big") + client_id
    packet = bytes([0x10, len(variable) + len(payload)]) + variable + payload
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(packet)
            reply = sock.recv(4)
            if len(reply) >= 4 and reply[0] == 0x20:
                sock.sendall(b"\xe0\x00")  # DISCONNECT
                return True
    except OSError:
        pass
    return False


class RabbitMQ:
    """One RabbitMQ node; `start`/`stop`/`kill` keep its ports, node name and data directory."""

    def __init__(self, workdir: Path, *, extra_config: str = "", allow_anonymous: bool = True) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node = f"gcmk-test-{secrets.token_hex(4)}@localhost"
        self.mqtt_port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self.process: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None  # the last start: process start until the first CONNACK

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self.mqtt_port

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.mqtt_port}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    def config_text(self) -> str:
        lines = [
            f"listeners.tcp.default = {HOST}:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = {HOST}:{self.mqtt_port}",
            f"mqtt.allow_anonymous = {'true' if self.allow_anonymous else 'false'}",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            # quorum queues for the persistent sessions' subscriptions need a cluster of three: a single test node
            # keeps the default (classic), the deployment docs say when to use quorum
            "log.console = false",
            "log.file.level = warning",
        ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        home = self.workdir / "home"
        return {
            **os.environ,
            "HOME": str(home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.workdir / "plugins-expand"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
        }

    def _prepare(self) -> None:
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        (self.workdir / "rabbitmq.conf").write_text(self.config_text())
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.workdir / "advanced.config").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boots the node and returns once its MQTT listener answers a CONNECT."""
        if self.running:
            return
        server = RABBITMQ_BIN / "rabbitmq-server"
        if not os.access(server, os.X_OK) or shutil.which("erl") is None:
            tool_missing(f"RabbitMQ ({server})", INSTALL)
        self._prepare()
        began = time.monotonic()
        with (self.workdir / "server.out").open("ab") as out:
            self.process = subprocess.Popen(
                [str(server)], env=self.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited ({self.process.returncode}):\n{self.diagnostics()}")
            if _mqtt_connack(self.mqtt_port, 1.0):
                self.boot_seconds = time.monotonic() - began
                return
            time.sleep(0.2)  # polling the boot, bounded by the deadline
        self.kill()
        raise TimeoutError(f"RabbitMQ did not answer MQTT on {HOST}:{self.mqtt_port} within {timeout}s")

    def diagnostics(self) -> str:
        parts = []
        for path in [self.workdir / "server.out", *sorted(self.log_dir.glob("*.log"))]:
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """`rabbitmqctl -n NODE ARGS...` against this node; raises with its output on failure."""
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: exit {result.returncode}\n{output}")
        return result.stdout

    def stop(self, timeout: float = 30.0) -> None:
        """Clean stop (SIGTERM to the node's process group), then this node's own epmd."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None
        self._stop_epmd()

    def kill(self) -> None:
        """Hard stop (SIGKILL of the node's process group), as after a crash; the epmd stays for a restart."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def _stop_epmd(self) -> None:
        """The epmd the node started on its own port (never the machine's, on 4369)."""
        epmd = shutil.which("epmd")
        if epmd is not None:
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env(), capture_output=True,
                           timeout=10, check=False)

    def __enter__(self) -> RabbitMQ:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """One node per test module (a boot takes seconds); tests use their own client ids and site ids."""
    with RabbitMQ(tmp_path_factory.mktemp("rabbitmq")) as node:
        yield node
