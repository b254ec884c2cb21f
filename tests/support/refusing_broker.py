"""A minimal MQTT broker for tests of SUBACK handling: no broker we can start refuses a SUBSCRIBE on demand."""

from __future__ import annotations

import asyncio


class RefusingBroker:
    """A minimal MQTT broker written for this test: it accepts every connection (MQTT 5 or 3.1.1) and refuses
    every SUBSCRIBE in its SUBACK (0x87 not authorised / 0x80 failure), as an ACL does on brokers that say so
    (Mosquitto 2.0 grants a forbidden subscription and only withholds the messages). `refuse = False` grants."""

    def __init__(self) -> None:
        self.refuse = True
        self.subscribes = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RefusingBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version = 4
        try:
            while True:
                header = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:  # the remaining length: a variable-byte integer
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = header >> 4
                if kind == 1:  # CONNECT: protocol name (2 + 4 bytes), then the level
                    version = body[6]
                    writer.write(b"\x20\x03\x00\x00\x00" if version == 5 else b"\x20\x02\x00\x00")
                elif kind == 8:  # SUBSCRIBE: the packet id first
                    self.subscribes += 1
                    code = (0x87 if version == 5 else 0x80) if self.refuse else 0x01
                    props = b"\x00" if version == 5 else b""
                    payload = body[:2] + props + bytes([code])
                    writer.write(bytes([0x90, len(payload)]) + payload)
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
