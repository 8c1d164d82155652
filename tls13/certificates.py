"""Our certificate chains, choosing one per handshake, and verifying the peer's chain.

* :class:`CertificateChain` — a leaf (+ intermediates) with its private key, loaded
  from PEM once: names, key kind and the DER encoding of every certificate are
  precomputed so a handshake only copies bytes.
* :class:`CertificateStore` — picks a chain and signature scheme for a
  ClientHello (server_name, signature_algorithms, signature_algorithms_cert;
  RFC 8446 §4.4.2.2): an exact name beats a one-label wildcard, which beats the
  default chain; within a tier the server's scheme preference decides.
* :func:`verify_chain` — path validation with ``cryptography.x509.verification``
  (RFC 5280 + CA/B web PKI profile), with failures mapped to the alerts of
  RFC 8446 §6.2.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509 import DNSName, IPAddress, ocsp
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from .alerts import AlertDescription, TLSError
from .extensions import ExtensionType, encode_certificate_status
from .messages import Certificate, CertificateEntry
from .signatures import HANDSHAKE_SCHEMES, SCHEMES, certificate_key_kind, key_kind

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class CertificateError(ValueError):
    """A certificate/key pair that cannot be used (configuration error, not a protocol one)."""


# Which signature_algorithms_cert code points describe a certificate's own signature.
_CERT_SIGNATURE_SCHEMES: dict[x509.ObjectIdentifier, tuple[int, ...]] = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: (0x0403,),
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: (0x0503,),
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: (0x0603,),
    SignatureAlgorithmOID.RSA_WITH_SHA256: (0x0401,),
    SignatureAlgorithmOID.RSA_WITH_SHA384: (0x0501,),
    SignatureAlgorithmOID.RSA_WITH_SHA512: (0x0601,),
    SignatureAlgorithmOID.ED25519: (0x0807,),
    SignatureAlgorithmOID.ED448: (0x0808,),
    # RSASSA-PSS: rsae or pss depending on the issuer's key; the hash is in the parameters.
    SignatureAlgorithmOID.RSASSA_PSS: (0x0804, 0x0805, 0x0806, 0x0809, 0x080A, 0x080B),
}


def normalize_name(name: str) -> str:
    """DNS names compare case-insensitively and without a trailing dot."""
    return name.strip().rstrip(".").lower()


def _names_of(leaf: x509.Certificate) -> tuple[str, ...]:
    """DNS and IP names from subjectAltName; the CN only when there is no SAN at all."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(normalize_name(str(cn.value)) for cn in cns[:1])
    dns = [normalize_name(n) for n in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


@dataclass(frozen=True, eq=False)
class CertificateChain:
    """A leaf certificate, its intermediates and private key, ready to send."""

    certificates: tuple[x509.Certificate, ...]
    private_key: PrivateKeyTypes
    ocsp_response: bytes | None = None
    der_chain: tuple[bytes, ...] = field(init=False)
    names: tuple[str, ...] = field(init=False)
    key_kind: str | None = field(init=False)
    #: signature_algorithms_cert code points matching each certificate's signature.
    signature_schemes: tuple[tuple[int, ...], ...] = field(init=False)
    #: When the OCSP response stops being stapleable (its nextUpdate, epoch seconds);
    #: None when there is no usable response, +inf when it names no nextUpdate.
    ocsp_valid_until: float | None = field(init=False)
    # Our Certificate message by OCSP staple (None: none stapled), built on first use.
    _messages: dict[bytes | None, bytes] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.certificates:
            raise CertificateError("a certificate chain needs at least the leaf certificate")
        leaf = self.certificates[0]
        leaf_spki = leaf.public_key().public_bytes(*_SPKI)
        if leaf_spki != self.private_key.public_key().public_bytes(*_SPKI):
            raise CertificateError("the private key does not match the leaf certificate")
        kind = certificate_key_kind(leaf)
        if kind is None or key_kind(self.private_key) is None:
            raise CertificateError("unsupported key type for TLS 1.3 signatures")
        set_ = object.__setattr__  # frozen dataclass: derived fields are set once, here
        set_(
            self,
            "der_chain",
            tuple(c.public_bytes(serialization.Encoding.DER) for c in self.certificates),
        )
        set_(self, "names", _names_of(leaf))
        set_(self, "key_kind", kind)
        set_(
            self,
            "signature_schemes",
            tuple(
                _CERT_SIGNATURE_SCHEMES.get(c.signature_algorithm_oid, ())
                for c in self.certificates
            ),
        )
        set_(self, "ocsp_valid_until", _ocsp_valid_until(self.ocsp_response, leaf))

    def ocsp_staple(self, now: float) -> bytes | None:
        """The OCSP response to staple at ``now`` (epoch seconds), or None.

        RFC 6960 §4.2.2.1: past nextUpdate a response says nothing about the
        certificate any more, and clients that check it reject the handshake, so
        a stale (or unusable) response is not sent at all.
        """
        until = self.ocsp_valid_until
        if until is None or now > until:
            return None
        return self.ocsp_response

    def certificate_message(self, staple: bytes | None) -> bytes:
        """This chain as a server's Certificate message (RFC 8446 §4.4.2: empty request
        context; header included), ``staple`` riding in the leaf's entry (§4.4.2.1).

        The bytes only change with the staple, so they are encoded once per staple and
        every handshake reuses them (at most two are kept: a staple and none, when stale).
        """
        message = self._messages.get(staple)
        if message is None:
            if len(self._messages) >= 2:
                self._messages.clear()
            message = self._messages[staple] = _certificate_message(self.der_chain, staple)
        return message

    @classmethod
    def from_pem(
        cls,
        chain_pem: bytes,
        key_pem: bytes,
        ocsp: bytes | None = None,
        password: bytes | None = None,
    ) -> CertificateChain:
        """Load ``chain_pem`` (leaf first, then intermediates) and the leaf's ``key_pem``."""
        try:
            certificates = tuple(x509.load_pem_x509_certificates(chain_pem))
        except ValueError as exc:
            raise CertificateError(f"cannot parse the certificate chain: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password)
        except (ValueError, TypeError) as exc:
            raise CertificateError(f"cannot parse the private key: {exc}") from None
        return cls(certificates, key, ocsp)

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    def schemes(self, offered: Iterable[int]) -> list[int]:
        """The handshake signature schemes in ``offered`` that this chain's key can make."""
        return [
            c
            for c in offered
            if c in SCHEMES and SCHEMES[c].for_handshake and SCHEMES[c].fits(self.key_kind)
        ]

    def satisfies_cert_schemes(self, offered_cert_schemes: Iterable[int]) -> bool:
        """§4.4.2.2: every certificate's signature is in signature_algorithms_cert.

        The last certificate may be a trust anchor the peer already has, so a
        self-signed final certificate is not held against us.
        """
        allowed = set(offered_cert_schemes)
        for index, codes in enumerate(self.signature_schemes):
            cert = self.certificates[index]
            if index > 0 and index == len(self.certificates) - 1 and cert.issuer == cert.subject:
                continue
            if not allowed.intersection(codes):
                return False
        return True


def _certificate_message(der_chain: Sequence[bytes], staple: bytes | None) -> bytes:
    entries = []
    for index, der in enumerate(der_chain):
        extensions: list[tuple[int, bytes]] = []
        if index == 0 and staple is not None:
            extensions.append((ExtensionType.status_request, encode_certificate_status(staple)))
        entries.append(CertificateEntry(der, extensions))
    return Certificate(b"", tuple(entries)).serialize()


def _ocsp_valid_until(response: bytes | None, leaf: x509.Certificate) -> float | None:
    """Parse a configured OCSP response once: until when it may be stapled.

    Only a successful response about ``leaf`` (same serial number) is usable;
    anything else is never sent (None).
    """
    if not response:
        return None
    try:
        parsed = ocsp.load_der_ocsp_response(response)
        if parsed.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        if parsed.serial_number != leaf.serial_number:
            return None
        next_update = parsed.next_update_utc
    except ValueError:
        return None
    return next_update.timestamp() if next_update is not None else math.inf


_SELECT_CACHE_SIZE = 1024


class CertificateStore:
    """Our chains by name; ``default`` (or the first chain) answers unknown or absent SNI."""

    def __init__(
        self,
        chains: Sequence[CertificateChain],
        default: CertificateChain | None = None,
        preference: Sequence[int] = HANDSHAKE_SCHEMES,
    ) -> None:
        if not chains and default is None:
            raise CertificateError("a certificate store needs at least one chain")
        self.chains: tuple[CertificateChain, ...] = tuple(chains)
        self.default = default if default is not None else self.chains[0]
        self.preference = tuple(preference)
        # select() answers by (name, schemes, cert schemes): clients repeat a few offers.
        self._selected: dict[
            tuple[str | None, tuple[int, ...], tuple[int, ...] | None],
            tuple[CertificateChain, int],
        ] = {}
        self._exact: dict[str, list[CertificateChain]] = {}
        self._wildcard: dict[str, list[CertificateChain]] = {}
        for chain in self.chains:
            for name in chain.names:
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], []).append(chain)
                else:
                    self._exact.setdefault(name, []).append(chain)

    def _tiers(self, server_name: str | None) -> list[list[CertificateChain]]:
        tiers: list[list[CertificateChain]] = []
        if server_name:
            name = normalize_name(server_name)
            tiers.append(self._exact.get(name, []))
            # One-label wildcard only: *.example.com matches a.example.com, not a.b.example.com.
            head, dot, parent = name.partition(".")
            if dot and head:
                tiers.append(self._wildcard.get(parent, []))
        tiers.append([self.default])
        tiers.append([c for c in self.chains if c is not self.default])
        return tiers

    def has_name(self, server_name: str) -> bool:
        """Whether some chain is issued for ``server_name`` (exactly or by wildcard)."""
        return any(self._tiers(server_name)[:-2]) if server_name else False

    def select(
        self,
        server_name: str | None,
        offered_schemes: Sequence[int],
        offered_cert_schemes: Sequence[int] | None = None,
    ) -> tuple[CertificateChain, int]:
        """The chain and CertificateVerify scheme for a ClientHello.

        Best name tier first; within a tier, chains whose certificate signatures
        the client accepts (signature_algorithms_cert, or signature_algorithms when
        absent) are preferred, then the server's scheme preference order decides.
        Raises ``handshake_failure`` when no chain can sign with an offered scheme.
        Answers are remembered (a bounded cache): the store never changes.
        """
        key = (
            server_name,
            tuple(offered_schemes),
            None if offered_cert_schemes is None else tuple(offered_cert_schemes),
        )
        found = self._selected.get(key)
        if found is None:
            found = self._select(server_name, offered_schemes, offered_cert_schemes)
            if len(self._selected) >= _SELECT_CACHE_SIZE:
                self._selected.clear()
            self._selected[key] = found
        return found

    def _select(
        self,
        server_name: str | None,
        offered_schemes: Sequence[int],
        offered_cert_schemes: Sequence[int] | None,
    ) -> tuple[CertificateChain, int]:
        offered = set(offered_schemes)
        ranked = [code for code in self.preference if code in offered]
        cert_schemes = offered_cert_schemes if offered_cert_schemes is not None else offered_schemes
        for tier in self._tiers(server_name):
            if not tier:
                continue
            liked = [c for c in tier if c.satisfies_cert_schemes(cert_schemes)]
            for candidates in (liked, tier):
                found = self._best(candidates, ranked)
                if found is not None:
                    return found
        raise TLSError(
            AlertDescription.handshake_failure, "no certificate fits the offered schemes"
        )

    @staticmethod
    def _best(
        chains: Sequence[CertificateChain], ranked: Sequence[int]
    ) -> tuple[CertificateChain, int] | None:
        for code in ranked:
            for chain in chains:
                if SCHEMES[code].fits(chain.key_kind):
                    return chain, code
        return None


