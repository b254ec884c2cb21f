"""A burst of publishes leaves the session as a few TCP segments, not one per packet (gateway.mqtt.cork), and
still goes out at once. Counted by the kernel: a TCP proxy between the session and Mosquitto reads
`tcpi_data_segs_in` (Linux TCP_INFO) of the connection the session opened to it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.mqtt.client import NODELAY
from gateway.mqtt.session import Session, SessionOptions
from gateway.testing import wait_until
from tests.support.mosquitto import Mosquitto, mosquitto

__all__ = ["mosquitto"]  # the fixture

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_CORK and TCP_INFO are Linux")

BURST = 100
DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in struct tcp_info (linux/tcp.h, kernel >= 4.6)


def data_segments_in(sock: Any) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, DATA_SEGS_IN)[0])


class Proxy:
    """Passes bytes both ways between one client and the broker; keeps the client's socket to count on."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.client_socket: Any = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client_socket = writer.get_extra_info("socket")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()


@asynccontextmanager
async def proxy_to(broker_port: int) -> AsyncIterator[Proxy]:
    proxy = Proxy(broker_port)
    server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    proxy.port = int(server.sockets[0].getsockname()[1])
    try:
        yield proxy
    finally:
        server.close()
        for task in proxy._tasks:
            task.cancel()
        await asyncio.gather(*proxy._tasks, return_exceptions=True)


async def test_a_burst_of_publishes_is_a_few_segments_and_all_are_acknowledged(mosquitto: Mosquitto) -> None:
    acks: list[int] = []
    async with proxy_to(mosquitto.port) as proxy:
        options = SessionOptions("127.0.0.1", proxy.port, "cork-test", socket_options=NODELAY)
        session: Session[int] = Session(options, lambda token, reason: acks.append(token))
        await session.connect()
        try:
            await wait_until(lambda: proxy.client_socket is not None, 5, what="the proxy's client connection")
            before = data_segments_in(proxy.client_socket)
            for n in range(BURST):  # one loop iteration: one loop_write() for all of them
                session.publish("gcmk/v1/cork-test/events/burglary", "x" * 200, False, None, n)
            await wait_until(lambda: len(acks) == BURST, 10, what="every PUBACK")
            segments = data_segments_in(proxy.client_socket) - before
            assert segments <= 3, f"{BURST} publishes in one write burst took {segments} TCP segments"
            assert acks == list(range(BURST))
        finally:
            await session.disconnect()
