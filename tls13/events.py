"""Events a connection reports to its user (h11 style: data in, events out).

``receive_data`` returns a list of these; they are plain frozen dataclasses so
a driver can pattern-match on them and log them without touching engine state.
Names of algorithms are IANA-style strings ("TLS_AES_128_GCM_SHA256", "x25519",
"ecdsa_secp256r1_sha256") so callers never need the engine's code tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509

from .alerts import AlertDescription, AlertLevel

if TYPE_CHECKING:
    from .tickets import SessionTicket


@dataclass(frozen=True)
class Event:
    """Base class of everything ``receive_data`` can return."""


@dataclass(frozen=True)
class ClientIdentity:
    """Who the peer proved to be with a certificate (client authentication).

    ``subject`` is the RFC 4514 string of the leaf's subject; ``names`` are the
    DNS/IP/email/URI entries of its subjectAltName, for logging and routing.
    """

    subject: str
    names: tuple[str, ...]
    certificates: tuple[x509.Certificate, ...]
    signature_scheme: str

    @classmethod
    def from_chain(
        cls, certificates: tuple[x509.Certificate, ...], signature_scheme: str
    ) -> ClientIdentity:
        """Summarise a verified chain (leaf first) into an identity."""
        leaf = certificates[0]
        names: list[str] = []
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None:
            for entry in san:
                names.append(str(entry.value))
        return cls(leaf.subject.rfc4514_string(), tuple(names), certificates, signature_scheme)


@dataclass(frozen=True)
class ClientHelloReceived(Event):
    """Server side: a ClientHello arrived; sent before the server answers it."""

    server_name: str | None
    alpn_protocols: tuple[str, ...]
    offered_early_data: bool


@dataclass(frozen=True)
class HandshakeComplete(Event):
    """Both Finished messages are verified; application data may flow."""

    version: str
    cipher_suite: str
    group: str | None
    signature_scheme: str | None
    server_name: str | None
    alpn_protocol: str | None
    hello_retry: bool
    resumed: bool
    early_data_accepted: bool
    peer_certificates: tuple[x509.Certificate, ...] = ()
    client_identity: ClientIdentity | None = None


@dataclass(frozen=True)
class ApplicationData(Event):
    data: bytes


@dataclass(frozen=True)
class EarlyData(Event):
    """Server side: 0-RTT application data, received before the handshake completes."""

    data: bytes


@dataclass(frozen=True)
class EarlyDataRejected(Event):
    """Client side: the server declined 0-RTT; the early data must be resent."""


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The peer sent close_notify (``clean``) or the transport ended without one."""

    clean: bool


@dataclass(frozen=True)
class KeyUpdated(Event):
    """The peer switched its sending keys; ``peer_requested`` if it asked us to follow."""

    peer_requested: bool


@dataclass(frozen=True)
class SessionTicketIssued(Event):
    """Server side: a NewSessionTicket was queued for the client."""


@dataclass(frozen=True)
class NewSessionTicketReceived(Event):
    """Client side: a ticket the user may store to resume later."""

    ticket: SessionTicket


@dataclass(frozen=True)
class AlertReceived(Event):
    """A non-fatal warning alert (only user_canceled qualifies in TLS 1.3)."""

    level: AlertLevel
    description: AlertDescription


@dataclass(frozen=True)
class ClientCertificateReceived(Event):
    """Server side: post-handshake client authentication finished."""

    identity: ClientIdentity | None = field(default=None)
