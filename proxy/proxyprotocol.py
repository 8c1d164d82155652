"""The PROXY protocol, versions 1 and 2 (haproxy's proxy-protocol.txt), both directions.

The proxy *sends* a header to backends that ask for one, so they see the real
client address and what the TLS handshake negotiated.  The parsers serve test
backends and any receiver that must be robust: they validate strictly and raise
only :class:`ProxyProtocolError`.

TLS details travel in version 2 TLVs: ALPN (0x01), AUTHORITY (0x02, the SNI),
CRC32C (0x03, optional), UNIQUE_ID (0x05) and SSL (0x20) with its sub-TLVs.
One application-specific TLV (the spec reserves 0xE0-0xEF for that) is ours:

``PP2_TYPE_TLS13PROXY_EARLY_DATA`` = 0xE0, value one byte of flags:
  * 0x01 ``EARLY_DATA_ACCEPTED``: the client's first bytes arrived as TLS 1.3 0-RTT
    early data, which an attacker can replay (RFC 8446 §8); the backend should only
    act on them if the request is idempotent (cf. RFC 8470's ``Early-Data: 1``).
The TLV is sent only when the flag is set.  Receivers that do not know it skip it,
as the spec requires of unknown types.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import trio
    from cryptography import x509

    from tls13.events import HandshakeComplete

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
"""Longest legal v1 line including CRLF (spec §2.1)."""
V2_HEADER_LENGTH = 16
UNIX_ADDRESS_LENGTH = 108
MAX_UNIQUE_ID = 128


class ProxyProtocolError(ValueError):
    """A header that is malformed, truncated or cannot be encoded."""


class IncompleteHeader(ProxyProtocolError):
    """The bytes so far are a valid prefix of a header; more are needed to decide."""


class TLVType(IntEnum):
    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30
    TLS13PROXY_EARLY_DATA = 0xE0


class SSLSubType(IntEnum):
    VERSION = 0x21
    CN = 0x22
    CIPHER = 0x23
    SIG_ALG = 0x24
    KEY_ALG = 0x25
    GROUP = 0x26
    SIG_SCHEME = 0x27
    CLIENT_CERT = 0x28


class SSLClientFlags(IntEnum):
    CLIENT_SSL = 0x01
    CLIENT_CERT_CONN = 0x02
    CLIENT_CERT_SESS = 0x04


EARLY_DATA_ACCEPTED = 0x01

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_FAMILY_UNSPEC, _FAMILY_INET, _FAMILY_INET6, _FAMILY_UNIX = 0x0, 0x1, 0x2, 0x3
_PROTO_UNSPEC, _PROTO_STREAM, _PROTO_DGRAM = 0x0, 0x1, 0x2
_ADDRESS_BLOCK_LENGTH = {_FAMILY_UNSPEC: 0, _FAMILY_INET: 12, _FAMILY_INET6: 36, _FAMILY_UNIX: 216}
_FAMILY_TO_SOCKET = {
    _FAMILY_UNSPEC: socket.AF_UNSPEC,
    _FAMILY_INET: socket.AF_INET,
    _FAMILY_INET6: socket.AF_INET6,
    _FAMILY_UNIX: socket.AF_UNIX,
}
_TRANSPORT_NAMES = {_PROTO_UNSPEC: None, _PROTO_STREAM: "stream", _PROTO_DGRAM: "dgram"}

InetAddress = tuple[str, int]
"""(host, port); socket-style 4-tuples from IPv6 getpeername() are accepted on input."""
Address = InetAddress | str
"""An inet (host, port) pair or an AF_UNIX path (leading NUL for the abstract namespace)."""


@dataclass(frozen=True)
class TLV:
    type: int
    value: bytes

    def encode(self) -> bytes:
        if not 0 <= self.type <= 0xFF:
            raise ProxyProtocolError(f"TLV type {self.type} out of range")
        if len(self.value) > 0xFFFF:
            raise ProxyProtocolError(f"TLV 0x{self.type:02x} value too long ({len(self.value)})")
        return struct.pack("!BH", self.type, len(self.value)) + self.value


@dataclass(frozen=True)
class SSLInfo:
    """The PP2_TYPE_SSL TLV: how the client reached us over TLS."""

    client: int = SSLClientFlags.CLIENT_SSL
    verify: int = 1
    """0 if the client presented a certificate that verified, non-zero otherwise (spec §2.2.6)."""
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    group: str | None = None
    sig_scheme: str | None = None
    client_cert: bytes | None = None
    other: tuple[TLV, ...] = ()

    def encode(self) -> TLV:
        subs = [
            (SSLSubType.VERSION, self.version),
            (SSLSubType.CN, self.cn),
            (SSLSubType.CIPHER, self.cipher),
            (SSLSubType.SIG_ALG, self.sig_alg),
            (SSLSubType.KEY_ALG, self.key_alg),
            (SSLSubType.GROUP, self.group),
            (SSLSubType.SIG_SCHEME, self.sig_scheme),
        ]
        body = bytearray(struct.pack("!BI", self.client & 0xFF, self.verify & 0xFFFFFFFF))
        for sub_type, text in subs:
            if text is not None:
                body += TLV(sub_type, text.encode("utf-8")).encode()
        if self.client_cert is not None:
            body += TLV(SSLSubType.CLIENT_CERT, self.client_cert).encode()
        for extra in self.other:
            body += extra.encode()
        return TLV(TLVType.SSL, bytes(body))


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header.  ``length`` is how many bytes of the stream it occupied."""

    version: int
    command: str
    """"PROXY" (relayed connection) or "LOCAL" (v2 health check; v1 "UNKNOWN" maps here too)."""
    family: socket.AddressFamily
    transport: str | None
    source: Address | None
    destination: Address | None
    length: int
    tlvs: tuple[TLV, ...] = ()
    alpn: bytes | None = None
    authority: str | None = None
    ssl: SSLInfo | None = None
    unique_id: bytes | None = None
    early_data: bool = False
    crc32c_verified: bool = False
    extra: dict[int, bytes] = field(default_factory=dict, compare=False)


