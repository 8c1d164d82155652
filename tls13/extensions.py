"""TLS 1.3 extensions (RFC 8446 §4.2): type codes, placement rules and body codecs.

Extensions travel as an ordered list of ``(type, body)`` pairs; the raw body is
kept so a message re-serializes byte for byte.  :func:`parse_extensions`
enforces the framing rules every message shares (no duplicates, only the
extensions the §4.2 table allows in that message, ``pre_shared_key`` last in a
ClientHello) and checks the syntax of each body it recognizes, so a malformed
extension is rejected even when nobody asks for its value.  The typed values
come from the ``decode_*`` functions; ``encode_*`` build bodies.

Whether a server-sent extension answers one the client offered is checked by
the client with :func:`check_offered`.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from .alerts import AlertDescription, TLSError, decode_error, illegal_parameter
from .codec import Reader, Writer

_SWAP = sys.byteorder == "little"  # array("H") is native-endian; the wire is big-endian

Extensions = list[tuple[int, bytes]]
"""An ordered list of ``(extension type, raw body)`` pairs."""


class ExtensionType(IntEnum):
    server_name = 0
    max_fragment_length = 1
    status_request = 5
    supported_groups = 10
    signature_algorithms = 13
    use_srtp = 14
    heartbeat = 15
    application_layer_protocol_negotiation = 16
    signed_certificate_timestamp = 18
    client_certificate_type = 19
    server_certificate_type = 20
    padding = 21
    compress_certificate = 27
    record_size_limit = 28
    pre_shared_key = 41
    early_data = 42
    supported_versions = 43
    cookie = 44
    psk_key_exchange_modes = 45
    certificate_authorities = 47
    oid_filters = 48
    post_handshake_auth = 49
    signature_algorithms_cert = 50
    key_share = 51


class ExtContext(IntEnum):
    """Where an extension appears; values equal the carrying message's HandshakeType.

    HelloRetryRequest shares the ServerHello type on the wire, so it takes the
    retired ``hello_retry_request`` code 6; a CertificateEntry takes the
    Certificate code.
    """

    CH = 1
    SH = 2
    NST = 4
    HRR = 6
    EE = 8
    CT = 11
    CR = 13


_CH, _SH, _NST, _HRR, _EE, _CT, _CR = (
    ExtContext.CH,
    ExtContext.SH,
    ExtContext.NST,
    ExtContext.HRR,
    ExtContext.EE,
    ExtContext.CT,
    ExtContext.CR,
)

# RFC 8446bis §4.2 table: the messages each recognized extension may appear in.
ALLOWED: dict[int, frozenset[ExtContext]] = {
    ExtensionType.server_name: frozenset({_CH, _EE}),
    ExtensionType.max_fragment_length: frozenset({_CH, _EE}),
    ExtensionType.status_request: frozenset({_CH, _CR, _CT}),
    ExtensionType.supported_groups: frozenset({_CH, _EE}),
    ExtensionType.signature_algorithms: frozenset({_CH, _CR}),
    ExtensionType.use_srtp: frozenset({_CH, _EE}),
    ExtensionType.heartbeat: frozenset({_CH, _EE}),
    ExtensionType.application_layer_protocol_negotiation: frozenset({_CH, _EE}),
    ExtensionType.signed_certificate_timestamp: frozenset({_CH, _CR, _CT}),
    ExtensionType.client_certificate_type: frozenset({_CH, _EE}),
    ExtensionType.server_certificate_type: frozenset({_CH, _EE}),
    ExtensionType.padding: frozenset({_CH}),
    ExtensionType.compress_certificate: frozenset({_CH, _CR}),
    ExtensionType.record_size_limit: frozenset({_CH, _EE}),
    ExtensionType.pre_shared_key: frozenset({_CH, _SH}),
    ExtensionType.early_data: frozenset({_CH, _EE, _NST}),
    ExtensionType.supported_versions: frozenset({_CH, _SH, _HRR}),
    ExtensionType.cookie: frozenset({_CH, _HRR}),
    ExtensionType.psk_key_exchange_modes: frozenset({_CH}),
    ExtensionType.certificate_authorities: frozenset({_CH, _CR}),
    ExtensionType.oid_filters: frozenset({_CR}),
    ExtensionType.post_handshake_auth: frozenset({_CH}),
    ExtensionType.signature_algorithms_cert: frozenset({_CH, _CR}),
    ExtensionType.key_share: frozenset({_CH, _SH, _HRR}),
}

# Messages whose receiver must ignore extensions it does not recognize
# (§4.1.2 ClientHello, §4.3.2 CertificateRequest, §4.6.1 NewSessionTicket).
# Elsewhere the peer may only answer what was offered, and we never offer an
# extension we do not know, so an unknown one there is unsupported_extension.
_IGNORE_UNKNOWN = frozenset({_CH, _CR, _NST})

SUPPORTED_VERSION_TLS13 = 0x0304
PSK_DHE_KE = 1
PSK_KE = 0
STATUS_TYPE_OCSP = 1


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE code points (0x?A?A) for 16-bit fields."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


# --------------------------------------------------------------------------
# List framing
# --------------------------------------------------------------------------


def parse_extensions(
    reader: Reader, context: int, minimum: int = 0, decoded: dict[int, object] | None = None
) -> Extensions:
    """Read an ``Extension extensions<minimum..2^16-1>`` block for ``context``.

    ``context`` is an :class:`ExtContext` (a HandshakeType value works for
    every message except HelloRetryRequest and CertificateEntry).  With ``decoded``
    the value each recognized body decodes to (what the message's typed accessor
    returns) is stored there by extension type, so a receiver decodes each body once.
    """
    ctx = _CONTEXTS.get(context) or ExtContext(context)
    rules = _RULES[ctx]
    result = reader.sub(2, minimum).pairs16()
    seen: set[int] = set()
    for ext_type, body in result:
        # RFC 8446 §4.2: at most one extension of each type in a block.
        if ext_type in seen:
            raise illegal_parameter(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if ext_type in rules:
            check = rules[ext_type]
            if check is not None:
                value = check(body)
                if decoded is not None:
                    decoded[ext_type] = value
        else:
            _check_placement(ext_type, ctx)
    if ctx is _CH and _PRE_SHARED_KEY in seen:
        # RFC 8446 §4.2.11: pre_shared_key must be the last extension in ClientHello.
        if result[-1][0] != _PRE_SHARED_KEY:
            raise illegal_parameter("pre_shared_key is not the last extension")
    return result


def _check_placement(ext_type: int, ctx: ExtContext) -> None:
    allowed = ALLOWED.get(ext_type)
    if allowed is None:
        if ctx not in _IGNORE_UNKNOWN:
            raise TLSError(
                AlertDescription.unsupported_extension, f"unsolicited extension {ext_type}"
            )
        return
    if ctx not in allowed:
        # RFC 8446 §4.2: a recognized extension in the wrong message.
        raise illegal_parameter(f"extension {ext_type} not allowed in {ctx.name}")


def write_extensions(writer: Writer, extensions: Iterable[tuple[int, bytes]]) -> None:
    """Write an extensions block with its 2-byte length prefix."""
    writer.bytes(encode_extensions(extensions))


def encode_extensions(extensions: Iterable[tuple[int, bytes]]) -> bytes:
    """An extensions block with its 2-byte length prefix, built in one join."""
    parts = []
    for ext_type, body in extensions:
        if len(body) > 0xFFFF:
            raise ValueError("vector too long for its length prefix")
        parts.append(_EXT_HEAD(ext_type, len(body)))
        parts.append(body)
    block = b"".join(parts)
    if len(block) > 0xFFFF:
        raise ValueError("vector too long for its length prefix")
    return len(block).to_bytes(2, "big") + block


_EXT_HEAD = struct.Struct(">HH").pack  # extension_type, extension_data length


def find_extension(extensions: Sequence[tuple[int, bytes]], ext_type: int) -> bytes | None:
    """The body of ``ext_type`` in ``extensions``, or None when absent."""
    for found_type, body in extensions:
        if found_type == ext_type:
            return body
    return None


def check_offered(received: Sequence[tuple[int, bytes]], offered: Iterable[int]) -> None:
    """Every response extension must answer one we offered (a client checks the
    server's messages; a server checks client CertificateEntry extensions, §4.4.2).

    RFC 8446 §4.2: a response extension without a matching request is
    ``unsupported_extension`` (cookie is the one HRR may send unprompted).
    """
    offered_set = set(offered) | {ExtensionType.cookie}
    for ext_type, _ in received:
        if ext_type not in offered_set:
            raise TLSError(
                AlertDescription.unsupported_extension, f"extension {ext_type} was not offered"
            )


# --------------------------------------------------------------------------
# Body codecs
# --------------------------------------------------------------------------


def _expect_empty(body: bytes, what: str) -> None:
    if body:
        raise decode_error(f"{what} extension must be empty")


# server_name (RFC 6066 §3) -------------------------------------------------

_HOST_NAME = 0
_HOSTNAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def normalize_host_name(raw: bytes) -> str:
    """Validate an SNI host name and return it lower-cased without a trailing dot.

    RFC 6066 §3: an ASCII DNS name without the trailing dot; we tolerate one
    trailing dot (some clients send the absolute form) and refuse anything that
    is not a plausible DNS name (empty labels, non-LDH bytes, over-long names).
    """
    name = raw[:-1] if raw.endswith(b".") else raw
    if not name or len(name) > 253:
        raise illegal_parameter("server_name length out of range")
    if not set(name) <= _HOSTNAME_CHARS:
        raise illegal_parameter("server_name contains characters outside LDH ASCII")
    if is_ip_literal(name):
        # RFC 6066 §3: "Literal IPv4 and IPv6 addresses are not permitted in HostName."
        raise illegal_parameter("server_name is an IP address literal")
    for label in name.split(b"."):
        if not label or len(label) > 63:
            raise illegal_parameter("server_name has an empty or over-long label")
    return name.decode("ascii").lower()


_IPV4_CHARS = frozenset(b"0123456789.")


def is_ip_literal(name: bytes) -> bool:
    """True for an IPv4 or IPv6 address literal (also bracketed, or with a trailing dot)."""
    text = name.removesuffix(b".")
    if b":" not in text and not set(text) <= _IPV4_CHARS:
        return False  # the common case, without ipaddress' slower parse
    if text.startswith(b"[") and text.endswith(b"]"):
        text = text[1:-1]
    try:
        ipaddress.ip_address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def decode_server_name(body: bytes) -> str | None:
    """ClientHello server_name: exactly one host_name entry; None for an IP literal.

    RFC 6066 §3 forbids clients to send IP address literals but names no server
    reaction. Clients such as wrk do send them and OpenSSL/nginx ignore them, so an IP
    literal counts as no server_name at all (default certificate and route).
    """
    # ServerNameList: uint16 length, then one entry: NameType (1 byte), HostName<1..2^16-1>.
    size = len(body)
    if size < 2:
        raise decode_error("truncated")
    list_end = 2 + ((body[0] << 8) | body[1])
    if list_end == 2:
        raise decode_error("vector length 0 outside [1, None]")
    if list_end > size:
        raise decode_error("truncated")
    if list_end < size:
        raise decode_error(f"{size - list_end} trailing bytes after server_name")
    if body[2] != _HOST_NAME:
        # Like OpenSSL we accept host_name only: RFC 6066 left other types unusable.
        raise decode_error(f"server_name type {body[2]} is not host_name")
    if list_end < 5:
        raise decode_error("truncated")
    host_end = 5 + ((body[3] << 8) | body[4])
    if host_end == 5:
        raise decode_error("vector length 0 outside [1, None]")
    if host_end > list_end:
        raise decode_error("truncated")
    if host_end < list_end:
        raise decode_error(
            f"{list_end - host_end} trailing bytes after server_name list (one host_name only)"
        )
    return _host_name(bytes(body[5:host_end]))


@functools.lru_cache(maxsize=1024)
def _host_name(host: bytes) -> str | None:
    """The checked, normalized name of one SNI host_name; None for an IP literal.
    Clients repeat a few names, so the answers are remembered (failures raise, uncached)."""
    if is_ip_literal(host):
        return None
    return normalize_host_name(host)


def encode_server_name(host: str) -> bytes:
    w = Writer()
    raw = host.encode("ascii")
    normalize_host_name(raw)
    with w.prefixed(2):
        w.uint8(_HOST_NAME)
        w.vector(2, raw)
    return w.getvalue()


# supported_versions (§4.2.1) -----------------------------------------------


def decode_supported_versions_ch(body: bytes) -> list[int]:
    r = Reader(body)
    versions = r.sub(1, 2, 254)
    r.expect_end("supported_versions")
    if versions.remaining % 2:
        raise decode_error("odd supported_versions length")
    return _uint16s(body, 1)


def encode_supported_versions_ch(versions: Sequence[int]) -> bytes:
    w = Writer()
    with w.prefixed(1):
        for version in versions:
            w.uint16(version)
    return w.getvalue()


def decode_uint16_body(body: bytes, what: str = "extension") -> int:
    """A body that is a single uint16 (SH supported_versions, HRR key_share, SH psk)."""
    r = Reader(body)
    value = r.uint16()
    r.expect_end(what)
    return value


def encode_uint16_body(value: int) -> bytes:
    return value.to_bytes(2, "big")


decode_selected_version = decode_uint16_body
decode_selected_group = decode_uint16_body
decode_selected_identity = decode_uint16_body


# supported_groups / signature_algorithms(_cert) ----------------------------


def decode_uint16_list(body: bytes, what: str = "list") -> list[int]:
    """NamedGroupList / SignatureSchemeList: a non-empty uint16 list."""
    size = len(body)
    if size < 2:
        raise decode_error("truncated")
    length = (body[0] << 8) | body[1]
    if length % 2 or length < 2:
        raise decode_error("bad uint16 list length")
    if length + 2 != size:
        if length + 2 > size:
            raise decode_error("truncated")
        raise decode_error(f"{size - 2 - length} trailing bytes after {what}")
    return _uint16s(body, 2)


def _uint16s(data: bytes, start: int) -> list[int]:
    """Big-endian uint16 values from ``data[start:]`` (an even number of bytes)."""
    values = array("H", data[start:])
    if _SWAP:
        values.byteswap()
    return values.tolist()


def encode_uint16_list(values: Sequence[int]) -> bytes:
    w = Writer()
    w.uint16_list(2, list(values))
    return w.getvalue()


decode_supported_groups = decode_uint16_list
decode_signature_algorithms = decode_uint16_list


# key_share (§4.2.8) ---------------------------------------------------------


@dataclass(frozen=True)
class KeyShareEntry:
    group: int
    key_exchange: bytes


def _read_key_share_entry(r: Reader) -> KeyShareEntry:
    group = r.uint16()
    return KeyShareEntry(group, r.vector(2, 1))


def decode_key_share_ch(body: bytes) -> list[KeyShareEntry]:
    # KeyShareEntry client_shares<0..2^16-1>: group (2 bytes), key_exchange<1..2^16-1>.
    size = len(body)
    if size < 2:
        raise decode_error("truncated")
    end = 2 + ((body[0] << 8) | body[1])
    if end > size:
        raise decode_error("truncated")
    if end < size:
        raise decode_error(f"{size - end} trailing bytes after key_share")
    entries: list[KeyShareEntry] = []
    groups: set[int] = set()
    pos = 2
    while pos < end:
        if pos + 4 > end:
            raise decode_error("truncated")
        group = (body[pos] << 8) | body[pos + 1]
        share_end = pos + 4 + ((body[pos + 2] << 8) | body[pos + 3])
        if share_end == pos + 4:
            raise decode_error("vector length 0 outside [1, None]")
        if share_end > end:
            raise decode_error("truncated")
        # §4.2.8: clients MUST NOT offer two shares for one group.
        if group in groups:
            raise illegal_parameter("duplicate key_share group")
        groups.add(group)
        entries.append(KeyShareEntry(group, bytes(body[pos + 4 : share_end])))
        pos = share_end
    return entries


def encode_key_share_ch(entries: Sequence[KeyShareEntry]) -> bytes:
    w = Writer()
    with w.prefixed(2):
        for entry in entries:
            w.uint16(entry.group)
            w.vector(2, entry.key_exchange)
    return w.getvalue()


def decode_key_share_sh(body: bytes) -> KeyShareEntry:
    r = Reader(body)
    entry = _read_key_share_entry(r)
    r.expect_end("key_share")
    return entry


def encode_key_share_sh(entry: KeyShareEntry) -> bytes:
    key_exchange = entry.key_exchange
    if len(key_exchange) > 0xFFFF:
        raise ValueError("vector too long for its length prefix")
    return _EXT_HEAD(entry.group, len(key_exchange)) + key_exchange


# ALPN (RFC 7301 §3.1) -------------------------------------------------------
# Protocol names are opaque octets; we map them to str with latin-1, which is
# a bijection, so any name survives the round trip.


def decode_alpn(body: bytes) -> list[str]:
    r = Reader(body)
    names = r.sub(2, 2)
    r.expect_end("application_layer_protocol_negotiation")
    result = []
    while not names.at_end():
        name: bytes = names.vector(1, 1)
        result.append(name.decode("latin-1"))
    return result


def encode_alpn(protocols: Sequence[str]) -> bytes:
    if not protocols:
        raise ValueError("ALPN needs at least one protocol")
    w = Writer()
    with w.prefixed(2):
        for name in protocols:
            raw = name.encode("latin-1")
            if not 1 <= len(raw) <= 255:
                raise ValueError("ALPN protocol names are 1..255 bytes")
            w.vector(1, raw)
    return w.getvalue()


def decode_alpn_selected(body: bytes) -> str:
    """Server's answer (EE): RFC 7301 §3.1 requires exactly one name."""
    names = decode_alpn(body)
    if len(names) != 1:
        raise decode_error("server ALPN must select exactly one protocol")
    return names[0]


# cookie (§4.2.2) ------------------------------------------------------------


def decode_cookie(body: bytes) -> bytes:
    r = Reader(body)
    cookie = r.vector(2, 1)
    r.expect_end("cookie")
    return cookie


def encode_cookie(cookie: bytes) -> bytes:
    w = Writer()
    w.vector(2, cookie)
    return w.getvalue()


# record_size_limit (RFC 8449 §4) ---------------------------------------------


def decode_record_size_limit(body: bytes) -> int:
    limit = decode_uint16_body(body, "record_size_limit")
    if limit < 64:
        raise illegal_parameter("record_size_limit below 64")
    return limit


encode_record_size_limit = encode_uint16_body


# psk_key_exchange_modes (§4.2.9) ---------------------------------------------


def decode_psk_modes(body: bytes) -> list[int]:
    r = Reader(body)
    modes: list[int] = list(r.vector(1, 1))
    r.expect_end("psk_key_exchange_modes")
    return modes


def encode_psk_modes(modes: Sequence[int]) -> bytes:
    w = Writer()
    w.vector(1, bytes(modes))
    return w.getvalue()


# pre_shared_key (§4.2.11) ------------------------------------------------------


@dataclass(frozen=True)
class PskIdentity:
    identity: bytes
    obfuscated_ticket_age: int


@dataclass(frozen=True)
class OfferedPsks:
    identities: tuple[PskIdentity, ...]
    binders: tuple[bytes, ...]


def decode_offered_psks(body: bytes) -> OfferedPsks:
    # identities<7..2^16-1> of (identity<1..2^16-1>, uint32 age), binders<33..2^16-1> of
    # PskBinderEntry<32..255>; read by index (a resuming ClientHello's hot path).
    size = len(body)
    if size < 2:
        raise decode_error("truncated")
    ids_len = (body[0] << 8) | body[1]
    if ids_len < 7:
        raise decode_error(f"vector length {ids_len} outside [7, None]")
    ids_end = 2 + ids_len
    if ids_end > size:
        raise decode_error("truncated")
    identities = []
    pos = 2
    while pos < ids_end:
        if pos + 2 > ids_end:
            raise decode_error("truncated")
        identity_end = pos + 2 + ((body[pos] << 8) | body[pos + 1])
        if identity_end == pos + 2:
            raise decode_error("vector length 0 outside [1, None]")
        if identity_end + 4 > ids_end:
            raise decode_error("truncated")
        age = int.from_bytes(body[identity_end : identity_end + 4], "big")
        identities.append(PskIdentity(bytes(body[pos + 2 : identity_end]), age))
        pos = identity_end + 4
    binders_reader = Reader(body, ids_end).sub(2, 33)
    if binders_reader.position + binders_reader.remaining != size:
        raise decode_error(
            f"{size - binders_reader.position - binders_reader.remaining} trailing bytes "
            "after pre_shared_key"
        )
    binders = []
    while not binders_reader.at_end():
        binders.append(binders_reader.vector(1, 32))
    if len(binders) != len(identities):
        # §4.2.11: one binder per identity.
        raise illegal_parameter("pre_shared_key identity and binder counts differ")
    return OfferedPsks(tuple(identities), tuple(binders))


def encode_binders(binders: Sequence[bytes]) -> bytes:
    """The ``binders<33..2^16-1>`` vector including its length prefix."""
    w = Writer()
    with w.prefixed(2):
        for binder in binders:
            w.vector(1, binder)
    return w.getvalue()


def encode_offered_psks(psks: OfferedPsks) -> bytes:
    w = Writer()
    with w.prefixed(2):
        for psk in psks.identities:
            w.vector(2, psk.identity)
            w.uint32(psk.obfuscated_ticket_age)
    w.bytes(encode_binders(psks.binders))
    return w.getvalue()


# early_data (§4.2.10) ---------------------------------------------------------


def decode_max_early_data(body: bytes) -> int:
    r = Reader(body)
    size = r.uint32()
    r.expect_end("early_data")
    return size


def encode_max_early_data(size: int) -> bytes:
    return size.to_bytes(4, "big")


# status_request (RFC 6066 §8, RFC 8446 §4.4.2.1) -------------------------------


@dataclass(frozen=True)
class StatusRequest:
    status_type: int
    responder_ids: tuple[bytes, ...]
    request_extensions: bytes


def decode_status_request(body: bytes) -> StatusRequest:
    """CertificateStatusRequest (CH, CR).  Non-OCSP types are kept but opaque."""
    r = Reader(body)
    status_type = r.uint8()
    if status_type != STATUS_TYPE_OCSP:
        return StatusRequest(status_type, (), r.rest())
    ids_reader = r.sub(2)
    ids = []
    while not ids_reader.at_end():
        ids.append(ids_reader.vector(2, 1))
    request_extensions = r.vector(2)
    r.expect_end("status_request")
    return StatusRequest(status_type, tuple(ids), request_extensions)


def encode_status_request_ocsp() -> bytes:
    """An OCSP request with no responder ids and no request extensions."""
    return bytes([STATUS_TYPE_OCSP, 0, 0, 0, 0])


def decode_certificate_status(body: bytes) -> bytes:
    """CertificateStatus in a CertificateEntry: the DER OCSPResponse."""
    r = Reader(body)
    status_type = r.uint8()
    if status_type != STATUS_TYPE_OCSP:
        raise decode_error(f"unknown certificate status type {status_type}")
    response = r.vector(3, 1)
    r.expect_end("status_request")
    return response


def encode_certificate_status(ocsp_response: bytes) -> bytes:
    w = Writer()
    w.uint8(STATUS_TYPE_OCSP)
    w.vector(3, ocsp_response)
    return w.getvalue()


# certificate_authorities (§4.2.4) -------------------------------------------------


def decode_certificate_authorities(body: bytes) -> list[bytes]:
    """DER-encoded DistinguishedNames."""
    r = Reader(body)
    names_reader = r.sub(2, 3)
    r.expect_end("certificate_authorities")
    names = []
    while not names_reader.at_end():
        names.append(names_reader.vector(2, 1))
    return names


def encode_certificate_authorities(names: Sequence[bytes]) -> bytes:
    w = Writer()
    with w.prefixed(2):
        for name in names:
            w.vector(2, name)
    return w.getvalue()


# --------------------------------------------------------------------------
# Syntax check of recognized bodies per context
# --------------------------------------------------------------------------


def _empty(what: str) -> Callable[[bytes], object]:
    return lambda body: _expect_empty(body, what)


def _server_name_any(body: bytes) -> object:
    return decode_server_name(body)


_BODY_CHECKS: dict[tuple[int, ExtContext], Callable[[bytes], object]] = {
    (ExtensionType.server_name, _CH): _server_name_any,
    (ExtensionType.server_name, _EE): _empty("server_name"),
    (ExtensionType.supported_versions, _CH): decode_supported_versions_ch,
    (ExtensionType.supported_versions, _SH): decode_selected_version,
    (ExtensionType.supported_versions, _HRR): decode_selected_version,
    (ExtensionType.supported_groups, _CH): decode_uint16_list,
    (ExtensionType.supported_groups, _EE): decode_uint16_list,
    (ExtensionType.signature_algorithms, _CH): decode_uint16_list,
    (ExtensionType.signature_algorithms, _CR): decode_uint16_list,
    (ExtensionType.signature_algorithms_cert, _CH): decode_uint16_list,
    (ExtensionType.signature_algorithms_cert, _CR): decode_uint16_list,
    (ExtensionType.key_share, _CH): decode_key_share_ch,
    (ExtensionType.key_share, _SH): decode_key_share_sh,
    (ExtensionType.key_share, _HRR): decode_selected_group,
    (ExtensionType.application_layer_protocol_negotiation, _CH): decode_alpn,
    (ExtensionType.application_layer_protocol_negotiation, _EE): decode_alpn_selected,
    (ExtensionType.cookie, _CH): decode_cookie,
    (ExtensionType.cookie, _HRR): decode_cookie,
    (ExtensionType.record_size_limit, _CH): decode_record_size_limit,
    (ExtensionType.record_size_limit, _EE): decode_record_size_limit,
    (ExtensionType.psk_key_exchange_modes, _CH): decode_psk_modes,
    (ExtensionType.pre_shared_key, _CH): decode_offered_psks,
    (ExtensionType.pre_shared_key, _SH): decode_selected_identity,
    (ExtensionType.early_data, _CH): _empty("early_data"),
    (ExtensionType.early_data, _EE): _empty("early_data"),
    (ExtensionType.early_data, _NST): decode_max_early_data,
    (ExtensionType.post_handshake_auth, _CH): _empty("post_handshake_auth"),
    (ExtensionType.status_request, _CH): decode_status_request,
    # RFC 8446 §4.4.2.1: a server asks for the client's OCSP status with an empty body.
    (ExtensionType.status_request, _CR): _empty("status_request"),
    (ExtensionType.status_request, _CT): decode_certificate_status,
    (ExtensionType.certificate_authorities, _CH): decode_certificate_authorities,
    (ExtensionType.certificate_authorities, _CR): decode_certificate_authorities,
}


_CONTEXTS: dict[int, ExtContext] = {int(ctx): ctx for ctx in ExtContext}
_PRE_SHARED_KEY = int(ExtensionType.pre_shared_key)

# Per message: every extension allowed there -> its body check (None: no body syntax to check).
_RULES: dict[ExtContext, dict[int, Callable[[bytes], object] | None]] = {
    ctx: {
        ext_type: _BODY_CHECKS.get((ext_type, ctx))
        for ext_type, contexts in ALLOWED.items()
        if ctx in contexts
    }
    for ctx in ExtContext
}
