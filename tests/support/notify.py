"""A fake systemd notify socket for tests: an abstract AF_UNIX datagram socket bound by the test.

Abstract (no file): no path-length limit from a deep tmp dir, gone when closed, and shared by PID
namespaces (it belongs to the network namespace), so a gateway run as PID 1 under `unshare` reaches it too.

    with NotifySocket() as notify:
        env = {**os.environ, "NOTIFY_SOCKET": notify.address}
        ready = await notify.until(lambda m: "READY=1" in m)
        after_ready = len(notify.messages)
        await notify.until(lambda m: m == ["WATCHDOG=1"])  # the next ping after READY
        online = await notify.until(lambda m: "devices online 2/2" in (status_of(m) or ""), since=after_ready)
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from types import TracebackType


class NotifySocket:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"gcmk-test-notify-{uuid.uuid4().hex}"
        self._sock.bind("\0" + name)
        self._sock.setblocking(False)
        self.address = "@" + name  # the NOTIFY_SOCKET value
        self.messages: list[list[str]] = []  # every datagram received, as its lines
        self._cursor = 0  # where the next `until` starts looking

    async def receive(self) -> list[str]:
        data = await asyncio.get_running_loop().sock_recv(self._sock, 65536)
        message = data.decode().split("\n")
        self.messages.append(message)
        return message

    async def until(
        self,
        predicate: Callable[[list[str]], bool],
        timeout: float = 30.0,  # noqa: ASYNC109 -- a deadline over several receives
        *,
        since: int | None = None,
    ) -> list[str]:
        """The first message that satisfies `predicate`, from index `since` of `messages` on (default: the
        one after the previous match), waiting for new ones; TimeoutError after `timeout` seconds."""
        start = self._cursor if since is None else since
        for index in range(start, len(self.messages)):
            if predicate(self.messages[index]):
                self._cursor = index + 1
                return self.messages[index]
        async with asyncio.timeout(timeout):
            while not predicate(message := await self.receive()):
                pass
        self._cursor = len(self.messages)
        return message

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def status_of(message: list[str]) -> str | None:
    """The STATUS= text of a notification, if it has one."""
    return next((line.removeprefix("STATUS=") for line in message if line.startswith("STATUS=")), None)
