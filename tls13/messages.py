"""TLS 1.3 handshake messages (RFC 8446 §4): parse, serialize, reassemble.

Every message class has ``parse(body)`` (the body after the 4-byte handshake
header) and ``serialize()`` returning the complete message including that
header.  Everything a re-encoding could change (extension bodies, certificate
DER) is kept as received, so ``serialize()`` reproduces parsed bytes exactly,
which the transcript hash depends on.

:class:`HandshakeReassembler` turns handshake record payloads into complete
messages; :func:`parse_message` dispatches a complete message to its class.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import ClassVar

from . import extensions as ext
from .alerts import AlertDescription, TLSError, decode_error, illegal_parameter, unexpected_message
from .codec import Reader, Writer
from .extensions import ExtContext, Extensions, ExtensionType, find_extension


class HandshakeType(IntEnum):
    client_hello = 1
    server_hello = 2
    new_session_ticket = 4
    end_of_early_data = 5
    encrypted_extensions = 8
    certificate = 11
    certificate_request = 13
    certificate_verify = 15
    finished = 20
    key_update = 24
    message_hash = 254


# RFC 8446 §4.1.3: SHA-256("HelloRetryRequest") marks a ServerHello as an HRR.
HELLO_RETRY_REQUEST_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)
# §4.1.3: last 8 bytes of ServerHello.random from a server that negotiated an
# older version although the client could do TLS 1.3.
DOWNGRADE_TLS12 = bytes.fromhex("444f574e47524401")
DOWNGRADE_TLS11 = bytes.fromhex("444f574e47524400")
LEGACY_VERSION = 0x0303

# Types that may appear on the wire (message_hash is synthetic, §4.4.1).
_WIRE_TYPES = frozenset(t for t in HandshakeType if t is not HandshakeType.message_hash)


def _frame(msg_type: int, body: bytes) -> bytes:
    """Prefix ``body`` with the handshake header (type, uint24 length)."""
    if len(body) > 0xFFFFFF:
        raise ValueError("handshake message too long")
    return ((msg_type << 24) | len(body)).to_bytes(4, "big") + body


class _Ext:
    """Shared lookup for messages carrying an ``extensions`` list."""

    extensions: Extensions

    def extension(self, ext_type: int) -> bytes | None:
        """The raw body of ``ext_type``, or None when absent."""
        return find_extension(self.extensions, ext_type)

    def has(self, ext_type: int) -> bool:
        return self.extension(ext_type) is not None

    def extension_types(self) -> list[int]:
        return [ext_type for ext_type, _ in self.extensions]


# --------------------------------------------------------------------------
# ClientHello (§4.1.2)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientHello(_Ext):
    random: bytes
    legacy_session_id: bytes
    cipher_suites: tuple[int, ...]
    extensions: Extensions = field(default_factory=list)
    legacy_version: int = LEGACY_VERSION
    legacy_compression_methods: bytes = b"\x00"
    # False only for a parsed pre-TLS-1.3 hello that had no extensions block at all.
    extensions_block: bool = True

    msg_type: ClassVar[HandshakeType] = HandshakeType.client_hello

    @classmethod
    def parse(cls, body: bytes) -> ClientHello:
        return cls(*cls.parse_fields(body))

    @staticmethod
    def parse_fields(
        body: bytes, decoded: dict[int, object] | None = None
    ) -> tuple[bytes, bytes, tuple[int, ...], Extensions, int, bytes, bool]:
        """The constructor arguments of a ClientHello body, in field order; ``decoded``
        receives each recognized extension's decoded value (see ``parse_extensions``)."""
        r = Reader(body)
        legacy_version = r.uint16()
        random = r.bytes(32)
        session_id = r.vector(1, 0, 32)
        suites = r.uint16_list(2, 2)
        # §4.1.2: only a TLS 1.3 hello must carry exactly [null]; an older one answers
        # to its own version's rules (protocol_version from us), so the server checks.
        compression = r.vector(1, 1)
        # A ClientHello without any extensions is pre-TLS-1.3; the state
        # machine answers it with protocol_version, so accept it here.
        has_block = not r.at_end()
        extensions = ext.parse_extensions(r, ExtContext.CH, 0, decoded) if has_block else []
        r.expect_end("ClientHello")
        return random, session_id, tuple(suites), extensions, legacy_version, compression, has_block

    def serialize(self) -> bytes:
        w = Writer()
        w.uint16(self.legacy_version)
        w.bytes(self.random)
        w.vector(1, self.legacy_session_id)
        w.uint16_list(2, self.cipher_suites)
        w.vector(1, self.legacy_compression_methods)
        if self.extensions or self.extensions_block:
            ext.write_extensions(w, self.extensions)
        return _frame(self.msg_type, w.getvalue())

    # --- PSK binders (§4.2.11.2) ---

    def binders_offset(self) -> int | None:
        """Offset in ``serialize()`` where the binders vector (with its length) starts.

        The binder MAC covers the transcript up to, not including, this point.
        None when the ClientHello offers no PSK.
        """
        body = self.extension(ExtensionType.pre_shared_key)
        if body is None:
            return None
        if self.extensions[-1][0] != ExtensionType.pre_shared_key:
            raise ValueError("pre_shared_key must be the last extension (§4.2.11)")
        offered = ext.decode_offered_psks(body)
        # pre_shared_key is the last extension, so the binders end the message.
        return len(self.serialize()) - len(ext.encode_binders(offered.binders))

    def truncated(self) -> bytes:
        """The partial ClientHello the binders are computed over."""
        offset = self.binders_offset()
        if offset is None:
            raise ValueError("ClientHello carries no pre_shared_key")
        return self.serialize()[:offset]

    def with_binders(self, binders: Sequence[bytes]) -> ClientHello:
        """A copy whose pre_shared_key carries ``binders`` (same lengths as before)."""
        body = self.extension(ExtensionType.pre_shared_key)
        if body is None or self.extensions[-1][0] != ExtensionType.pre_shared_key:
            raise ValueError("pre_shared_key must be present and last")
        offered = ext.decode_offered_psks(body)
        new_body = ext.encode_offered_psks(ext.OfferedPsks(offered.identities, tuple(binders)))
        return replace(
            self, extensions=[*self.extensions[:-1], (ExtensionType.pre_shared_key, new_body)]
        )

    # --- typed accessors (None when the extension is absent) ---

    def server_name(self) -> str | None:
        body = self.extension(ExtensionType.server_name)
        return None if body is None else ext.decode_server_name(body)

    def supported_versions(self) -> list[int] | None:
        body = self.extension(ExtensionType.supported_versions)
        return None if body is None else ext.decode_supported_versions_ch(body)

    def supported_groups(self) -> list[int] | None:
        body = self.extension(ExtensionType.supported_groups)
        return None if body is None else ext.decode_uint16_list(body)

    def key_shares(self) -> list[ext.KeyShareEntry] | None:
        body = self.extension(ExtensionType.key_share)
        return None if body is None else ext.decode_key_share_ch(body)

    def signature_algorithms(self) -> list[int] | None:
        body = self.extension(ExtensionType.signature_algorithms)
        return None if body is None else ext.decode_uint16_list(body)

    def signature_algorithms_cert(self) -> list[int] | None:
        body = self.extension(ExtensionType.signature_algorithms_cert)
        return None if body is None else ext.decode_uint16_list(body)

    def alpn_protocols(self) -> list[str] | None:
        body = self.extension(ExtensionType.application_layer_protocol_negotiation)
        return None if body is None else ext.decode_alpn(body)

    def cookie(self) -> bytes | None:
        body = self.extension(ExtensionType.cookie)
        return None if body is None else ext.decode_cookie(body)

    def psk_key_exchange_modes(self) -> list[int] | None:
        body = self.extension(ExtensionType.psk_key_exchange_modes)
        return None if body is None else ext.decode_psk_modes(body)

    def pre_shared_key(self) -> ext.OfferedPsks | None:
        body = self.extension(ExtensionType.pre_shared_key)
        return None if body is None else ext.decode_offered_psks(body)

    def early_data(self) -> bool:
        return self.has(ExtensionType.early_data)

    def post_handshake_auth(self) -> bool:
        return self.has(ExtensionType.post_handshake_auth)

    def record_size_limit(self) -> int | None:
        body = self.extension(ExtensionType.record_size_limit)
        return None if body is None else ext.decode_record_size_limit(body)

    def status_request(self) -> ext.StatusRequest | None:
        body = self.extension(ExtensionType.status_request)
        return None if body is None else ext.decode_status_request(body)

    def certificate_authorities(self) -> list[bytes] | None:
        body = self.extension(ExtensionType.certificate_authorities)
        return None if body is None else ext.decode_certificate_authorities(body)