# --- verifying the peer ----------------------------------------------------------------------


def _as_datetime(now: float | datetime.datetime) -> datetime.datetime:
    if isinstance(now, datetime.datetime):
        return now if now.tzinfo else now.replace(tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc)


def _subject_for(name: str) -> DNSName | IPAddress:
    try:
        return IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return DNSName(normalize_name(name))


def _alert_for(message: str) -> AlertDescription:
    """Map a ``VerificationError`` message to the RFC 8446 §6.2 alert that describes it."""
    text = message.lower()
    if "not valid at validation time" in text or "expired" in text:
        return AlertDescription.certificate_expired
    if "candidates exhausted" in text or "issuer" in text or "unknown" in text:
        return AlertDescription.unknown_ca
    if "eku" in text or "key usage" in text or "keyusage" in text:
        return AlertDescription.unsupported_certificate
    return AlertDescription.bad_certificate


def _check_validity(certificates: Sequence[x509.Certificate], when: datetime.datetime) -> None:
    """Name the validity problem precisely before path building hides it in a message."""
    for cert in certificates:
        if when > cert.not_valid_after_utc:
            raise TLSError(AlertDescription.certificate_expired, "certificate has expired")
        if when < cert.not_valid_before_utc:
            raise TLSError(AlertDescription.bad_certificate, "certificate is not yet valid")


