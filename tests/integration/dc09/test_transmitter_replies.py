"""Reply variants pysiaalarm never sends, from a tiny scripted receiver written here (a raw asyncio server):
`*ACK` without `|`, a bare `"NAK"`, garbage, a bad CRC, a reply for another sequence number, no reply."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from gateway.dc09.crypto import decrypt_block, strip_pad
from gateway.dc09.frame import crc16, format_timestamp, wrap
from gateway.dc09.transmitter import Endpoint, LinkState, Message, Outcome, Transmitter
from gateway.testing import wait_until

KEY = b"ABCDEFGHIJKLMNOP"
FRAME = re.compile(rb'^\n([0-9A-F]{4})([0-9A-F]{4})("(\*?)([A-Z-]+)"(\d{4})[^\[]*\[(.*))\r$', re.S)

# a script gets (token, seq, attempt number of that seq) and returns the raw replies to write
Script = Callable[[str, int, int], list[bytes]]


class Scripted:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.frames: list[tuple[str, int]] = []  # (token, seq) of each frame received
        self.bad_frames = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while raw := await reader.readuntil(b"\r"):
                match = FRAME.match(raw)
                if match is None or int(match[1], 16) != crc16(match[3]) or int(match[2], 16) != len(match[3]):
                    self.bad_frames += 1
                    continue
                token, seq = match[5].decode(), int(match[6])
                self.frames.append((token, seq))
                if token == "NULL":  # supervision (one NULL at the start): always answered, not scripted
                    writer.write(star_ack(seq) if match[4] else ack(seq))  # encrypted when the NULL was
                    await writer.drain()
                    continue
                attempt = self.frames.count((token, seq))
                for reply in self.script(token, seq, attempt):
                    writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def seqs(self, token: str = "SIA-DCS") -> list[int]:
        return [s for t, s in self.frames if t == token]


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[Scripted, int]]:
    rx = Scripted(script)
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    try:
        yield rx, server.sockets[0].getsockname()[1]
    finally:
        server.close()


def endpoint(port: int, *, key: bytes | None = None, ack_timeout: float = 0.3, supervision: float = 60.0) -> Endpoint:
    return Endpoint(
        host="127.0.0.1",
        port=port,
        transport="tcp",
        account="4711",
        receiver=None,
        prefix="0",
        key=key,
        supervision=supervision,
        ack_timeout=ack_timeout,
        backoff_initial=0.02,
        backoff_max=0.1,
    )


def ack(seq: int, routing: bytes = b"L0#4711") -> bytes:
    return wrap(b'"ACK"%04d%s[]' % (seq, routing))


def star_ack(seq: int, routing: bytes = b"L0#4711") -> bytes:
    """An encrypted ACK as pysiaalarm builds it: pad, `]`, the receiver's time, AES-CBC with a zero IV."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    clear = ("]" + format_timestamp(datetime.now(UTC))).encode().rjust(32, b"0")
    enc = Cipher(algorithms.AES(KEY), modes.CBC(bytes(16))).encryptor()
    return wrap(b'"*ACK"%04d%s[%s' % (seq, routing, (enc.update(clear) + enc.finalize()).hex().upper().encode()))


ALARM = Message("SIA-DCS", "4711", "Nri1/BA001")


async def test_star_ack_without_bar_after_the_pad() -> None:
    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        return [star_ack(seq)]

    async with scripted(script) as (rx, port), Transmitter(endpoint(port, key=KEY)) as tx:
        assert await tx.send(ALARM) is Outcome.ACKED
        assert tx.stats.malformed_replies == 0 and rx.seqs() == [1]


async def test_a_plain_ack_on_an_encrypted_path_is_not_the_receivers_confirmation() -> None:
    """Anyone on the wire can write `"ACK"0001...`; the receiver that holds the key answers `*ACK`."""
    ignored: list[str] = []

    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        bodiless = wrap(b'"*ACK"%04dL0#4711' % seq)  # a star proves nothing without a block that decrypts
        return [ack(seq), wrap(b'"ACK"'), bodiless] if attempt == 1 else [star_ack(seq)]

    async with scripted(script) as (rx, port), Transmitter(endpoint(port, key=KEY), on_ignored=ignored.append) as tx:
        assert await tx.send(ALARM) is Outcome.ACKED
        assert rx.seqs() == [1, 1]  # sent again after the timeout: the plain ACKs did not count
        assert tx.stats.unencrypted_acks == 3 and ignored == ["unencrypted_ack"] * 3


async def test_an_ack_naming_another_account_is_not_a_confirmation() -> None:
    ignored: list[str] = []

    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        if seq == 2:
            return [ack(seq, b"L0#004711")]  # the same account, padded by the receiver
        return [ack(seq, b"L0#4712")] if attempt == 1 else [ack(seq, b"L0#4711")]

    async with scripted(script) as (rx, port), Transmitter(endpoint(port), on_ignored=ignored.append) as tx:
        assert await tx.send(ALARM) is Outcome.ACKED
        assert rx.seqs() == [1, 1]
        assert tx.stats.foreign_replies == 1 and ignored == ["foreign_account"]
        assert await tx.send(ALARM) is Outcome.ACKED  # 004711 is the same account, padded
        assert rx.seqs() == [1, 1, 2] and tx.stats.foreign_replies == 1


async def test_bare_nak_without_time_resends_after_a_pause() -> None:
    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        return [b'"NAK"'] if attempt == 1 else [ack(seq)]

    async with scripted(script) as (rx, port), Transmitter(endpoint(port)) as tx:
        assert await tx.send(ALARM) is Outcome.ACKED
        assert tx.stats.naks == 1 and rx.seqs() == [1, 1] and tx.link.clock_offset == 0.0


