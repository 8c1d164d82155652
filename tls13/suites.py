"""TLS 1.3 cipher suites (RFC 8446 §B.4): one table row per suite.

A suite in TLS 1.3 is only an AEAD plus the hash used by HKDF and the
transcript.  Everything else in the engine looks suites up here by code point,
so adding one is adding one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

Buf = bytes | bytearray | memoryview


class AEAD(Protocol):
    """What the record layer needs from a ``cryptography`` AEAD object.

    The ``*_into`` forms write into a caller-owned buffer and return the length,
    which lets the record layer avoid one copy per record on the hot path.
    """

    def encrypt(self, nonce: Buf, data: Buf, associated_data: Buf | None) -> bytes: ...

    def decrypt(self, nonce: Buf, data: Buf, associated_data: Buf | None) -> bytes: ...

    def encrypt_into(self, nonce: Buf, data: Buf, associated_data: Buf | None, buf: Buf) -> int: ...

    def decrypt_into(self, nonce: Buf, data: Buf, associated_data: Buf | None, buf: Buf) -> int: ...


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """One TLS 1.3 cipher suite; ``hash`` is a shared stateless algorithm instance."""

    code: int
    name: str
    hash: hashes.HashAlgorithm
    hash_len: int
    key_len: int
    tag_len: int
    aead_factory: Callable[[bytes], AEAD]
    iv_len: int = 12
    #: RFC 8446 §5.5 / rfc8446bis: records one key may protect before a KeyUpdate is due.
    max_records: int = 2**64 - 1

    @property
    def code_bytes(self) -> bytes:
        return self.code.to_bytes(2, "big")


def _ccm16(key: bytes) -> AEAD:
    return AESCCM(key, tag_length=16)


def _ccm8(key: bytes) -> AEAD:
    return AESCCM(key, tag_length=8)


# RFC 8446 §5.5: AES-GCM may protect at most 2^24.5 full-size records per key;
# ChaCha20-Poly1305 has no limit below the 2^64 sequence space.  AES-CCM (and
# CCM_8) use the lower 2^23.5 that RFC 9147 §4.5.3 derives for CCM's confidentiality.
_GCM_LIMIT = int(2**24.5)
_CCM_LIMIT = int(2**23.5)

_SHA256 = hashes.SHA256()
_SHA384 = hashes.SHA384()

_ROWS = (
    CipherSuite(
        0x1301, "TLS_AES_128_GCM_SHA256", _SHA256, 32, 16, 16, AESGCM, max_records=_GCM_LIMIT
    ),
    CipherSuite(
        0x1302, "TLS_AES_256_GCM_SHA384", _SHA384, 48, 32, 16, AESGCM, max_records=_GCM_LIMIT
    ),
    CipherSuite(0x1303, "TLS_CHACHA20_POLY1305_SHA256", _SHA256, 32, 32, 16, ChaCha20Poly1305),
    CipherSuite(
        0x1304, "TLS_AES_128_CCM_SHA256", _SHA256, 32, 16, 16, _ccm16, max_records=_CCM_LIMIT
    ),
    CipherSuite(
        0x1305, "TLS_AES_128_CCM_8_SHA256", _SHA256, 32, 16, 8, _ccm8, max_records=_CCM_LIMIT
    ),
)

SUITES: dict[int, CipherSuite] = {s.code: s for s in _ROWS}
BY_NAME: dict[str, int] = {s.name: s.code for s in _ROWS}

#: Our preference order when we choose (AES-GCM first: hardware-accelerated nearly everywhere).
DEFAULT_SUITES: tuple[int, ...] = (0x1301, 0x1302, 0x1303)


def suite_name(code: int) -> str:
    """IANA name of a suite code (for events and logs); unknown codes are shown in hex."""
    suite = SUITES.get(code)
    return suite.name if suite else f"0x{code:04X}"