# --- CRC32C (Castagnoli, RFC 4960 Appendix B), needed for PP2_TYPE_CRC32C -------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (reflected, init and final xor 0xFFFFFFFF)."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- address helpers --------------------------------------------------------------------


def _inet(address: object) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """Validate an inet (host, port[, flowinfo, scope]) tuple."""
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise ProxyProtocolError(f"not an inet socket address: {address!r}")
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ProxyProtocolError(f"bad inet socket address: {address!r}")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ProxyProtocolError(f"bad IP address {host!r}") from None
    return ip, port


def _same_family(
    src: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int],
    dst: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int],
) -> tuple[
    tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int],
    tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int],
]:
    """Both endpoints in one family: unwrap double IPv4-mapped, else map IPv4 into IPv6."""
    (sip, sport), (dip, dport) = src, dst
    s4 = sip.ipv4_mapped if isinstance(sip, ipaddress.IPv6Address) else sip
    d4 = dip.ipv4_mapped if isinstance(dip, ipaddress.IPv6Address) else dip
    if s4 is not None and d4 is not None:
        return (s4, sport), (d4, dport)
    if isinstance(sip, ipaddress.IPv4Address):
        sip = ipaddress.IPv6Address(f"::ffff:{sip}")
    if isinstance(dip, ipaddress.IPv4Address):
        dip = ipaddress.IPv6Address(f"::ffff:{dip}")
    return (sip, sport), (dip, dport)


def _unix_bytes(path: object) -> bytes:
    raw = os.fsencode(path) if isinstance(path, (str, bytes)) else None
    if raw is None:
        raise ProxyProtocolError(f"not an AF_UNIX address: {path!r}")
    if len(raw) > UNIX_ADDRESS_LENGTH:
        raise ProxyProtocolError(f"AF_UNIX address longer than {UNIX_ADDRESS_LENGTH} bytes")
    return raw.ljust(UNIX_ADDRESS_LENGTH, b"\0")


# --- encoding ---------------------------------------------------------------------------


def encode_v1(src: Address | None, dst: Address | None) -> bytes:
    """A version 1 line; "PROXY UNKNOWN" when the endpoints are not TCP over IP."""
    if not (isinstance(src, tuple) and isinstance(dst, tuple)):
        return b"PROXY UNKNOWN\r\n"
    (sip, sport), (dip, dport) = _same_family(_inet(src), _inet(dst))
    proto = "TCP4" if sip.version == 4 else "TCP6"
    return f"PROXY {proto} {sip} {dip} {sport} {dport}\r\n".encode("ascii")


