"""The operator HTTP responder: routes, methods, malformed requests, and a failing handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gateway.core.lifecycle import start
from gateway.ops.http import OperatorServer, Response


@asynccontextmanager
async def serving(routes: dict[str, Callable[[], Response]]) -> AsyncIterator[OperatorServer]:
    server = OperatorServer(routes, "127.0.0.1", 0)
    async with asyncio.TaskGroup() as tg:
        async with asyncio.timeout(5):
            port, task = await start(tg, server.serve)
        assert port == server.port
        try:
            yield server
        finally:
            task.cancel()


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes; (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, body


ROUTES = {
    "/ok": lambda: Response(200, b"fine\n"),
    "/busy": lambda: Response(503, b"not yet\n"),
}


async def test_get_returns_the_handlers_response_with_length_and_close() -> None:
    async with serving(ROUTES) as server:
        assert server.port
        status, headers, body = await exchange(server.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (200, b"fine\n")
        assert headers["content-length"] == "5"
        assert headers["connection"] == "close"
        status, _, body = await exchange(server.port, b"GET /busy?verbose=1 HTTP/1.0\r\n\r\n")
        assert (status, body) == (503, b"not yet\n")


async def test_head_has_headers_but_no_body() -> None:
    async with serving(ROUTES) as server:
        assert server.port
        status, headers, body = await exchange(server.port, b"HEAD /ok HTTP/1.1\r\n\r\n")
        assert (status, headers["content-length"], body) == (200, "5", b"")


async def test_unknown_path_wrong_method_and_garbage_get_4xx() -> None:
    async with serving(ROUTES) as server:
        assert server.port
        assert (await exchange(server.port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await exchange(server.port, b"POST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n"))[0] == 405
        assert (await exchange(server.port, b"hello\r\n\r\n"))[0] == 400
        too_long = b"GET /ok HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"
        assert (await exchange(server.port, too_long))[0] == 400
        # still serving after all of that
        assert (await exchange(server.port, b"GET /ok HTTP/1.1\r\n\r\n"))[0] == 200


async def test_a_handler_that_raises_gives_500_and_the_server_lives_on() -> None:
    def broken() -> Response:
        raise RuntimeError("bug in a collector")

    async with serving({**ROUTES, "/broken": broken}) as server:
        assert server.port
        status, _, body = await exchange(server.port, b"GET /broken HTTP/1.1\r\n\r\n")
        assert status == 500
        assert b"bug in a collector" not in body  # no internals to the client
        assert (await exchange(server.port, b"GET /ok HTTP/1.1\r\n\r\n"))[0] == 200


async def test_a_client_that_never_finishes_its_request_does_not_block_others() -> None:
    async with serving(ROUTES) as server:
        assert server.port
        _, dawdler = await asyncio.open_connection("127.0.0.1", server.port)
        dawdler.write(b"GET /ok HTTP/1.1\r\n")  # no end of headers
        try:
            assert (await exchange(server.port, b"GET /ok HTTP/1.1\r\n\r\n"))[0] == 200
        finally:
            dawdler.close()


async def test_a_post_action_is_awaited_past_the_request_deadline_and_other_posts_are_refused() -> None:
    """POST /-/reload (gateway/app/reload.py): awaited until it answers; routes without an action take no POST."""
    release = asyncio.Event()

    async def action() -> Response:
        await release.wait()
        return Response(200, b'{"applied": true}\n', "application/json")

    server = OperatorServer({"/metrics": lambda: Response(200, b"m\n")}, "127.0.0.1", 0, actions={"/-/reload": action})
    async with asyncio.TaskGroup() as tg:
        port, task = await start(tg, server.serve)
        pending = asyncio.create_task(exchange(port, b"POST /-/reload HTTP/1.1\r\nContent-Length: 0\r\n\r\n"))
        status, _headers, body = await exchange(port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert status == 405  # a read-only route takes no POST
        assert not pending.done()
        release.set()
        status, headers, body = await pending
        assert (status, headers["content-type"], body) == (200, "application/json", b'{"applied": true}\n')
        status, _headers, _body = await exchange(port, b"GET /-/reload HTTP/1.1\r\n\r\n")
        assert status == 404  # an action answers POST only
        task.cancel()