# --------------------------------------------------------------------------
# ServerHello and HelloRetryRequest (§4.1.3, §4.1.4)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerHello(_Ext):
    random: bytes
    legacy_session_id_echo: bytes
    cipher_suite: int
    extensions: Extensions = field(default_factory=list)
    legacy_version: int = LEGACY_VERSION
    legacy_compression_method: int = 0
    # False only for a parsed pre-TLS-1.3 answer that had no extensions block at all.
    extensions_block: bool = True

    msg_type: ClassVar[HandshakeType] = HandshakeType.server_hello

    @property
    def is_hello_retry_request(self) -> bool:
        return self.random == HELLO_RETRY_REQUEST_RANDOM

    @classmethod
    def parse(cls, body: bytes) -> ServerHello:
        r = Reader(body)
        legacy_version = r.uint16()
        random = r.bytes(32)
        session_id = r.vector(1, 0, 32)
        suite = r.uint16()
        compression = r.uint8()
        if compression != 0:
            raise illegal_parameter("legacy_compression_method must be 0")
        context = ExtContext.HRR if random == HELLO_RETRY_REQUEST_RANDOM else ExtContext.SH
        # A TLS 1.2-or-older ServerHello may have no extensions at all; the client
        # then reports protocol_version (or a downgrade sentinel), not a decode error.
        has_block = not r.at_end()
        extensions = _server_hello_extensions(body, r, context) if has_block else []
        r.expect_end("ServerHello")
        return cls(random, session_id, suite, extensions, legacy_version, compression, has_block)

    def serialize(self) -> bytes:
        return encode_server_hello(
            self.random,
            self.legacy_session_id_echo,
            self.cipher_suite,
            self.extensions if self.extensions or self.extensions_block else None,
            self.legacy_version,
            self.legacy_compression_method,
        )

    def selected_version(self) -> int | None:
        body = self.extension(ExtensionType.supported_versions)
        return None if body is None else ext.decode_uint16_body(body)

    def key_share(self) -> ext.KeyShareEntry | None:
        """ServerHello only: the server's share."""
        body = self.extension(ExtensionType.key_share)
        if body is None or self.is_hello_retry_request:
            return None
        return ext.decode_key_share_sh(body)

    def selected_group(self) -> int | None:
        """HelloRetryRequest only: the group the server asks a share for."""
        body = self.extension(ExtensionType.key_share)
        if body is None or not self.is_hello_retry_request:
            return None
        return ext.decode_uint16_body(body)

    def cookie(self) -> bytes | None:
        body = self.extension(ExtensionType.cookie)
        return None if body is None else ext.decode_cookie(body)

    def selected_identity(self) -> int | None:
        body = self.extension(ExtensionType.pre_shared_key)
        return None if body is None else ext.decode_uint16_body(body)