def encode_v2(
    src: Address | None,
    dst: Address | None,
    tlvs: Iterable[TLV] = (),
    *,
    command: str = "PROXY",
    transport: str = "stream",
    checksum: bool = False,
) -> bytes:
    """A version 2 header: addresses, then ``tlvs`` in order, then an optional CRC32C TLV.

    ``command="LOCAL"`` (health checks) sends no addresses.  ``src``/``dst`` may be
    inet tuples or AF_UNIX paths (both the same kind); None for either sends
    AF_UNSPEC.  ``checksum`` appends PP2_TYPE_CRC32C computed over the whole header.
    """
    if command not in ("PROXY", "LOCAL"):
        raise ProxyProtocolError(f"unknown command {command!r}")
    proto = {"stream": _PROTO_STREAM, "dgram": _PROTO_DGRAM}.get(transport)
    if proto is None:
        raise ProxyProtocolError(f"unknown transport {transport!r}")
    if command == "LOCAL":
        family, proto, addresses = _FAMILY_UNSPEC, _PROTO_UNSPEC, b""
    else:
        family, addresses = _encode_addresses(src, dst)
        if family == _FAMILY_UNSPEC:
            proto = _PROTO_UNSPEC
    body = bytearray(addresses)
    for tlv in tlvs:
        if tlv.type == TLVType.CRC32C:
            raise ProxyProtocolError("pass checksum=True instead of a CRC32C TLV")
        body += tlv.encode()
    crc_offset = -1
    if checksum:
        crc_offset = V2_HEADER_LENGTH + len(body) + 3
        body += TLV(TLVType.CRC32C, b"\0\0\0\0").encode()
    if len(body) > 0xFFFF:
        raise ProxyProtocolError(
            f"PROXY v2 header too long ({len(body)} bytes after the fixed part)"
        )
    cmd = _V2_COMMAND_LOCAL if command == "LOCAL" else _V2_COMMAND_PROXY
    header = bytearray(
        V2_SIGNATURE + struct.pack("!BBH", 0x20 | cmd, family << 4 | proto, len(body))
    )
    header += body
    if checksum:
        header[crc_offset : crc_offset + 4] = struct.pack("!I", crc32c(bytes(header)))
    return bytes(header)


def _encode_addresses(src: Address | None, dst: Address | None) -> tuple[int, bytes]:
    if src is None or dst is None:
        return _FAMILY_UNSPEC, b""
    if isinstance(src, tuple) and isinstance(dst, tuple):
        (sip, sport), (dip, dport) = _same_family(_inet(src), _inet(dst))
        family = _FAMILY_INET if sip.version == 4 else _FAMILY_INET6
        return family, sip.packed + dip.packed + struct.pack("!HH", sport, dport)
    if isinstance(src, tuple) or isinstance(dst, tuple):
        raise ProxyProtocolError("source and destination must both be inet or both AF_UNIX")
    return _FAMILY_UNIX, _unix_bytes(src) + _unix_bytes(dst)


def tls_tlvs(
    *,
    alpn: str | bytes | None = None,
    authority: str | None = None,
    ssl: SSLInfo | None = None,
    early_data: bool = False,
    unique_id: bytes | None = None,
) -> list[TLV]:
    """The TLVs describing a TLS-terminated connection, in the order haproxy sends them."""
    tlvs: list[TLV] = []
    if alpn:
        tlvs.append(TLV(TLVType.ALPN, alpn.encode("ascii") if isinstance(alpn, str) else alpn))
    if authority:
        tlvs.append(TLV(TLVType.AUTHORITY, authority.encode("utf-8")))
    if unique_id is not None:
        if len(unique_id) > MAX_UNIQUE_ID:
            raise ProxyProtocolError(f"UNIQUE_ID longer than {MAX_UNIQUE_ID} bytes")
        tlvs.append(TLV(TLVType.UNIQUE_ID, unique_id))
    if ssl is not None:
        tlvs.append(ssl.encode())
    if early_data:
        tlvs.append(TLV(TLVType.TLS13PROXY_EARLY_DATA, bytes([EARLY_DATA_ACCEPTED])))
    return tlvs


