"""The TLS 1.3 key schedule (RFC 8446 §7.1) and the secrets derived from it.

``KeySchedule`` walks the ladder Early Secret → Handshake Secret → Master
Secret, and hands out the traffic secrets along the way; the module functions
cover what is derived from a single secret (Finished keys, KeyUpdate, exporters,
resumption PSKs, record keys).  Labels are passed without the ``"tls13 "``
prefix, which :func:`hkdf_expand_label` adds.

Every primitive comes from ``cryptography``: HKDF-Extract is ``HKDF.extract``,
HKDF-Expand is ``HKDFExpand``, hashes and HMACs are ``hashes.Hash`` and
``hmac.HMAC``.  Values that depend only on the hash (the hash of the empty
string, the no-PSK Early Secret and its "derived" secret) are computed once per
hash algorithm.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from .alerts import AlertDescription, TLSError
from .suites import CipherSuite

_LABEL_PREFIX = b"tls13 "
_MAX_LABEL = 255 - len(_LABEL_PREFIX)


def hash_bytes(hash: hashes.HashAlgorithm, data: bytes) -> bytes:
    """One-shot hash of ``data`` with the suite hash."""
    ctx = hashes.Hash(hash)
    ctx.update(data)
    return ctx.finalize()


def hmac_bytes(hash: hashes.HashAlgorithm, key: bytes, data: bytes) -> bytes:
    """One-shot HMAC-Hash(key, data)."""
    mac = hmac.HMAC(key, hash)
    mac.update(data)
    return mac.finalize()


def hkdf_extract(hash: hashes.HashAlgorithm, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract(salt, IKM) = HMAC-Hash(salt, IKM); an empty salt means HashLen zeros."""
    return HKDF.extract(hash, salt or bytes(hash.digest_size), ikm)


@functools.lru_cache(maxsize=128)
def _label_head(label: bytes, length: int) -> bytes:
    """HkdfLabel up to its context: uint16 length || opaque label<7..255> (§7.1).

    The handful of (label, length) pairs a connection uses repeat on every handshake."""
    if len(label) > _MAX_LABEL:
        raise ValueError("HKDF label too long")
    if not 0 < length <= 0xFFFF:
        raise ValueError("HKDF length out of range")
    full_label = _LABEL_PREFIX + label
    return length.to_bytes(2, "big") + bytes((len(full_label),)) + full_label


@functools.lru_cache(maxsize=128)
def _empty_context_info(label: bytes, length: int) -> bytes:
    """The whole HkdfLabel for an empty context ("key", "iv", "finished", "traffic upd")."""
    return _label_head(label, length) + b"\x00"