async def test_garbage_bad_crc_and_other_seq_are_ignored_counted_and_survived() -> None:
    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        if attempt == 1:
            bad_crc = b'\n0000%04X"ACK"%04dL0#4711[]\r' % (len(b'"ACK"0001L0#4711[]'), seq)
            return [b"\x00\xffgarbage\r", bad_crc, ack(seq + 5)]  # then nothing: a timeout
        return [ack(seq)]

    async with scripted(script) as (rx, port), Transmitter(endpoint(port)) as tx:
        assert await tx.send(ALARM) is Outcome.ACKED
        assert await tx.send(ALARM) is Outcome.ACKED
        assert rx.seqs() == [1, 1, 2, 2]  # retransmitted with the SAME sequence number
        assert tx.stats.malformed_by_kind == {"framing": 2, "crc": 2}
        assert tx.stats.stale_replies == 2 and tx.stats.timeouts == 2


async def test_no_reply_times_out_and_retries_the_same_seq_on_a_new_connection() -> None:
    changes: list[LinkState] = []

    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        return [] if seq == 2 and attempt <= 2 else [ack(seq, b"L0R0A0")]  # a receiver's R/L/A routing variant

    async with (
        scripted(script) as (rx, port),
        Transmitter(endpoint(port, ack_timeout=0.2), on_link_change=changes.append) as tx,
    ):
        assert await tx.send(ALARM) is Outcome.ACKED
        assert await tx.send(ALARM) is Outcome.ACKED
        assert rx.seqs() == [1, 2, 2, 2]
        assert tx.stats.timeouts == 2 and tx.stats.reconnects == 2
        assert [(c.up, c.consecutive_failures) for c in changes] == [(True, 0), (False, 1), (True, 0)]
        assert tx.link.consecutive_failures == 0 and tx.link.last_ack_at is not None


async def test_duh_is_never_resent() -> None:
    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        return [wrap(b'"DUH"%04dL0#4711[]' % seq)]

    async with scripted(script) as (rx, port), Transmitter(endpoint(port)) as tx, asyncio.timeout(5):
        assert await tx.send(ALARM) is Outcome.DUH
        assert await tx.send(ALARM) is Outcome.DUH
        assert rx.seqs() == [1, 2]


async def test_nak_time_outside_the_bound_is_corrected_only_up_to_it() -> None:
    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        if attempt == 1:
            far = datetime(2036, 1, 1, tzinfo=UTC)
            return [wrap(b'"NAK"0000R0L0A0[]%s' % format_timestamp(far).encode())]
        return [ack(seq)]

    async with scripted(script) as (_rx, port), Transmitter(endpoint(port)) as tx:
        assert await tx.send(ALARM) is Outcome.ACKED
        assert tx.link.clock_offset == 3600.0


async def test_a_cancelled_send_leaves_the_transmitter_usable() -> None:
    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        return [] if seq == 1 else [ack(1), ack(seq)]  # the late ACK for seq 1 comes with the next one

    async with scripted(script) as (rx, port), Transmitter(endpoint(port, ack_timeout=5.0)) as tx:
        first = asyncio.create_task(tx.send(ALARM))
        await wait_until(lambda: rx.seqs() == [1], timeout=5)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert await tx.send(ALARM) is Outcome.ACKED
        assert rx.seqs() == [1, 2] and tx.stats.stale_replies == 1


async def test_encrypted_frames_carry_the_account_and_a_utc_timestamp() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while raw := await reader.readuntil(b"\r"):
                match = FRAME.match(raw)
                assert match is not None
                if match[5] == b"SIA-DCS":
                    seen.append(raw)
                writer.write(star_ack(int(match[6])))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with Transmitter(endpoint(port, key=KEY)) as tx:
            assert await tx.send(ALARM) is Outcome.ACKED
    finally:
        server.close()
    match = FRAME.match(seen[0])
    assert match is not None and match[4] == b"*"
    clear = strip_pad(decrypt_block(KEY, match[7].decode()))
    stamp = re.search(rb"_(\d\d:\d\d:\d\d,\d\d-\d\d-\d{4})$", clear)
    assert clear.startswith(b"#4711|Nri1/BA001]") and stamp is not None
    sent = datetime.strptime(stamp[1].decode(), "%H:%M:%S,%m-%d-%Y").replace(tzinfo=UTC)
    assert abs((sent - datetime.now(UTC)).total_seconds()) < 5


async def test_sequence_numbers_wrap_from_9999_to_0001_on_the_wire() -> None:
    async with (
        scripted(lambda token, seq, attempt: [ack(seq)]) as (rx, port),
        Transmitter(endpoint(port), first_seq=9998) as tx,
    ):
        for _ in range(3):
            assert await tx.send(ALARM) is Outcome.ACKED
        assert rx.seqs() == [9998, 9999, 1]


async def test_naks_a_clock_correction_cannot_cure_take_the_link_down() -> None:
    """A receiver that NAKs with our own time (e.g. an account it does not know): the path counts as failing."""

    def script(token: str, seq: int, attempt: int) -> list[bytes]:
        return [wrap(b'"NAK"0000R0L0A0[]%s' % format_timestamp(datetime.now(UTC)).encode())]

    async with scripted(script) as (rx, port), Transmitter(endpoint(port)) as tx:
        sending = asyncio.create_task(tx.send(ALARM))
        await wait_until(lambda: tx.link.consecutive_failures >= 3, timeout=5)
        assert not tx.link.up and not sending.done()
        assert tx.link.clock_offset == 0.0 and len(rx.seqs()) >= 3 and set(rx.seqs()) == {1}
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
