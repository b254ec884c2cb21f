"""One DC-09 connection to one receiver: send a message, wait for its ACK, retry, supervise with NULL.

`async with Transmitter(endpoint) as tx: outcome = await tx.send(message)`. The context owns the connection
and the NULL-supervision task (a TaskGroup inside). Rules, from DC-09 and from what goes wrong in the field:

- one outstanding message per connection; `send` returns only on ACK (`Outcome.ACKED`) or DUH
  (`Outcome.DUH`: understood, not processed; never resent: panels that loop on DUH are a known failure);
- no reply within `ack_timeout` -> the same frame again with the SAME sequence number, after reconnecting
  with jittered exponential backoff; a reply for another sequence number or another account, and a plain
  ACK on an encrypted path, is ignored (counted by reason through `on_ignored`): it is not the receiver's
  confirmation of this frame;
- NAK (the receiver's clock check failed) -> the clock offset becomes the receiver's time minus ours
  (bounded by `MAX_CLOCK_OFFSET`, logged) and the message goes again, with a new timestamp;
- sequence numbers 0001..9999 then 0001; NULL messages (seq 0000) at the start and after `supervision`
  seconds idle;
- timestamps in UTC, always sent (mandatory when encrypted);
- malformed replies are counted by kind (`stats`), logged once per kind, and never end the transmitter.
`send` is cancellable at any await: the message is then simply not confirmed (the journal still has it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Protocol

from gateway.core.lifecycle import RunsInBackground
from gateway.dc09.crypto import check_key
from gateway.dc09.frame import (
    ACCOUNT_RE,
    NULL_SEQ,
    SEQ_MAX,
    SEQ_MIN,
    MalformedReply,
    Reply,
    ReplyKind,
    ReplySplitter,
    encode_message,
    next_seq,
    parse_reply,
)

log = logging.getLogger(__name__)

MAX_CLOCK_OFFSET = 3600.0  # seconds: a NAK never moves our clock further than this
_LONG_AGO = float("-inf")


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one DC-09 receiver."""

    host: str
    port: int
    transport: Literal["tcp", "udp"]
    account: str  # 3-16 hex digits (upper case on the wire)
    receiver: str | None  # R field, None = omitted
    prefix: str  # L field ("0" when unused)
    key: bytes | None  # AES key (16/24/32 bytes); None = plaintext
    supervision: float  # seconds between NULL messages when idle
    ack_timeout: float  # seconds to wait for a reply
    backoff_initial: float = 0.5  # seconds before the first reconnect; doubles up to backoff_max, jittered
    backoff_max: float = 30.0
    connect_timeout: float | None = None  # None = ack_timeout


@dataclass(frozen=True)
class Message:
    """A DC-09 message before framing: the transmitter adds seq, routing, timestamp and encryption."""

    token: Literal["SIA-DCS", "ADM-CID"]  # the transmitter adds '*' when encrypted
    account: str
    data: str  # what follows '#acct|' in the data block, e.g. "Nri1/BA001" or "1130 01 001"
    xdata: tuple[str, ...] = ()


class Outcome(StrEnum):
    ACKED = "acked"
    DUH = "duh"


@dataclass(frozen=True)
class LinkState:
    """What the path looks like now. `up` = the receiver answered the last exchange (ACK, DUH or NAK);
    `since` = time.monotonic() of the last change of `up`. A NAK that a clock correction cannot cure (no time
    in it, or our clock already agrees) counts as a failure."""

    up: bool
    since: float
    last_ack_at: datetime | None
    consecutive_failures: int
    clock_offset: float