_SERVER_HELLO_TAIL = struct.Struct(">HB").pack  # cipher_suite, legacy_compression_method


def encode_server_hello(
    random: bytes,
    session_id: bytes,
    cipher_suite: int,
    extensions: Extensions | None,
    legacy_version: int = LEGACY_VERSION,
    compression_method: int = 0,
) -> bytes:
    """A complete ServerHello (or HelloRetryRequest) message; ``extensions`` None leaves
    the block out (a pre-TLS-1.3 answer).  The server builds its hello with this directly."""
    if len(session_id) > 0xFF:
        raise ValueError("vector too long for its length prefix")
    block = ext.encode_extensions(extensions) if extensions is not None else b""
    return _frame(
        HandshakeType.server_hello,
        legacy_version.to_bytes(2, "big")
        + random
        + bytes((len(session_id),))
        + session_id
        + _SERVER_HELLO_TAIL(cipher_suite, compression_method)
        + block,
    )


def _server_hello_extensions(body: bytes, r: Reader, context: ExtContext) -> Extensions:
    """Extensions of a ServerHello; an older-version answer is judged by its version.

    Without supported_versions the server did not negotiate TLS 1.3 and its
    TLS 1.2 extensions (renegotiation_info, ec_point_formats...) must not turn
    the client's protocol_version / downgrade verdict (§4.1.3) into
    unsupported_extension, so such a block is only framed, not judged.
    """
    framing = Reader(body, r.position).sub(2)
    pairs: Extensions = []
    while not framing.at_end():
        ext_type = framing.uint16()
        pairs.append((ext_type, framing.vector(2)))
    if any(ext_type == ExtensionType.supported_versions for ext_type, _ in pairs):
        return ext.parse_extensions(r, context)
    r.sub(2)
    return pairs


