"""The DC-09 encrypted block: AES-CBC with an all-zero IV over pad + data, keys of 128, 192 or 256 bits.

The clear text is random pad bytes (never `|`, `[` or `]`, so a receiver finds where the data starts),
then `|`, then the data block's content, `]`, extended data and the timestamp, padded to a multiple of the
AES block. DC-09-2026 (as siadc09 implements it) asks for 16 to 31 pad bytes; older receivers take any pad,
so 16..31 suits both. The ciphertext goes on the wire as upper-case hex after the `[`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.domain.errors import GatewayError

BLOCK = 16
KEY_SIZES = (16, 24, 32)
_IV = bytes(BLOCK)
_FORBIDDEN_PAD = frozenset(b"|[]")


class InvalidKey(GatewayError):
    """The configured AES key is not 16, 24 or 32 bytes."""


class DecryptError(GatewayError):
    """An encrypted block could not be decrypted (not hex, not a multiple of 16 bytes)."""


def check_key(key: bytes) -> bytes:
    """Return `key` if it is a valid DC-09 AES key, else raise `InvalidKey`."""
    if len(key) not in KEY_SIZES:
        raise InvalidKey(f"a DC-09 AES key has 16, 24 or 32 bytes (32, 48 or 64 hex digits), not {len(key)}")
    return key


_SAFE = bytes.maketrans(b"|[]", b"{<>")  # the forbidden bytes become other, allowed ones


def random_pad(length: int) -> bytes:
    """`length` random bytes, none of them `|`, `[` or `]` (those three are mapped to `{`, `<`, `>`)."""
    return secrets.token_bytes(length).translate(_SAFE)


def pad_length(content_length: int) -> int:
    """Pad bytes before `|` so that pad + `|` + content fills whole blocks, with 16..31 pad bytes."""
    rem = (content_length + 1) % BLOCK
    return BLOCK + (BLOCK - rem) % BLOCK


def encrypt_block(key: bytes, content: bytes, *, pad: Callable[[int], bytes] = random_pad) -> str:
    """Encrypt `content` (data + `]` + xdata + timestamp) behind pad + `|`; return upper-case hex.
    `pad` is replaceable so golden tests can fix the pad bytes."""
    check_key(key)
    pad_bytes = pad(pad_length(len(content)))
    if _FORBIDDEN_PAD.intersection(pad_bytes):
        raise ValueError("pad bytes must not contain '|', '[' or ']'")
    clear = pad_bytes + b"|" + content
    encryptor = Cipher(algorithms.AES(key), modes.CBC(_IV)).encryptor()
    return (encryptor.update(clear) + encryptor.finalize()).hex().upper()


def decrypt_block(key: bytes, hex_text: str) -> bytes:
    """Decrypt the hex after `[` and return the whole clear text (pad included); `DecryptError` if the text
    is not hex or not whole blocks."""
    check_key(key)
    try:
        cipher_text = bytes.fromhex(hex_text)
    except ValueError as exc:
        raise DecryptError("encrypted block is not hex") from exc
    if not cipher_text or len(cipher_text) % BLOCK:
        raise DecryptError(f"encrypted block of {len(cipher_text)} bytes is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(_IV)).decryptor()
    return decryptor.update(cipher_text) + decryptor.finalize()


def strip_pad(clear: bytes) -> bytes:
    """The clear text after the pad: after the first `|`; a reply without `|` (pysiaalarm's `*ACK`, pad of
    '0's then `]`) starts at its first `]`."""
    bar = clear.find(b"|")
    close = clear.find(b"]")
    if bar >= 0 and (close < 0 or bar < close):
        return clear[bar + 1 :]
    if close >= 0:
        return clear[close:]
    raise DecryptError("decrypted block has neither '|' nor ']': wrong key?")
