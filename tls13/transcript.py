"""The running transcript hash of handshake messages (RFC 8446 §4.4.1).

Messages are fed in as full handshake messages (4-byte header included).  A
client does not know the hash before the ServerHello picks a suite, so a
:class:`Transcript` created without a hash buffers messages until
:meth:`set_hash` is called.  After a HelloRetryRequest the first ClientHello is
replaced by a synthetic ``message_hash`` message (§4.4.1).  Hashing is
``cryptography``'s ``hashes.Hash``; ``copy()`` gives the non-finalising digest.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from .alerts import AlertDescription, TLSError

MESSAGE_HASH = 254  # HandshakeType.message_hash


class Transcript:
    """Incremental hash over handshake messages; ``digest()`` does not finalise it."""

    __slots__ = ("_hash", "_ctx", "_pending")

    def __init__(self, hash: hashes.HashAlgorithm | None = None) -> None:
        self._hash: hashes.HashAlgorithm | None = None
        self._ctx: hashes.Hash | None = None
        self._pending: list[bytes] = []
        if hash is not None:
            self.set_hash(hash)

    @property
    def hash(self) -> hashes.HashAlgorithm | None:
        return self._hash

    def set_hash(self, hash: hashes.HashAlgorithm) -> None:
        """Fix the hash (once the suite is known) and absorb any buffered messages."""
        if self._hash is not None:
            if self._hash.name != hash.name:
                raise TLSError(AlertDescription.internal_error, "transcript hash already chosen")
            return
        self._hash = hash
        self._ctx = hashes.Hash(hash)
        for message in self._pending:
            self._ctx.update(message)
        self._pending.clear()

    def update(self, message: bytes | bytearray | memoryview) -> None:
        """Append one full handshake message (header included)."""
        if self._ctx is None:
            self._pending.append(bytes(message))
        else:
            self._ctx.update(message)

    def digest(self) -> bytes:
        """Transcript-Hash of everything so far, without finalising the running state."""
        if self._ctx is None:
            raise TLSError(AlertDescription.internal_error, "transcript hash not chosen yet")
        return self._ctx.copy().finalize()

    def replace_with_message_hash(self) -> None:
        """After a HelloRetryRequest: Transcript-Hash(CH1) becomes
        Hash(message_hash || 00 00 Hash.length || Hash(ClientHello1)) (§4.4.1).

        Call this after ClientHello1 was added and before the HelloRetryRequest is.
        """
        if self._hash is None:
            raise TLSError(AlertDescription.internal_error, "transcript hash not chosen yet")
        ch1_hash = self.digest()
        self._ctx = hashes.Hash(self._hash)
        self._ctx.update(message_hash_message(ch1_hash))

    def copy(self) -> Transcript:
        """An independent transcript in the same state (e.g. for PSK binder computation)."""
        other = Transcript()
        other._hash = self._hash
        other._ctx = self._ctx.copy() if self._ctx is not None else None
        other._pending = list(self._pending)
        return other


def message_hash_message(ch1_hash: bytes) -> bytes:
    """The synthetic handshake message that stands in for ClientHello1 after an HRR."""
    return bytes((MESSAGE_HASH, 0, 0, len(ch1_hash))) + ch1_hash


def transcript_hash(hash: hashes.HashAlgorithm, *messages: bytes) -> bytes:
    """One-shot Transcript-Hash over ``messages`` (tests and binder truncation)."""
    ctx = hashes.Hash(hash)
    for message in messages:
        ctx.update(message)
    return ctx.finalize()
