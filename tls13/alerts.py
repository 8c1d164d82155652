"""Alert descriptions (RFC 8446 §6) and the one error type that carries them.

Every failure inside the engine is raised as :class:`TLSError` with the alert
the RFC names for it; the connection turns that into an alert record.  Nothing
else may escape the engine's public entry points.
"""

from __future__ import annotations

from enum import IntEnum


class AlertLevel(IntEnum):
    WARNING = 1
    FATAL = 2


class AlertDescription(IntEnum):
    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    inappropriate_fallback = 86
    user_canceled = 90
    missing_extension = 109
    unsupported_extension = 110
    unrecognized_name = 112
    bad_certificate_status_response = 113
    unknown_psk_identity = 115
    certificate_required = 116
    no_application_protocol = 120


class TLSError(Exception):
    """A protocol failure; ``alert`` is what we send (or what the peer sent us).

    ``sent_by_peer`` is true when the error reports an alert we received.  ``limit`` names
    the :class:`tls13.Limits` field whose bound the peer exceeded (``"max_empty_records"``,
    …), and is None for every other failure: callers count abuse by it, never by the
    message text, which is free to change.
    """

    def __init__(
        self,
        alert: AlertDescription,
        message: str = "",
        *,
        sent_by_peer: bool = False,
        limit: str | None = None,
    ) -> None:
        self.alert = AlertDescription(alert)
        self.message = message or self.alert.name
        self.sent_by_peer = sent_by_peer
        self.limit = limit
        super().__init__(f"{self.alert.name}: {self.message}")


def decode_error(message: str) -> TLSError:
    return TLSError(AlertDescription.decode_error, message)


def illegal_parameter(message: str) -> TLSError:
    return TLSError(AlertDescription.illegal_parameter, message)


def unexpected_message(message: str) -> TLSError:
    return TLSError(AlertDescription.unexpected_message, message)


def handshake_failure(message: str) -> TLSError:
    return TLSError(AlertDescription.handshake_failure, message)


def alert_name(code: int) -> str:
    """Name for an alert code, also for codes we do not know (never raises)."""
    try:
        return AlertDescription(code).name
    except ValueError:
        return f"unknown_{code}"
