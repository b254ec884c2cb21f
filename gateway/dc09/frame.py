"""DC-09 frames: encode a message, split and parse the receiver's replies.

A frame is `LF crc(4 hex) 0LLL "id" seq [Rrcvr] Lpref #acct [data] [xdata]... [_HH:MM:SS,MM-DD-YYYY] CR`;
CRC-16/ARC and the length cover the bytes from the first `"` up to (not including) CR. Encoding is exact;
reading is tolerant, because receivers in the field differ: replies with or without the LF/CRC/length
envelope, `R`/`L`/`A`/`#` fields in any order (pysiaalarm even writes `None` for an absent `R`), `*ACK`
with or without `|` after the pad, a bare `"NAK"`. What cannot be read raises `MalformedReply` with a kind,
so the transmitter counts and logs it by kind instead of crashing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from gateway.dc09.crypto import DecryptError, decrypt_block, encrypt_block, random_pad, strip_pad
from gateway.domain.errors import GatewayError

LF = b"\n"
CR = b"\r"
SEQ_MIN = 1
SEQ_MAX = 9999
NULL_SEQ = 0  # NULL messages carry 0000 (what receivers answer with `"ACK"0000`)
MAX_BODY = 0xFFF  # the length field is `0` + three hex digits
TIMESTAMP_FORMAT = "%H:%M:%S,%m-%d-%Y"
ACCOUNT_RE = re.compile(r"^[0-9A-F]{3,16}$")
_HEX4 = re.compile(rb"^[0-9A-Fa-f]{4}$")
_REPLY_RE = re.compile(
    r'^"(?P<star>\*?)(?P<token>[A-Z][A-Z0-9-]*)"(?P<seq>\d{4})?(?P<routing>[^\[]*)(?:\[(?P<rest>.*))?$', re.S
)
_ACCOUNT_FIELD = re.compile(r"#([0-9A-Fa-f]{3,16})")
_TIMESTAMP_RE = re.compile(r"_(\d{2}:\d{2}:\d{2},\d{2}-\d{2}-\d{4})\s*$")


def _crc16_bitwise(data: bytes) -> int:
    """CRC-16/ARC bit by bit: reflected polynomial 0xA001, initial value 0, no final xor."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


_CRC_TABLE = tuple(_crc16_bitwise(bytes([i])) for i in range(256))


def crc16(data: bytes) -> int:
    """CRC-16/ARC ("123456789" -> 0xBB3D), a byte at a time from a table built by the bitwise definition."""
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def next_seq(seq: int) -> int:
    """The sequence number after `seq`: 0001..9999, then 0001 again (0000 is the NULL message's)."""
    return SEQ_MIN if seq >= SEQ_MAX else seq + 1


def format_timestamp(when: datetime) -> str:
    """`_HH:MM:SS,MM-DD-YYYY` in UTC (DC-09 timestamps are UTC)."""
    if when.tzinfo is None:
        raise ValueError("DC-09 timestamps need an aware datetime")
    return "_" + when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """`HH:MM:SS,MM-DD-YYYY` (without `_`) as an aware UTC datetime; ValueError if it is not one."""
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def wrap(body: bytes) -> bytes:
    """LF + CRC + length + body + CR, both header fields upper-case hex."""
    if len(body) > MAX_BODY:
        raise ValueError(f"DC-09 frame body of {len(body)} bytes exceeds {MAX_BODY}")
    return b"%s%04X0%03X%s%s" % (LF, crc16(body), len(body), body, CR)


def header(token: str, seq: int, *, account: str, receiver: str | None, prefix: str, encrypted: bool) -> str:
    """`"id"seq[Rrcvr]Lpref#acct`: `*` before the id when encrypted, `L` always present, `R` only when set."""
    if not NULL_SEQ <= seq <= SEQ_MAX:
        raise ValueError(f"sequence number {seq} outside 0000-9999")
    if not ACCOUNT_RE.match(account):
        raise ValueError(f"account {account!r} must be 3-16 upper-case hex digits")
    star = "*" if encrypted else ""
    rcvr = f"R{receiver}" if receiver is not None else ""
    return f'"{star}{token}"{seq:04d}{rcvr}L{prefix}#{account}'


def encode_message(
    token: str,
    seq: int,
    *,
    account: str,
    receiver: str | None,
    prefix: str,
    data: str,
    xdata: Sequence[str] = (),
    timestamp: datetime | None,
    key: bytes | None = None,
    pad: Callable[[int], bytes] = random_pad,
) -> bytes:
    """One complete frame. `data` is what follows `#acct|` in the data block ("" for NULL: `[]`); each xdata
    item goes in its own brackets. With `key`, the id gets `*` and everything after `[` is encrypted; a
    timestamp is then mandatory."""
    if key is not None and timestamp is None:
        raise ValueError("an encrypted DC-09 message needs a timestamp")
    content = f"#{account}|{data}" if data else ""
    tail = "]" + "".join(f"[{item}]" for item in xdata) + (format_timestamp(timestamp) if timestamp else "")
    head = header(token, seq, account=account, receiver=receiver, prefix=prefix, encrypted=key is not None)
    if key is None:
        body = f"{head}[{content}{tail}"
    else:
        body = f"{head}[{encrypt_block(key, (content + tail).encode('ascii'), pad=pad)}"
    return wrap(body.encode("ascii"))