def certificate_sig_alg(cert: x509.Certificate) -> str:
    """OpenSSL-style short name of the algorithm that signed ``cert`` (e.g. "ecdsa-with-SHA256")."""
    oid = cert.signature_algorithm_oid
    return oid._name if oid._name != "Unknown OID" else oid.dotted_string


def certificate_key_alg(cert: x509.Certificate) -> str:
    """haproxy-style name of the certificate's key: "RSA2048", "EC256", "ED25519", "ED448"."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC{key.curve.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ED25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ED448"
    return type(key).__name__


def certificate_common_name(cert: x509.Certificate) -> str | None:
    """The subject's first commonName, if any."""
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


# --- parsing ----------------------------------------------------------------------------


def parse(data: bytes) -> ProxyHeader | None:
    """Parse a v1 or v2 header at the start of ``data``; None if more bytes are needed.

    Raises :class:`ProxyProtocolError` as soon as the bytes cannot be a header
    (the receiver must then drop the connection, spec §2).
    """
    try:
        if V2_SIGNATURE.startswith(data[:12]):
            return parse_v2(data)
        if data[:6] == V1_PREFIX[: len(data[:6])]:
            return parse_v1(data)
    except IncompleteHeader:
        return None
    raise ProxyProtocolError("no PROXY protocol signature")


def parse_v1(data: bytes) -> ProxyHeader:
    """Parse a version 1 line at the start of ``data`` (spec §2.1), strictly."""
    if not data.startswith(V1_PREFIX):
        if V1_PREFIX.startswith(data[:6]):
            raise IncompleteHeader("partial PROXY v1 signature")
        raise ProxyProtocolError("no PROXY v1 signature")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data[:V1_MAX_LENGTH]:
            raise ProxyProtocolError("PROXY v1 line not terminated by CRLF within 107 bytes")
        raise IncompleteHeader("PROXY v1 line not complete yet")
    line = data[:end]
    if b"\r" in line or b"\n" in line or b"\0" in line:
        raise ProxyProtocolError("stray CR, LF or NUL in PROXY v1 line")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("non-ASCII PROXY v1 line") from None
    return _parse_v1_fields(text.split(" "), end + 2)


def _parse_v1_fields(parts: list[str], length: int) -> ProxyHeader:
    if len(parts) < 2:
        raise ProxyProtocolError("PROXY v1 line has no protocol")
    proto = parts[1]
    if proto == "UNKNOWN":
        # The receiver must ignore anything after UNKNOWN (spec §2.1).
        return ProxyHeader(1, "LOCAL", socket.AF_UNSPEC, None, None, None, length)
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"unknown PROXY v1 protocol {proto[:16]!r}")
    if len(parts) != 6:
        raise ProxyProtocolError("PROXY v1 line needs exactly 4 fields after the protocol")
    version = 4 if proto == "TCP4" else 6
    src_ip = _v1_address(parts[2], version)
    dst_ip = _v1_address(parts[3], version)
    src_port, dst_port = _v1_port(parts[4]), _v1_port(parts[5])
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return ProxyHeader(1, "PROXY", family, "stream", (src_ip, src_port), (dst_ip, dst_port), length)


def _v1_address(text: str, version: int) -> str:
    if version == 4:
        octets = text.split(".")
        if len(octets) != 4 or not all(_is_canonical_decimal(o, 255) for o in octets):
            raise ProxyProtocolError(f"bad IPv4 address in PROXY v1 line: {text[:40]!r}")
        return text
    if not text or not all(c in "0123456789abcdefABCDEF:." for c in text):
        raise ProxyProtocolError(f"bad IPv6 address in PROXY v1 line: {text[:40]!r}")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyProtocolError(f"bad IPv6 address in PROXY v1 line: {text[:40]!r}") from None


def _v1_port(text: str) -> int:
    if not _is_canonical_decimal(text, 0xFFFF):
        raise ProxyProtocolError(f"bad port in PROXY v1 line: {text[:8]!r}")
    return int(text)


def _is_canonical_decimal(text: str, maximum: int) -> bool:
    """Digits only, no heading zeroes (spec §2.1: they could be read as octal), in range."""
    if not text or len(text) > 5 or not text.isascii() or not text.isdigit():
        return False
    if len(text) > 1 and text[0] == "0":
        return False
    return int(text) <= maximum


