"""A minimal reference SIA DC-09 receiver (TCP) for the demo: parse, check CRC and length, decrypt, ACK.

Not an alarm receiving centre: it keeps what it received in memory and answers every well-formed message of
a known account with ACK (`*ACK`, encrypted, when the message was), NULL messages included; a message for an
unknown account gets DUH; a frame with a wrong CRC or length gets no answer (as DC-09 says) and is counted.
The framing and AES come from gateway.dc09, so this receiver is not independent of the transmitter: the
tests use pysiaalarm for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from gateway.dc09.crypto import DecryptError, decrypt_block, strip_pad
from gateway.dc09.frame import crc16, encode_message

log = structlog.get_logger(__name__)

_BODY = re.compile(
    r'^"(?P<star>\*?)(?P<token>[A-Z][A-Z0-9-]*)"(?P<seq>\d{4})(?:R(?P<rcvr>[0-9A-Fa-f]+))?'
    r"L(?P<prefix>[0-9A-Fa-f]+)#(?P<account>[0-9A-Fa-f]{3,16})\[(?P<rest>.*)$",
    re.S,
)


@dataclass(frozen=True, slots=True)
class Received:
    """One message the receiver ACKed (NULL messages are only counted)."""

    account: str
    token: str
    seq: int
    data: str  # the data block's content after `#acct|`, e.g. "Nri1/BA001"
    encrypted: bool
    at: datetime


@dataclass
class ReceiverStats:
    frames: int = 0
    acked: int = 0
    nulls: int = 0
    duh: int = 0
    bad_frames: Counter[str] = field(default_factory=Counter)  # no answer: by kind (crc, length, shape, decrypt)


class Dc09Receiver:
    """`accounts`: account (upper-case hex) -> AES key, or None for plaintext. `on_message` sees each ACKed one."""

    def __init__(self, accounts: Mapping[str, bytes | None], on_message: Callable[[Received], None]) -> None:
        self.accounts = {a.upper(): k for a, k in accounts.items()}
        self.on_message = on_message
        self.stats = ReceiverStats()
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    frame = await reader.readuntil(b"\r")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    self.stats.bad_frames["too_long"] += 1
                    return
                reply = self.answer(frame)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def answer(self, frame: bytes) -> bytes | None:
        """The reply to one frame (LF ... CR), or None when it gets none (bad CRC, length or shape)."""
        self.stats.frames += 1
        start = frame.find(b"\n")
        if start < 0 or len(frame) - start < 10:
            return self._bad("shape", frame)
        crc_text, length_text, body = frame[start + 1 : start + 5], frame[start + 5 : start + 9], frame[start + 9 : -1]
        try:
            crc, length = int(crc_text, 16), int(length_text, 16)
        except ValueError:
            return self._bad("shape", frame)
        if crc != crc16(body):
            return self._bad("crc", frame)
        if length != len(body):
            return self._bad("length", frame)
        match = _BODY.match(body.decode("ascii", errors="replace"))
        if match is None:
            return self._bad("shape", frame)
        account, token, seq = match["account"].upper(), match["token"], int(match["seq"])
        encrypted = bool(match["star"])
        receiver, prefix = match["rcvr"], match["prefix"]
        if account not in self.accounts:
            self.stats.duh += 1
            return encode_message(
                "DUH", seq, account=account, receiver=receiver, prefix=prefix, data="", timestamp=None
            )
        key = self.accounts[account]
        rest = match["rest"]
        if encrypted:
            if key is None:
                return self._bad("decrypt", frame)
            hex_text = rest.split("]", 1)[0] if "]" in rest else rest
            try:
                rest = strip_pad(decrypt_block(key, hex_text)).decode("ascii", errors="replace")
            except DecryptError:
                return self._bad("decrypt", frame)
        content = rest.split("]", 1)[0]
        data = content.split("|", 1)[1] if "|" in content else ""
        now = datetime.now(UTC)
        if token != "NULL":
            message = Received(account, token, seq, data, encrypted, now)
            self.received.append(message)
            self.stats.acked += 1
            self.on_message(message)
        else:
            self.stats.nulls += 1
        return encode_message(
            "ACK",
            seq,
            account=account,
            receiver=receiver,
            prefix=prefix,
            data="",
            timestamp=now,
            key=key if encrypted else None,
        )

    def _bad(self, kind: str, frame: bytes) -> bytes | None:
        """Counted and logged (at 1, 10, 100, with the frame's start); no answer."""
        self.stats.bad_frames[kind] += 1
        if self.stats.bad_frames[kind] in (1, 10, 100):
            log.warning("dc09_frame_ignored", kind=kind, total=self.stats.bad_frames[kind], frame=repr(frame[:120]))
        return None
