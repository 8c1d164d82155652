"""The part of a TLS 1.3 connection shared by client and server.

This base class drives the record layer and owns everything that is not the
handshake itself: record-type dispatch, alerts in and out, application data,
close_notify, KeyUpdate, exporters, the keylog and resource limits.  The
subclasses (:mod:`tls13.server`, :mod:`tls13.client`) supply the handshake as a
table of handlers, one per (state, handshake message type); each handler
returns the next state, and a message with no handler in the current state is
an ``unexpected_message``.

It is sans-IO: bytes come in through :meth:`Connection.receive_data`, bytes
go out through :meth:`Connection.data_to_send`, and nothing here blocks,
sleeps or reads a clock or a random source that was not injected.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

from . import events
from .alerts import AlertDescription, AlertLevel, TLSError, alert_name, decode_error
from .config import Limits
from .keyschedule import KeySchedule, derive_secret, export, next_traffic_secret
from .messages import HandshakeReassembler, HandshakeType, KeyUpdate
from .record import RecordLayer
from .suites import CipherSuite
from .transcript import Transcript

# RFC 8446 §5.1 content types.
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

# Application data is handed to the record layer in slices of this size so the
# AEAD usage limit is checked often enough (RFC 8446 §5.5).
_SEND_SLICE = 1 << 16

Handler = Callable[[bytes], enum.Enum]
"""Processes one complete handshake message (header included); returns the next state."""


class _Initial(enum.Enum):
    """Placeholder until a subclass sets its own first state."""

    START = 0


class ConnectionStateError(TLSError):
    """The caller used the connection in a way its state forbids (no alert is sent)."""

    def __init__(self, message: str) -> None:
        super().__init__(AlertDescription.internal_error, message)


class Connection(ABC):
    """Record-layer driver and post-handshake logic common to both roles."""

    is_client: bool = False

    # Slots, not a per-instance dict: a server holds one of these per idle connection, and
    # with this many attributes a dict costs about 2 KB more (docs/architecture.md, memory).
    __slots__ = (
        "_limits",
        "_keylog",
        "_clock",
        "_record",
        "_reassembler",
        "_events",
        "_handshake_out",
        "_suite",
        "_transcript",
        "_client_random",
        "_read_secret",
        "_write_secret",
        "_exporter_secret",
        "_exporter_source",
        "_read_key_changed",
        "_handshake_done",
        "_handshake_bytes_received",
        "_info",
        "_close_sent",
        "_close_received",
        "_error",
        "_empty_records",
        "_warning_alerts",
        "_ccs_received",
        "_key_update_times",
        "_state",
    )

    def __init__(
        self,
        *,
        limits: Limits,
        keylog: Callable[[str], None] | None,
        clock: Callable[[], float],
        record_padding: int = 0,
    ) -> None:
        self._limits = limits
        self._keylog = keylog
        self._clock = clock
        self._record = RecordLayer(limits)
        self._record.padding_to = record_padding
        self._reassembler = HandshakeReassembler(limits.max_handshake_message)
        self._events: list[events.Event] = []
        # Handshake messages of one flight, written as few records as possible.
        self._handshake_out = bytearray()
        self._suite: CipherSuite | None = None
        self._transcript: Transcript | None = None
        self._client_random = b""
        self._read_secret: bytes | None = None  # current application traffic secrets
        self._write_secret: bytes | None = None
        self._exporter_secret: bytes | None = None
        # Until first use: the master secret and transcript hash (through the server Finished)
        # the exporter_master_secret derives from (§7.1); most connections never export.
        self._exporter_source: tuple[bytes, bytes] | None = None
        self._read_key_changed = False
        self._handshake_done = False
        self._handshake_bytes_received = 0  # before completion; bounded by max_handshake_buffer
        self._info: events.HandshakeComplete | None = None
        self._close_sent = False
        self._close_received = False
        self._error: TLSError | None = None
        self._empty_records = 0
        self._warning_alerts = 0
        self._ccs_received = 0
        # Made at the first KeyUpdate: an empty deque alone costs 760 bytes per connection.
        self._key_update_times: deque[float] | None = None
        self._state: enum.Enum = _Initial.START

    # ------------------------------------------------------------------ public API

    @property
    def handshake_complete(self) -> bool:
        return self._handshake_done

    @property
    def info(self) -> events.HandshakeComplete | None:
        """What was negotiated, once the handshake is complete."""
        return self._info

    @property
    def closed(self) -> bool:
        """True once the connection can neither send nor receive any more."""
        return self._error is not None or (self._close_sent and self._close_received)

    def receive_data(self, data: bytes) -> list[events.Event]:
        """Feed bytes from the transport; ``b""`` means EOF.  Returns the resulting events.

        On a protocol failure the fatal alert we owe the peer is queued before
        :class:`TLSError` is raised; every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        try:
            if not data:
                self._on_eof()
            elif not self._close_received:
                # RFC 8446 §6.1: data after the peer's close_notify is ignored.
                self._record.receive(data)
                self._process_records()
        except TLSError as error:
            self._fail(error)
            raise
        except Exception as exc:  # a bug must still end in an alert, never a stray exception
            failure = TLSError(AlertDescription.internal_error, f"{type(exc).__name__}: {exc}")
            self._fail(failure)
            raise failure from exc
        produced, self._events = self._events, []
        return produced

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call (``b""`` cheaply if nothing)."""
        if self._handshake_out:
            self._flush_handshake()
        return self._record.take_output()

    def send_data_now(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """``send_data(data)`` then ``data_to_send()`` in one call: the records to write.

        The relay's fast path: in the steady state (nothing queued, no KeyUpdate due, at
        most one slice, not empty) the records are sealed and returned without being queued.  Any
        other case goes through :meth:`send_data` and :meth:`data_to_send`, so the bytes,
        the errors and the automatic KeyUpdate (RFC 8446 §5.5) are the same either way.
        """
        record = self._record
        if (
            self._handshake_done
            and self._error is None
            and not self._close_sent
            and not self._handshake_out
            and 0 < len(data) <= _SEND_SLICE
            and not record.write_needs_update
        ):
            return record.seal_application_data(data)
        self.send_data(data)
        return self.data_to_send()

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Queue application data (after the handshake completed)."""
        self._check_can_send()
        if not self._handshake_done:
            raise ConnectionStateError("send_data before the handshake completed")
        self._write_application_data(data)

    def close(self) -> None:
        """Queue close_notify (RFC 8446 §6.1); we may still receive until the peer closes."""
        if self._close_sent or self._error is not None:
            return
        self._close_sent = True
        self._flush_handshake()
        self._record.write(ALERT, bytes((AlertLevel.WARNING, AlertDescription.close_notify)))

    def update_keys(self, request_peer: bool = True) -> None:
        """Queue a KeyUpdate and switch our sending keys (RFC 8446 §4.6.3)."""
        self._check_can_send()
        if not self._handshake_done:
            raise ConnectionStateError("KeyUpdate before the handshake completed")
        self._send_key_update(request_peer)

    def export_keying_material(self, label: bytes, context: bytes, length: int) -> bytes:
        """RFC 8446 §7.5 exporter over the exporter_master_secret."""
        exporter_secret = self._exporter()
        if exporter_secret is None or self._suite is None:
            raise ConnectionStateError("exporters are available after the handshake")
        if not 0 < length <= 255 * self._suite.hash_len:
            raise ConnectionStateError("exporter length out of range")
        return export(self._suite.hash, exporter_secret, label, context, length)

    def release_idle_memory(self) -> None:
        """The caller saw no traffic for a while: drop state that is rebuilt on demand.

        Today that is the two AEAD objects (about 2.5 KB of OpenSSL state each for AES-GCM,
        most of an idle connection's engine memory); the next record rebuilds them from the
        kept keys (about 2 µs each).  Safe at any time; nothing changes on the wire.
        """
        self._record.release_idle()

    # ------------------------------------------------------------------ subclass interface

    @abstractmethod
    def _handler_for(self, msg_type: int) -> Handler | None:
        """The handler for ``msg_type`` in the current state, or None."""

    def _ccs_allowed(self) -> bool:
        """Whether a middlebox-compatibility CCS may arrive now (RFC 8446 §5)."""
        return False

    def _on_early_application_data(self, payload: bytes) -> None:
        """Application data before the handshake completed (server 0-RTT overrides)."""
        raise TLSError(AlertDescription.unexpected_message, "application data before Finished")

    def _on_eof_during_handshake(self) -> None:
        raise TLSError(AlertDescription.handshake_failure, "eof during handshake")

    # ------------------------------------------------------------------ helpers for subclasses

    def _emit(self, event: events.Event) -> None:
        self._events.append(event)

    def _apply_limits(self, limits: Limits) -> None:
        """Switch to other resource limits (a per-name configuration); counters so far stay."""
        self._limits = limits
        self._reassembler.max_message = limits.max_handshake_message
        self._record.set_buffer_limit(limits.max_record_buffer)

    def _send_handshake(self, message: bytes, *, in_transcript: bool = True) -> None:
        """Queue a full handshake message (header included) and add it to the transcript.

        Messages are coalesced until the flight ends (a key change, another
        record type, or :meth:`data_to_send`), so a flight takes few records.
        """
        if in_transcript and self._transcript is not None:
            self._transcript.update(message)
        self._handshake_out += message

    def _flush_handshake(self) -> None:
        if self._handshake_out:
            self._record.write(HANDSHAKE, self._handshake_out)
            self._handshake_out = bytearray()

    def _send_ccs(self) -> None:
        """A middlebox-compatibility change_cipher_spec (RFC 8446 Appendix D.4)."""
        self._flush_handshake()
        self._record.write(CHANGE_CIPHER_SPEC, b"\x01")

    def _set_read_secret(self, secret: bytes) -> None:
        """Switch the receiving keys; RFC 8446 §5.1 requires this on a record boundary."""
        assert self._suite is not None
        self._record.set_read_key(self._suite, secret)
        self._read_key_changed = True

    def _set_write_secret(self, secret: bytes) -> None:
        assert self._suite is not None
        self._flush_handshake()
        self._record.set_write_key(self._suite, secret)

    def _install_application_secrets(self, read_secret: bytes, write_secret: bytes) -> None:
        """Remember the traffic secrets KeyUpdate will ratchet (RFC 8446 §7.2)."""
        self._read_secret = read_secret
        self._write_secret = write_secret

    def _set_exporter_source(self, schedule: KeySchedule, transcript_hash: bytes) -> None:
        """Remember where the exporter_master_secret comes from; it is derived on first
        use, or at once when a keylog wants it (EXPORTER_SECRET).  Only the master secret is
        kept, not the schedule: an idle connection holds no handshake secrets."""
        master_secret = schedule.master_secret
        assert master_secret is not None
        self._exporter_source = (master_secret, transcript_hash)
        if self._keylog is not None:
            exporter_secret = self._exporter()
            assert exporter_secret is not None
            self._log_secret("EXPORTER_SECRET", exporter_secret)

    def _exporter(self) -> bytes | None:
        if self._exporter_secret is None and self._exporter_source is not None:
            master_secret, transcript_hash = self._exporter_source
            assert self._suite is not None
            # RFC 8446 §7.1: exporter_master_secret = Derive-Secret(MS, "exp master", CH..SF).
            self._exporter_secret = derive_secret(
                self._suite.hash, master_secret, b"exp master", transcript_hash
            )
            self._exporter_source = None
        return self._exporter_secret

    def _log_secret(self, label: str, secret: bytes) -> None:
        """One SSLKEYLOGFILE line (NSS format) for the configured callback, if any."""
        if self._keylog is not None:
            self._keylog(f"{label} {self._client_random.hex()} {secret.hex()}")

    def _complete_handshake(self, info: events.HandshakeComplete) -> None:
        self._handshake_done = True
        self._info = info
        self._emit(info)

    # ------------------------------------------------------------------ record dispatch

    def _process_records(self) -> None:
        while not self._close_received:
            record = self._record.next_record()
            if record is None:
                return
            content_type, payload = record
            if (
                content_type == APPLICATION_DATA
                and payload
                and self._handshake_done
                and not self._reassembler.pending
            ):
                # The steady state, short-cut: what the general path below does for it.
                self._empty_records = 0
                self._events.append(events.ApplicationData(payload))
                continue
            self._check_empty_record(content_type, payload)
            if content_type != HANDSHAKE and self._reassembler.pending:
                # RFC 8446 §5.1: handshake messages must not be interleaved with other records.
                raise TLSError(
                    AlertDescription.unexpected_message,
                    "record interleaved with a handshake message",
                )
            if content_type == HANDSHAKE:
                self._on_handshake_record(payload)
            elif content_type == APPLICATION_DATA:
                self._on_application_data(payload)
            elif content_type == ALERT:
                self._on_alert(payload)
            elif content_type == CHANGE_CIPHER_SPEC:
                self._on_ccs(payload)
            else:
                raise TLSError(
                    AlertDescription.unexpected_message, f"unknown content type {content_type}"
                )

    def _check_empty_record(self, content_type: int, payload: bytes) -> None:
        if payload:
            self._empty_records = 0
            return
        if content_type != APPLICATION_DATA:
            # RFC 8446 §5.1: zero-length handshake/alert fragments must not be sent.
            raise TLSError(AlertDescription.unexpected_message, "empty non-application record")
        self._empty_records += 1
        if self._empty_records > self._limits.max_empty_records:
            raise TLSError(
                AlertDescription.unexpected_message,
                "too many empty records",
                limit="max_empty_records",
            )

    def _on_handshake_record(self, payload: bytes) -> None:
        if not self._handshake_done:
            # One bound on everything a peer may make us read before the handshake completes
            # (ClientHellos, certificate chains, …), beyond the per-message bound.
            self._handshake_bytes_received += len(payload)
            if self._handshake_bytes_received > self._limits.max_handshake_buffer:
                raise TLSError(
                    AlertDescription.illegal_parameter,
                    "handshake data before completion exceeds limit "
                    f"({self._limits.max_handshake_buffer} bytes)",
                    limit="max_handshake_buffer",
                )
        messages = self._reassembler.feed(payload)
        for index, (msg_type, raw) in enumerate(messages):
            self._read_key_changed = False
            self._dispatch_handshake(msg_type, raw)
            more_in_record = index + 1 < len(messages) or self._reassembler.pending
            if self._read_key_changed and more_in_record:
                # RFC 8446 §5.1: a key change must happen on a record boundary.
                raise TLSError(
                    AlertDescription.unexpected_message, "data after a key change in one record"
                )

    def _dispatch_handshake(self, msg_type: int, raw: bytes) -> None:
        if msg_type == HandshakeType.key_update and self._handshake_done:
            self._on_key_update(raw)
            return
        handler = self._handler_for(msg_type)
        if handler is None:
            raise TLSError(
                AlertDescription.unexpected_message,
                f"{_type_name(msg_type)} not expected in state {self._state_name()}",
            )
        self._set_state(handler(raw))

    def _set_state(self, state: enum.Enum) -> None:
        """Subclasses keep ``_state``; the base only records the handler's answer."""
        self._state = state

    def _state_name(self) -> str:
        return self._state.name

    def _on_application_data(self, payload: bytes) -> None:
        if not self._handshake_done:
            self._on_early_application_data(payload)
            return
        if payload:
            self._emit(events.ApplicationData(payload))

    def _on_alert(self, payload: bytes) -> None:
        # RFC 8446 §5.1: alerts are never fragmented or coalesced: exactly two bytes.
        if len(payload) != 2:
            raise decode_error("alert record must hold exactly one alert")
        level, code = payload[0], payload[1]
        if code == AlertDescription.close_notify:
            self._close_received = True
            self._emit(events.ConnectionClosed(clean=True))
            return
        if code == AlertDescription.user_canceled and level == AlertLevel.WARNING:
            self._warning_alerts += 1
            if self._warning_alerts > self._limits.max_warning_alerts:
                raise TLSError(
                    AlertDescription.unexpected_message,
                    "too many warning alerts",
                    limit="max_warning_alerts",
                )
            self._emit(events.AlertReceived(AlertLevel.WARNING, AlertDescription.user_canceled))
            return
        # rfc8446bis §6: every other alert is fatal whatever its level, unknown ones too.
        description = _peer_alert(code)
        raise TLSError(description, f"peer sent {alert_name(code)}", sent_by_peer=True)

    def _on_ccs(self, payload: bytes) -> None:
        # RFC 8446 §5: one unprotected 0x01 between the first ClientHello and the
        # peer's Finished is dropped; anything else is unexpected_message.
        if payload != b"\x01" or not self._ccs_allowed():
            raise TLSError(AlertDescription.unexpected_message, "unexpected change_cipher_spec")
        self._ccs_received += 1
        if self._ccs_received > self._limits.max_ccs:
            raise TLSError(
                AlertDescription.unexpected_message,
                "too many change_cipher_spec",
                limit="max_ccs",
            )

    def _on_eof(self) -> None:
        if not self._handshake_done:
            self._on_eof_during_handshake()
            return
        if not self._close_received:
            # A truncation: the user must treat it as abrupt (RFC 8446 §6.1).
            self._close_received = True
            self._emit(events.ConnectionClosed(clean=False))

    # ------------------------------------------------------------------ KeyUpdate

    def _on_key_update(self, raw: bytes) -> None:
        message = KeyUpdate.parse(raw[4:])
        self._rate_limit_key_updates()
        assert self._suite is not None and self._read_secret is not None
        self._read_secret = next_traffic_secret(self._suite.hash, self._read_secret)
        self._set_read_secret(self._read_secret)
        if message.request_update and not self._close_sent:
            # RFC 8446 §4.6.3: answer with update_not_requested before more data.
            self._send_key_update(request_peer=False)
        self._emit(events.KeyUpdated(peer_requested=message.request_update))

    def _rate_limit_key_updates(self) -> None:
        now = self._clock()
        window = self._key_update_times
        if window is None:
            window = self._key_update_times = deque()
        while window and now - window[0] >= 60.0:
            window.popleft()
        window.append(now)
        if len(window) > self._limits.max_key_updates_per_minute:
            raise TLSError(
                AlertDescription.unexpected_message,
                "KeyUpdate rate limit exceeded",
                limit="max_key_updates_per_minute",
            )

    def _send_key_update(self, request_peer: bool) -> None:
        assert self._suite is not None and self._write_secret is not None
        self._flush_handshake()
        self._record.write(HANDSHAKE, KeyUpdate(request_update=request_peer).serialize())
        self._write_secret = next_traffic_secret(self._suite.hash, self._write_secret)
        self._record.set_write_key(self._suite, self._write_secret)

    # ------------------------------------------------------------------ sending

    def _check_can_send(self) -> None:
        if self._error is not None:
            raise ConnectionStateError(f"connection failed: {self._error.message}")
        if self._close_sent:
            raise ConnectionStateError("connection closed for sending")

    def _write_application_data(self, data: bytes | bytearray | memoryview) -> None:
        self._flush_handshake()
        view = memoryview(data)
        for start in range(0, len(view), _SEND_SLICE):
            if self._handshake_done and self._record.write_needs_update:
                # RFC 8446 §5.5: rekey before the AEAD usage limit is reached.
                self._send_key_update(request_peer=False)
            self._record.write(APPLICATION_DATA, view[start : start + _SEND_SLICE])

    def _fail(self, error: TLSError) -> None:
        """Remember the error and queue the fatal alert we owe (none for peer alerts)."""
        if self._error is not None:
            return
        self._error = error
        if error.sent_by_peer or self._close_sent:
            return
        self._close_sent = True
        # A half-sent flight is useless to the peer once we abort; only the alert goes out.
        self._handshake_out = bytearray()
        try:
            self._record.write(ALERT, bytes((AlertLevel.FATAL, error.alert)))
        except TLSError:
            # The write side itself is unusable (e.g. keys exhausted): nothing more to say.
            return


def _type_name(msg_type: int) -> str:
    try:
        return HandshakeType(msg_type).name
    except ValueError:
        return f"handshake type {msg_type}"


def _peer_alert(code: int) -> AlertDescription:
    try:
        return AlertDescription(code)
    except ValueError:
        return AlertDescription.unexpected_message