@dataclass
class TransmitterStats:
    """Counters of one transmitter, for metrics and tests."""

    sent: int = 0  # frames written (retries included, NULL included)
    acked: int = 0  # messages (not NULL) acknowledged
    naks: int = 0
    duhs: int = 0
    timeouts: int = 0
    reconnects: int = 0  # connection attempts after the first (failed ones included)
    connect_failures: int = 0
    malformed_replies: int = 0
    malformed_by_kind: dict[str, int] = field(default_factory=dict)
    stale_replies: int = 0  # replies for another sequence number: ignored
    foreign_replies: int = 0  # replies naming another account than the message's: ignored
    unencrypted_acks: int = 0  # plain ACKs on an encrypted path (anyone on the wire can send one): ignored
    length_mismatches: int = 0  # replies whose length field was wrong (taken all the same: CRC decides)
    null_sent: int = 0
    null_acked: int = 0


class _Link(Protocol):
    """One open connection (TCP stream or connected UDP socket) to the receiver."""

    async def write(self, frame: bytes) -> None: ...

    async def read(self) -> bytes:
        """The next raw reply; raises ConnectionError when the receiver closed the connection."""
        ...

    async def close(self) -> None: ...


class _TcpLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._splitter = ReplySplitter()
        self._pending: deque[bytes] = deque()

    @classmethod
    async def open(cls, host: str, port: int) -> _TcpLink:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def write(self, frame: bytes) -> None:
        self._writer.write(frame)
        await self._writer.drain()

    async def read(self) -> bytes:
        while not self._pending:
            data = await self._reader.read(4096)
            if not data:
                raise ConnectionError("the receiver closed the connection")
            self._pending.extend(self._splitter.feed(data))
        return self._pending.popleft()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue(maxsize=64)

    def _put(self, item: bytes | Exception) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a flood of datagrams: the oldest waiting ones count
            self.queue.put_nowait(item)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._put(data)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: nobody listens
        self._put(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._put(exc or ConnectionError("UDP socket closed"))


class _UdpLink:
    def __init__(self, transport: asyncio.DatagramTransport, protocol: _UdpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def open(cls, host: str, port: int) -> _UdpLink:
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            _UdpProtocol, remote_addr=(host, port)
        )
        return cls(transport, protocol)

    async def write(self, frame: bytes) -> None:
        self._transport.sendto(frame)

    async def read(self) -> bytes:
        item = await self._protocol.queue.get()
        if isinstance(item, Exception):
            raise ConnectionError(f"UDP: {item}") from item
        return item

    async def close(self) -> None:
        self._transport.close()


_ROUTING_RE = re.compile(r"^[0-9A-Fa-f]{1,6}$")


def check_endpoint(endpoint: Endpoint) -> None:
    """ValueError (crypto.InvalidKey for the key) if the endpoint cannot be put on the wire as it is."""
    if not ACCOUNT_RE.match(endpoint.account.upper()):
        raise ValueError(f"DC-09 account {endpoint.account!r} must be 3-16 hex digits")
    if endpoint.receiver is not None and not _ROUTING_RE.match(endpoint.receiver):
        raise ValueError(f"DC-09 receiver number (R) {endpoint.receiver!r} must be 1-6 hex digits")
    if not _ROUTING_RE.match(endpoint.prefix):
        raise ValueError(f"DC-09 account prefix (L) {endpoint.prefix!r} must be 1-6 hex digits")
    if endpoint.transport not in ("tcp", "udp"):
        raise ValueError(f"DC-09 transport {endpoint.transport!r} must be tcp or udp")
    if endpoint.supervision <= 0 or endpoint.ack_timeout <= 0 or endpoint.backoff_initial <= 0:
        raise ValueError("DC-09 supervision, ack_timeout and backoff must be positive")
    if endpoint.key is not None:
        check_key(endpoint.key)


class Transmitter(RunsInBackground):
    """One connection to one DC-09 receiver (see the module docstring for the rules).

    `on_link_change` is called (in the event loop, must not block) whenever `link.up` changes. `now` is the
    local UTC clock before the NAK correction (tests pass a clock that is off)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        on_link_change: Callable[[LinkState], None] | None = None,
        on_ignored: Callable[[str], None] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        first_seq: int = SEQ_MIN,
    ) -> None:
        check_endpoint(endpoint)
        if not SEQ_MIN <= first_seq <= SEQ_MAX:
            raise ValueError(f"first_seq {first_seq} outside {SEQ_MIN}-{SEQ_MAX}")
        self._endpoint = replace(endpoint, account=endpoint.account.upper())
        self._on_link_change = on_link_change
        self._on_ignored = on_ignored
        self._now = now
        self._seq = first_seq - 1  # the last message sequence number used; the next one is next_seq(_seq)
        self._link_conn: _Link | None = None
        self._connected_before = False
        self._send_lock = asyncio.Lock()  # one message at a time, retries included: order is kept
        self._wire_lock = asyncio.Lock()  # one outstanding frame (message or NULL) on the connection
        self._stats = TransmitterStats()
        self._state = LinkState(False, time.monotonic(), None, 0, 0.0)
        self._last_traffic = _LONG_AGO  # the first NULL goes at once: the link state is known from the start
        self._backoff = endpoint.backoff_initial
        self._logged: set[str] = set()

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    @property
    def link(self) -> LinkState:
        return self._state

    @property
    def stats(self) -> TransmitterStats:
        return self._stats

    @property
    def last_seq(self) -> int:
        """The sequence number of the last message sent (0 before the first)."""
        return self._seq

    def timestamp(self) -> datetime:
        """Our clock as the receiver wants it: `now()` plus the offset the last NAK taught us."""
        return self._now() + timedelta(seconds=self._state.clock_offset)

    async def send(self, message: Message) -> Outcome:
        """Send `message` and return once the receiver ACKed it or answered DUH; retries until then."""
        async with self._send_lock:
            seq = self._seq = next_seq(self._seq)
            while True:
                reply = await self._exchange(message.token, seq, message.account.upper(), message.data, message.xdata)
                if reply is None:
                    await self._pause()
                elif reply.kind in (ReplyKind.ACK, ReplyKind.RSP):
                    self._stats.acked += 1
                    return Outcome.ACKED
                elif reply.kind is ReplyKind.DUH:
                    self._stats.duhs += 1
                    log.warning(
                        "dc09 receiver %s:%s answered DUH (understood, not processed) to %s seq %04d %r: not resent",
                        self._endpoint.host,
                        self._endpoint.port,
                        message.token,
                        seq,
                        message.data,
                    )
                    return Outcome.DUH
                elif self._correct_clock(reply):
                    self._answered(reply)  # the receiver is there; resend at once with the corrected time
                else:
                    await self._failed(f"NAK to {message.token} seq {seq:04d} that a clock correction cannot cure")
                    await self._pause()

    # -- the exchange of one frame ------------------------------------------------------------------------

    async def _exchange(self, token: str, seq: int, account: str, data: str, xdata: tuple[str, ...]) -> Reply | None:
        """Write one frame and wait for its reply: the reply, or None after a timeout or a broken connection
        (counted; the link is closed so the next attempt reconnects)."""
        async with self._wire_lock:
            conn = await self._connect()
            if conn is None:
                return None
            ep = self._endpoint
            frame = encode_message(
                token,
                seq,
                account=account,
                receiver=ep.receiver,
                prefix=ep.prefix,
                data=data,
                xdata=xdata,
                timestamp=self.timestamp().replace(microsecond=0),
                key=ep.key,
            )
            try:
                await conn.write(frame)
                self._stats.sent += 1
                if seq == NULL_SEQ:
                    self._stats.null_sent += 1
                async with asyncio.timeout(ep.ack_timeout):  # no task per frame, unlike wait_for on 3.11
                    reply = await self._reply_for(conn, seq, account)
            except TimeoutError:
                self._stats.timeouts += 1
                await self._failed(f"no reply to {token} seq {seq:04d} within {ep.ack_timeout} s")
                return None
            except (OSError, ConnectionError) as exc:
                await self._failed(f"connection lost: {exc}")
                return None
            if reply.kind is not ReplyKind.NAK:  # a NAK: the caller decides (clock corrected, or a failure)
                self._answered(reply)
            return reply

    async def _reply_for(self, conn: _Link, seq: int, account: str) -> Reply:
        """The first reply that answers this frame. Ignored (counted, logged once per kind): malformed ones,
        those for another sequence number or another account, and a plain ACK on an encrypted path: only a
        reply the receiver could have made counts as its confirmation (a NAK or DUH may be plain: a receiver
        that cannot decrypt our frame cannot encrypt its answer)."""
        while True:
            raw = await conn.read()
            try:
                reply = parse_reply(raw, key=self._endpoint.key)
            except MalformedReply as exc:
                self._count_malformed(exc.kind, exc.detail)
                continue
            if not reply.length_ok:
                self._stats.length_mismatches += 1
                self._log_once("length", f"reply length field does not match ({raw[:40]!r}); reply taken")
            if reply.seq is not None and reply.seq != seq and not (reply.kind is ReplyKind.NAK and reply.seq == 0):
                self._stats.stale_replies += 1
                self._ignored("stale")
                log.info("dc09: ignored a %s for seq %04d while waiting for %04d", reply.kind, reply.seq, seq)
                continue
            if reply.account is not None and int(reply.account, 16) != int(account, 16):  # 004711 is 4711
                self._stats.foreign_replies += 1
                self._ignored("foreign_account")
                self._log_once("foreign", f"ignored a {reply.kind} for account {reply.account}, not {account}")
                continue
            if self._endpoint.key is not None and reply.kind in (ReplyKind.ACK, ReplyKind.RSP) and not reply.encrypted:
                self._stats.unencrypted_acks += 1
                self._ignored("unencrypted_ack")
                self._log_once("unencrypted", f"ignored a plain {reply.kind} on an encrypted path ({raw[:40]!r})")
                continue
            return reply

    def _correct_clock(self, reply: Reply) -> bool:
        """After a NAK: take the receiver's time as ours (bounded). True if that changed something, so an
        immediate resend can succeed; False (resend after a pause) if the NAK has no time or we already
        agree with it."""
        self._stats.naks += 1
        if reply.timestamp is None:
            self._log_once("nak-without-time", "receiver answered NAK without its time: resending after a pause")
            return False
        wanted = (reply.timestamp - self._now()).total_seconds()
        bounded = max(-MAX_CLOCK_OFFSET, min(MAX_CLOCK_OFFSET, wanted))
        old = self._state.clock_offset
        if abs(bounded - old) < 2.0:  # the receiver's time has 1 s resolution
            log.warning("dc09: NAK although our clock agrees with the receiver's (offset %.0f s)", old)
            return False
        if bounded != wanted:
            log.error("dc09: receiver clock differs by %.0f s; correcting only %.0f s", wanted, bounded)
        else:
            log.warning("dc09: receiver clock differs from ours by %.0f s: timestamps corrected", wanted)
        self._state = replace(self._state, clock_offset=bounded)
        return True

    # -- connection and link state ------------------------------------------------------------------------

    async def _connect(self) -> _Link | None:
        if self._link_conn is not None:
            return self._link_conn
        ep = self._endpoint
        if self._connected_before:
            self._stats.reconnects += 1
        self._connected_before = True
        opener = _TcpLink.open if ep.transport == "tcp" else _UdpLink.open
        try:
            async with asyncio.timeout(ep.connect_timeout or ep.ack_timeout):  # not wait_for: a cancel always ends it
                self._link_conn = await opener(ep.host, ep.port)
        except (OSError, TimeoutError) as exc:
            self._stats.connect_failures += 1
            await self._failed(f"cannot connect to {ep.host}:{ep.port} ({ep.transport}): {exc or type(exc).__name__}")
            return None
        return self._link_conn

    async def _disconnect(self) -> None:
        conn, self._link_conn = self._link_conn, None
        if conn is not None:
            await conn.close()

    async def _failed(self, reason: str) -> None:
        await self._disconnect()
        was_up = self._state.up
        failures = self._state.consecutive_failures + 1
        if was_up or failures == 1:
            log.warning("dc09 path to %s:%s failing: %s", self._endpoint.host, self._endpoint.port, reason)
        else:
            log.debug(
                "dc09 path to %s:%s still failing (%d): %s", self._endpoint.host, self._endpoint.port, failures, reason
            )
        since = time.monotonic() if was_up else self._state.since
        self._set_state(replace(self._state, up=False, since=since, consecutive_failures=failures), changed=was_up)

    def _answered(self, reply: Reply) -> None:
        self._backoff = self._endpoint.backoff_initial
        self._last_traffic = time.monotonic()
        was_up = self._state.up
        if not was_up and self._state.consecutive_failures:
            log.warning("dc09 path to %s:%s answering again", self._endpoint.host, self._endpoint.port)
        last_ack = self._now() if reply.kind in (ReplyKind.ACK, ReplyKind.RSP) else self._state.last_ack_at
        since = self._state.since if was_up else time.monotonic()
        new = replace(self._state, up=True, since=since, last_ack_at=last_ack, consecutive_failures=0)
        self._set_state(new, changed=not was_up)

    def _set_state(self, state: LinkState, *, changed: bool) -> None:
        self._state = state
        if changed and self._on_link_change is not None:
            self._on_link_change(state)

    async def _pause(self) -> None:
        """Jittered exponential backoff between failed attempts."""
        delay = self._backoff * random.uniform(0.5, 1.0)
        self._backoff = min(self._backoff * 2, self._endpoint.backoff_max)
        await asyncio.sleep(delay)

    def _count_malformed(self, kind: str, detail: str) -> None:
        self._stats.malformed_replies += 1
        self._stats.malformed_by_kind[kind] = self._stats.malformed_by_kind.get(kind, 0) + 1
        self._ignored(kind)
        self._log_once(kind, f"malformed reply ignored: {detail}")

    def _ignored(self, reason: str) -> None:
        if self._on_ignored is not None:
            self._on_ignored(reason)

    def _log_once(self, kind: str, text: str) -> None:
        if kind in self._logged:
            log.debug("dc09 %s:%s: %s", self._endpoint.host, self._endpoint.port, text)
            return
        self._logged.add(kind)
        log.warning(
            "dc09 %s:%s: %s (logged once per kind; see the counters)", self._endpoint.host, self._endpoint.port, text
        )

    # -- NULL supervision ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """NULL supervision: a NULL message at the start (so `link.up` is known at once, not only after the
        first interval), then after `supervision` seconds without an answered exchange; after a failed NULL,
        the next one after the backoff delay (so a broken path is noticed and retried)."""
        try:
            while True:
                idle = time.monotonic() - self._last_traffic
                if idle < self._endpoint.supervision:
                    await asyncio.sleep(self._endpoint.supervision - idle)
                    continue
                if self._send_lock.locked():  # a message exchange is supervising the path already
                    await asyncio.sleep(min(self._endpoint.ack_timeout, self._endpoint.supervision))
                    continue
                reply = await self._exchange("NULL", NULL_SEQ, self._endpoint.account, "", ())
                if reply is not None and reply.kind in (ReplyKind.ACK, ReplyKind.RSP):
                    self._stats.null_acked += 1
                elif reply is not None and reply.kind is ReplyKind.NAK and self._correct_clock(reply):
                    self._answered(reply)
                    self._last_traffic = _LONG_AGO  # resend the NULL at once with the corrected time
                elif reply is None or reply.kind is ReplyKind.NAK:
                    if reply is not None:
                        await self._failed("NAK to a NULL message that a clock correction cannot cure")
                    await self._pause()
                    self._last_traffic = _LONG_AGO  # retry the NULL after the pause, not after a whole interval
        finally:
            await self._disconnect()

    async def close(self) -> None:
        await self._disconnect()
