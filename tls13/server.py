"""The TLS 1.3 server handshake state machine (RFC 8446 §4, rfc8446bis).

States and the messages each accepts (anything else is unexpected_message)::

    START ──ClientHello──> [HelloRetryRequest] WAIT_CH2 ──ClientHello──┐
      └──────────────────────────────────────────────────────────────┴─> send
          ServerHello, [CCS], EncryptedExtensions, [CertificateRequest,
          Certificate, CertificateVerify (full handshakes only)], Finished
    ──> WAIT_EOED ──EndOfEarlyData──> WAIT_FINISHED            (0-RTT accepted)
    ──> WAIT_CERT ──Certificate──> [WAIT_CV ──CertificateVerify──>] WAIT_FINISHED
    ──> WAIT_FINISHED ──Finished──> CONNECTED  (+ NewSessionTickets)
    CONNECTED ──(request_client_certificate)──> POST_WAIT_CERT ──Certificate──>
        [POST_WAIT_CV ──CertificateVerify──>] POST_WAIT_FINISHED ──Finished──> CONNECTED

With ``stateless_retry`` the server forgets everything after a HelloRetryRequest:
the cookie carries Hash(ClientHello1), the suite, the group and a fingerprint of
what ClientHello2 must repeat, so a fresh connection in START accepts a
ClientHello2 (RFC 8446 §4.2.2).  A resumption in psk_ke mode (§4.2.9) skips the
(EC)DHE exchange: no key_share in the ServerHello, never a HelloRetryRequest.

KeyUpdate, alerts, CCS and application data are handled by the base class
(:mod:`tls13.connection`).

Every handler parses its message, enforces the RFC's MUSTs for it, and
returns the next state.  Randomness, time and ephemeral key shares come from
the :class:`~tls13.config.ServerConfig` so published traces replay exactly.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MethodType
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from . import events
from . import extensions as ext
from .alerts import AlertDescription, TLSError, handshake_failure, illegal_parameter
from .certificates import CertificateChain, verify_chain
from .codec import Reader, Writer
from .config import EARLY_DATA_AGE_TOLERANCE, ServerConfig
from .connection import Connection, ConnectionStateError, Handler
from .extensions import ExtensionType, KeyShareEntry
from .groups import GROUPS, Group
from .keyschedule import (
    KeySchedule,
    finished_verify_data,
    hash_bytes,
    hmac_bytes,
    resumption_psk,
)
from .messages import (
    HELLO_RETRY_REQUEST_RANDOM,
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    EndOfEarlyData,
    Finished,
    HandshakeType,
    ServerHello,
    encode_certificate_verify,
    encode_encrypted_extensions,
    encode_finished,
    encode_new_session_ticket,
    encode_server_hello,
    message_hash,
)
from .signatures import SCHEMES, certificate_verify_input, check_certificate_fits
from .suites import SUITES, CipherSuite
from .tickets import SessionState
from .transcript import Transcript

TLS13 = 0x0304
LEGACY_VERSION = 0x0303
SSL30 = 0x0300
SERVER_CV_CONTEXT = b"TLS 1.3, server CertificateVerify"
CLIENT_CV_CONTEXT = b"TLS 1.3, client CertificateVerify"

# RFC 8446 §4.1.2: the only ClientHello changes allowed after a HelloRetryRequest.
_HRR_MUTABLE_EXTENSIONS = frozenset(
    {
        ExtensionType.key_share,
        ExtensionType.cookie,
        ExtensionType.early_data,
        ExtensionType.padding,
        ExtensionType.pre_shared_key,
    }
)
_STATEFUL_COOKIE = 1
_STATELESS_COOKIE = 2
_SHA256 = hashes.SHA256()  # cookie MAC and ClientHello fingerprint
_COOKIE_MAC_LEN = _SHA256.digest_size  # HMAC-SHA256
# Clock disagreement tolerated between the servers that share a cookie_secret.
_COOKIE_CLOCK_SKEW = 5
# RFC 8446 §8.3: how far the client's ticket age may drift from ours for 0-RTT.
_AGE_TOLERANCE_MS = int(EARLY_DATA_AGE_TOLERANCE * 1000)
# How much 0-RTT data we skip when we decline it (RFC 8446 §4.2.10) and 0-RTT is off.
_DEFAULT_EARLY_DATA_SKIP = 16384
# One OS random draw covers a handshake: 32 (random) + up to 32 (key share: X25519; larger
# groups draw their own) + 16 per ticket (age_add, nonce).
_RANDOM_BATCH = 128


class ServerState(enum.Enum):
    # Members are singletons compared by identity: hash them like objects (C speed), not
    # by name as Enum does in Python, since the handler table is keyed on the state.
    __hash__ = object.__hash__

    START = enum.auto()
    WAIT_CH2 = enum.auto()
    WAIT_EOED = enum.auto()
    WAIT_CERT = enum.auto()
    WAIT_CV = enum.auto()
    WAIT_FINISHED = enum.auto()
    CONNECTED = enum.auto()
    # Post-handshake client authentication (RFC 8446 §4.6.2).
    POST_WAIT_CERT = enum.auto()
    POST_WAIT_CV = enum.auto()
    POST_WAIT_FINISHED = enum.auto()


# States in which the client may still send its single compatibility CCS (RFC 8446 §5).
_CCS_STATES = frozenset(
    {
        ServerState.WAIT_CH2,
        ServerState.WAIT_EOED,
        ServerState.WAIT_CERT,
        ServerState.WAIT_CV,
        ServerState.WAIT_FINISHED,
    }
)


class _Selection(NamedTuple):
    """What the server chose from one ClientHello (a tuple: made once per handshake)."""

    suite: CipherSuite
    group: Group | None  # None: psk_ke resumption, no (EC)DHE at all (RFC 8446 §4.2.9)
    share: KeyShareEntry | None  # None with a group: no usable share, HelloRetryRequest

    @property
    def needs_retry(self) -> bool:
        return self.group is not None and self.share is None


class _Resumption(NamedTuple):
    """The ticket a ClientHello resumes (RFC 8446 §4.2.11)."""

    identity_index: int  # which offered PSK (the ServerHello selected_identity)
    state: SessionState
    obfuscated_age: int
    ticket: bytes  # the PSK identity: 0-RTT anti-replay key (§8.1 single use)
    mode: int  # psk_dhe_ke or psk_ke (§4.2.9)
    schedule: KeySchedule  # at the Early Secret of this PSK (checked the binder)


class _RetryCookie(NamedTuple):
    """What a verified HelloRetryRequest cookie tells us about ClientHello1."""

    suite: int
    group: int
    ch1_hash: bytes
    fingerprint: bytes  # _retry_fingerprint(ClientHello1)


@dataclass
class _PeerAuth:
    """State of one client-certificate exchange (in-handshake or post-handshake)."""

    context: bytes
    schemes: tuple[int, ...]
    requested: frozenset[int]  # extension types of our CertificateRequest (§4.4.2)
    certificates: tuple[x509.Certificate, ...] = ()
    identity: events.ClientIdentity | None = None


# Extension types as plain ints: the received ClientHello's lookups are dict hits.
_SERVER_NAME = int(ExtensionType.server_name)
_SUPPORTED_GROUPS = int(ExtensionType.supported_groups)
_KEY_SHARE = int(ExtensionType.key_share)
_ALPN = int(ExtensionType.application_layer_protocol_negotiation)
_PSK_MODES = int(ExtensionType.psk_key_exchange_modes)
_PRE_SHARED_KEY = int(ExtensionType.pre_shared_key)
_SUPPORTED_VERSIONS = int(ExtensionType.supported_versions)
_SIGNATURE_ALGORITHMS = int(ExtensionType.signature_algorithms)
_SIGNATURE_ALGORITHMS_CERT = int(ExtensionType.signature_algorithms_cert)
_COOKIE = int(ExtensionType.cookie)
_EARLY_DATA = int(ExtensionType.early_data)
_POST_HANDSHAKE_AUTH = int(ExtensionType.post_handshake_auth)
_RECORD_SIZE_LIMIT = int(ExtensionType.record_size_limit)
_STATUS_REQUEST = int(ExtensionType.status_request)


@dataclass(frozen=True)
class _ReceivedHello(ClientHello):
    """A received ClientHello whose extensions were decoded once, while parsing: the
    handshake consults the name, the PSK offer, the shares and the groups several times,
    so every typed accessor is a dict lookup (``decoded`` holds what the accessor of
    each present, recognized extension returns; ``bodies`` the raw bodies by type)."""

    decoded: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)
    bodies: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, body: bytes) -> _ReceivedHello:
        decoded: dict[int, Any] = {}
        fields = ClientHello.parse_fields(body, decoded)
        return cls(*fields, decoded, dict(fields[3]))

    def extension(self, ext_type: int) -> bytes | None:
        return self.bodies.get(ext_type)

    def has(self, ext_type: int) -> bool:
        return ext_type in self.bodies

    def server_name(self) -> str | None:
        value: str | None = self.decoded.get(_SERVER_NAME)  # typed at parse time
        return value

    def supported_versions(self) -> list[int] | None:
        value: list[int] | None = self.decoded.get(_SUPPORTED_VERSIONS)  # typed at parse time
        return value

    def supported_groups(self) -> list[int] | None:
        value: list[int] | None = self.decoded.get(_SUPPORTED_GROUPS)  # typed at parse time
        return value

    def key_shares(self) -> list[KeyShareEntry] | None:
        value: list[KeyShareEntry] | None = self.decoded.get(_KEY_SHARE)  # typed at parse time
        return value

    def signature_algorithms(self) -> list[int] | None:
        value: list[int] | None = self.decoded.get(_SIGNATURE_ALGORITHMS)  # typed at parse time
        return value

    def signature_algorithms_cert(self) -> list[int] | None:
        value: list[int] | None = self.decoded.get(
            _SIGNATURE_ALGORITHMS_CERT
        )  # typed at parse time
        return value

    def alpn_protocols(self) -> list[str] | None:
        value: list[str] | None = self.decoded.get(_ALPN)  # typed at parse time
        return value

    def cookie(self) -> bytes | None:
        value: bytes | None = self.decoded.get(_COOKIE)  # typed at parse time
        return value

    def psk_key_exchange_modes(self) -> list[int] | None:
        value: list[int] | None = self.decoded.get(_PSK_MODES)  # typed at parse time
        return value

    def pre_shared_key(self) -> ext.OfferedPsks | None:
        value: ext.OfferedPsks | None = self.decoded.get(_PRE_SHARED_KEY)  # typed at parse time
        return value

    def early_data(self) -> bool:
        return _EARLY_DATA in self.bodies

    def post_handshake_auth(self) -> bool:
        return _POST_HANDSHAKE_AUTH in self.bodies

    def record_size_limit(self) -> int | None:
        value: int | None = self.decoded.get(_RECORD_SIZE_LIMIT)  # typed at parse time
        return value

    def status_request(self) -> ext.StatusRequest | None:
        value: ext.StatusRequest | None = self.decoded.get(_STATUS_REQUEST)  # typed at parse time
        return value


class ServerConnection(Connection):
    """One server side of a TLS 1.3 connection (sans-IO)."""

    is_client = False

    __slots__ = (
        "_config",
        "_key_schedule",
        "_first_hello",
        "_hello_raw",
        "_cookie",
        "_hrr_group",
        "_group",
        "_chain",
        "_scheme",
        "_server_name",
        "_alpn",
        "_client_hs_secret",
        "_server_hs_secret",
        "_hello_retry",
        "_post_transcript",
        "_client_app_secret",
        "_resumption_secret",
        "_sent_ccs",
        "_early_accepted",
        "_early_received",
        "_psk_modes",
        "_resumption",
        "_post_handshake_auth_offered",
        "_peer_auth",
        "_post_auth_requests",
        "_random_pool",
    )

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(
            limits=config.limits,
            keylog=config.keylog,
            clock=config.clock,
            record_padding=config.record_padding,
        )
        self._config = config
        self._state: enum.Enum = ServerState.START
        self._key_schedule: KeySchedule | None = None
        self._first_hello: ClientHello | None = None  # kept only without stateless_retry
        self._hello_raw = b""  # the ClientHello being answered, as received (binder input)
        self._cookie = b""
        self._hrr_group: Group | None = None
        self._group: Group | None = None
        self._chain: CertificateChain | None = None
        self._scheme: int | None = None
        self._server_name: str | None = None
        self._alpn: str | None = None
        self._client_hs_secret = b""
        self._server_hs_secret = b""
        self._hello_retry = False
        self._post_transcript: Transcript | None = None
        self._client_app_secret = b""
        self._resumption_secret = b""
        self._sent_ccs = False
        self._early_accepted = False
        self._early_received = 0
        self._psk_modes: tuple[int, ...] = ()
        self._resumption: _Resumption | None = None
        self._post_handshake_auth_offered = False
        self._peer_auth: _PeerAuth | None = None
        self._post_auth_requests = 0
        self._random_pool = b""  # see _random
        # rfc8446bis Appendix A.1: a client may send alerts about post-ServerHello
        # messages in the clear, so take unprotected alerts until its Finished.
        self._record.accept_plaintext_alerts = True

    # ------------------------------------------------------------------ public extras

    @property
    def state(self) -> ServerState:
        assert isinstance(self._state, ServerState)
        return self._state

    def request_client_certificate(self) -> None:
        """Queue a post-handshake CertificateRequest (RFC 8446 §4.6.2)."""
        self._check_can_send()
        if self._state is not ServerState.CONNECTED:
            raise ConnectionStateError("post-handshake auth needs a connected, idle connection")
        if not self._post_handshake_auth_offered:
            raise ConnectionStateError("the client did not offer post_handshake_auth")
        if not self._config.client_ca:
            raise ConnectionStateError("post-handshake auth needs client_ca certificates")
        self._post_auth_requests += 1
        context = self._post_auth_requests.to_bytes(2, "big") + self._config.random(8)
        self._send_certificate_request(context)
        self._set_state(ServerState.POST_WAIT_CERT)

    def _random(self, n: int) -> bytes:
        """``config.random(n)``; from the OS CSPRNG (the default) a handshake's random
        values (server random, key share, ticket age_add and nonces) come from one
        batched draw instead of a system call each.  An injected source (traces, tests)
        is called exactly as before, once per value."""
        source = self._config.random
        if source is not os.urandom:
            return source(n)
        pool = self._random_pool
        if len(pool) < n:
            pool = os.urandom(max(n, _RANDOM_BATCH))
        self._random_pool = pool[n:]
        return pool[:n]

    # ------------------------------------------------------------------ base-class hooks

    def _handler_for(self, msg_type: int) -> Handler | None:
        handler = _HANDLERS.get((self._state, msg_type))
        return None if handler is None else MethodType(handler, self)

    def _ccs_allowed(self) -> bool:
        if self._state is ServerState.START and self._config.stateless_retry:
            # rfc8446bis §4.2.2: a stateless server cannot tell the CCS a client sends
            # between its ClientHellos from a stray one, and MUST ignore it.
            return True
        return self._state in _CCS_STATES

    # ------------------------------------------------------------------ ClientHello

    def _on_client_hello(self, raw: bytes) -> ServerState:
        hello = _ReceivedHello.parse(raw[4:])
        self._hello_raw = raw
        _check_version(hello)
        self._use_config(self._config_for(hello))
        self._emit(
            events.ClientHelloReceived(
                server_name=hello.server_name(),
                alpn_protocols=tuple(hello.alpn_protocols() or ()),
                offered_early_data=hello.early_data(),
            )
        )
        if self._config.stateless_retry and hello.cookie() is not None:
            # RFC 8446 §4.2.2: a ClientHello2 answering a HelloRetryRequest that we (or a
            # server sharing our cookie_secret) sent; the cookie holds all we need.
            return self._on_stateless_retry(hello, raw)
        self._remember_client_hello(hello)
        suite = self._select_suite(hello)
        self._suite = suite
        self._transcript = Transcript(suite.hash)
        selection, resumption = self._negotiate(hello, suite)
        if selection.needs_retry:
            return self._send_hello_retry(hello, raw, selection)
        return self._answer(hello, raw, selection, resumption, hello_retry=False)

    def _remember_client_hello(self, hello: ClientHello) -> None:
        """The ClientHello facts later messages depend on."""
        self._client_random = hello.random
        self._post_handshake_auth_offered = hello.post_handshake_auth()
        modes = hello.psk_key_exchange_modes()
        if hello.pre_shared_key() is not None and modes is None:
            # RFC 8446 §4.2.9: a PSK offer without psk_key_exchange_modes must be refused.
            raise TLSError(AlertDescription.missing_extension, "no psk_key_exchange_modes")
        self._psk_modes = tuple(modes or ())

    def _negotiate(
        self, hello: ClientHello, suite: CipherSuite
    ) -> tuple[_Selection, _Resumption | None]:
        """The PSK and key exchange for a first ClientHello (RFC 8446 §4.1.1).

        A psk_ke resumption needs no group; otherwise the group decides whether a
        HelloRetryRequest is needed (the PSK is then re-checked in ClientHello2).
        """
        _check_key_exchange_extensions(hello)
        resumption = self._accept_psk(hello, suite)
        if resumption is not None and resumption.mode == ext.PSK_KE:
            return _Selection(suite, None, None), resumption
        return self._select(hello, suite), resumption

    def _on_client_hello_retry(self, raw: bytes) -> ServerState:
        hello = _ReceivedHello.parse(raw[4:])
        self._hello_raw = raw
        _check_version(hello)
        if self._config.stateless_retry:
            return self._on_stateless_retry(hello, raw)
        first = self._first_hello
        assert first is not None and self._hrr_group is not None
        _check_retry_consistency(first, hello)
        self._verify_cookie(hello.cookie())
        return self._answer_retry(hello, raw, self._hrr_group)

    def _on_stateless_retry(self, hello: ClientHello, raw: bytes) -> ServerState:
        """ClientHello2 with nothing but its cookie to go on (RFC 8446 §4.2.2, §4.4.1)."""
        cookie = hello.cookie()
        retry = self._open_cookie(cookie)
        assert cookie is not None
        if not hmac.compare_digest(retry.fingerprint, _retry_fingerprint(hello)):
            # §4.1.2: ClientHello2 must repeat ClientHello1 but for the listed changes.
            raise illegal_parameter("second ClientHello changed fields or extensions")
        suite, group = SUITES.get(retry.suite), GROUPS.get(retry.group)
        config = self._config
        if suite is None or group is None or len(retry.ch1_hash) != suite.hash_len:
            raise illegal_parameter("retry cookie names an unknown suite or group")
        if suite.code not in config.cipher_suites or group.code not in config.groups:
            raise handshake_failure("retry cookie names a suite or group no longer configured")
        self._remember_client_hello(hello)
        self._suite = suite
        self._transcript = Transcript(suite.hash)
        # §4.4.1: message_hash(ClientHello1), then the HelloRetryRequest we sent, rebuilt
        # byte for byte from ClientHello2 (it echoes our session id and our cookie).
        self._transcript.update(message_hash(retry.ch1_hash))
        self._transcript.update(_hello_retry_request(hello.legacy_session_id, suite, group, cookie))
        # Appendix D.4: our compatibility CCS went out right after the HelloRetryRequest.
        self._sent_ccs = self._sent_ccs or bool(hello.legacy_session_id)
        return self._answer_retry(hello, raw, group)

    def _answer_retry(self, hello: ClientHello, raw: bytes, group: Group) -> ServerState:
        """Checks on ClientHello2 common to both retry modes, then the ServerHello."""
        suite = self._suite
        assert suite is not None
        # RFC 8446 §4.2.10: a client must not offer 0-RTT after a HelloRetryRequest.
        if hello.early_data():
            raise illegal_parameter("early_data in the second ClientHello")
        shares = _validated_shares(hello)
        if len(shares) != 1 or shares[0].group != group.code:
            # §4.2.8: exactly one share, for the group the HelloRetryRequest selected.
            raise illegal_parameter("second ClientHello lacks the requested key share")
        if suite.code not in hello.cipher_suites:
            raise illegal_parameter("second ClientHello dropped the selected cipher suite")
        resumption = self._accept_psk(hello, suite)
        if resumption is not None and resumption.mode == ext.PSK_KE:
            selection = _Selection(suite, None, None)
        else:
            selection = _Selection(suite, group, shares[0])
        return self._answer(hello, raw, selection, resumption, hello_retry=True)

    def _use_config(self, config: ServerConfig) -> None:
        """Adopt a per-name configuration, Limits included, from this ClientHello on."""
        if config.limits is not self._config.limits and config.limits != self._config.limits:
            self._apply_limits(config.limits)
        self._config = config
        self._keylog = config.keylog
        self._clock = config.clock
        self._record.padding_to = config.record_padding

    def _config_for(self, hello: ClientHello) -> ServerConfig:
        """Let the user pick a per-name configuration before we answer (SNI routing)."""
        chooser = self._config.config_for_name
        if chooser is None:
            return self._config
        chosen = chooser(hello.server_name())
        return chosen if chosen is not None else self._config

    def _select(self, hello: ClientHello, suite: CipherSuite) -> _Selection:
        groups = hello.supported_groups()
        if groups is None:
            # RFC 8446 §9.2: a (EC)DHE handshake needs supported_groups and key_share.
            raise TLSError(AlertDescription.missing_extension, "no supported_groups")
        # _negotiate ran _check_key_exchange_extensions: the shares are validated.
        shares = hello.key_shares()
        assert shares is not None
        candidates = self._group_candidates(groups)
        if not candidates:
            raise handshake_failure("no common key exchange group")
        by_group = {entry.group: entry for entry in shares}
        if not self._config.strict_group_preference:
            # Prefer a group the client already sent a share for: no extra round trip.
            for group in candidates:
                if group.code in by_group:
                    return _Selection(suite, group, by_group[group.code])
        best = candidates[0]
        return _Selection(suite, best, by_group.get(best.code))

    def _select_suite(self, hello: ClientHello) -> CipherSuite:
        ours = self._config.known_suites
        offered = hello.cipher_suites
        if self._config.prefer_client_suites:
            by_code = {suite.code: suite for suite in ours}
            order = [by_code[code] for code in offered if code in by_code]
        else:
            order = [suite for suite in ours if suite.code in offered]
        if not order:
            raise handshake_failure("no common cipher suite")
        return order[0]

    def _group_candidates(self, client_groups: list[int]) -> list[Group]:
        """Acceptable groups, best first: the hybrid PQ group, then our order."""
        offered = set(client_groups)
        return [group for group in self._config.ranked_groups if group.code in offered]

    def _early_skip_limit(self) -> int:
        return max(self._config.max_early_data, _DEFAULT_EARLY_DATA_SKIP)

    # ------------------------------------------------------------------ HelloRetryRequest

    def _send_hello_retry(
        self, hello: ClientHello, raw: bytes, selection: _Selection
    ) -> ServerState:
        """RFC 8446 §4.1.4: ask for a share in ``selection.group``, with a cookie."""
        assert self._transcript is not None and selection.group is not None
        self._transcript.update(raw)
        if hello.early_data():
            # §4.2.10: 0-RTT is never accepted after a HelloRetryRequest; skip it.
            self._record.skip_early_data(self._early_skip_limit())
        cookie = self._make_cookie(hello, selection.suite, selection.group)
        retry = _hello_retry_request(
            hello.legacy_session_id, selection.suite, selection.group, cookie
        )
        # §4.4.1: ClientHello1 is replaced by message_hash in the transcript.
        self._transcript.replace_with_message_hash()
        self._send_handshake(retry)
        self._maybe_send_ccs(hello)
        if self._config.stateless_retry:
            self._forget_retry()
        else:
            self._first_hello = hello
            self._hrr_group = selection.group
            self._cookie = cookie
        return ServerState.WAIT_CH2

    def _forget_retry(self) -> None:
        """Stateless retry (§4.2.2): drop what ClientHello2 and its cookie will restore."""
        self._suite = None
        self._transcript = None
        self._client_random = b""
        self._psk_modes = ()
        self._post_handshake_auth_offered = False

    def _make_cookie(self, hello: ClientHello, suite: CipherSuite, group: Group) -> bytes:
        """An HMAC-protected cookie binding the retry to ClientHello1 (RFC 8446 §4.2.2).

        Stateful (we keep CH1 and compare the echo with what we sent): version 1,
        suite, group, Hash(CH1), HMAC-SHA256.  Stateless: version 2 adds the issue
        time (seconds) and the fingerprint of what CH2 must repeat, so a server
        rebuilds the transcript and checks CH2 from CH2 alone.
        """
        assert self._transcript is not None
        stateless = self._config.stateless_retry
        writer = Writer()
        writer.uint8(_STATELESS_COOKIE if stateless else _STATEFUL_COOKIE)
        if stateless:
            writer.uint32(int(self._config.clock()) & 0xFFFFFFFF)
        writer.uint16(suite.code)
        writer.uint16(group.code)
        if stateless:
            writer.vector(1, self._transcript.digest())
            writer.bytes(_retry_fingerprint(hello))
        else:
            writer.bytes(self._transcript.digest())
        body = writer.getvalue()
        return body + self._cookie_mac(body)

    def _open_cookie(self, cookie: bytes | None) -> _RetryCookie:
        """Verify a stateless retry cookie: its MAC, then its age (RFC 8446 §4.2.2).

        Every failure is illegal_parameter (rfc8446bis §6.2: a field "incorrect or
        inconsistent"): the cookie is ours, and a client must echo it unchanged.
        """
        if cookie is None:
            raise TLSError(AlertDescription.missing_extension, "second ClientHello lacks cookie")
        body, mac = cookie[:-_COOKIE_MAC_LEN], cookie[-_COOKIE_MAC_LEN:]
        if len(cookie) <= _COOKIE_MAC_LEN or not hmac.compare_digest(mac, self._cookie_mac(body)):
            raise illegal_parameter("cookie does not verify")
        reader = Reader(body)
        if reader.uint8() != _STATELESS_COOKIE:
            raise illegal_parameter("cookie of another format version")
        issued = reader.uint32()
        suite, group = reader.uint16(), reader.uint16()
        ch1_hash = reader.vector(1, 1)
        fingerprint = reader.bytes(_SHA256.digest_size)
        reader.expect_end("cookie")
        age = int(self._config.clock()) - issued
        if not -_COOKIE_CLOCK_SKEW <= age <= self._config.cookie_lifetime:
            raise illegal_parameter("cookie expired")
        return _RetryCookie(suite, group, ch1_hash, fingerprint)

    def _cookie_mac(self, body: bytes) -> bytes:
        secret = self._config.cookie_secret
        assert secret is not None
        return hmac_bytes(_SHA256, secret, body)

    def _verify_cookie(self, cookie: bytes | None) -> None:
        if cookie is None:
            raise TLSError(AlertDescription.missing_extension, "second ClientHello lacks cookie")
        # We keep the retry's state, so the echo must be exactly the cookie we sent;
        # comparing with it in constant time is the MAC check (RFC 8446 §4.2.2).
        if not hmac.compare_digest(cookie, self._cookie):
            raise illegal_parameter("cookie does not match the HelloRetryRequest")

    def _maybe_send_ccs(self, hello: ClientHello) -> None:
        """RFC 8446 Appendix D.4: a CCS after our first flight when the client is in
        middlebox-compatibility mode (non-empty legacy_session_id), as OpenSSL does."""
        if hello.legacy_session_id and not self._sent_ccs:
            self._sent_ccs = True
            self._send_ccs()

    # ------------------------------------------------------------------ ServerHello and flight

    def _answer(
        self,
        hello: ClientHello,
        raw: bytes,
        selection: _Selection,
        resumption: _Resumption | None,
        hello_retry: bool,
    ) -> ServerState:
        assert self._transcript is not None and not selection.needs_retry
        # A key exchange without (EC)DHE only ever resumes (RFC 8446 §4.2.9 psk_ke).
        assert selection.group is not None or resumption is not None
        self._hello_retry = hello_retry
        self._group = selection.group
        self._server_name = hello.server_name()
        self._alpn = self._select_alpn(hello)
        self._transcript.update(raw)
        if resumption is not None:
            schedule = resumption.schedule
        else:
            schedule = KeySchedule(selection.suite)
        self._key_schedule = schedule
        self._resumption = resumption
        self._early_accepted = self._accept_early_data(hello, resumption)
        if self._early_accepted:
            early_secret = schedule.client_early_traffic_secret(self._transcript.digest())
            self._log_secret("CLIENT_EARLY_TRAFFIC_SECRET", early_secret)
            self._set_read_secret(early_secret)
        elif hello.early_data():
            # RFC 8446 §4.2.10: we decline 0-RTT, so skip the client's early records.
            self._record.skip_early_data(self._early_skip_limit())
        certificate = self._select_certificate(hello) if resumption is None else None
        self._send_server_hello(hello, selection, resumption)
        self._apply_peer_record_limit(hello)
        self._send_handshake(self._encrypted_extensions(hello))
        if certificate is not None:
            chain, scheme = certificate
            if self._config.client_auth != "none":
                self._send_certificate_request(b"")
            self._send_certificate(chain, _wants_ocsp(hello))
            self._send_certificate_verify(chain, scheme)
        self._send_server_finished()
        if self._early_accepted:
            return ServerState.WAIT_EOED
        if certificate is not None and self._config.client_auth != "none":
            return ServerState.WAIT_CERT
        return ServerState.WAIT_FINISHED

    def _send_server_hello(
        self, hello: ClientHello, selection: _Selection, resumption: _Resumption | None
    ) -> None:
        """ServerHello, then the handshake keys (RFC 8446 §4.1.3, §7.1)."""
        extensions: list[tuple[int, bytes]] = []
        if resumption is not None:
            extensions.append(
                (ExtensionType.pre_shared_key, ext.encode_uint16_body(resumption.identity_index))
            )
        shared: bytes | None = None  # psk_ke: §7.1 uses a zero (EC)DHE input
        if selection.group is not None:
            share, shared = self._key_exchange(selection)
            extensions.append((ExtensionType.key_share, ext.encode_key_share_sh(share)))
        extensions.append((ExtensionType.supported_versions, ext.encode_uint16_body(TLS13)))
        self._send_handshake(
            encode_server_hello(
                self._random(32), hello.legacy_session_id, selection.suite.code, extensions
            )
        )
        self._maybe_send_ccs(hello)  # unprotected, so before the handshake keys
        self._start_handshake_keys(shared)

    def _key_exchange(self, selection: _Selection) -> tuple[KeyShareEntry, bytes]:
        """Our (EC)DHE or ML-KEM answer to the client's share: (our share, shared secret)."""
        group, client_share = selection.group, selection.share
        assert group is not None and client_share is not None
        private = None
        if self._config.key_share_factory is not None:
            private = self._config.key_share_factory(group.code)
        server_share, shared = group.respond(client_share.key_exchange, self._random, private)
        return KeyShareEntry(group.code, server_share), shared

    # ------------------------------------------------------------------ resumption and 0-RTT

    def _accept_psk(self, hello: ClientHello, suite: CipherSuite) -> _Resumption | None:
        """Pick the first usable ticket and validate its binder (RFC 8446 §4.2.11)."""
        offered = hello.pre_shared_key()
        keyring = self._config.ticket_keys
        mode = self._psk_mode(hello)
        if offered is None or keyring is None or mode is None:
            return None
        now_ms = int(self._config.clock() * 1000)
        for index, identity in enumerate(offered.identities):
            state = keyring.open_state(identity.identity)
            if state is None or state.expired(now_ms):
                continue  # §4.2.11: unknown or stale tickets are simply ignored
            ticket_suite = SUITES.get(state.suite)
            if ticket_suite is None or ticket_suite.hash.name != suite.hash.name:
                continue  # the PSK's hash must match the negotiated suite's
            if not self._ticket_fits(state, hello):
                continue
            schedule = self._check_binder(offered, suite, state.psk, index)
            age = identity.obfuscated_ticket_age
            return _Resumption(index, state, age, identity.identity, mode, schedule)
        return None

    def _ticket_fits(self, state: SessionState, hello: ClientHello) -> bool:
        """Whether this name's policy may resume the ticket (rfc8446bis §4.2.11: the server
        MUST select a compatible PSK).  RFC 6066 §3: never under another server_name, whose
        configuration may differ; and a client certificate this configuration asks for
        must be in the ticket and still verify (a reload may have changed client_ca)."""
        if state.sni != hello.server_name():
            return False
        config = self._config
        if not state.client_chain:
            return config.client_auth != "required"
        if config.client_auth == "none":
            return True
        try:
            chain = tuple(_load_certificate(der) for der in state.client_chain)
            verify_chain(chain, config.client_ca, config.clock(), client=True)
        except TLSError:
            return False
        return True

    def _psk_mode(self, hello: ClientHello) -> int | None:
        """RFC 8446 §4.2.9: our most preferred mode the client offered; psk_dhe_ke
        only when the hello allows an (EC)DHE exchange with us."""
        groups = hello.supported_groups()
        dhe_possible = groups is not None and bool(self._group_candidates(groups))
        for mode in self._config.psk_modes:
            if mode in self._psk_modes and (mode == ext.PSK_KE or dhe_possible):
                return mode
        return None

    def _check_binder(
        self, offered: ext.OfferedPsks, suite: CipherSuite, psk: bytes, index: int
    ) -> KeySchedule:
        """§4.2.11.2: the binder is a Finished over the transcript up to the binders.

        pre_shared_key is the last extension (the parser enforces §4.2.11), so the binders
        vector ends the ClientHello: the binder input is the received message minus it.
        Returns the key schedule at this PSK's Early Secret, for the handshake to go on."""
        assert self._transcript is not None
        schedule = KeySchedule(suite)
        schedule.set_psk(psk)
        binders_len = 2 + sum(1 + len(binder) for binder in offered.binders)
        partial = self._transcript.copy()
        partial.update(memoryview(self._hello_raw)[: len(self._hello_raw) - binders_len])
        expected = finished_verify_data(suite.hash, schedule.binder_key(True), partial.digest())
        if not hmac.compare_digest(expected, offered.binders[index]):
            raise TLSError(AlertDescription.decrypt_error, "PSK binder does not verify")
        return schedule

    def _accept_early_data(self, hello: ClientHello, resumption: _Resumption | None) -> bool:
        """RFC 8446 §4.2.10: accept 0-RTT only for the first PSK, same suite and ALPN,
        a ticket we issued, a fresh ticket age (§8.3) and a ticket not used before (§8.2)."""
        config = self._config
        if not hello.early_data() or resumption is None or self._hello_retry:
            return False
        state = resumption.state
        if resumption.identity_index != 0 or not config.max_early_data or not state.max_early_data:
            return False
        assert self._suite is not None
        if state.suite != self._suite.code or state.alpn != self._alpn:
            return False
        if not hmac.compare_digest(state.issuer, config.instance_id):
            # Review R22: another instance's strike register saw this ticket's 0-RTT, not
            # ours, so we could not refuse a replay of it: resume, but decline early data.
            return False
        register = config.anti_replay
        now = config.clock()
        if register is None or not _early_data_fresh(resumption, now, register.window):
            return False
        # §8.1/§8.2: key the register on the ticket, not the binder: every ClientHello
        # has a fresh binder, so only the ticket makes its 0-RTT single-use (a second
        # use within the window resumes with 0-RTT declined).  Past the window a
        # replayed hello fails the freshness check above.
        return register.check_and_add(resumption.ticket, now)

    def _on_early_application_data(self, payload: bytes) -> None:
        if self._state is not ServerState.WAIT_EOED:
            raise TLSError(AlertDescription.unexpected_message, "application data before Finished")
        self._early_received += len(payload)
        if self._early_received > self._config.max_early_data:
            # §4.2.10: more 0-RTT data than we allowed is unexpected_message.
            raise TLSError(AlertDescription.unexpected_message, "too much early data")
        if payload:
            self._emit(events.EarlyData(payload))

    def _on_end_of_early_data(self, raw: bytes) -> ServerState:
        EndOfEarlyData.parse(raw[4:])
        assert self._transcript is not None
        self._transcript.update(raw)
        self._set_read_secret(self._client_hs_secret)
        return ServerState.WAIT_FINISHED

    def _issue_tickets(self) -> None:
        """RFC 8446 §4.6.1: NewSessionTickets after the client's Finished."""
        config = self._config
        keyring = config.ticket_keys
        count = config.tickets
        if self._resumption is not None:
            count = min(count, config.tickets_after_resumption)
        if keyring is None or not count:
            return
        if not any(mode in self._psk_modes for mode in config.psk_modes):
            return  # §4.2.9: the client could never use the ticket with us
        assert self._suite is not None and self._key_schedule is not None
        assert self._transcript is not None
        # §7.1: resumption_master_secret over the transcript through the client Finished.
        self._resumption_secret = self._key_schedule.resumption_master_secret(
            self._transcript.digest()
        )
        for index in range(count):
            nonce = index.to_bytes(2, "big")
            state = SessionState(
                psk=resumption_psk(self._suite.hash, self._resumption_secret, nonce),
                suite=self._suite.code,
                created=int(config.clock() * 1000),
                age_add=int.from_bytes(self._random(4), "big"),
                lifetime=config.ticket_lifetime,
                max_early_data=config.max_early_data,
                alpn=self._alpn,
                sni=self._server_name,
                client_chain=self._client_chain_der(),
                issuer=config.instance_id,
            )
            extensions: list[tuple[int, bytes]] = []
            if config.max_early_data:
                extensions.append(
                    (ExtensionType.early_data, ext.encode_max_early_data(config.max_early_data))
                )
            ticket = encode_new_session_ticket(
                config.ticket_lifetime,
                state.age_add,
                nonce,
                keyring.seal_state(state, self._random),
                extensions,
            )
            self._send_handshake(ticket, in_transcript=False)
            self._emit(events.SessionTicketIssued())

    def _client_chain_der(self) -> tuple[bytes, ...]:
        if self._resumption is not None:
            return self._resumption.state.client_chain
        auth = self._peer_auth
        if auth is None or auth.identity is None:
            return ()
        return tuple(c.public_bytes(Encoding.DER) for c in auth.certificates)

    def _select_certificate(self, hello: ClientHello) -> tuple[CertificateChain, int]:
        schemes = hello.signature_algorithms()
        if schemes is None:
            # RFC 8446 §4.2.3: certificate authentication requires signature_algorithms.
            raise TLSError(AlertDescription.missing_extension, "no signature_algorithms")
        ours = self._config.signature_scheme_set
        usable = [code for code in schemes if code in ours]
        name = self._server_name
        store = self._config.certificates
        if name is not None and self._config.unknown_name == "reject" and not store.has_name(name):
            raise TLSError(AlertDescription.unrecognized_name, "no certificate for server_name")
        try:
            chain, scheme = store.select(name, usable, hello.signature_algorithms_cert())
        except TLSError as error:
            raise handshake_failure(f"no usable certificate: {error.message}") from error
        self._chain, self._scheme = chain, scheme
        return chain, scheme

    def _select_alpn(self, hello: ClientHello) -> str | None:
        """RFC 7301 §3.2: our most preferred protocol that the client offers.

        A client offering only protocols we do not speak gets no_application_protocol
        ("SHALL respond with a fatal ... alert"); ``alpn_required`` additionally refuses
        clients that offer no ALPN at all. Without a list of ours ALPN is ignored.
        """
        offered = hello.alpn_protocols()
        ours = self._config.alpn_protocols
        if offered is None or not ours:
            if self._config.alpn_required:
                raise TLSError(AlertDescription.no_application_protocol, "client sent no ALPN")
            return None
        for protocol in ours:
            if protocol in offered:
                return protocol
        raise TLSError(AlertDescription.no_application_protocol, "no common ALPN protocol")

    def _start_handshake_keys(self, shared: bytes | None) -> None:
        assert self._transcript is not None and self._key_schedule is not None
        schedule = self._key_schedule
        schedule.set_shared_secret(shared)
        digest = self._transcript.digest()
        client_secret = schedule.client_handshake_traffic_secret(digest)
        server_secret = schedule.server_handshake_traffic_secret(digest)
        self._log_secret("CLIENT_HANDSHAKE_TRAFFIC_SECRET", client_secret)
        self._log_secret("SERVER_HANDSHAKE_TRAFFIC_SECRET", server_secret)
        self._client_hs_secret = client_secret
        self._server_hs_secret = server_secret
        self._set_write_secret(server_secret)
        if not self._early_accepted:
            self._set_read_secret(client_secret)

    def _apply_peer_record_limit(self, hello: ClientHello) -> None:
        limit = hello.record_size_limit()
        if limit is not None:
            # RFC 8449 §4: in TLS 1.3 the limit counts the content type byte too;
            # from here on our records respect it, and we enforce the one we announce.
            self._record.peer_record_limit = min(limit, 16385)
            self._record.read_record_limit = self._config.record_size_limit + 1

    def _encrypted_extensions(self, hello: ClientHello) -> bytes:
        extensions: list[tuple[int, bytes]] = []
        if self._config.send_supported_groups:
            extensions.append((ExtensionType.supported_groups, self._config.supported_groups_body))
        if hello.record_size_limit() is not None:
            # RFC 8449 §4: the TLS 1.3 value includes the inner content type byte.
            own_limit = self._config.record_size_limit + 1
            extensions.append((ExtensionType.record_size_limit, ext.encode_uint16_body(own_limit)))
        if self._server_name is not None:
            # RFC 6066 §3: acknowledge a server_name we used, with an empty body.
            extensions.append((ExtensionType.server_name, b""))
        if self._alpn is not None:
            extensions.append(
                (
                    ExtensionType.application_layer_protocol_negotiation,
                    ext.encode_alpn([self._alpn]),
                )
            )
        if self._early_accepted:
            # RFC 8446 §4.2.10: an empty early_data in EE tells the client 0-RTT was taken.
            extensions.append((ExtensionType.early_data, b""))
        return encode_encrypted_extensions(extensions)

    def _send_certificate_request(self, context: bytes) -> None:
        """RFC 8446 §4.3.2: our schemes, and our CA names so the client can pick a chain
        (§4.2.4: optional, so ``send_ca_names=False`` leaves out a large CA set)."""
        schemes = list(self._config.signature_schemes)
        extensions: list[tuple[int, bytes]] = [
            (ExtensionType.signature_algorithms, ext.encode_uint16_list(schemes))
        ]
        if self._config.client_ca and self._config.send_ca_names:
            names = [ca.subject.public_bytes() for ca in self._config.client_ca]
            extensions.append(
                (ExtensionType.certificate_authorities, ext.encode_certificate_authorities(names))
            )
        requested = frozenset(ext_type for ext_type, _ in extensions)
        self._peer_auth = _PeerAuth(context, tuple(schemes), requested)
        message = CertificateRequest(context, extensions).serialize()
        if context:
            # §4.6.2: post-handshake messages sign a copy of the handshake transcript.
            self._post_transcript = self._transcript_after_finished()
            self._post_transcript.update(message)
            self._send_handshake(message, in_transcript=False)
        else:
            self._send_handshake(message)

    def _send_certificate(self, chain: CertificateChain, ocsp: bool) -> None:
        # RFC 6960 §4.2.2.1: a response past nextUpdate (or unusable) is not stapled.
        staple = chain.ocsp_staple(self._config.clock()) if ocsp else None
        self._send_handshake(chain.certificate_message(staple))

    def _send_certificate_verify(self, chain: CertificateChain, scheme: int) -> None:
        assert self._transcript is not None
        signed = certificate_verify_input(SERVER_CV_CONTEXT, self._transcript.digest())
        signature = SCHEMES[scheme].sign(chain.private_key, signed)
        self._send_handshake(encode_certificate_verify(scheme, signature))

    def _send_server_finished(self) -> None:
        assert self._suite is not None and self._transcript is not None
        assert self._key_schedule is not None
        verify_data = finished_verify_data(
            self._suite.hash, self._server_hs_secret, self._transcript.digest()
        )
        self._send_handshake(encode_finished(verify_data))
        schedule = self._key_schedule
        schedule.set_master()
        digest = self._transcript.digest()
        client_app = schedule.client_application_traffic_secret(digest)
        server_app = schedule.server_application_traffic_secret(digest)
        self._log_secret("CLIENT_TRAFFIC_SECRET_0", client_app)
        self._log_secret("SERVER_TRAFFIC_SECRET_0", server_app)
        self._set_exporter_source(schedule, digest)
        self._client_app_secret = client_app
        self._install_application_secrets(client_app, server_app)
        # RFC 8446 §4.4.4: we may send (0.5-RTT) under the application keys from here on.
        self._set_write_secret(server_app)

    # ------------------------------------------------------------------ client's second flight

    def _on_certificate(self, raw: bytes) -> ServerState:
        auth = self._peer_auth
        assert auth is not None
        message = Certificate.parse(raw[4:])
        if not hmac.compare_digest(message.certificate_request_context, auth.context):
            raise illegal_parameter("certificate_request_context mismatch")
        self._update_auth_transcript(raw)
        post = self._state is ServerState.POST_WAIT_CERT
        if not message.certificate_list:
            if self._config.client_auth == "required":
                # RFC 8446 §4.4.2.4 (bis): no certificate when one is required.
                raise TLSError(AlertDescription.certificate_required, "client sent no certificate")
            return ServerState.POST_WAIT_FINISHED if post else ServerState.WAIT_FINISHED
        for entry in message.certificate_list:
            # §4.4.2: the client's extensions MUST answer ones in our CertificateRequest.
            ext.check_offered(entry.extensions, auth.requested)
        certificates = tuple(
            _load_certificate(entry.cert_data) for entry in message.certificate_list
        )
        verify_chain(certificates, self._config.client_ca, self._config.clock(), client=True)
        auth.certificates = certificates
        return ServerState.POST_WAIT_CV if post else ServerState.WAIT_CV

    def _on_certificate_verify(self, raw: bytes) -> ServerState:
        auth = self._peer_auth
        assert auth is not None and auth.certificates
        message = CertificateVerify.parse(raw[4:])
        if message.algorithm not in auth.schemes or message.algorithm not in SCHEMES:
            raise illegal_parameter("CertificateVerify uses a scheme we did not offer")
        scheme = SCHEMES[message.algorithm]
        check_certificate_fits(scheme, auth.certificates[0])
        signed = certificate_verify_input(CLIENT_CV_CONTEXT, self._auth_transcript_digest())
        scheme.verify(auth.certificates[0].public_key(), message.signature, signed)
        self._update_auth_transcript(raw)
        auth.identity = events.ClientIdentity.from_chain(auth.certificates, scheme.name)
        if self._state is ServerState.POST_WAIT_CV:
            return ServerState.POST_WAIT_FINISHED
        return ServerState.WAIT_FINISHED

    def _on_finished(self, raw: bytes) -> ServerState:
        assert self._suite is not None and self._transcript is not None
        message = Finished.parse(raw[4:])
        expected = finished_verify_data(
            self._suite.hash, self._client_hs_secret, self._transcript.digest()
        )
        # RFC 8446 §4.4.4: a wrong verify_data is decrypt_error; compare in constant time.
        if not hmac.compare_digest(expected, message.verify_data):
            raise TLSError(AlertDescription.decrypt_error, "client Finished does not verify")
        self._transcript.update(raw)
        self._set_read_secret(self._client_app_secret)
        self._record.accept_plaintext_alerts = False  # every later alert is protected
        self._complete_handshake(self._handshake_info())
        self._issue_tickets()
        self._forget_handshake()
        return ServerState.CONNECTED

    def _forget_handshake(self) -> None:
        """Drop what only the handshake needed once the tickets are out: an idle connection
        keeps its traffic secrets (KeyUpdate), the exporter secret and, only if the client
        may be asked for a certificate later, the transcript (RFC 8446 §4.6.2)."""
        self._key_schedule = None
        self._hello_raw = b""
        self._first_hello = None
        self._cookie = b""
        self._client_hs_secret = self._server_hs_secret = b""
        self._client_app_secret = self._resumption_secret = b""
        self._resumption = None
        self._random_pool = b""
        self._peer_auth = None  # its certificates are in the HandshakeComplete event
        if not (self._post_handshake_auth_offered and self._config.client_ca):
            self._transcript = None

    def _on_post_finished(self, raw: bytes) -> ServerState:
        """RFC 8446 §4.6.2: the client's Finished closing post-handshake authentication."""
        assert self._suite is not None and self._read_secret is not None
        auth = self._peer_auth
        assert auth is not None
        message = Finished.parse(raw[4:])
        expected = finished_verify_data(
            self._suite.hash, self._read_secret, self._auth_transcript_digest()
        )
        if not hmac.compare_digest(expected, message.verify_data):
            raise TLSError(AlertDescription.decrypt_error, "client Finished does not verify")
        self._emit(events.ClientCertificateReceived(auth.identity))
        self._peer_auth = None
        self._post_transcript = None
        return ServerState.CONNECTED

    def _handshake_info(self) -> events.HandshakeComplete:
        assert self._suite is not None
        certificates, identity = self._peer_identity()
        scheme = SCHEMES[self._scheme].name if self._scheme is not None else None
        return events.HandshakeComplete(
            version="TLSv1.3",
            cipher_suite=self._suite.name,
            group=self._group.name if self._group is not None else None,
            signature_scheme=scheme,
            server_name=self._server_name,
            alpn_protocol=self._alpn,
            hello_retry=self._hello_retry,
            resumed=self._resumption is not None,
            early_data_accepted=self._early_accepted,
            peer_certificates=certificates,
            client_identity=identity,
        )

    def _peer_identity(
        self,
    ) -> tuple[tuple[x509.Certificate, ...], events.ClientIdentity | None]:
        """The client's certificates: from this handshake, or remembered by the ticket."""
        if self._resumption is not None and self._resumption.state.client_chain:
            chain = tuple(_load_certificate(der) for der in self._resumption.state.client_chain)
            return chain, events.ClientIdentity.from_chain(chain, "resumption")
        auth = self._peer_auth
        if auth is None:
            return (), None
        return auth.certificates, auth.identity

    # ------------------------------------------------------------------ transcripts for auth

    def _transcript_after_finished(self) -> Transcript:
        """A copy of the handshake transcript through the client Finished (§4.6.2)."""
        assert self._transcript is not None
        return self._transcript.copy()

    def _auth_transcript(self) -> Transcript:
        """The transcript client authentication signs: the handshake's, or for
        post-handshake auth a copy through client Finished + CertificateRequest."""
        post = self._state in (
            ServerState.POST_WAIT_CERT,
            ServerState.POST_WAIT_CV,
            ServerState.POST_WAIT_FINISHED,
        )
        transcript = self._post_transcript if post else self._transcript
        assert transcript is not None
        return transcript

    def _update_auth_transcript(self, raw: bytes) -> None:
        self._auth_transcript().update(raw)

    def _auth_transcript_digest(self) -> bytes:
        return self._auth_transcript().digest()


# Which handler takes which message in which state (RFC 8446 §4 message order); built
# once for the class rather than per connection.
_HANDLERS: dict[tuple[enum.Enum, int], Callable[[ServerConnection, bytes], ServerState]] = {
    (ServerState.START, HandshakeType.client_hello): ServerConnection._on_client_hello,
    (ServerState.WAIT_CH2, HandshakeType.client_hello): ServerConnection._on_client_hello_retry,
    (ServerState.WAIT_EOED, HandshakeType.end_of_early_data): (
        ServerConnection._on_end_of_early_data
    ),
    (ServerState.WAIT_CERT, HandshakeType.certificate): ServerConnection._on_certificate,
    (ServerState.WAIT_CV, HandshakeType.certificate_verify): (
        ServerConnection._on_certificate_verify
    ),
    (ServerState.WAIT_FINISHED, HandshakeType.finished): ServerConnection._on_finished,
    (ServerState.POST_WAIT_CERT, HandshakeType.certificate): ServerConnection._on_certificate,
    (ServerState.POST_WAIT_CV, HandshakeType.certificate_verify): (
        ServerConnection._on_certificate_verify
    ),
    (ServerState.POST_WAIT_FINISHED, HandshakeType.finished): ServerConnection._on_post_finished,
}


# ---------------------------------------------------------------------- ClientHello checks


def _check_version(hello: ClientHello) -> None:
    """rfc8446bis §4.1.2, §4.2.1 and Appendix E: only supported_versions negotiates TLS 1.3.

    Unknown (and GREASE) versions in supported_versions are ignored.
    """
    # Appendix E.5: a legacy_version of 0x0300 (SSL 3.0) or less is protocol_version.
    if hello.legacy_version <= SSL30:
        raise TLSError(AlertDescription.protocol_version, "SSL 3.0 or older ClientHello")
    versions = hello.supported_versions()
    if versions is None or TLS13 not in versions:
        # §4.2.1: we speak TLS 1.3 only; a client without it gets protocol_version.
        raise TLSError(AlertDescription.protocol_version, "client does not offer TLS 1.3")
    # §4.1.2: "A server which receives a legacy_version value not equal to 0x0303
    # MUST abort the handshake with an illegal_parameter alert."
    if hello.legacy_version != LEGACY_VERSION:
        raise illegal_parameter("legacy_version is not 0x0303")
    # §4.1.2: a TLS 1.3 ClientHello offers exactly the null compression method.
    if hello.legacy_compression_methods != b"\x00":
        raise illegal_parameter("legacy_compression_methods must be [null]")


def _early_data_fresh(resumption: _Resumption, now: float, register_window: float) -> bool:
    """RFC 8446 §8.3 freshness, bounded by what the strike register remembers (§8.2).

    The hello's expected arrival (ticket creation + the client's ticket age) may be
    off from now by the tolerance either way; a replay of it stays fresh until
    expected arrival + tolerance, so a hello "from the future" is accepted only as
    far as the register keeps it that long (rfc8446bis §8.2: store it while its
    expected_arrival_time is inside the window).
    """
    state = resumption.state
    now_ms = int(now * 1000)
    ahead_ms = state.client_age_ms(resumption.obfuscated_age) - (now_ms - state.created)
    latest_ms = min(_AGE_TOLERANCE_MS, int(register_window * 1000) - _AGE_TOLERANCE_MS)
    return -_AGE_TOLERANCE_MS <= ahead_ms <= latest_ms


def _check_key_exchange_extensions(hello: ClientHello) -> None:
    """RFC 8446 §9.2: supported_groups and key_share come together; a hello with
    neither can only resume a PSK in psk_ke mode."""
    has_groups = hello.supported_groups() is not None
    if has_groups != (hello.key_shares() is not None):
        raise TLSError(
            AlertDescription.missing_extension, "supported_groups and key_share must come together"
        )
    if has_groups:
        _validated_shares(hello)
    elif hello.pre_shared_key() is None:
        raise TLSError(AlertDescription.missing_extension, "no supported_groups or pre_shared_key")


def _validated_shares(hello: ClientHello, groups: list[int] | None = None) -> list[KeyShareEntry]:
    """key_share entries, checked against supported_groups (RFC 8446 §4.2.8)."""
    shares = hello.key_shares()
    if shares is None:
        raise TLSError(AlertDescription.missing_extension, "no key_share")
    if groups is None:
        groups = hello.supported_groups()
        if groups is None:
            raise TLSError(AlertDescription.missing_extension, "no supported_groups")
    position = {code: index for index, code in enumerate(groups)}
    last = -1
    for entry in shares:
        index = position.get(entry.group)
        if index is None:
            raise illegal_parameter("key share for a group not in supported_groups")
        if index <= last:
            raise illegal_parameter("key shares not in supported_groups order")
        last = index
        group = GROUPS.get(entry.group)
        if group is not None and len(entry.key_exchange) != group.client_share_len:
            raise illegal_parameter(f"key share for {group.name} has the wrong length")
    return shares


def _check_retry_consistency(first: ClientHello, second: ClientHello) -> None:
    """RFC 8446 §4.1.2: CH2 repeats CH1 except for the listed extensions."""
    same_fields = (
        first.legacy_version == second.legacy_version
        and first.random == second.random
        and first.legacy_session_id == second.legacy_session_id
        and first.cipher_suites == second.cipher_suites
        and first.legacy_compression_methods == second.legacy_compression_methods
    )
    if not same_fields:
        raise illegal_parameter("second ClientHello changed fixed fields")
    if _stable_extensions(first) != _stable_extensions(second):
        raise illegal_parameter("second ClientHello changed its extensions")


def _stable_extensions(hello: ClientHello) -> list[tuple[int, bytes]]:
    return [(t, body) for t, body in hello.extensions if t not in _HRR_MUTABLE_EXTENSIONS]


def _retry_fingerprint(hello: ClientHello) -> bytes:
    """SHA-256 over everything ClientHello2 must repeat from ClientHello1 (§4.1.2),
    so a stateless server can check the repetition against the cookie."""
    writer = Writer()
    writer.uint16(hello.legacy_version)
    writer.bytes(hello.random)
    writer.vector(1, hello.legacy_session_id)
    writer.uint16_list(2, hello.cipher_suites)
    writer.vector(1, hello.legacy_compression_methods)
    for ext_type, body in _stable_extensions(hello):
        writer.uint16(ext_type)
        writer.vector(2, body)
    return hash_bytes(_SHA256, writer.getvalue())


def _hello_retry_request(
    session_id: bytes, suite: CipherSuite, group: Group, cookie: bytes
) -> bytes:
    """The HelloRetryRequest (RFC 8446 §4.1.4); deterministic, so a stateless server
    rebuilds it for the transcript from what ClientHello2 echoes."""
    retry = ServerHello(
        random=HELLO_RETRY_REQUEST_RANDOM,
        legacy_session_id_echo=session_id,
        cipher_suite=suite.code,
        extensions=[
            (ExtensionType.key_share, ext.encode_uint16_body(group.code)),
            (ExtensionType.cookie, ext.encode_cookie(cookie)),
            (ExtensionType.supported_versions, ext.encode_uint16_body(TLS13)),
        ],
    )
    return retry.serialize()


def _wants_ocsp(hello: ClientHello) -> bool:
    request = hello.status_request()
    return request is not None


def _load_certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as error:
        raise TLSError(AlertDescription.bad_certificate, "undecodable certificate") from error