# --------------------------------------------------------------------------
# EncryptedExtensions (§4.3.1)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedExtensions(_Ext):
    extensions: Extensions = field(default_factory=list)

    msg_type: ClassVar[HandshakeType] = HandshakeType.encrypted_extensions

    @classmethod
    def parse(cls, body: bytes) -> EncryptedExtensions:
        r = Reader(body)
        extensions = ext.parse_extensions(r, ExtContext.EE)
        r.expect_end("EncryptedExtensions")
        return cls(extensions)

    def serialize(self) -> bytes:
        return _frame(self.msg_type, ext.encode_extensions(self.extensions))

    def alpn_protocol(self) -> str | None:
        body = self.extension(ExtensionType.application_layer_protocol_negotiation)
        return None if body is None else ext.decode_alpn_selected(body)

    def record_size_limit(self) -> int | None:
        body = self.extension(ExtensionType.record_size_limit)
        return None if body is None else ext.decode_record_size_limit(body)

    def supported_groups(self) -> list[int] | None:
        body = self.extension(ExtensionType.supported_groups)
        return None if body is None else ext.decode_uint16_list(body)

    def early_data(self) -> bool:
        return self.has(ExtensionType.early_data)

    def server_name_acknowledged(self) -> bool:
        return self.has(ExtensionType.server_name)


# --------------------------------------------------------------------------
# CertificateRequest (§4.3.2)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateRequest(_Ext):
    certificate_request_context: bytes
    extensions: Extensions

    msg_type: ClassVar[HandshakeType] = HandshakeType.certificate_request

    @classmethod
    def parse(cls, body: bytes) -> CertificateRequest:
        r = Reader(body)
        context = r.vector(1)
        extensions = ext.parse_extensions(r, ExtContext.CR, 2)
        r.expect_end("CertificateRequest")
        # §4.3.2: the signature_algorithms extension MUST be specified.
        if find_extension(extensions, ExtensionType.signature_algorithms) is None:
            raise TLSError(
                AlertDescription.missing_extension, "CertificateRequest lacks signature_algorithms"
            )
        return cls(context, extensions)

    def serialize(self) -> bytes:
        w = Writer()
        w.vector(1, self.certificate_request_context)
        ext.write_extensions(w, self.extensions)
        return _frame(self.msg_type, w.getvalue())

    def signature_algorithms(self) -> list[int]:
        body = self.extension(ExtensionType.signature_algorithms)
        return [] if body is None else ext.decode_uint16_list(body)

    def signature_algorithms_cert(self) -> list[int] | None:
        body = self.extension(ExtensionType.signature_algorithms_cert)
        return None if body is None else ext.decode_uint16_list(body)

    def certificate_authorities(self) -> list[bytes] | None:
        body = self.extension(ExtensionType.certificate_authorities)
        return None if body is None else ext.decode_certificate_authorities(body)


# --------------------------------------------------------------------------
# Certificate (§4.4.2)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateEntry(_Ext):
    cert_data: bytes
    extensions: Extensions = field(default_factory=list)

    def ocsp_response(self) -> bytes | None:
        body = self.extension(ExtensionType.status_request)
        return None if body is None else ext.decode_certificate_status(body)


