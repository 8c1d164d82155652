"""Connection configuration: frozen, validated once, shared by every connection.

A listener builds one :class:`ServerConfig` and hands it to each
:class:`~tls13.server.ServerConnection`; nothing in here changes per
connection.  Randomness, time and ephemeral key shares are injectable so that
known-answer traces (RFC 8448 style) replay byte for byte.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from cryptography import x509

from .extensions import PSK_DHE_KE, PSK_KE, encode_uint16_list
from .groups import DEFAULT_GROUPS, GROUPS, Group
from .suites import DEFAULT_SUITES, SUITES, CipherSuite
from .tickets import ReplayRegister

if TYPE_CHECKING:
    from .certificates import CertificateChain, CertificateStore
    from .groups import PrivateShare
    from .tickets import TicketKeyring

# IANA code points (RFC 8446 §4.2.7, §4.2.3; draft-ietf-tls-ecdhe-mlkem).
# Suite and group preference orders live with their tables (suites.py, groups.py).
X25519MLKEM768 = 0x11EC
X25519 = 0x001D

DEFAULT_SIGNATURE_SCHEMES: tuple[int, ...] = (
    0x0403,  # ecdsa_secp256r1_sha256
    0x0503,  # ecdsa_secp384r1_sha384
    0x0603,  # ecdsa_secp521r1_sha512
    0x0807,  # ed25519
    0x0808,  # ed448
    0x0804,  # rsa_pss_rsae_sha256
    0x0805,  # rsa_pss_rsae_sha384
    0x0806,  # rsa_pss_rsae_sha512
    0x0809,  # rsa_pss_pss_sha256
    0x080A,  # rsa_pss_pss_sha384
    0x080B,  # rsa_pss_pss_sha512
)

# RFC 8446 §8.3: how far (seconds) a client's ticket age may differ from ours for 0-RTT.
EARLY_DATA_AGE_TOLERANCE = 10.0

ClientAuthMode = Literal["none", "optional", "required"]
KeyShareFactory = Callable[[int], "PrivateShare | None"]
"""Given a group code, the ephemeral private share to use (tests), or None for a fresh one."""


def _check_codes(name: str, codes: tuple[int, ...], allow_empty: bool = False) -> None:
    if not isinstance(codes, tuple):
        raise TypeError(f"{name} must be a tuple of code points")
    if not codes and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if len(set(codes)) != len(codes):
        raise ValueError(f"{name} contains duplicates")
    for code in codes:
        if not isinstance(code, int) or not 0 <= code <= 0xFFFF:
            raise ValueError(f"{name}: {code!r} is not a 16-bit code point")


def _check_psk_modes(modes: tuple[int, ...]) -> None:
    if not isinstance(modes, tuple):
        raise TypeError("psk_modes must be a tuple of PSK key exchange modes")
    if not modes or len(set(modes)) != len(modes):
        raise ValueError("psk_modes must list psk_dhe_ke and/or psk_ke, once each")
    for mode in modes:
        if mode not in (PSK_DHE_KE, PSK_KE):
            raise ValueError(f"psk_modes: {mode!r} is not psk_ke (0) or psk_dhe_ke (1)")


def _check_alpn(protocols: tuple[str, ...]) -> None:
    if not isinstance(protocols, tuple):
        raise TypeError("alpn_protocols must be a tuple of strings")
    for proto in protocols:
        # RFC 7301 §3.1: ProtocolName is opaque<1..2^8-1>.
        if not 1 <= len(proto.encode()) <= 255:
            raise ValueError(f"ALPN protocol {proto!r} must be 1..255 bytes")


def _check_record_settings(record_size_limit: int, record_padding: int) -> None:
    # RFC 8449 §4: 64 is the smallest permitted limit; 2^14 is the TLS 1.3 plaintext maximum.
    if not 64 <= record_size_limit <= 16384:
        raise ValueError("record_size_limit must be within 64..16384")
    if record_padding < 0 or record_padding > 16384:
        raise ValueError("record_padding must be within 0..16384")


@dataclass(frozen=True)
class Limits:
    """Resource limits that turn abuse into a prompt fatal alert instead of memory growth."""

    max_handshake_message: int = 65536
    max_handshake_buffer: int = 131072
    max_empty_records: int = 32
    max_warning_alerts: int = 4
    # rfc8446bis §5 / Appendix D.4: every compatibility CCS in the handshake MUST be
    # dropped; this bound only stops a flood of them.
    max_ccs: int = 32
    max_key_updates_per_minute: int = 32
    max_record_buffer: int = 1 << 20

    def __post_init__(self) -> None:
        for name in (
            "max_handshake_message",
            "max_handshake_buffer",
            "max_record_buffer",
        ):
            if getattr(self, name) < 1024:
                raise ValueError(f"Limits.{name} must be at least 1024")
        for name in ("max_empty_records", "max_warning_alerts", "max_ccs"):
            if getattr(self, name) < 0:
                raise ValueError(f"Limits.{name} must not be negative")
        if self.max_key_updates_per_minute < 1:
            raise ValueError("Limits.max_key_updates_per_minute must be at least 1")
        if self.max_handshake_buffer < self.max_handshake_message:
            raise ValueError("max_handshake_buffer must be >= max_handshake_message")


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server connection needs; one instance per listener (or per name)."""

    certificates: CertificateStore
    cipher_suites: tuple[int, ...] = DEFAULT_SUITES
    groups: tuple[int, ...] = DEFAULT_GROUPS
    signature_schemes: tuple[int, ...] = DEFAULT_SIGNATURE_SCHEMES
    alpn_protocols: tuple[str, ...] = ()
    alpn_required: bool = False
    record_padding: int = 0
    record_size_limit: int = 16384
    tickets: int = 2
    # NewSessionTickets after a resumed handshake (RFC 8446 §4.6.1 leaves the count to us):
    # the client already holds tickets, so one fresh ticket (as OpenSSL sends) replaces the
    # one it used; capped by ``tickets`` (0 there turns tickets off altogether).
    tickets_after_resumption: int = 1
    ticket_lifetime: int = 7200
    ticket_keys: TicketKeyring | None = None
    max_early_data: int = 0
    client_auth: ClientAuthMode = "none"
    client_ca: tuple[x509.Certificate, ...] = ()
    limits: Limits = field(default_factory=Limits)
    random: Callable[[int], bytes] = os.urandom
    clock: Callable[[], float] = time.time
    key_share_factory: KeyShareFactory | None = None
    config_for_name: Callable[[str | None], ServerConfig | None] | None = None
    keylog: Callable[[str], None] | None = None
    # Prefer the client's order of cipher suites instead of ours (ours by default).
    prefer_client_suites: bool = False
    # Always negotiate our most preferred common group, even when that costs a
    # HelloRetryRequest; by default a group the client already sent a share for wins.
    strict_group_preference: bool = False
    # RFC 8446 §4.2.7: tell the client our groups in EncryptedExtensions so it can
    # pick a better share next time (the RFC 8448 traces do this).
    send_supported_groups: bool = True
    # SNI for a name we have no certificate for: "default" serves the default
    # chain; "reject" answers unrecognized_name (RFC 6066 §3).
    unknown_name: Literal["default", "reject"] = "default"
    # Secret for the HelloRetryRequest cookie MAC; None = a random per-config key.
    cookie_secret: bytes | None = None
    # RFC 8446 §4.2.2: keep no state between a HelloRetryRequest and ClientHello2; the
    # cookie carries it (so any connection sharing cookie_secret can finish the handshake).
    stateless_retry: bool = False
    # How long (seconds) a stateless retry cookie stays valid after the HelloRetryRequest.
    cookie_lifetime: int = 60
    # RFC 8446 §4.2.9 PSK key exchange modes we resume with, most preferred first:
    # psk_dhe_ke (forward secret) and psk_ke (PSK only, no (EC)DHE).
    psk_modes: tuple[int, ...] = (PSK_DHE_KE, PSK_KE)
    # 0-RTT anti-replay strike register (RFC 8446 §8.2), shared by the listener's
    # connections; created automatically when max_early_data is set.
    anti_replay: ReplayRegister | None = None
    # Who issues our tickets (sealed in them as SessionState.issuer). 0-RTT is accepted only
    # on tickets this instance issued: another process or host sharing the ticket keys has
    # its own strike register, so it could not refuse a replay there (review R22). Processes
    # sharing one register (a daemon's workers) should share one id; the default is per config.
    instance_id: bytes = field(default_factory=lambda: os.urandom(16))
    # RFC 8446 §4.2.4: certificate_authorities in the CertificateRequest is optional;
    # a large client_ca set makes the request big (False: omit it, trust is unchanged).
    send_ca_names: bool = True

    def __post_init__(self) -> None:
        _check_codes("cipher_suites", self.cipher_suites)
        _check_codes("groups", self.groups)
        _check_codes("signature_schemes", self.signature_schemes)
        _check_alpn(self.alpn_protocols)
        _check_record_settings(self.record_size_limit, self.record_padding)
        if self.alpn_required and not self.alpn_protocols:
            raise ValueError("alpn_required needs at least one ALPN protocol")
        if self.client_auth not in ("none", "optional", "required"):
            raise ValueError("client_auth must be 'none', 'optional' or 'required'")
        if self.client_auth != "none" and not self.client_ca:
            raise ValueError("client authentication needs client_ca certificates")
        if not 0 <= self.tickets <= 16:
            raise ValueError("tickets must be within 0..16")
        if not 0 <= self.tickets_after_resumption <= 16:
            raise ValueError("tickets_after_resumption must be within 0..16")
        # RFC 8446 §4.6.1: ticket_lifetime MUST NOT exceed 7 days.
        if not 0 <= self.ticket_lifetime <= 604800:
            raise ValueError("ticket_lifetime must be within 0..604800 seconds")
        if self.max_early_data < 0:
            raise ValueError("max_early_data must not be negative")
        if self.max_early_data and self.ticket_keys is None:
            raise ValueError("0-RTT (max_early_data) needs ticket_keys")
        if self.unknown_name not in ("default", "reject"):
            raise ValueError("unknown_name must be 'default' or 'reject'")
        if self.max_early_data and self.anti_replay is None:
            # §8.2: keep an accepted hello while a replay could still pass the freshness
            # check: its expected arrival may lie one tolerance ahead, fresh for one more.
            window = 2 * EARLY_DATA_AGE_TOLERANCE
            object.__setattr__(self, "anti_replay", ReplayRegister(window, 100_000))
        _check_psk_modes(self.psk_modes)
        if not 1 <= self.cookie_lifetime <= 3600:
            raise ValueError("cookie_lifetime must be within 1..3600 seconds")
        if not isinstance(self.instance_id, bytes) or not 8 <= len(self.instance_id) <= 255:
            raise ValueError("instance_id must be 8..255 bytes")
        if self.cookie_secret is None:
            object.__setattr__(self, "cookie_secret", self.random(32))
        elif len(self.cookie_secret) < 16:
            raise ValueError("cookie_secret must be at least 16 bytes")

    # Values derived from the (frozen) fields, computed on first use and kept on the
    # instance, so a handshake reads them instead of rebuilding them per connection.

    @functools.cached_property
    def ranked_groups(self) -> tuple[Group, ...]:
        """Our known groups, best first: the hybrid PQ group, then our order."""
        codes = [code for code in self.groups if code in GROUPS]
        if X25519MLKEM768 in codes:
            codes.remove(X25519MLKEM768)
            codes.insert(0, X25519MLKEM768)
        return tuple(GROUPS[code] for code in codes)

    @functools.cached_property
    def known_suites(self) -> tuple[CipherSuite, ...]:
        """Our cipher suites that the engine implements, in our order."""
        return tuple(SUITES[code] for code in self.cipher_suites if code in SUITES)

    @functools.cached_property
    def signature_scheme_set(self) -> frozenset[int]:
        return frozenset(self.signature_schemes)

    @functools.cached_property
    def supported_groups_body(self) -> bytes:
        """The EncryptedExtensions supported_groups body (RFC 8446 §4.2.7): our known groups."""
        return encode_uint16_list([code for code in self.groups if code in GROUPS])


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client connection needs; shareable across connections."""

    cipher_suites: tuple[int, ...] = DEFAULT_SUITES
    groups: tuple[int, ...] = DEFAULT_GROUPS
    # Which groups get a key share in the first ClientHello (a prefix-ordered subset of groups).
    key_share_groups: tuple[int, ...] = (X25519MLKEM768, X25519)
    signature_schemes: tuple[int, ...] = DEFAULT_SIGNATURE_SCHEMES
    # None disables server certificate verification (tests, pinned backends only).
    ca_certificates: tuple[x509.Certificate, ...] | None = None
    certificate: CertificateChain | None = None
    random: Callable[[int], bytes] = os.urandom
    clock: Callable[[], float] = time.time
    key_share_factory: KeyShareFactory | None = None
    keylog: Callable[[str], None] | None = None
    limits: Limits = field(default_factory=Limits)
    record_padding: int = 0
    record_size_limit: int = 16384
    # Send a non-empty legacy_session_id and a CCS (RFC 8446 Appendix D.4).
    middlebox_compat: bool = True

    def __post_init__(self) -> None:
        _check_codes("cipher_suites", self.cipher_suites)
        _check_codes("groups", self.groups)
        _check_codes("key_share_groups", self.key_share_groups, allow_empty=True)
        _check_codes("signature_schemes", self.signature_schemes)
        _check_record_settings(self.record_size_limit, self.record_padding)
        if not set(self.key_share_groups) <= set(self.groups):
            raise ValueError("key_share_groups must be a subset of groups")
