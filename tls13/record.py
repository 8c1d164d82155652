"""The TLS 1.3 record layer (RFC 8446 §5): framing, protection, limits.

``RecordLayer`` is fed raw bytes with :meth:`RecordLayer.receive` and yields
one ``(content_type, payload)`` per :meth:`RecordLayer.next_record` call, with
protection removed (the inner content type of a TLSInnerPlaintext is returned,
its zero padding stripped).  Records are decrypted lazily, one per call, so the
caller can switch keys between two records that arrived in the same read.

Outgoing data goes through :meth:`RecordLayer.write`, which fragments it into
records no larger than the peer allows (RFC 8449), pads them to a multiple of
``padding_to`` (§5.4), protects them and appends them to an output buffer that
:meth:`RecordLayer.take_output` drains.

The change_cipher_spec record (type 20) is returned to the caller unprotected:
whether it is legal at that point is the state machine's decision (§5, D.4).
Every failure is a :class:`~tls13.alerts.TLSError` with the alert §5 names.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.exceptions import InvalidTag

from .alerts import AlertDescription, TLSError, unexpected_message
from .keyschedule import traffic_key_iv
from .suites import AEAD, CipherSuite

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

_OUTER_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA))
_INNER_TYPES = frozenset((ALERT, HANDSHAKE, APPLICATION_DATA))

HEADER_LEN = 5
MAX_PLAINTEXT = 1 << 14  # §5.1: TLSPlaintext.length <= 2^14
MAX_INNER_PLAINTEXT = MAX_PLAINTEXT + 1  # content + content type (RFC 8449 §4 counts both)
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256  # §5.2: TLSCiphertext.length <= 2^14 + 256
_MAX_RECORD = HEADER_LEN + MAX_CIPHERTEXT

_TLS12 = 0x0303
_SEQ_LIMIT = 1 << 64  # §5.3: sequence numbers must never wrap
_UPDATE_MARGIN = 1 << 12  # ask for a KeyUpdate this many records before an AEAD limit
_HEADER_APPDATA = bytes((APPLICATION_DATA, 3, 3))  # §5.2: opaque_type 23, version 0x0303
_TYPE_APPDATA = bytes((APPLICATION_DATA,))  # TLSInnerPlaintext.type of application data


class RecordLimits(Protocol):
    """The part of ``tls13.config.Limits`` the record layer uses."""

    @property
    def max_record_buffer(self) -> int: ...


class _Direction:
    """Keys and sequence number of one direction; the AEAD object is built once per key.

    An idle connection may drop the AEAD object (:meth:`release`): for AES-GCM it holds
    about 2.5 KB of OpenSSL state, far more than the rest of an idle connection's
    record layer.  The key is kept, and :meth:`cipher` rebuilds it at the next record.
    """

    __slots__ = ("suite", "aead", "key", "iv", "seq", "limit", "tag_len")

    def __init__(self, suite: CipherSuite, secret: bytes) -> None:
        key, iv = traffic_key_iv(suite, secret)
        self.suite = suite
        self.key = key
        self.aead: AEAD | None = suite.aead_factory(key)
        self.iv = int.from_bytes(iv, "big")
        self.seq = 0
        self.limit = min(suite.max_records, _SEQ_LIMIT - 1)
        self.tag_len = suite.tag_len

    def cipher(self) -> AEAD:
        """The AEAD object, rebuilt from the key if :meth:`release` dropped it."""
        aead = self.aead
        if aead is None:
            aead = self.aead = self.suite.aead_factory(self.key)
        return aead

    def release(self) -> None:
        self.aead = None

    def next_nonce(self) -> bytes:
        """§5.3: the per-record nonce is the IV XOR the left-padded 64-bit sequence number."""
        seq = self.seq
        if seq >= self.limit:
            # §5.5: never exceed the AEAD limit (nor wrap, §5.3): the caller had to KeyUpdate.
            raise TLSError(AlertDescription.internal_error, "key usage limit reached")
        self.seq = seq + 1
        return (self.iv ^ seq).to_bytes(12, "big")


class RecordLayer:
    """One connection's record layer in both directions.

    Attributes the state machine sets:

    * ``peer_record_limit`` — the peer's record_size_limit (RFC 8449): the largest
      TLSInnerPlaintext (content + type + padding) we may send; 2^14 + 1 by default.
    * ``read_record_limit`` — our own advertised limit, enforced on protected input.
    * ``padding_to`` — pad every protected record to a multiple of this (0 = off).
    * ``plaintext_version`` — legacy_record_version for unprotected records we
      write (0x0303; a client may use 0x0301 for its first ClientHello, §5.1).
    * ``accept_plaintext_alerts`` — let unprotected alert records through after a
      read key is installed (a server during the handshake: rfc8446bis Appendix A.1,
      a client may send alerts about post-ServerHello messages in the clear).
    """

    __slots__ = (
        "_in",
        "_in_pos",
        "_in_next",
        "_in_next_pos",
        "_out",
        "_out_len",
        "_read",
        "_write",
        "_buffer_limit",
        "_skip_budget",
        "peer_record_limit",
        "read_record_limit",
        "padding_to",
        "plaintext_version",
        "accept_plaintext_alerts",
    )

    def __init__(self, limits: RecordLimits | None = None) -> None:
        # Unconsumed input: a kept ``bytes`` read, or a bytearray once reads had to be joined.
        self._in: bytes | bytearray = b""
        self._in_pos = 0
        # The rest of a read kept behind ``_in`` when ``_in`` holds one record it completed.
        self._in_next = b""
        self._in_next_pos = 0
        # Output is a list of chunks joined once per drain: growing one bytearray record by
        # record costs a realloc-copy of everything queued so far (3x slower at 1 MiB writes).
        self._out: list[bytes | bytearray] = []
        self._out_len = 0
        self._read: _Direction | None = None
        self._write: _Direction | None = None
        self._buffer_limit = 0
        self.set_buffer_limit(limits.max_record_buffer if limits is not None else 1 << 20)
        self._skip_budget: int | None = None
        self.peer_record_limit = MAX_INNER_PLAINTEXT
        self.read_record_limit = MAX_INNER_PLAINTEXT
        self.padding_to = 0
        self.plaintext_version = _TLS12
        self.accept_plaintext_alerts = False

    def set_buffer_limit(self, max_record_buffer: int) -> None:
        """Bound buffered input (never below two full records, or no record could arrive);
        a server adopting a per-name configuration applies its Limits with this."""
        self._buffer_limit = max(max_record_buffer, 2 * _MAX_RECORD)

    # ------------------------------------------------------------------ keys

    def set_read_key(self, suite: CipherSuite, secret: bytes) -> None:
        """Protect incoming records with ``secret`` from the next record on (seq = 0)."""
        self._read = _Direction(suite, secret)

    def set_write_key(self, suite: CipherSuite, secret: bytes) -> None:
        """Protect outgoing records with ``secret`` from the next record on (seq = 0)."""
        self._write = _Direction(suite, secret)

    def clear_write_key(self) -> None:
        """Write unprotected records again from the next record on.

        TLS 1.3 needs this once: a client that sent 0-RTT data under the early
        keys and then gets a HelloRetryRequest sends ClientHello2 in the clear
        (RFC 8446 §4.1.4, §4.2.10).  Callers must flush what the old key covers first.
        """
        self._write = None

    @property
    def read_protected(self) -> bool:
        return self._read is not None

    @property
    def write_protected(self) -> bool:
        return self._write is not None

    @property
    def write_needs_update(self) -> bool:
        """True when the write key is near its AEAD usage limit (§5.5): send a KeyUpdate."""
        w = self._write
        return w is not None and w.seq >= w.limit - _UPDATE_MARGIN

    @property
    def read_sequence(self) -> int:
        return self._read.seq if self._read is not None else 0

    @property
    def write_sequence(self) -> int:
        return self._write.seq if self._write is not None else 0

    def release_idle(self) -> None:
        """Drop what an idle connection can rebuild on demand: the AEAD objects of both
        directions (rebuilt from the kept keys at the next record, about 2 µs each)."""
        for direction in (self._read, self._write):
            if direction is not None:
                direction.release()

    def skip_early_data(self, max_bytes: int) -> None:
        """The server declined 0-RTT (§4.2.10): drop application_data records that do not
        deprotect, up to ``max_bytes`` of their content, until one record deprotects."""
        self._skip_budget = max_bytes

    @property
    def skipping_early_data(self) -> bool:
        return self._skip_budget is not None

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the transport (bounded: a peer cannot make us hoard).

        Records are deprotected from views of the reads, copied as little as possible: when
        everything before was consumed (one read, whole records), a ``bytes`` read is kept
        as it is; when a record was left incomplete, only that record is completed in a
        buffer of our own and the rest of the read is kept, uncopied, behind it.
        """
        buf = self._in
        pos = self._in_pos
        if self.buffered + len(data) > self._buffer_limit:
            raise TLSError(
                AlertDescription.internal_error,
                "record input buffer limit exceeded",
                limit="max_record_buffer",
            )
        if self._in_next:  # a read is kept behind a completed record already: join all
            self._join(data)
        elif pos == len(buf):
            # Immutable bytes can be kept; a caller's mutable buffer must be copied.
            self._in = data if type(data) is bytes else bytearray(data)
            self._in_pos = 0
        elif type(data) is bytes and 0 < (need := _missing(buf, pos)) < len(data):
            with memoryview(buf) as view:
                carried = bytearray(view[pos:])
            with memoryview(data) as more:
                carried += more[:need]
            self._in, self._in_pos = carried, 0
            self._in_next, self._in_next_pos = data, need
        else:
            self._join(data)

    def _join(self, data: bytes | bytearray | memoryview) -> None:
        """Everything unconsumed, then ``data``, in one buffer of our own."""
        with memoryview(self._in) as view:
            joined = bytearray(view[self._in_pos :])
        if self._in_next:
            with memoryview(self._in_next) as view:
                joined += view[self._in_next_pos :]
        joined += data
        self._in, self._in_pos = joined, 0
        self._in_next, self._in_next_pos = b"", 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as records."""
        return len(self._in) - self._in_pos + len(self._in_next) - self._in_next_pos

    def next_record(self) -> tuple[int, bytes] | None:
        """The next complete record as ``(content_type, payload)``, or None if incomplete."""
        while True:
            buf = self._in
            pos = self._in_pos
            size = len(buf)
            if size - pos < HEADER_LEN:
                if pos == size and self._in_next:  # the completed record is read: go on
                    self._in, self._in_pos = self._in_next, self._in_next_pos
                    self._in_next, self._in_next_pos = b"", 0
                    continue
                if pos and pos == size:
                    # All consumed: free the buffer now rather than hold the last read, up
                    # to 64 KiB after a bulk transfer, while the peer idles.
                    self._in = b""
                    self._in_pos = 0
                return None
            content_type = buf[pos]
            version = (buf[pos + 1] << 8) | buf[pos + 2]
            length = (buf[pos + 3] << 8) | buf[pos + 4]
            if content_type not in _OUTER_TYPES:
                raise unexpected_message(f"unknown record type {content_type}")
            if length > MAX_CIPHERTEXT:
                raise TLSError(AlertDescription.record_overflow, "record longer than 2^14 + 256")
            start = pos + HEADER_LEN
            end = start + length
            if end > size:
                return None
            self._in_pos = end
            if content_type == APPLICATION_DATA and version == _TLS12 and self._read is not None:
                result = self._decrypt(start, end)  # the steady state, framed in this loop
            else:
                result = self._open(content_type, version, start, end)
            if result is not None:
                return result

    def _open(
        self, content_type: int, version: int, start: int, end: int
    ) -> tuple[int, bytes] | None:
        """Check and deprotect one framed record; None means it was skipped (declined 0-RTT)."""
        if content_type == APPLICATION_DATA and (
            self._read is not None or self._skip_budget is not None
        ):
            if version != _TLS12:
                # rfc8446bis §E.2: TLSCiphertext's version MAY be validated (it is also in the AAD).
                raise TLSError(AlertDescription.protocol_version, "bad legacy_record_version")
            return self._decrypt(start, end)
        # An unprotected record: §5.1 TLSPlaintext.  rfc8446bis §5.1 / Appendix E.2: its
        # legacy_record_version MUST be ignored (clients send various TLS 1.x values there).
        length = end - start
        if length > MAX_PLAINTEXT:
            raise TLSError(AlertDescription.record_overflow, "plaintext record longer than 2^14")
        if length == 0:
            # §5.1: handshake and alert fragments (and CCS) must not be empty.
            raise unexpected_message("empty unprotected record")
        if content_type != CHANGE_CIPHER_SPEC:
            plaintext_alert = content_type == ALERT and self.accept_plaintext_alerts
            if self._read is not None and not plaintext_alert:
                raise unexpected_message("unprotected record after keys were installed")
            if content_type == APPLICATION_DATA:
                raise unexpected_message("application data before the handshake")
            if content_type == HANDSHAKE:
                # A plaintext handshake record (ClientHello2 after HRR) ends any skipping.
                self._skip_budget = None
        with memoryview(self._in) as view:
            return content_type, bytes(view[start:end])

    def _decrypt(self, start: int, end: int) -> tuple[int, bytes] | None:
        """Deprotect a TLSCiphertext (§5.2); None when a declined 0-RTT record is dropped."""
        read = self._read
        if read is None:  # skipping early data before any key (after a HelloRetryRequest)
            if self._try_skip(end - start):
                return None
            raise unexpected_message("application data before the handshake")
        if end - start <= read.tag_len:
            if self._try_skip(end - start):
                return None
            raise TLSError(AlertDescription.bad_record_mac, "protected record too short")
        nonce = (read.iv ^ read.seq).to_bytes(12, "big")
        try:
            with memoryview(self._in) as view:
                # §5.2: the record header is the AAD (both are views: no copies).
                aead = read.aead or read.cipher()
                inner = aead.decrypt(nonce, view[start:end], view[start - HEADER_LEN : start])
        except InvalidTag:
            if self._try_skip(end - start - read.tag_len):
                return None
            raise TLSError(AlertDescription.bad_record_mac, "record failed to deprotect") from None
        self._skip_budget = None  # §4.2.10: the first record that deprotects ends skipping
        if read.seq >= _SEQ_LIMIT - 1:
            raise TLSError(AlertDescription.internal_error, "record sequence number exhausted")
        read.seq += 1
        if len(inner) > self.read_record_limit:
            raise TLSError(AlertDescription.record_overflow, "protected record plaintext too long")
        if inner[-1] == APPLICATION_DATA:  # unpadded application data: no stripping to do
            return APPLICATION_DATA, inner[:-1]
        return _inner_content(inner)

    def _try_skip(self, size: int) -> bool:
        """Drop an undecryptable early-data record if the skip budget still covers it."""
        budget = self._skip_budget
        if budget is None:
            return False
        if size > budget:
            self._skip_budget = None
            return False
        self._skip_budget = budget - size
        return True

    # ------------------------------------------------------------------ output

    def write(self, content_type: int, payload: bytes | bytearray | memoryview) -> None:
        """Fragment, pad, protect and queue ``payload`` as records of ``content_type``."""
        length = len(payload)
        if length == 0:
            if content_type != APPLICATION_DATA:
                raise TLSError(AlertDescription.internal_error, "empty non-application record")
            self._write_one(content_type, payload)
            return
        write = self._write
        if write is None:
            self._write_plaintext(content_type, payload)
            return
        if content_type == APPLICATION_DATA and not self.padding_to:
            self._write_application_data(write, payload)
            return
        step = self._max_fragment()
        with memoryview(payload) as view:
            for offset in range(0, length, step):
                self._write_one(content_type, view[offset : offset + step])

    def _max_fragment(self) -> int:
        """Largest content per protected record: the peer's limit minus the type byte."""
        return max(1, min(MAX_PLAINTEXT, self.peer_record_limit - 1))

    def _write_plaintext(self, content_type: int, payload: bytes | bytearray | memoryview) -> None:
        if content_type == APPLICATION_DATA:
            raise TLSError(AlertDescription.internal_error, "application data without keys")
        header = bytes((content_type,)) + self.plaintext_version.to_bytes(2, "big")
        if len(payload) <= MAX_PLAINTEXT:
            # One record (a ServerHello, a CCS): header and content in one chunk.
            self._queue(header + len(payload).to_bytes(2, "big") + payload)
            return
        with memoryview(payload) as view:
            for offset in range(0, len(view), MAX_PLAINTEXT):
                chunk = view[offset : offset + MAX_PLAINTEXT]
                self._queue(header + len(chunk).to_bytes(2, "big"))
                self._queue(bytes(chunk))

    def _write_one(self, content_type: int, content: bytes | bytearray | memoryview) -> None:
        """One protected record: TLSInnerPlaintext = content || type || zeros (§5.2, §5.4)."""
        write = self._write
        if write is None:
            raise TLSError(AlertDescription.internal_error, "application data without keys")
        inner_len = len(content) + 1
        padded_len = self._padded_length(inner_len)
        inner = bytearray(padded_len)
        inner[: inner_len - 1] = content
        inner[inner_len - 1] = content_type
        self._seal(write, inner)

    def _padded_length(self, inner_len: int) -> int:
        block = self.padding_to
        if block <= 1:
            return inner_len
        padded = -(-inner_len // block) * block
        return min(padded, self.peer_record_limit, MAX_INNER_PLAINTEXT)

    def _seal(self, write: _Direction, inner: bytes | bytearray) -> None:
        """Encrypt one TLSInnerPlaintext and queue header + ciphertext (§5.2)."""
        ct_len = len(inner) + write.tag_len
        header = _HEADER_APPDATA + ct_len.to_bytes(2, "big")
        nonce = write.next_nonce()
        self._queue(header)
        aead = write.aead or write.cipher()
        self._queue(aead.encrypt(nonce, inner, header))

    def _queue(self, chunk: bytes | bytearray) -> None:
        self._out.append(chunk)
        self._out_len += len(chunk)

    def _write_application_data(
        self, write: _Direction, payload: bytes | bytearray | memoryview
    ) -> None:
        """Queue unpadded application data: one small record, or many sealed in one buffer."""
        if len(payload) <= self._max_fragment():
            self._queue(self._seal_small(write, payload))
        else:
            self._queue(self._seal_application_data(write, payload))

    def _seal_application_data(
        self, write: _Direction, payload: bytes | bytearray | memoryview
    ) -> bytearray:
        """Fast path: unpadded application data in full-size records, sealed with
        ``encrypt_into`` straight into one output buffer; each record's TLSInnerPlaintext
        (content || type, §5.2) is staged in one buffer reused for the whole call."""
        step = self._max_fragment()
        overhead = HEADER_LEN + 1 + write.tag_len
        aead = write.aead or write.cipher()
        with memoryview(payload) as view:
            length = len(view)
            out = bytearray(length + -(-length // step) * overhead)
            stage = bytearray(min(step, length) + 1)
            pos = 0
            with memoryview(out) as out_view, memoryview(stage) as stage_view:
                for offset in range(0, length, step):
                    chunk = view[offset : offset + step]
                    size = len(chunk)
                    ct_end = pos + size + overhead
                    header = _HEADER_APPDATA + (ct_end - pos - HEADER_LEN).to_bytes(2, "big")
                    out_view[pos : pos + HEADER_LEN] = header
                    stage_view[:size] = chunk
                    stage[size] = APPLICATION_DATA
                    aead.encrypt_into(
                        write.next_nonce(),
                        stage_view[: size + 1],
                        header,
                        out_view[pos + HEADER_LEN : ct_end],
                    )
                    pos = ct_end
        return out

    def seal_application_data(self, payload: bytes | bytearray | memoryview) -> bytes | bytearray:
        """``write(APPLICATION_DATA, payload)`` then ``take_output()``, in one step.

        The records are returned, not queued (nor joined with anything): with nothing
        queued and a write key installed, that saves the queue, the join and its copy.
        Everything else (queued output, padding, no key, empty payload) takes
        :meth:`write`'s path, so the bytes on the wire are the same either way.
        """
        write = self._write
        if self._out or write is None or self.padding_to or not payload:
            self.write(APPLICATION_DATA, payload)
            return self.take_output()
        size = len(payload)
        if size <= MAX_PLAINTEXT and size < self.peer_record_limit:  # one record (see write)
            return self._seal_small(write, payload)
        return self._seal_application_data(write, payload)

    def _seal_small(self, write: _Direction, payload: bytes | bytearray | memoryview) -> bytes:
        """One unpadded application_data record: header || AEAD(content || 23) (§5.2).
        For a record this small a concatenation is cheaper than ``encrypt_into``'s buffers."""
        header = _HEADER_APPDATA + (len(payload) + 1 + write.tag_len).to_bytes(2, "big")
        aead = write.aead or write.cipher()
        return header + aead.encrypt(write.next_nonce(), bytes(payload) + _TYPE_APPDATA, header)

    def take_output(self) -> bytes:
        """Drain everything queued for the wire."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)
        out.clear()
        self._out_len = 0
        return data

    @property
    def pending_output(self) -> int:
        return self._out_len


def _missing(buf: bytes | bytearray, pos: int) -> int:
    """Bytes still missing from the record at ``pos`` (0 if its header is incomplete or
    its length is invalid: the caller then just joins, and framing reports the error)."""
    if len(buf) - pos < HEADER_LEN:
        return 0
    length = (buf[pos + 3] << 8) | buf[pos + 4]
    if length > MAX_CIPHERTEXT:
        return 0
    return max(0, pos + HEADER_LEN + length - len(buf))


def _inner_content(inner: bytes) -> tuple[int, bytes]:
    """Split TLSInnerPlaintext: strip the zero padding, take the last byte as the type."""
    if inner and inner[-1]:
        content_type = inner[-1]
        content = inner[:-1]
    else:
        stripped = inner.rstrip(b"\x00")
        if not stripped:
            # §5.4: no non-zero octet means the record has no content type.
            raise unexpected_message("protected record is all zero padding")
        content_type = stripped[-1]
        content = stripped[:-1]
    if content_type not in _INNER_TYPES:
        # §5: a protected change_cipher_spec (or unknown type) is unexpected_message.
        raise unexpected_message(f"protected record of type {content_type}")
    if not content and content_type != APPLICATION_DATA:
        raise unexpected_message("empty protected handshake or alert record")
    return content_type, content