def parse_v2(data: bytes) -> ProxyHeader:
    """Parse a version 2 header at the start of ``data`` (spec §2.2), strictly."""
    if not data.startswith(V2_SIGNATURE):
        if V2_SIGNATURE.startswith(data):
            raise IncompleteHeader("partial PROXY v2 signature")
        raise ProxyProtocolError("no PROXY v2 signature")
    if len(data) < V2_HEADER_LENGTH:
        _check_v2_prefix(data)
        raise IncompleteHeader("PROXY v2 fixed header not complete yet")
    ver_cmd, fam_proto, body_length = struct.unpack_from("!BBH", data, 12)
    command, family, proto = _check_v2_fixed(ver_cmd, fam_proto)
    total = V2_HEADER_LENGTH + body_length
    if len(data) < total:
        raise IncompleteHeader("PROXY v2 header not complete yet")
    body = data[V2_HEADER_LENGTH:total]
    address_length = _ADDRESS_BLOCK_LENGTH[family]
    if len(body) < address_length:
        if command == _V2_COMMAND_PROXY:
            raise ProxyProtocolError("PROXY v2 address block shorter than its family requires")
        # LOCAL: addresses are to be ignored; a sender may omit them (spec §2.2).
        return ProxyHeader(2, "LOCAL", _FAMILY_TO_SOCKET[family], None, None, None, total)
    source, destination = _decode_addresses(family, body[:address_length])
    tlvs = _parse_tlvs(body[address_length:])
    header = ProxyHeader(
        version=2,
        command="PROXY" if command == _V2_COMMAND_PROXY else "LOCAL",
        family=_FAMILY_TO_SOCKET[family],
        transport=_TRANSPORT_NAMES[proto],
        source=source if command == _V2_COMMAND_PROXY else None,
        destination=destination if command == _V2_COMMAND_PROXY else None,
        length=total,
        tlvs=tlvs,
    )
    return _interpret_tlvs(header, data[:total], V2_HEADER_LENGTH + address_length)


def _check_v2_prefix(data: bytes) -> None:
    """Reject an impossible version/command or family byte even before 16 bytes arrived."""
    if len(data) > 12:
        ver_cmd = data[12]
        if ver_cmd >> 4 != 2 or ver_cmd & 0xF > _V2_COMMAND_PROXY:
            raise ProxyProtocolError(f"bad PROXY v2 version/command byte 0x{ver_cmd:02x}")
    if len(data) > 13:
        _check_v2_fixed(data[12], data[13])


def _check_v2_fixed(ver_cmd: int, fam_proto: int) -> tuple[int, int, int]:
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"bad PROXY protocol version {ver_cmd >> 4}")
    command = ver_cmd & 0xF
    if command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
        raise ProxyProtocolError(f"unassigned PROXY v2 command {command}")
    family, proto = fam_proto >> 4, fam_proto & 0xF
    if family not in _ADDRESS_BLOCK_LENGTH or proto not in _TRANSPORT_NAMES:
        raise ProxyProtocolError(f"invalid PROXY v2 family/protocol byte 0x{fam_proto:02x}")
    if (family == _FAMILY_UNSPEC) != (proto == _PROTO_UNSPEC):
        raise ProxyProtocolError(f"invalid PROXY v2 family/protocol byte 0x{fam_proto:02x}")
    return command, family, proto


def _decode_addresses(family: int, block: bytes) -> tuple[Address | None, Address | None]:
    if family == _FAMILY_INET:
        src_port, dst_port = struct.unpack_from("!HH", block, 8)
        return (
            (str(ipaddress.IPv4Address(block[:4])), src_port),
            (str(ipaddress.IPv4Address(block[4:8])), dst_port),
        )
    if family == _FAMILY_INET6:
        src_port, dst_port = struct.unpack_from("!HH", block, 32)
        return (
            (str(ipaddress.IPv6Address(block[:16])), src_port),
            (str(ipaddress.IPv6Address(block[16:32])), dst_port),
        )
    if family == _FAMILY_UNIX:
        return _unix_path(block[:UNIX_ADDRESS_LENGTH]), _unix_path(block[UNIX_ADDRESS_LENGTH:])
    return None, None


