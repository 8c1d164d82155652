"""The TLS 1.3 client handshake state machine (RFC 8446 §4, rfc8446bis).

States and the messages each accepts (anything else is unexpected_message)::

    start() sends ClientHello ──> WAIT_SH
    WAIT_SH ──HelloRetryRequest──> (ClientHello2) WAIT_SH2
    WAIT_SH / WAIT_SH2 ──ServerHello──> WAIT_EE
    WAIT_EE ──EncryptedExtensions──> WAIT_CERT_CR, or WAIT_FINISHED when resuming
    WAIT_CERT_CR ──CertificateRequest──> WAIT_CERT ──Certificate──> WAIT_CV
    WAIT_CERT_CR ──Certificate──> WAIT_CV ──CertificateVerify──> WAIT_FINISHED
    WAIT_FINISHED ──Finished──> (our flight) CONNECTED
    CONNECTED: NewSessionTicket, post-handshake CertificateRequest, KeyUpdate (base class)

Every handler parses its message, enforces the RFC's MUSTs for a client and
returns the next state.  Randomness, time and ephemeral key shares come from
the :class:`~tls13.config.ClientConfig`, so tests can replay published traces.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography import x509

from . import events
from . import extensions as ext
from .alerts import AlertDescription, TLSError, illegal_parameter
from .certificates import CertificateChain, verify_chain
from .config import ClientConfig
from .connection import Connection, ConnectionStateError, Handler
from .extensions import ExtensionType, KeyShareEntry
from .groups import GROUPS, PrivateShare
from .keyschedule import KeySchedule, finished_verify_data, resumption_psk
from .messages import (
    DOWNGRADE_TLS11,
    DOWNGRADE_TLS12,
    LEGACY_VERSION,
    Certificate,
    CertificateEntry,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    EncryptedExtensions,
    EndOfEarlyData,
    Finished,
    HandshakeType,
    NewSessionTicket,
    ServerHello,
)
from .signatures import (
    CLIENT_CONTEXT,
    SCHEMES,
    SERVER_CONTEXT,
    certificate_verify_input,
    check_certificate_fits,
)
from .suites import SUITES, CipherSuite
from .tickets import MAX_TICKET_LIFETIME, SessionTicket
from .transcript import Transcript, transcript_hash

TLS13 = 0x0304


class ClientState(enum.Enum):
    IDLE = enum.auto()
    WAIT_SH = enum.auto()
    WAIT_SH2 = enum.auto()
    WAIT_EE = enum.auto()
    WAIT_CERT_CR = enum.auto()
    WAIT_CERT = enum.auto()
    WAIT_CV = enum.auto()
    WAIT_FINISHED = enum.auto()
    CONNECTED = enum.auto()
    # Post-handshake authentication (RFC 8446 §4.6.2) is answered in one step.


# States in which an unprotected compatibility CCS is dropped: any time after our first
# ClientHello and before the server's Finished (RFC 8446 §5, D.4).
_CCS_STATES = frozenset(
    {
        ClientState.WAIT_SH,
        ClientState.WAIT_SH2,
        ClientState.WAIT_EE,
        ClientState.WAIT_CERT_CR,
        ClientState.WAIT_CERT,
        ClientState.WAIT_CV,
        ClientState.WAIT_FINISHED,
    }
)

_INITIAL_RECORD_VERSION = 0x0301

# States in which 0-RTT data may still be sent (until the server's Finished, §4.2.10).
_EARLY_DATA_STATES = frozenset(
    {ClientState.WAIT_SH, ClientState.WAIT_EE, ClientState.WAIT_FINISHED}
)


@dataclass(frozen=True)
class _OfferedPsk:
    """The resumption PSK we offer: the ticket, its suite and the PSK itself."""

    ticket: SessionTicket
    suite: CipherSuite
    psk: bytes


class ClientConnection(Connection):
    """One client side of a TLS 1.3 connection (sans-IO)."""

    is_client = True

    def __init__(
        self,
        config: ClientConfig,
        server_name: str | None = None,
        alpn_protocols: tuple[str, ...] = (),
        session: SessionTicket | None = None,
    ) -> None:
        super().__init__(
            limits=config.limits,
            keylog=config.keylog,
            clock=config.clock,
            record_padding=config.record_padding,
        )
        self._config = config
        self._server_name = server_name
        self._sni = _sni_value(server_name)
        self._alpn_offered = _checked_alpn(alpn_protocols)
        self._session = session
        self._state: enum.Enum = ClientState.IDLE
        self._handlers: dict[tuple[enum.Enum, int], Handler] = {
            (ClientState.WAIT_SH, HandshakeType.server_hello): self._on_server_hello,
            (ClientState.WAIT_SH2, HandshakeType.server_hello): self._on_server_hello,
            (ClientState.WAIT_EE, HandshakeType.encrypted_extensions): self._on_ee,
            (ClientState.WAIT_CERT_CR, HandshakeType.certificate_request): (
                self._on_certificate_request
            ),
            (ClientState.WAIT_CERT_CR, HandshakeType.certificate): self._on_certificate,
            (ClientState.WAIT_CERT, HandshakeType.certificate): self._on_certificate,
            (ClientState.WAIT_CV, HandshakeType.certificate_verify): self._on_certificate_verify,
            (ClientState.WAIT_FINISHED, HandshakeType.finished): self._on_finished,
            (ClientState.CONNECTED, HandshakeType.new_session_ticket): self._on_session_ticket,
            (ClientState.CONNECTED, HandshakeType.certificate_request): (
                self._on_post_handshake_request
            ),
        }
        self._hello: ClientHello | None = None
        self._shares: dict[int, PrivateShare] = {}
        self._offered_psk: _OfferedPsk | None = None
        self._key_schedule: KeySchedule | None = None
        self._hrr_suite: int | None = None
        self._hrr_group: int | None = None
        self._group_name: str | None = None
        self._hello_retry = False
        self._resumed = False
        self._sent_ccs = False
        self._alpn: str | None = None
        self._client_hs_secret = b""
        self._server_hs_secret = b""
        self._certificate_request: CertificateRequest | None = None
        self._peer_certificates: tuple[x509.Certificate, ...] = ()
        self._peer_scheme: str | None = None
        self._resumption_secret = b""
        # Early data (0-RTT, RFC 8446 §4.2.10).
        self._early_allowed = 0
        self._early_sent = 0
        self._early_offered = False
        self._early_accepted = False

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> ClientState:
        assert isinstance(self._state, ClientState)
        return self._state

    def start(self) -> None:
        """Queue the first ClientHello (and, when offering 0-RTT, switch to early keys)."""
        if self._state is not ClientState.IDLE:
            raise ConnectionStateError("start() may be called once")
        random = self._config.random
        self._client_random = random(32)
        session_id = random(32) if self._config.middlebox_compat else b""
        self._offered_psk = self._usable_psk()
        for code in self._config.key_share_groups:
            self._shares[code] = self._new_share(code)
        hello = self._build_hello(session_id)
        self._transcript = Transcript()
        # RFC 8446 §5.1: the initial ClientHello record may say TLS 1.0 for old
        # middleboxes; every other record, ClientHello2 included, says 0x0303.
        self._record.plaintext_version = _INITIAL_RECORD_VERSION
        self._send_handshake(hello.serialize())
        self._flush_handshake()
        self._record.plaintext_version = LEGACY_VERSION
        self._hello = hello
        self._set_state(ClientState.WAIT_SH)
        if self._early_offered:
            self._start_early_data(hello)

    def send_early_data(self, data: bytes) -> None:
        """Queue 0-RTT data; allowed between start() and the server's Finished when the
        session permits it, up to its max_early_data_size (RFC 8446 §4.2.10)."""
        self._check_can_send()
        if self._handshake_done:
            raise ConnectionStateError("the handshake is complete: use send_data")
        if not self._early_offered or self._state not in _EARLY_DATA_STATES:
            raise ConnectionStateError("early data is not possible on this connection now")
        if self._early_sent + len(data) > self._early_allowed:
            raise ConnectionStateError("early data exceeds the ticket's max_early_data_size")
        self._early_sent += len(data)
        self._write_application_data(data)

    @property
    def early_data_allowed(self) -> int:
        """How many bytes of 0-RTT data may still be sent (0 when 0-RTT is not offered)."""
        if not self._early_offered:
            return 0
        return self._early_allowed - self._early_sent

    # ------------------------------------------------------------------ base-class hooks

    def _handler_for(self, msg_type: int) -> Handler | None:
        return self._handlers.get((self._state, msg_type))

    def _ccs_allowed(self) -> bool:
        return self._state in _CCS_STATES

    # ------------------------------------------------------------------ ClientHello

    def _build_hello(self, session_id: bytes) -> ClientHello:
        config = self._config
        extensions: list[tuple[int, bytes]] = []
        if self._sni is not None:
            extensions.append((ExtensionType.server_name, ext.encode_server_name(self._sni)))
        extensions += [
            (ExtensionType.supported_versions, ext.encode_supported_versions_ch([TLS13])),
            (ExtensionType.supported_groups, ext.encode_uint16_list(self._groups())),
            (ExtensionType.key_share, self._key_share_body()),
            (ExtensionType.signature_algorithms, ext.encode_uint16_list(config.signature_schemes)),
            (ExtensionType.psk_key_exchange_modes, ext.encode_psk_modes([ext.PSK_DHE_KE])),
            # RFC 8449 §4: in TLS 1.3 the limit counts the inner content type byte.
            (
                ExtensionType.record_size_limit,
                ext.encode_record_size_limit(config.record_size_limit + 1),
            ),
        ]
        if self._alpn_offered:
            extensions.append(
                (
                    ExtensionType.application_layer_protocol_negotiation,
                    ext.encode_alpn(self._alpn_offered),
                )
            )
        if config.certificate is not None:
            extensions.append((ExtensionType.post_handshake_auth, b""))
        suites = tuple(code for code in config.cipher_suites if code in SUITES)
        hello = ClientHello(self._client_random, session_id, suites, extensions)
        if self._offered_psk is None:
            return hello
        if self._early_data_fits(self._offered_psk.ticket):
            self._early_offered = True
            self._early_allowed = self._offered_psk.ticket.max_early_data
            hello = replace(hello, extensions=[*extensions, (ExtensionType.early_data, b"")])
        return self._with_psk(hello, None)

    def _early_data_fits(self, ticket: SessionTicket) -> bool:
        """Offer 0-RTT only when the server could accept it: the ticket allows it and
        the ALPN protocol of the ticket is still possible (§4.2.10)."""
        if ticket.max_early_data <= 0:
            return False
        if ticket.alpn_protocol is None:
            return not self._alpn_offered
        return ticket.alpn_protocol in self._alpn_offered

    def _groups(self) -> list[int]:
        return [code for code in self._config.groups if code in GROUPS]

    def _new_share(self, code: int) -> PrivateShare:
        factory = self._config.key_share_factory
        private = factory(code) if factory is not None else None
        if private is None:
            private = GROUPS[code].generate(self._config.random)
        return private

    def _key_share_body(self) -> bytes:
        return ext.encode_key_share_ch(
            [KeyShareEntry(code, share.public) for code, share in self._shares.items()]
        )

    # ------------------------------------------------------------------ resumption PSK

    def _usable_psk(self) -> _OfferedPsk | None:
        """The session's PSK if it is still fresh and its suite is one we offer."""
        ticket = self._session
        if ticket is None:
            return None
        suite = SUITES.get(ticket.cipher_suite)
        if suite is None or ticket.cipher_suite not in self._config.cipher_suites:
            return None
        if not ticket.usable(self._config.clock()):
            return None
        if self._server_name is not None and ticket.server_name not in (None, self._server_name):
            return None  # RFC 8446 §4.6.1: resume only with the same server identity
        return _OfferedPsk(ticket, suite, ticket.psk)

    def _with_psk(self, hello: ClientHello, transcript: Transcript | None) -> ClientHello:
        """Append pre_shared_key (last, §4.2.11) with a correct binder.

        The binder covers the ClientHello truncated before the binders, after
        the transcript so far (empty for ClientHello1, §4.2.11.2).
        """
        offered = self._offered_psk
        assert offered is not None
        ticket = offered.ticket
        identity = ext.PskIdentity(ticket.ticket, ticket.obfuscated_age(self._config.clock()))
        placeholder = bytes(offered.suite.hash_len)
        body = ext.encode_offered_psks(ext.OfferedPsks((identity,), (placeholder,)))
        hello = replace(hello, extensions=[*hello.extensions, (ExtensionType.pre_shared_key, body)])
        schedule = KeySchedule(offered.suite)
        schedule.set_psk(offered.psk)
        if transcript is None:
            th = transcript_hash(offered.suite.hash, hello.truncated())
        else:
            partial = transcript.copy()
            partial.update(hello.truncated())
            th = partial.digest()
        binder = finished_verify_data(offered.suite.hash, schedule.binder_key(True), th)
        return hello.with_binders([binder])

    def _start_early_data(self, hello: ClientHello) -> None:
        """RFC 8446 §4.2.10 and Appendix D.4: CCS right after ClientHello1, then early keys."""
        offered = self._offered_psk
        assert offered is not None
        if self._config.middlebox_compat:
            self._send_compat_ccs()
        schedule = KeySchedule(offered.suite)
        schedule.set_psk(offered.psk)
        th = transcript_hash(offered.suite.hash, hello.serialize())
        secret = schedule.client_early_traffic_secret(th)
        self._log_secret("CLIENT_EARLY_TRAFFIC_SECRET", secret)
        self._suite = offered.suite
        self._set_write_secret(secret)

    # ------------------------------------------------------------------ ServerHello / HRR

    def _on_server_hello(self, raw: bytes) -> ClientState:
        hello = ServerHello.parse(raw[4:])
        self._check_server_hello_common(hello)
        if hello.is_hello_retry_request:
            if self._state is ClientState.WAIT_SH2:
                # RFC 8446 §4.1.4: a second HelloRetryRequest is unexpected_message.
                raise TLSError(AlertDescription.unexpected_message, "second HelloRetryRequest")
            return self._on_hello_retry(hello, raw)
        return self._on_real_server_hello(hello, raw)

    def _check_server_hello_common(self, hello: ServerHello) -> None:
        ours = self._hello
        assert ours is not None
        version = hello.selected_version()
        if version is None:
            # RFC 8446 §4.1.3: a downgrade to TLS 1.2 or below; the sentinels mark an attack.
            if hello.random[-8:] in (DOWNGRADE_TLS12, DOWNGRADE_TLS11):
                raise illegal_parameter("downgrade sentinel in ServerHello.random")
            raise TLSError(AlertDescription.protocol_version, "server does not speak TLS 1.3")
        if version != TLS13:
            # §4.2.1: a version we did not offer is illegal_parameter.
            raise illegal_parameter(f"server selected version 0x{version:04x}")
        if hello.legacy_version != LEGACY_VERSION:
            raise illegal_parameter("ServerHello legacy_version is not 0x0303")
        if not hmac.compare_digest(hello.legacy_session_id_echo, ours.legacy_session_id):
            raise illegal_parameter("legacy_session_id_echo does not match")
        if hello.cipher_suite not in ours.cipher_suites:
            raise illegal_parameter("server selected a cipher suite we did not offer")
        if self._hrr_suite is not None and hello.cipher_suite != self._hrr_suite:
            # §4.1.4: the ServerHello must keep the suite of the HelloRetryRequest.
            raise illegal_parameter("cipher suite changed after HelloRetryRequest")
        ext.check_offered(hello.extensions, ours.extension_types())

    def _on_hello_retry(self, retry: ServerHello, raw: bytes) -> ClientState:
        assert self._hello is not None and self._transcript is not None
        self._hello_retry = True
        self._hrr_suite = retry.cipher_suite
        suite = SUITES[retry.cipher_suite]
        selected = retry.selected_group()
        cookie = retry.cookie()
        if selected is not None:
            if selected not in self._groups():
                raise illegal_parameter("HelloRetryRequest selected a group we did not offer")
            if selected in self._shares:
                raise illegal_parameter("HelloRetryRequest asks for a share we already sent")
            self._hrr_group = selected
        elif cookie is None:
            # §4.1.4: a retry that would not change the ClientHello is illegal.
            raise illegal_parameter("HelloRetryRequest changes nothing")
        if self._early_offered:
            # §4.2.10: 0-RTT is rejected by a HelloRetryRequest; ClientHello2 goes out
            # in the clear again, so the early keys are dropped.
            self._reject_early_data()
            self._drop_write_protection()
        # §4.4.1: ClientHello1 becomes message_hash in the transcript.
        self._transcript.set_hash(suite.hash)
        self._transcript.replace_with_message_hash()
        self._transcript.update(raw)
        second = self._second_hello(selected, cookie, suite)
        if self._config.middlebox_compat:
            self._send_compat_ccs()
        self._send_handshake(second.serialize())
        self._hello = second
        return ClientState.WAIT_SH2

    def _second_hello(
        self, group: int | None, cookie: bytes | None, suite: CipherSuite
    ) -> ClientHello:
        """ClientHello2: the new share, the cookie, no early_data, a fresh binder (§4.1.2)."""
        first = self._hello
        assert first is not None
        if group is not None:
            self._shares = {group: self._new_share(group)}
        extensions: list[tuple[int, bytes]] = []
        for ext_type, body in first.extensions:
            if ext_type in (ExtensionType.early_data, ExtensionType.pre_shared_key):
                continue
            if ext_type == ExtensionType.key_share:
                body = self._key_share_body()
            extensions.append((ext_type, body))
        if cookie is not None:
            extensions.append((ExtensionType.cookie, ext.encode_cookie(cookie)))
        second = replace(first, extensions=extensions)
        if self._offered_psk is not None and self._offered_psk.suite.hash.name != suite.hash.name:
            # §4.1.4: drop a PSK whose hash does not match the retry's suite.
            self._offered_psk = None
        if self._offered_psk is None:
            return second
        return self._with_psk(second, self._transcript)

    def _on_real_server_hello(self, hello: ServerHello, raw: bytes) -> ClientState:
        assert self._transcript is not None
        suite = SUITES[hello.cipher_suite]
        psk = self._accepted_psk(hello, suite)
        share = hello.key_share()
        if share is None:
            # We only offer psk_dhe_ke, so a key share is mandatory (§4.2.9); with a
            # PSK selected its absence is illegal_parameter (§4.2.11).
            alert = AlertDescription.missing_extension if psk is None else None
            if alert is None:
                raise illegal_parameter("psk_dhe_ke selected without a key share")
            raise TLSError(alert, "ServerHello lacks key_share")
        private = self._shares.get(share.group)
        if private is None:
            raise illegal_parameter("server key share is for a group we did not send")
        if self._hrr_group is not None and share.group != self._hrr_group:
            raise illegal_parameter("server key share ignores the HelloRetryRequest group")
        shared = private.exchange(share.key_exchange)
        self._group_name = private.group.name
        if self._early_offered and psk is None:
            self._reject_early_data()
        self._suite = suite
        self._transcript.set_hash(suite.hash)
        self._transcript.update(raw)
        self._start_handshake_keys(psk, shared)
        return ClientState.WAIT_EE

    def _accepted_psk(self, hello: ServerHello, suite: CipherSuite) -> bytes | None:
        identity = hello.selected_identity()
        if identity is None:
            return None
        offered = self._offered_psk
        if offered is None:
            raise TLSError(AlertDescription.unsupported_extension, "pre_shared_key not offered")
        if identity != 0:
            # §4.2.11: the selected identity must be one we offered (we offer one).
            raise illegal_parameter("server selected an identity we did not offer")
        if offered.suite.hash.name != suite.hash.name:
            raise illegal_parameter("PSK hash does not match the selected cipher suite")
        self._resumed = True
        return offered.psk

    def _start_handshake_keys(self, psk: bytes | None, shared: bytes) -> None:
        assert self._suite is not None and self._transcript is not None
        schedule = KeySchedule(self._suite)
        schedule.set_psk(psk)
        schedule.set_shared_secret(shared)
        self._key_schedule = schedule
        digest = self._transcript.digest()
        self._client_hs_secret = schedule.client_handshake_traffic_secret(digest)
        self._server_hs_secret = schedule.server_handshake_traffic_secret(digest)
        self._log_secret("CLIENT_HANDSHAKE_TRAFFIC_SECRET", self._client_hs_secret)
        self._log_secret("SERVER_HANDSHAKE_TRAFFIC_SECRET", self._server_hs_secret)
        self._set_read_secret(self._server_hs_secret)
        if not self._early_offered:
            # Offered 0-RTT keeps the early keys until EE tells us its fate (§4.5).
            self._switch_to_handshake_write()

    def _switch_to_handshake_write(self) -> None:
        """Protect what we send from now on (alerts too) with the handshake keys.

        The compatibility CCS must go out unprotected first; queued now, it
        still immediately precedes our second flight (Appendix D.4).
        """
        if self._config.middlebox_compat:
            self._send_compat_ccs()
        self._set_write_secret(self._client_hs_secret)

    def _drop_write_protection(self) -> None:
        """Return our write side to plaintext records (ClientHello2 after 0-RTT keys).

        Anything queued under the early keys is flushed first, so only the
        records that follow go out unprotected.
        """
        self._flush_handshake()
        self._record.clear_write_key()

    def _reject_early_data(self) -> None:
        """0-RTT was declined: stop sending it and tell the user to resend (§4.2.10)."""
        self._early_offered = False
        self._emit(events.EarlyDataRejected())
        if self._client_hs_secret:
            self._switch_to_handshake_write()

    # ------------------------------------------------------------------ EncryptedExtensions

    def _on_ee(self, raw: bytes) -> ClientState:
        assert self._hello is not None and self._transcript is not None
        message = EncryptedExtensions.parse(raw[4:])
        ext.check_offered(message.extensions, self._hello.extension_types())
        self._alpn = message.alpn_protocol()
        if self._alpn is not None and self._alpn not in self._alpn_offered:
            # RFC 7301 §3.1: the server must pick one of the offered protocols.
            raise illegal_parameter("server selected an ALPN protocol we did not offer")
        limit = message.record_size_limit()
        if limit is not None:
            # RFC 8449 §4: in TLS 1.3 the limit is the whole TLSInnerPlaintext length;
            # with both sides using the extension, ours now binds the server too.
            self._record.peer_record_limit = min(limit, 16385)
            self._record.read_record_limit = self._config.record_size_limit + 1
        if message.early_data():
            self._accept_early_data()
        elif self._early_offered:
            self._reject_early_data()
        self._transcript.update(raw)
        if self._resumed:
            return ClientState.WAIT_FINISHED
        return ClientState.WAIT_CERT_CR

    def _accept_early_data(self) -> None:
        """§4.2.10: 0-RTT is only valid for the ticket's suite and ALPN protocol."""
        offered = self._offered_psk
        if not self._early_offered or offered is None:
            raise illegal_parameter("early_data accepted but not offered on this hello")
        ticket = offered.ticket
        assert self._suite is not None
        if self._suite.code != ticket.cipher_suite or self._alpn != ticket.alpn_protocol:
            raise illegal_parameter("0-RTT accepted with another cipher suite or ALPN")
        self._early_accepted = True

    # ------------------------------------------------------------------ server authentication

    def _on_certificate_request(self, raw: bytes) -> ClientState:
        assert self._transcript is not None
        request = CertificateRequest.parse(raw[4:])
        if request.certificate_request_context:
            # §4.3.2: in the handshake the context is zero length.
            raise illegal_parameter("certificate_request_context must be empty in the handshake")
        self._certificate_request = request
        self._transcript.update(raw)
        return ClientState.WAIT_CERT

    def _on_certificate(self, raw: bytes) -> ClientState:
        assert self._transcript is not None and self._hello is not None
        message = Certificate.parse(raw[4:])
        if message.certificate_request_context:
            raise illegal_parameter("server Certificate has a request context")
        if not message.certificate_list:
            # §4.4.2.4: an empty server Certificate is decode_error.
            raise TLSError(AlertDescription.decode_error, "server sent no certificate")
        for entry in message.certificate_list:
            ext.check_offered(entry.extensions, self._hello.extension_types())
        certificates = tuple(
            _load_certificate(entry.cert_data) for entry in message.certificate_list
        )
        trust = self._config.ca_certificates
        if trust is not None:
            verify_chain(
                certificates,
                trust,
                self._config.clock(),
                server_name=self._server_name,
                client=False,
            )
        self._peer_certificates = certificates
        self._transcript.update(raw)
        return ClientState.WAIT_CV

    def _on_certificate_verify(self, raw: bytes) -> ClientState:
        assert self._transcript is not None
        message = CertificateVerify.parse(raw[4:])
        scheme = SCHEMES.get(message.algorithm)
        if message.algorithm not in self._config.signature_schemes or scheme is None:
            # §4.4.3: the scheme must be one we offered in signature_algorithms.
            raise illegal_parameter("CertificateVerify uses a scheme we did not offer")
        leaf = self._peer_certificates[0]
        check_certificate_fits(scheme, leaf)
        signed = certificate_verify_input(SERVER_CONTEXT, self._transcript.digest())
        scheme.verify(leaf.public_key(), message.signature, signed)
        self._peer_scheme = scheme.name
        self._transcript.update(raw)
        return ClientState.WAIT_FINISHED

    # ------------------------------------------------------------------ Finished

    def _on_finished(self, raw: bytes) -> ClientState:
        assert self._suite is not None and self._transcript is not None
        assert self._key_schedule is not None
        message = Finished.parse(raw[4:])
        expected = finished_verify_data(
            self._suite.hash, self._server_hs_secret, self._transcript.digest()
        )
        # §4.4.4: a wrong verify_data is decrypt_error; compare in constant time.
        if not hmac.compare_digest(expected, message.verify_data):
            raise TLSError(AlertDescription.decrypt_error, "server Finished does not verify")
        self._transcript.update(raw)
        schedule = self._key_schedule
        schedule.set_master()
        digest = self._transcript.digest()
        client_app = schedule.client_application_traffic_secret(digest)
        server_app = schedule.server_application_traffic_secret(digest)
        self._exporter_secret = schedule.exporter_master_secret(digest)
        self._log_secret("CLIENT_TRAFFIC_SECRET_0", client_app)
        self._log_secret("SERVER_TRAFFIC_SECRET_0", server_app)
        self._log_secret("EXPORTER_SECRET", self._exporter_secret)
        self._set_read_secret(server_app)
        self._send_second_flight()
        self._resumption_secret = schedule.resumption_master_secret(self._transcript.digest())
        self._set_write_secret(client_app)
        self._install_application_secrets(server_app, client_app)
        self._complete_handshake(self._handshake_info())
        return ClientState.CONNECTED

    def _send_second_flight(self) -> None:
        """[EndOfEarlyData], [Certificate, CertificateVerify], Finished (§4.4)."""
        if self._early_accepted:
            # §4.5: EndOfEarlyData goes under the early keys, then we switch.
            self._send_handshake(EndOfEarlyData().serialize())
            self._switch_to_handshake_write()
        assert self._suite is not None and self._transcript is not None
        request = self._certificate_request
        if request is not None:
            self._send_client_certificate(request, self._transcript)
        verify_data = finished_verify_data(
            self._suite.hash, self._client_hs_secret, self._transcript.digest()
        )
        self._send_handshake(Finished(verify_data).serialize())

    def _send_compat_ccs(self) -> None:
        """RFC 8446 Appendix D.4: one dummy change_cipher_spec before the second flight."""
        if not self._sent_ccs:
            self._sent_ccs = True
            self._send_ccs()

    def _send_client_certificate(self, request: CertificateRequest, transcript: Transcript) -> None:
        """Certificate (possibly empty) and, with a certificate, CertificateVerify (§4.4.2)."""
        chain = self._config.certificate
        scheme_code = None
        if chain is not None:
            scheme_code = self._client_scheme(chain, request)
        if chain is None or scheme_code is None:
            # No certificate (or none fitting the server's schemes): an empty Certificate.
            self._send_auth_message(
                Certificate(request.certificate_request_context, ()).serialize(), transcript
            )
            return
        entries = tuple(CertificateEntry(der) for der in chain.der_chain)
        certificate = Certificate(request.certificate_request_context, entries)
        self._send_auth_message(certificate.serialize(), transcript)
        signed = certificate_verify_input(CLIENT_CONTEXT, transcript.digest())
        signature = SCHEMES[scheme_code].sign(chain.private_key, signed)
        self._send_auth_message(CertificateVerify(scheme_code, signature).serialize(), transcript)

    def _client_scheme(self, chain: CertificateChain, request: CertificateRequest) -> int | None:
        """Our preferred scheme that the server accepts and our key can sign (§4.4.2.3)."""
        accepted = set(request.signature_algorithms())
        for code in chain.schemes(self._config.signature_schemes):
            if code in accepted:
                return code
        return None

    def _send_auth_message(self, message: bytes, transcript: Transcript) -> None:
        transcript.update(message)
        self._send_handshake(message, in_transcript=False)

    def _handshake_info(self) -> events.HandshakeComplete:
        assert self._suite is not None
        return events.HandshakeComplete(
            version="TLSv1.3",
            cipher_suite=self._suite.name,
            group=self._group_name,
            signature_scheme=self._peer_scheme,
            server_name=self._server_name,
            alpn_protocol=self._alpn,
            hello_retry=self._hello_retry,
            resumed=self._resumed,
            early_data_accepted=self._early_accepted,
            peer_certificates=self._peer_certificates,
            client_identity=None,
        )

    # ------------------------------------------------------------------ post-handshake

    def _on_session_ticket(self, raw: bytes) -> ClientState:
        """§4.6.1: turn a NewSessionTicket into a resumable SessionTicket event."""
        assert self._suite is not None
        message = NewSessionTicket.parse(raw[4:])
        if message.ticket_lifetime > MAX_TICKET_LIFETIME:
            raise illegal_parameter("ticket_lifetime exceeds 7 days")
        if message.ticket_lifetime == 0:
            return ClientState.CONNECTED  # §4.6.1: a zero lifetime means "do not use"
        psk = resumption_psk(self._suite.hash, self._resumption_secret, message.ticket_nonce)
        ticket = SessionTicket(
            ticket=message.ticket,
            psk=psk,
            cipher_suite=self._suite.code,
            lifetime=message.ticket_lifetime,
            age_add=message.ticket_age_add,
            received_at=self._config.clock(),
            max_early_data=message.max_early_data_size(),
            server_name=self._server_name,
            alpn_protocol=self._alpn,
        )
        self._emit(events.NewSessionTicketReceived(ticket))
        return ClientState.CONNECTED

    def _on_post_handshake_request(self, raw: bytes) -> ClientState:
        """§4.6.2: answer a post-handshake CertificateRequest with our certificate."""
        assert self._suite is not None and self._transcript is not None
        if self._config.certificate is None:
            # We did not send post_handshake_auth, so this is unexpected (§4.6.2).
            raise TLSError(AlertDescription.unexpected_message, "post-handshake auth not offered")
        request = CertificateRequest.parse(raw[4:])
        transcript = self._transcript.copy()
        transcript.update(raw)
        self._send_client_certificate(request, transcript)
        assert self._write_secret is not None
        verify_data = finished_verify_data(
            self._suite.hash, self._write_secret, transcript.digest()
        )
        self._send_handshake(Finished(verify_data).serialize(), in_transcript=False)
        return ClientState.CONNECTED


# ---------------------------------------------------------------------- helpers


def _sni_value(server_name: str | None) -> str | None:
    """The host name to put in server_name: none for IP literals (RFC 6066 §3)."""
    if server_name is None:
        return None
    try:
        ipaddress.ip_address(server_name)
    except ValueError:
        pass
    else:
        return None
    try:
        return ext.normalize_host_name(server_name.encode("ascii"))
    except (TLSError, UnicodeEncodeError) as error:
        raise ValueError(f"server_name {server_name!r} is not a valid DNS host name") from error


def _checked_alpn(protocols: Sequence[str]) -> tuple[str, ...]:
    protocols = tuple(protocols)
    if protocols:
        ext.encode_alpn(protocols)  # raises ValueError on empty or over-long names
    return protocols


def _load_certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as error:
        raise TLSError(AlertDescription.bad_certificate, "undecodable certificate") from error
