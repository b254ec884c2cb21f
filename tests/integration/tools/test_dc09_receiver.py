"""The demo's reference DC-09 receiver against the real transmitter: ACK (encrypted and plain), NULL, DUH for an
unknown account, and no answer to a frame with a wrong CRC."""

from __future__ import annotations

from gateway.dc09.frame import encode_message
from gateway.dc09.transmitter import Endpoint, Message, Outcome, Transmitter
from gateway.testing import wait_until
from gateway.tools.dc09_receiver import Dc09Receiver, Received

KEY = bytes(range(16))


def endpoint(port: int, account: str, key: bytes | None) -> Endpoint:
    return Endpoint("127.0.0.1", port, "tcp", account, "1", "0", key, supervision=0.3, ack_timeout=0.5)


async def test_messages_are_acked_decrypted_and_unknown_accounts_get_duh() -> None:
    seen: list[Received] = []
    receiver = Dc09Receiver({"4711": KEY, "0815": None}, seen.append)
    port = await receiver.start()
    try:
        async with Transmitter(endpoint(port, "4711", KEY)) as tx:
            assert await tx.send(Message("SIA-DCS", "4711", "Nri1/BA001")) is Outcome.ACKED
            await wait_until(lambda: receiver.stats.nulls >= 1, 5, what="a NULL after 0.3 s idle")
        async with Transmitter(endpoint(port, "0815", None)) as tx:
            assert await tx.send(Message("ADM-CID", "0815", "1130 01 001")) is Outcome.ACKED
        async with Transmitter(endpoint(port, "9999", None)) as tx:
            assert await tx.send(Message("SIA-DCS", "9999", "Nri1/BA001")) is Outcome.DUH
        assert [(m.account, m.token, m.data, m.encrypted) for m in seen] == [
            ("4711", "SIA-DCS", "Nri1/BA001", True),
            ("0815", "ADM-CID", "1130 01 001", False),
        ]
        assert receiver.stats.duh == 1
        frame = encode_message("SIA-DCS", 1, account="4711", receiver=None, prefix="0", data="x", timestamp=None)
        broken = frame[:1] + b"0000" + frame[5:]
        assert receiver.answer(broken) is None and receiver.stats.bad_frames["crc"] == 1
    finally:
        await receiver.close()