def _unix_path(raw: bytes) -> str:
    if raw.startswith(b"\0"):
        # Abstract namespace: keep the leading NUL, drop the padding.
        return os.fsdecode(b"\0" + raw[1:].rstrip(b"\0"))
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _parse_tlvs(data: bytes) -> tuple[TLV, ...]:
    tlvs: list[TLV] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError("truncated TLV header in PROXY v2 header")
        tlv_type, length = struct.unpack_from("!BH", data, offset)
        offset += 3
        if len(data) - offset < length:
            raise ProxyProtocolError(f"TLV 0x{tlv_type:02x} overruns the PROXY v2 header")
        tlvs.append(TLV(tlv_type, data[offset : offset + length]))
        offset += length
    return tuple(tlvs)


def _interpret_tlvs(header: ProxyHeader, raw: bytes, tlv_start: int) -> ProxyHeader:
    """Decode the TLVs we know into fields; verify CRC32C; reject duplicates of known types."""
    seen: set[int] = set()
    fields: dict[str, object] = {}
    extra: dict[int, bytes] = {}
    offset = tlv_start
    for tlv in header.tlvs:
        if tlv.type in seen and tlv.type != TLVType.NOOP and tlv.type in _KNOWN_TYPES:
            raise ProxyProtocolError(f"duplicate TLV 0x{tlv.type:02x}")
        seen.add(tlv.type)
        if tlv.type == TLVType.CRC32C:
            _verify_crc32c(raw, offset + 3, tlv.value)
            fields["crc32c_verified"] = True
        elif tlv.type in _TLV_DECODERS:
            name, decoder = _TLV_DECODERS[tlv.type]
            fields[name] = decoder(tlv.value)
        elif tlv.type != TLVType.NOOP:
            extra[tlv.type] = tlv.value
        offset += 3 + len(tlv.value)
    return ProxyHeader(
        version=header.version,
        command=header.command,
        family=header.family,
        transport=header.transport,
        source=header.source,
        destination=header.destination,
        length=header.length,
        tlvs=header.tlvs,
        extra=extra,
        **fields,  # type: ignore[arg-type]
    )


def _verify_crc32c(raw: bytes, value_offset: int, value: bytes) -> None:
    if len(value) != 4:
        raise ProxyProtocolError("CRC32C TLV must hold exactly 4 bytes")
    zeroed = raw[:value_offset] + b"\0\0\0\0" + raw[value_offset + 4 :]
    if crc32c(zeroed) != struct.unpack("!I", value)[0]:
        raise ProxyProtocolError("PROXY v2 header CRC32C mismatch")


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"{what} is not valid UTF-8") from None


def _decode_alpn(value: bytes) -> bytes:
    if not value:
        raise ProxyProtocolError("empty ALPN TLV")
    return value


def _decode_authority(value: bytes) -> str:
    if not value:
        raise ProxyProtocolError("empty AUTHORITY TLV")
    return _utf8(value, "AUTHORITY TLV")


def _decode_unique_id(value: bytes) -> bytes:
    if len(value) > MAX_UNIQUE_ID:
        raise ProxyProtocolError(f"UNIQUE_ID TLV longer than {MAX_UNIQUE_ID} bytes")
    return value


def _decode_early_data(value: bytes) -> bool:
    if len(value) != 1:
        raise ProxyProtocolError("early-data TLV must hold exactly 1 byte")
    return bool(value[0] & EARLY_DATA_ACCEPTED)


_SSL_TEXT_FIELDS = {
    SSLSubType.VERSION: "version",
    SSLSubType.CN: "cn",
    SSLSubType.CIPHER: "cipher",
    SSLSubType.SIG_ALG: "sig_alg",
    SSLSubType.KEY_ALG: "key_alg",
    SSLSubType.GROUP: "group",
    SSLSubType.SIG_SCHEME: "sig_scheme",
}


