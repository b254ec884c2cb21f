"""The operator endpoints on one port: /metrics (Prometheus text format), /healthz and /readyz.

A minimal HTTP/1.1 responder on asyncio streams, so the server is one more task in the gateway's
TaskGroup (no thread to leak or to outlive the loop). GET and HEAD, and POST for the actions given
(/-/reload); every response closes the connection; a request that is not understood gets 400 and a handler
that raises gets 500 (logged), never an exception out of the server. GET handlers are synchronous: they read
plain attributes, so a scrape cannot interleave with the components it reports on. An action is awaited
without the request's 5 s deadline (a reload takes as long as it takes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from gateway.core.lifecycle import TaskStatus
from gateway.domain.errors import SiteConfigFault

log = structlog.get_logger(__name__)

MAX_REQUEST_LINE = 8192


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[], Response]
Action = Callable[[], Awaitable[Response]]  # a POST endpoint (e.g. /-/reload): may take longer than a read
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class OperatorServer:
    def __init__(
        self, routes: dict[str, Handler], host: str, port: int, actions: dict[str, Action] | None = None
    ) -> None:
        self._routes = routes
        self._actions = actions or {}
        self._host = host
        self._port = port
        self.port: int | None = None

    async def serve(self, task_status: TaskStatus[int] | None = None) -> None:
        """Serve until cancelled; reports the bound port through `task_status` (gateway.core.lifecycle)."""
        try:
            server = await asyncio.start_server(self._handle, self._host, self._port)
        except OSError as exc:  # e.g. EADDRINUSE: a second gateway on this host with the same metrics port
            raise SiteConfigFault(
                "metrics.port",
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
                " (every gateway on one host needs its own metrics.port)",
            ) from None
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("operator endpoints listening", url=f"http://{self._host}:{self.port}/metrics")
        if task_status is not None:
            task_status.started(self.port)
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5) as deadline:  # for the request; an action runs to its end
                response, head_only = await self._respond(reader, deadline)
            status_line = f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
            headers = (
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write((status_line + headers).encode("ascii") + (b"" if head_only else response.body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that goes away or dawdles is its own problem
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, deadline: asyncio.Timeout) -> tuple[Response, bool]:
        line = await reader.readline()
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            if len(header) > MAX_REQUEST_LINE:
                return Response(400, b"header too long\n"), False
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return Response(400, b"bad request\n"), False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method == "POST" and target in self._actions:
            deadline.reschedule(None)
            try:
                return await self._actions[target](), False
            except Exception:
                log.exception("operator action failed", path=target)
                return Response(500, b"internal error\n"), False
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n"), False
        handler = self._routes.get(target)
        if handler is None:
            return Response(404, b"not found\n"), method == "HEAD"
        try:
            return handler(), method == "HEAD"
        except Exception:
            log.exception("operator endpoint failed", path=target)
            return Response(500, b"internal error\n"), method == "HEAD"