@dataclass(frozen=True)
class Certificate:
    certificate_request_context: bytes
    certificate_list: tuple[CertificateEntry, ...]

    msg_type: ClassVar[HandshakeType] = HandshakeType.certificate

    @classmethod
    def parse(cls, body: bytes) -> Certificate:
        r = Reader(body)
        context = r.vector(1)
        entries_reader = r.sub(3)
        r.expect_end("Certificate")
        entries = []
        while not entries_reader.at_end():
            cert_data = entries_reader.vector(3, 1)
            extensions = ext.parse_extensions(entries_reader, ExtContext.CT)
            entries.append(CertificateEntry(cert_data, extensions))
        return cls(context, tuple(entries))

    def serialize(self) -> bytes:
        w = Writer()
        w.vector(1, self.certificate_request_context)
        with w.prefixed(3):
            for entry in self.certificate_list:
                w.vector(3, entry.cert_data)
                ext.write_extensions(w, entry.extensions)
        return _frame(self.msg_type, w.getvalue())


# --------------------------------------------------------------------------
# CertificateVerify (§4.4.3), Finished (§4.4.4)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateVerify:
    algorithm: int
    signature: bytes

    msg_type: ClassVar[HandshakeType] = HandshakeType.certificate_verify

    @classmethod
    def parse(cls, body: bytes) -> CertificateVerify:
        r = Reader(body)
        algorithm = r.uint16()
        signature = r.vector(2)
        r.expect_end("CertificateVerify")
        return cls(algorithm, signature)

    def serialize(self) -> bytes:
        return encode_certificate_verify(self.algorithm, self.signature)


_CV_HEAD = struct.Struct(">HH").pack  # algorithm, signature length


def encode_certificate_verify(algorithm: int, signature: bytes) -> bytes:
    """A complete CertificateVerify message."""
    if len(signature) > 0xFFFF:
        raise ValueError("vector too long for its length prefix")
    return _frame(HandshakeType.certificate_verify, _CV_HEAD(algorithm, len(signature)) + signature)


@dataclass(frozen=True)
class Finished:
    """verify_data fills the body; its length (Hash.length) is checked by the state machine."""

    verify_data: bytes

    msg_type: ClassVar[HandshakeType] = HandshakeType.finished

    @classmethod
    def parse(cls, body: bytes) -> Finished:
        return cls(bytes(body))

    def serialize(self) -> bytes:
        return _frame(self.msg_type, self.verify_data)


# --------------------------------------------------------------------------
# Post-handshake and 0-RTT messages (§4.6.1, §4.5, §4.6.3)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NewSessionTicket(_Ext):
    ticket_lifetime: int
    ticket_age_add: int
    ticket_nonce: bytes
    ticket: bytes
    extensions: Extensions = field(default_factory=list)

    msg_type: ClassVar[HandshakeType] = HandshakeType.new_session_ticket

    @classmethod
    def parse(cls, body: bytes) -> NewSessionTicket:
        r = Reader(body)
        lifetime = r.uint32()
        age_add = r.uint32()
        nonce = r.vector(1)
        ticket = r.vector(2, 1)
        extensions = ext.parse_extensions(r, ExtContext.NST)
        r.expect_end("NewSessionTicket")
        return cls(lifetime, age_add, nonce, ticket, extensions)

    def serialize(self) -> bytes:
        return encode_new_session_ticket(
            self.ticket_lifetime,
            self.ticket_age_add,
            self.ticket_nonce,
            self.ticket,
            self.extensions,
        )

    def max_early_data_size(self) -> int:
        """0 when the ticket does not allow 0-RTT."""
        body = self.extension(ExtensionType.early_data)
        return 0 if body is None else ext.decode_max_early_data(body)


_TICKET_HEAD = struct.Struct(">IIB").pack  # ticket_lifetime, ticket_age_add, nonce length


def encode_new_session_ticket(
    lifetime: int, age_add: int, nonce: bytes, ticket: bytes, extensions: Extensions
) -> bytes:
    """A complete NewSessionTicket message."""
    if len(nonce) > 0xFF or len(ticket) > 0xFFFF:
        raise ValueError("vector too long for its length prefix")
    return _frame(
        HandshakeType.new_session_ticket,
        _TICKET_HEAD(lifetime, age_add, len(nonce))
        + nonce
        + len(ticket).to_bytes(2, "big")
        + ticket
        + ext.encode_extensions(extensions),
    )


def encode_encrypted_extensions(extensions: Extensions) -> bytes:
    """A complete EncryptedExtensions message."""
    return _frame(HandshakeType.encrypted_extensions, ext.encode_extensions(extensions))


def encode_finished(verify_data: bytes) -> bytes:
    """A complete Finished message."""
    return _frame(HandshakeType.finished, verify_data)


