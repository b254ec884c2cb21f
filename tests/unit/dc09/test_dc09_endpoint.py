"""A transmitter refuses an endpoint it could not put on the wire, before it opens anything."""

from __future__ import annotations

import pytest

from gateway.dc09.crypto import InvalidKey
from gateway.dc09.transmitter import Endpoint, Transmitter


def _endpoint(**overrides: object) -> Endpoint:
    values: dict[str, object] = dict(
        host="127.0.0.1",
        port=1,
        transport="tcp",
        account="4711",
        receiver="1",
        prefix="0",
        key=None,
        supervision=60.0,
        ack_timeout=10.0,
    )
    values.update(overrides)
    return Endpoint(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"account": "47"}, ValueError, "account"),
        ({"account": "47G1"}, ValueError, "account"),
        ({"receiver": "R1"}, ValueError, "receiver"),
        ({"prefix": ""}, ValueError, "prefix"),
        ({"transport": "sctp"}, ValueError, "transport"),
        ({"ack_timeout": 0.0}, ValueError, "positive"),
        ({"key": b"short"}, InvalidKey, "16, 24 or 32"),
    ],
)
def test_bad_endpoints_are_refused(overrides: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Transmitter(_endpoint(**overrides))


def test_account_is_upper_cased_and_keys_of_all_three_sizes_are_taken() -> None:
    assert Transmitter(_endpoint(account="ab12")).endpoint.account == "AB12"
    for size in (16, 24, 32):
        Transmitter(_endpoint(key=bytes(range(size))))
    with pytest.raises(ValueError, match="first_seq"):
        Transmitter(_endpoint(), first_seq=0)
