"""DC-09 framing, encryption and reply parsing, against golden frames and two independent decoders
(pysiaalarm, the receiver behind Home Assistant's SIA integration; siadc09, a strict DC-09-2026 parser)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pysiaalarm import SIAAccount
from pysiaalarm.event import NAKEvent, SIAEvent
from siadc09.message import parse_frame

from gateway.dc09.crypto import decrypt_block, encrypt_block, pad_length, random_pad, strip_pad
from gateway.dc09.frame import (
    MalformedReply,
    ReplyKind,
    ReplySplitter,
    crc16,
    encode_message,
    next_seq,
    parse_reply,
    wrap,
)

WHEN = datetime(2026, 12, 1, 5, 53, 45, tzinfo=UTC)
KEYS = {
    128: b"0123456789ABCDEF",
    192: b"0123456789ABCDEFGHIJKLMN",
    256: b"0123456789ABCDEFGHIJKLMNOPQRSTUV",
}


def test_crc16_arc_check_value() -> None:
    assert crc16(b"123456789") == 0xBB3D
    assert crc16(b"") == 0


def test_worked_frames_are_encoded_exactly() -> None:
    alarm = encode_message("SIA-DCS", 1, account="1234", receiver="0", prefix="0", data="Nri1/BA001", timestamp=WHEN)
    assert alarm == b'\n0479003C"SIA-DCS"0001R0L0#1234[#1234|Nri1/BA001]_05:53:45,12-01-2026\r'
    null = encode_message("NULL", 0, account="1234", receiver="0", prefix="0", data="", timestamp=None)
    assert null == b'\n28330015"NULL"0000R0L0#1234[]\r'
    published = encode_message(
        "SIA-DCS", 1, account="1234", receiver="F3", prefix="77", data="NRR|Atest", timestamp=None
    )
    assert published == b'\nF4D20029"SIA-DCS"0001RF3L77#1234[#1234|NRR|Atest]\r'


def test_receiver_field_is_omitted_when_unset_and_l_is_always_there() -> None:
    frame = encode_message("ADM-CID", 42, account="4711", receiver=None, prefix="0", data="1130 01 001", timestamp=None)
    assert b'"ADM-CID"0042L0#4711[#4711|1130 01 001]' in frame
    parsed = parse_frame(frame)  # strict: CRC and length checked
    assert parsed.seq == 42


def test_sequence_numbers_wrap_from_9999_to_0001() -> None:
    assert next_seq(0) == 1
    assert next_seq(1) == 2
    assert next_seq(9998) == 9999
    assert next_seq(9999) == 1


def test_worked_replies_parse() -> None:
    ack = parse_reply(b'\nDBE70014"ACK"0001R0L0#1234[]\r', key=None)
    assert (ack.kind, ack.seq, ack.account, ack.framed, ack.length_ok) == (ReplyKind.ACK, 1, "1234", True, True)
    null_ack = parse_reply(b'\n181A0014"ACK"0000R0L0#1234[]\r', key=None)
    assert (null_ack.kind, null_ack.seq) == (ReplyKind.ACK, 0)


def _pysia_event(frame: bytes, key: bytes | None) -> SIAEvent:
    account = SIAAccount("1234", key.decode() if key else None, allowed_timeband=None)
    event = SIAEvent.from_line(frame.decode("ascii").strip(), {"1234": account})
    assert isinstance(event, SIAEvent)
    return event


@pytest.mark.parametrize("bits", sorted(KEYS))
def test_encrypted_frames_are_decrypted_by_pysiaalarm_and_siadc09(bits: int) -> None:
    key = KEYS[bits]
    frame = encode_message(
        "SIA-DCS", 7, account="1234", receiver="0", prefix="0", data="Nri2/FA017", timestamp=WHEN, key=key
    )
    assert frame.startswith(b"\n") and b'"*SIA-DCS"0007R0L0#1234[' in frame
    event = _pysia_event(frame, key)
    assert event.valid_message  # its CRC check
    assert (event.encrypted, event.code, event.ri, event.message, event.timestamp) == (True, "FA", "2", "017", WHEN)
    strict = parse_frame(frame, keys=key)
    assert strict.encrypted and strict.seq == 7 and strict.timestamp == WHEN


def test_encrypted_null_and_cid_decrypt() -> None:
    key = KEYS[256]
    null = encode_message("NULL", 0, account="1234", receiver="0", prefix="0", data="", timestamp=WHEN, key=key)
    assert _pysia_event(null, key).code == "RP"  # pysiaalarm's reading of a NULL
    cid = encode_message(
        "ADM-CID", 3, account="1234", receiver=None, prefix="0", data="3130 02 005", timestamp=WHEN, key=key
    )
    event = _pysia_event(cid, key)
    assert (event.event_qualifier, event.event_type, event.partition, event.ri) == ("3", "130", "02", "005")


def test_pad_is_16_to_31_bytes_without_separators_and_fills_whole_blocks() -> None:
    for content_length in range(0, 80):
        n = pad_length(content_length)
        assert 16 <= n <= 31
        assert (n + 1 + content_length) % 16 == 0
    pad = random_pad(4096)
    assert not set(pad) & set(b"|[]")
    clear = strip_pad(decrypt_block(KEYS[128], encrypt_block(KEYS[128], b"#1234|Nri1/BA001]_x")))
    assert clear == b"#1234|Nri1/BA001]_x"


def test_encrypted_message_without_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timestamp"):
        encode_message(
            "SIA-DCS", 1, account="1234", receiver=None, prefix="0", data="Nri1/BA001", timestamp=None, key=KEYS[128]
        )


def test_replies_pysiaalarm_writes_are_read() -> None:
    key = KEYS[128]
    account = SIAAccount("1234", key.decode())
    now = datetime.now(UTC).replace(microsecond=0)
    frame = encode_message(
        "SIA-DCS", 12, account="1234", receiver=None, prefix="0", data="Nri1/BA001", timestamp=now, key=key
    )
    event = SIAEvent.from_line(frame.decode().strip(), {"1234": account})
    star_ack = parse_reply(event.create_response(), key=key)  # "*ACK" whose clear text has no '|'
    assert (star_ack.kind, star_ack.seq, star_ack.encrypted) == (ReplyKind.ACK, 12, True)
    assert star_ack.timestamp is not None
    nak = parse_reply(NAKEvent().create_response(), key=None)  # "NAK"0000L0R0A0[]_time: L before R
    assert (nak.kind, nak.seq) == (ReplyKind.NAK, 0)
    assert nak.timestamp is not None and abs((nak.timestamp - now).total_seconds()) < 5
    # without R in our frame pysiaalarm writes "None" where R would be
    plain = encode_message("SIA-DCS", 13, account="1234", receiver=None, prefix="0", data="Nri1/BA001", timestamp=now)
    plain_event = SIAEvent.from_line(plain.decode().strip(), {"1234": SIAAccount("1234")})
    response = plain_event.create_response()
    assert b"None" in response
    assert parse_reply(response, key=None).seq == 13


@pytest.mark.parametrize(
    ("raw", "kind", "seq"),
    [
        (b'"NAK"', ReplyKind.NAK, None),
        (b'"ACK"', ReplyKind.ACK, None),
        (b'"DUH"0005L0#1234[]', ReplyKind.DUH, 5),
        (wrap(b'"ACK"0009R1L0#4711[]'), ReplyKind.ACK, 9),
        (wrap(b'"NAK"0000R0L0A0[]_10:00:00,12-01-2026'), ReplyKind.NAK, 0),
        (wrap(b'"ACK"0003L0R0A0#4711[]'), ReplyKind.ACK, 3),
        (b'\n1234FFFF"ACK"0003L0#4711[]\r', None, None),  # bad CRC
        (b"garbage\r", None, None),
        (b"\n\r", None, None),  # pysiaalarm's answer to a frame whose CRC it could not match
        (wrap(b'"XYZ"0001L0#4711[]'), None, None),
        (wrap(b'"*ACK"0001L0#4711[00FF]'), None, None),  # encrypted, but no key
    ],
)
def test_reply_variants(raw: bytes, kind: ReplyKind | None, seq: int | None) -> None:
    if kind is None:
        with pytest.raises(MalformedReply):
            parse_reply(raw, key=None)
        return
    reply = parse_reply(raw, key=None)
    assert (reply.kind, reply.seq) == (kind, seq)


def test_malformed_kinds_name_the_problem() -> None:
    kinds = []
    for raw in (b'\n1234FFFF"ACK"0003L0#4711[]\r', b"garbage", b"\n\r", wrap(b'"*ACK"0001L0#4711[00FF]')):
        with pytest.raises(MalformedReply) as info:
            parse_reply(raw, key=None)
        kinds.append(info.value.kind)
    assert kinds == ["crc", "framing", "empty", "decrypt"]


def test_wrong_length_field_is_flagged_but_taken() -> None:
    body = b'"ACK"0001L0#4711[]'
    raw = b"\n%04X%04X%s\r" % (crc16(body), len(body) + 3, body)
    reply = parse_reply(raw, key=None)
    assert reply.kind is ReplyKind.ACK and not reply.length_ok


def test_splitter_cuts_a_stream_into_replies() -> None:
    splitter = ReplySplitter()
    one, two = wrap(b'"ACK"0001L0#4711[]'), wrap(b'"ACK"0002L0#4711[]')
    assert splitter.feed(one + two[:5]) == [one]
    assert splitter.feed(two[5:]) == [two]
    assert splitter.feed(b'"ACK"') == [b'"ACK"']  # no envelope, no CR: taken as it came
    assert splitter.feed(b"junk" + one) == [b"junk", one]