@dataclass(frozen=True)
class EndOfEarlyData:
    msg_type: ClassVar[HandshakeType] = HandshakeType.end_of_early_data

    @classmethod
    def parse(cls, body: bytes) -> EndOfEarlyData:
        if body:
            raise decode_error("EndOfEarlyData must be empty")
        return cls()

    def serialize(self) -> bytes:
        return _frame(self.msg_type, b"")


@dataclass(frozen=True)
class KeyUpdate:
    request_update: bool

    msg_type: ClassVar[HandshakeType] = HandshakeType.key_update

    @classmethod
    def parse(cls, body: bytes) -> KeyUpdate:
        r = Reader(body)
        value = r.uint8()
        r.expect_end("KeyUpdate")
        # §4.6.3: update_not_requested(0), update_requested(1); anything else is illegal.
        if value not in (0, 1):
            raise illegal_parameter("KeyUpdate request_update must be 0 or 1")
        return cls(bool(value))

    def serialize(self) -> bytes:
        return _frame(self.msg_type, bytes([int(self.request_update)]))


def message_hash(digest: bytes) -> bytes:
    """The synthetic message replacing ClientHello1 after an HRR (§4.4.1)."""
    return _frame(HandshakeType.message_hash, digest)


# --------------------------------------------------------------------------
# Dispatch and reassembly
# --------------------------------------------------------------------------

Message = (
    ClientHello
    | ServerHello
    | EncryptedExtensions
    | CertificateRequest
    | Certificate
    | CertificateVerify
    | Finished
    | NewSessionTicket
    | EndOfEarlyData
    | KeyUpdate
)

_PARSERS: dict[int, type[Message]] = {
    cls.msg_type: cls
    for cls in (
        ClientHello,
        ServerHello,
        EncryptedExtensions,
        CertificateRequest,
        Certificate,
        CertificateVerify,
        Finished,
        NewSessionTicket,
        EndOfEarlyData,
        KeyUpdate,
    )
}


def parse_message(message: bytes) -> Message:
    """Parse a complete handshake message (header included) into its class."""
    if len(message) < 4:
        raise decode_error("handshake message shorter than its header")
    length = int.from_bytes(message[1:4], "big")
    if length != len(message) - 4:
        raise decode_error("handshake length does not match the message")
    parser = _PARSERS.get(message[0])
    if parser is None:
        raise unexpected_message(f"unknown handshake type {message[0]}")
    return parser.parse(message[4:])


class HandshakeReassembler:
    """Reassembles handshake messages from record payloads (§5.1).

    Messages may span records and several may share one record.  ``pending``
    says whether part of a message is still buffered: the state machine checks
    it after every message that changes keys, since such a message must end
    its record (§5.1, unexpected_message otherwise).
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def feed(self, payload: bytes) -> list[tuple[int, bytes]]:
        """Add one handshake record payload; return every message it completes."""
        if not self._buffer and len(payload) >= 4:
            # The common case: a record holding exactly one whole message, taken as is.
            msg_type = payload[0]
            length = (payload[1] << 16) | (payload[2] << 8) | payload[3]
            if (
                msg_type in _WIRE_TYPES
                and length <= self.max_message
                and len(payload) == 4 + length
            ):
                return [(msg_type, bytes(payload))]
        self._buffer += payload
        messages: list[tuple[int, bytes]] = []
        while len(self._buffer) >= 4:
            msg_type = self._buffer[0]
            if msg_type not in _WIRE_TYPES:
                raise unexpected_message(f"unknown handshake type {msg_type}")
            length = int.from_bytes(self._buffer[1:4], "big")
            if length > self.max_message:
                # What OpenSSL sends for an excessive message size.
                raise TLSError(
                    AlertDescription.illegal_parameter,
                    f"handshake message of {length} bytes exceeds limit",
                    limit="max_handshake_message",
                )
            end = 4 + length
            if len(self._buffer) < end:
                break
            messages.append((msg_type, bytes(self._buffer[:end])))
            del self._buffer[:end]
        if 0 < len(self._buffer) < 4 and self._buffer[0] not in _WIRE_TYPES:
            raise unexpected_message(f"unknown handshake type {self._buffer[0]}")
        return messages
