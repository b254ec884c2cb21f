"""The sd_notify protocol: one datagram of `KEY=value` lines to `$NOTIFY_SOCKET`, no dependency.

systemd (Type=notify) learns from it that the gateway is ready, reloading, stopping or still alive
(watchdog), and shows the STATUS= line in `systemctl status`. A failed send never raises: supervision must
not take the gateway down; it is logged once.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class SystemdNotifier:
    """Sends notifications to the service manager's socket (a path, or an abstract name starting with '@')."""

    def __init__(self, address: str, *, watchdog_interval: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_interval
        self._target = "\0" + address[1:] if address.startswith("@") else address
        self._failed_once = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotifier | None:
        """A notifier for `NOTIFY_SOCKET`, or None when not run by a service manager that listens."""
        address = environ.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        return cls(address, watchdog_interval=_watchdog_interval(environ))

    def send(self, *lines: str) -> None:
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._target)
        except OSError as exc:
            if not self._failed_once:
                self._failed_once = True
                log.warning("sd_notify_failed", socket=self.address, error=str(exc))

    def ready(self) -> None:
        self.send("READY=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send("STATUS=" + text.replace("\n", " "))


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """WATCHDOG_USEC in seconds, unless WATCHDOG_PID says the watchdog is meant for another process."""
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