def verify_chain(
    certificates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate] | None,
    now: float | datetime.datetime,
    *,
    server_name: str | None = None,
    client: bool = False,
) -> list[x509.Certificate]:
    """Validate the peer's chain (leaf first) against ``roots``; returns the built path.

    ``client=True`` checks a client certificate (clientAuth EKU, no name);
    otherwise a server certificate for ``server_name`` (a DNS name or an IP
    address).  Without a server_name only the path and EKU are checked (the
    leaf's first SAN stands in as the subject).  Failures raise TLSError with
    certificate_expired / unknown_ca / unsupported_certificate / bad_certificate.
    """
    if not certificates:
        alert = (
            AlertDescription.certificate_required if client else AlertDescription.bad_certificate
        )
        raise TLSError(alert, "empty certificate chain")
    if not roots:
        raise TLSError(AlertDescription.unknown_ca, "no trust anchors configured")
    when = _as_datetime(now)
    leaf, intermediates = certificates[0], list(certificates[1:])
    _check_validity(certificates[:1], when)
    builder = PolicyBuilder().store(Store(list(roots))).time(when)
    try:
        if client:
            return list(builder.build_client_verifier().verify(leaf, intermediates).chain)
        name = server_name
        if name is None:
            names = _names_of(leaf)
            if not names:
                raise TLSError(AlertDescription.bad_certificate, "certificate names no subject")
            # A wildcard SAN stands for any one label: instantiate it with one.
            name = "a" + names[0][1:] if names[0].startswith("*.") else names[0]
        return list(builder.build_server_verifier(_subject_for(name)).verify(leaf, intermediates))
    except VerificationError as exc:
        raise TLSError(_alert_for(str(exc)), f"certificate verification failed: {exc}") from None
    except ValueError as exc:  # e.g. a name that is not a valid DNS name
        raise TLSError(
            AlertDescription.bad_certificate, f"certificate verification failed: {exc}"
        ) from None