def _decode_ssl(value: bytes) -> SSLInfo:
    if len(value) < 5:
        raise ProxyProtocolError("SSL TLV shorter than its 5-byte fixed part")
    client, verify = struct.unpack_from("!BI", value)
    fields: dict[str, str] = {}
    client_cert: bytes | None = None
    other: list[TLV] = []
    for sub in _parse_tlvs(value[5:]):
        name = _SSL_TEXT_FIELDS.get(SSLSubType(sub.type)) if sub.type in _SSL_TEXT_FIELDS else None
        if sub.type == SSLSubType.CLIENT_CERT:
            if client_cert is not None:
                raise ProxyProtocolError("duplicate SSL client certificate sub-TLV")
            client_cert = sub.value
        elif name is not None:
            if name in fields:
                raise ProxyProtocolError(f"duplicate SSL sub-TLV 0x{sub.type:02x}")
            fields[name] = _utf8(sub.value, f"SSL sub-TLV {name}")
        else:
            other.append(sub)
    return SSLInfo(
        client=client, verify=verify, client_cert=client_cert, other=tuple(other), **fields
    )


_TLV_DECODERS: dict[int, tuple[str, Callable[[bytes], object]]] = {
    TLVType.ALPN: ("alpn", _decode_alpn),
    TLVType.AUTHORITY: ("authority", _decode_authority),
    TLVType.UNIQUE_ID: ("unique_id", _decode_unique_id),
    TLVType.SSL: ("ssl", _decode_ssl),
    TLVType.TLS13PROXY_EARLY_DATA: ("early_data", _decode_early_data),
}
_KNOWN_TYPES = frozenset(_TLV_DECODERS) | {TLVType.CRC32C}


# --- convenience for the proxy and for receivers ---------------------------------------


def tlvs_for_handshake(
    info: HandshakeComplete,
    *,
    server_certificate: x509.Certificate | None = None,
    early_data: bool = False,
    unique_id: bytes | None = None,
    include_client_certificate: bool = False,
) -> list[TLV]:
    """TLVs describing a completed handshake (``tls13.events.HandshakeComplete``).

    ``server_certificate`` (the leaf we presented) fills SIG_ALG and KEY_ALG, which
    the spec defines as properties of the frontend's certificate.  ``early_data``
    says the first bytes forwarded arrived as 0-RTT data.
    """
    peer = _client_leaf(info)
    client: int = SSLClientFlags.CLIENT_SSL
    if peer is not None:
        # CERT_SESS: a certificate was presented at some point in this TLS session (a
        # resumption inherits it); CERT_CONN: on this very connection (spec §2.2.6).
        client |= SSLClientFlags.CLIENT_CERT_SESS
        if info.peer_certificates and not info.resumed:
            client |= SSLClientFlags.CLIENT_CERT_CONN
    ssl = SSLInfo(
        client=client,
        # The engine only completes handshakes whose client certificate verified.
        verify=0 if peer is not None else 1,
        version=info.version,
        cn=certificate_common_name(peer) if peer is not None else None,
        cipher=info.cipher_suite,
        sig_alg=certificate_sig_alg(server_certificate) if server_certificate else None,
        key_alg=certificate_key_alg(server_certificate) if server_certificate else None,
        group=info.group,
        sig_scheme=info.signature_scheme,
        client_cert=_der(peer) if peer is not None and include_client_certificate else None,
    )
    return tls_tlvs(
        alpn=info.alpn_protocol,
        authority=info.server_name,
        ssl=ssl,
        early_data=early_data,
        unique_id=unique_id,
    )


def _client_leaf(info: HandshakeComplete) -> x509.Certificate | None:
    """The client's leaf certificate, from this handshake or the resumed session's identity."""
    if info.peer_certificates:
        return info.peer_certificates[0]
    identity = info.client_identity
    if identity is not None and identity.certificates:
        return identity.certificates[0]
    return None


def _der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


MAX_HEADER_LENGTH = V2_HEADER_LENGTH + 0xFFFF


async def receive_header(
    stream: trio.abc.ReceiveStream, max_chunk: int = 4096
) -> tuple[ProxyHeader, bytes]:
    """Read a header from ``stream``; return it and any bytes that followed it.

    Raises :class:`ProxyProtocolError` on a malformed header or EOF before it ended.
    Callers bound the wait with a trio timeout (the spec suggests at least 3 s).
    """
    buffer = b""
    while True:
        header = parse(buffer) if buffer else None
        if header is not None:
            return header, buffer[header.length :]
        if len(buffer) > MAX_HEADER_LENGTH:
            raise ProxyProtocolError("PROXY header longer than the protocol allows")
        chunk = await stream.receive_some(max_chunk)
        if not chunk:
            raise ProxyProtocolError("connection closed before the PROXY header was complete")
        buffer += chunk