class ReplyKind(StrEnum):
    ACK = "ACK"
    NAK = "NAK"
    DUH = "DUH"
    RSP = "RSP"


@dataclass(frozen=True, slots=True)
class Reply:
    """A receiver's answer, as far as it could be read."""

    kind: ReplyKind
    seq: int | None  # None when the reply carries none (bare "NAK")
    encrypted: bool
    account: str | None
    timestamp: datetime | None  # the receiver's time (NAK), when given and readable
    framed: bool  # had the LF / CRC / length envelope (and its CRC was right)
    length_ok: bool  # the length field matched (True when there was none)


class MalformedReply(GatewayError):
    """A reply that cannot be taken as ACK/NAK/DUH/RSP. `kind` names why, for counting and log-once."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def parse_reply(raw: bytes, *, key: bytes | None) -> Reply:
    """Read one reply (one frame from `ReplySplitter`, or one datagram). Checks the CRC when the envelope
    is there; decrypts `*` replies with `key`. Raises `MalformedReply` (kinds: empty, framing, crc, token,
    decrypt)."""
    data = raw.strip(b"\r\n\x00 ")
    if not data:
        raise MalformedReply("empty", "empty reply (a receiver's answer to a frame it could not check)")
    quote = data.find(b'"')
    if quote < 0:
        raise MalformedReply("framing", f"no '\"' in reply {raw[:40]!r}")
    envelope, body = data[:quote], data[quote:]
    framed = False
    length_ok = True
    if envelope:
        if len(envelope) != 8 or not _HEX4.match(envelope[:4]) or not _HEX4.match(envelope[4:]):
            raise MalformedReply("framing", f"bad CRC/length header {envelope[:16]!r}")
        if int(envelope[:4], 16) != crc16(body):
            raise MalformedReply("crc", f"CRC {envelope[:4].decode()} does not match the reply {body[:40]!r}")
        framed = True
        length_ok = int(envelope[4:], 16) == len(body)
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedReply("framing", "reply is not ASCII") from exc
    match = _REPLY_RE.match(text)
    if match is None:
        raise MalformedReply("framing", f"unreadable reply {text[:40]!r}")
    try:
        kind = ReplyKind(match["token"])
    except ValueError as exc:
        raise MalformedReply("token", f"unknown reply id {match['token']!r}") from exc
    rest = match["rest"] or ""
    # Encrypted only if there is something that decrypts: a `*` alone proves no key (a `"*ACK"` without a
    # block could be written by anyone), so it counts as plain.
    encrypted = bool(match["star"]) and bool(rest.strip())
    if encrypted:
        if key is None:
            raise MalformedReply("decrypt", "encrypted reply, but this path has no key")
        try:
            rest = strip_pad(decrypt_block(key, rest.strip())).decode("ascii", "replace")
        except DecryptError as exc:
            raise MalformedReply("decrypt", str(exc)) from exc
    timestamp = None
    if ts := _TIMESTAMP_RE.search(rest):
        try:
            timestamp = parse_timestamp(ts.group(1))
        except ValueError:
            timestamp = None  # a NAK with an unreadable time still says "not accepted"
    account = acct.group(1).upper() if (acct := _ACCOUNT_FIELD.search(match["routing"])) else None
    seq = int(match["seq"]) if match["seq"] is not None else None
    return Reply(kind, seq, encrypted, account, timestamp, framed, length_ok)


class ReplySplitter:
    """Cuts a TCP byte stream into replies: a frame ends at CR. A reply without an envelope and without CR
    (a bare `"ACK"`, as some receivers send) is taken as it came once nothing more is pending; so is junk,
    which `parse_reply` then rejects."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while self._buf:
            cr = self._buf.find(CR)
            if cr >= 0:
                start = self._buf.rfind(LF, 0, cr)  # junk before the frame's LF is a reply of its own
                if start > 0 and self._buf[:start].strip(b"\r\n\x00 "):
                    out.append(bytes(self._buf[:start]))
                    del self._buf[:start]
                    continue
                out.append(bytes(self._buf[: cr + 1]))
                del self._buf[: cr + 1]
                continue
            stripped = self._buf.lstrip(b"\x00 ")
            if stripped.startswith(LF) and len(self._buf) < self.LIMIT:
                break  # a frame still arriving
            if self._buf.strip(b"\r\n\x00 "):
                out.append(bytes(self._buf))
            self._buf.clear()
        return out