def hkdf_expand_label(
    hash: hashes.HashAlgorithm, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """HKDF-Expand-Label (§7.1): the HkdfLabel structure as ``info``."""
    if type(label) is not bytes:
        label = bytes(label)  # a hashable cache key (exporter labels may be any buffer)
    if not context:
        info = _empty_context_info(label, length)
    elif len(context) > 255:
        raise ValueError("HKDF context out of range")
    else:
        info = _label_head(label, length) + bytes((len(context),)) + context
    return HKDFExpand(hash, length, info).derive(secret)


@functools.lru_cache(maxsize=128)
def _derive_secret_head(label: bytes, length: int) -> bytes:
    """HkdfLabel up to the context bytes when the context is a hash of ``length`` bytes."""
    return _label_head(label, length) + bytes((length,))


def derive_secret(
    hash: hashes.HashAlgorithm, secret: bytes, label: bytes, transcript_hash: bytes
) -> bytes:
    """Derive-Secret(Secret, Label, Messages) with the transcript hash already computed."""
    length = hash.digest_size
    if len(transcript_hash) != length or type(label) is not bytes:
        return hkdf_expand_label(hash, secret, label, transcript_hash, length)
    # The usual case (a Transcript-Hash as context): only the hash is appended per call.
    info = _derive_secret_head(label, length) + transcript_hash
    return HKDFExpand(hash, length, info).derive(secret)


# --- per-hash constants ----------------------------------------------------------------------

_EMPTY_HASH: dict[str, bytes] = {}
_NO_PSK_EARLY: dict[str, bytes] = {}
_NO_PSK_DERIVED: dict[str, bytes] = {}


def empty_hash(hash: hashes.HashAlgorithm) -> bytes:
    """Transcript-Hash("") — used by every "derived" step and by exporters."""
    value = _EMPTY_HASH.get(hash.name)
    if value is None:
        value = _EMPTY_HASH[hash.name] = hash_bytes(hash, b"")
    return value


def _no_psk_early_secret(hash: hashes.HashAlgorithm) -> bytes:
    value = _NO_PSK_EARLY.get(hash.name)
    if value is None:
        zeros = bytes(hash.digest_size)
        value = _NO_PSK_EARLY[hash.name] = hkdf_extract(hash, zeros, zeros)
    return value


def _no_psk_derived(hash: hashes.HashAlgorithm) -> bytes:
    value = _NO_PSK_DERIVED.get(hash.name)
    if value is None:
        early = _no_psk_early_secret(hash)
        value = _NO_PSK_DERIVED[hash.name] = derive_secret(
            hash, early, b"derived", empty_hash(hash)
        )
    return value


# --- single-secret derivations ---------------------------------------------------------------


def finished_key(hash: hashes.HashAlgorithm, base_secret: bytes) -> bytes:
    """finished_key = HKDF-Expand-Label(BaseKey, "finished", "", Hash.length) (§4.4.4)."""
    return hkdf_expand_label(hash, base_secret, b"finished", b"", hash.digest_size)


def finished_verify_data(hash: hashes.HashAlgorithm, base_secret: bytes, th: bytes) -> bytes:
    """verify_data = HMAC(finished_key, Transcript-Hash(...)) (§4.4.4).

    Compare the result with the peer's value in constant time (``hmac.compare_digest``).
    """
    return hmac_bytes(hash, finished_key(hash, base_secret), th)


def next_traffic_secret(hash: hashes.HashAlgorithm, secret: bytes) -> bytes:
    """application_traffic_secret_N+1 after a KeyUpdate (§7.2)."""
    return hkdf_expand_label(hash, secret, b"traffic upd", b"", hash.digest_size)


def resumption_psk(hash: hashes.HashAlgorithm, rms: bytes, nonce: bytes) -> bytes:
    """The PSK of one NewSessionTicket: Expand-Label(rms, "resumption", nonce) (§4.6.1)."""
    return hkdf_expand_label(hash, rms, b"resumption", nonce, hash.digest_size)


def export(
    hash: hashes.HashAlgorithm, exporter_secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """TLS-Exporter(label, context_value, key_length) (§7.5)."""
    per_label = derive_secret(hash, exporter_secret, label, empty_hash(hash))
    return hkdf_expand_label(hash, per_label, b"exporter", hash_bytes(hash, context), length)


def traffic_key_iv(suite: CipherSuite, secret: bytes) -> tuple[bytes, bytes]:
    """The record protection key and IV of one traffic secret (§7.3)."""
    key = hkdf_expand_label(suite.hash, secret, b"key", b"", suite.key_len)
    iv = hkdf_expand_label(suite.hash, secret, b"iv", b"", suite.iv_len)
    return key, iv


# --- the ladder ------------------------------------------------------------------------------


class KeySchedule:
    """The §7.1 ladder for one connection and one cipher suite.

    Call order: ``set_psk`` (optional, before anything else) → early secrets →
    ``set_shared_secret`` → handshake secrets → ``set_master`` → application,
    exporter and resumption secrets.  Asking for a secret of a stage not reached
    yet is an engine bug and raises ``internal_error``.
    """

    __slots__ = ("suite", "hash", "early_secret", "handshake_secret", "master_secret", "_psk")

    def __init__(self, suite: CipherSuite) -> None:
        self.suite = suite
        self.hash = suite.hash
        self._psk = False
        self.early_secret = _no_psk_early_secret(self.hash)
        self.handshake_secret: bytes | None = None
        self.master_secret: bytes | None = None

    def set_psk(self, psk: bytes | None) -> None:
        """Early Secret = HKDF-Extract(0, PSK or 0s)."""
        if psk is None:
            self._psk = False
            self.early_secret = _no_psk_early_secret(self.hash)
        else:
            self._psk = True
            self.early_secret = hkdf_extract(self.hash, b"", psk)

    def _derive_early(self, label: bytes, th: bytes) -> bytes:
        return derive_secret(self.hash, self.early_secret, label, th)

    def binder_key(self, resumption: bool = True) -> bytes:
        """binder_key: "res binder" for tickets, "ext binder" for external PSKs (§7.1)."""
        label = b"res binder" if resumption else b"ext binder"
        return self._derive_early(label, empty_hash(self.hash))

    def client_early_traffic_secret(self, th: bytes) -> bytes:
        return self._derive_early(b"c e traffic", th)

    def early_exporter_master_secret(self, th: bytes) -> bytes:
        return self._derive_early(b"e exp master", th)

    def set_shared_secret(self, shared: bytes | None) -> None:
        """Handshake Secret = HKDF-Extract(Derive-Secret(early, "derived", ""), (EC)DHE).

        ``None`` is psk_ke mode (no key exchange): the IKM is HashLen zeros.
        """
        if self._psk:
            derived = derive_secret(self.hash, self.early_secret, b"derived", empty_hash(self.hash))
        else:
            derived = _no_psk_derived(self.hash)
        ikm = shared if shared is not None else bytes(self.hash.digest_size)
        self.handshake_secret = hkdf_extract(self.hash, derived, ikm)

    def _stage(self, secret: bytes | None, stage: str) -> bytes:
        if secret is None:
            raise TLSError(AlertDescription.internal_error, f"key schedule has no {stage} yet")
        return secret

    def client_handshake_traffic_secret(self, th: bytes) -> bytes:
        hs = self.handshake_secret or self._stage(None, "handshake secret")
        return derive_secret(self.hash, hs, b"c hs traffic", th)

    def server_handshake_traffic_secret(self, th: bytes) -> bytes:
        hs = self.handshake_secret or self._stage(None, "handshake secret")
        return derive_secret(self.hash, hs, b"s hs traffic", th)

    def set_master(self) -> None:
        """Master Secret = HKDF-Extract(Derive-Secret(hs, "derived", ""), 0)."""
        hs = self._stage(self.handshake_secret, "handshake secret")
        derived = derive_secret(self.hash, hs, b"derived", empty_hash(self.hash))
        self.master_secret = hkdf_extract(self.hash, derived, bytes(self.hash.digest_size))

    def _derive_master(self, label: bytes, th: bytes) -> bytes:
        ms = self.master_secret or self._stage(None, "master secret")
        return derive_secret(self.hash, ms, label, th)

    def client_application_traffic_secret(self, th: bytes) -> bytes:
        return self._derive_master(b"c ap traffic", th)

    def server_application_traffic_secret(self, th: bytes) -> bytes:
        return self._derive_master(b"s ap traffic", th)

    def exporter_master_secret(self, th: bytes) -> bytes:
        return self._derive_master(b"exp master", th)

    def resumption_master_secret(self, th: bytes) -> bytes:
        return self._derive_master(b"res master", th)
