"""Signature schemes (RFC 8446 §4.2.3) and the CertificateVerify input (§4.4.3).

Each :class:`SignatureScheme` row knows its algorithm, the key it needs and how
to sign and verify with ``cryptography``.  TLS 1.3 ties ECDSA schemes to one
curve, and separates RSA-PSS with an rsaEncryption key (``rsa_pss_rsae_*``) from
RSA-PSS with an id-RSASSA-PSS key (``rsa_pss_pss_*``); a key's *kind*
(:func:`key_kind`, :func:`certificate_key_kind`) captures both distinctions.
PKCS#1 v1.5 schemes exist only as signature_algorithms_cert values: they are
never used for CertificateVerify (``for_handshake`` is false).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import PublicKeyAlgorithmOID

from .alerts import AlertDescription, TLSError

_CV_PREFIX = b" " * 64  # §4.4.3: 64 octets of 0x20
SERVER_CONTEXT = b"TLS 1.3, server CertificateVerify"
CLIENT_CONTEXT = b"TLS 1.3, client CertificateVerify"

# Key kinds: what a scheme needs from a key (and, for RSA, from its certificate).
RSA = "rsa"  # rsaEncryption
RSA_PSS = "rsa_pss"  # id-RSASSA-PSS
P256, P384, P521 = "secp256r1", "secp384r1", "secp521r1"
ED25519, ED448 = "ed25519", "ed448"

_CURVE_KIND = {"secp256r1": P256, "secp384r1": P384, "secp521r1": P521}


def certificate_verify_input(context: bytes | str | bool, transcript_hash: bytes) -> bytes:
    """The content covered by a CertificateVerify signature (§4.4.3).

    ``context`` is the context string, or True/False for the server/client one.
    """
    if isinstance(context, bool):
        context = SERVER_CONTEXT if context else CLIENT_CONTEXT
    elif isinstance(context, str):
        context = context.encode("ascii")
    return _CV_PREFIX + context + b"\x00" + transcript_hash


def key_kind(key: PrivateKeyTypes | CertificatePublicKeyTypes) -> str | None:
    """The kind of a private or public key; RSA keys report ``"rsa"`` (see
    :func:`certificate_key_kind` to tell an id-RSASSA-PSS certificate apart)."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return RSA
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return _CURVE_KIND.get(key.curve.name)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ED25519
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return ED448
    return None


def certificate_key_kind(cert: x509.Certificate) -> str | None:
    """The kind of a certificate's subject key, telling rsaEncryption from RSASSA-PSS."""
    if cert.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
        return RSA_PSS
    return key_kind(cert.public_key())


# A server signs with the same few keys all day: their kinds by id(key), the key kept
# alongside so a reused id is never mistaken for it (bounded: cleared when full).
_SIGNING_KINDS: dict[int, tuple[PrivateKeyTypes, str | None]] = {}


def _signing_key_kind(private_key: PrivateKeyTypes) -> str | None:
    known = _SIGNING_KINDS.get(id(private_key))
    if known is not None and known[0] is private_key:
        return known[1]
    kind = key_kind(private_key)
    if len(_SIGNING_KINDS) >= 64:
        _SIGNING_KINDS.clear()
    _SIGNING_KINDS[id(private_key)] = (private_key, kind)
    return kind


@dataclass(frozen=True, slots=True)
class SignatureScheme:
    """One row of the §4.2.3 table."""

    code: int
    name: str
    key_kinds: frozenset[str]
    hash: hashes.HashAlgorithm | None  # None for EdDSA (the hash is part of the algorithm)
    for_handshake: bool = True  # False: only valid in signature_algorithms_cert
    #: The ECDSA algorithm object of an ECDSA row, made once (None for other schemes).
    ecdsa: ec.ECDSA | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hash is not None and self.key_kinds & {P256, P384, P521}:
            object.__setattr__(self, "ecdsa", ec.ECDSA(self.hash))

    def fits(self, kind: str | None) -> bool:
        return kind in self.key_kinds

    def _usable_with(self, kind: str | None) -> bool:
        """Whether a bare key can do the maths: an RSA key object cannot say whether its
        certificate is RSASSA-PSS, so both RSA-PSS families accept it here (certificate
        selection and :func:`check_certificate_fits` make the finer distinction)."""
        if not self.for_handshake:
            return False
        return self.fits(kind) or (kind == RSA and RSA_PSS in self.key_kinds)

    def _padding(self) -> padding.AsymmetricPadding:
        assert self.hash is not None
        if self.name.startswith("rsa_pkcs1"):
            return padding.PKCS1v15()
        # §4.2.3: the PSS salt length equals the digest length, MGF1 with the same hash.
        return padding.PSS(mgf=padding.MGF1(self.hash), salt_length=self.hash.digest_size)

    def sign(self, private_key: PrivateKeyTypes, data: bytes) -> bytes:
        """Sign ``data``; a key that does not fit this scheme is an internal_error."""
        if not self._usable_with(_signing_key_kind(private_key)):
            raise TLSError(AlertDescription.internal_error, f"key cannot sign {self.name}")
        if self.ecdsa is not None and isinstance(private_key, ec.EllipticCurvePrivateKey):
            return private_key.sign(data, self.ecdsa)
        if isinstance(private_key, rsa.RSAPrivateKey):
            assert self.hash is not None
            return private_key.sign(data, self._padding(), self.hash)
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            assert self.hash is not None
            return private_key.sign(data, ec.ECDSA(self.hash))
        if isinstance(private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
            return private_key.sign(data)
        raise TLSError(AlertDescription.internal_error, f"key cannot sign {self.name}")

    def verify(self, public_key: CertificatePublicKeyTypes, signature: bytes, data: bytes) -> None:
        """Check a CertificateVerify signature: a bad one is decrypt_error (§4.4.3); a
        scheme that does not fit the key (e.g. another ECDSA curve) is illegal_parameter."""
        if not self._usable_with(key_kind(public_key)):
            raise TLSError(AlertDescription.illegal_parameter, f"{self.name} does not fit the key")
        try:
            if isinstance(public_key, rsa.RSAPublicKey):
                assert self.hash is not None
                public_key.verify(signature, data, self._padding(), self.hash)
            elif isinstance(public_key, ec.EllipticCurvePublicKey):
                assert self.hash is not None
                public_key.verify(signature, data, ec.ECDSA(self.hash))
            elif isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
                public_key.verify(signature, data)
            else:
                raise InvalidSignature
        except (InvalidSignature, ValueError):
            raise TLSError(
                AlertDescription.decrypt_error, "bad CertificateVerify signature"
            ) from None


def _row(
    code: int,
    name: str,
    kinds: tuple[str, ...],
    hash: hashes.HashAlgorithm | None,
    for_handshake: bool = True,
) -> SignatureScheme:
    return SignatureScheme(code, name, frozenset(kinds), hash, for_handshake)


_ROWS = (
    _row(0x0403, "ecdsa_secp256r1_sha256", (P256,), hashes.SHA256()),
    _row(0x0503, "ecdsa_secp384r1_sha384", (P384,), hashes.SHA384()),
    _row(0x0603, "ecdsa_secp521r1_sha512", (P521,), hashes.SHA512()),
    _row(0x0804, "rsa_pss_rsae_sha256", (RSA,), hashes.SHA256()),
    _row(0x0805, "rsa_pss_rsae_sha384", (RSA,), hashes.SHA384()),
    _row(0x0806, "rsa_pss_rsae_sha512", (RSA,), hashes.SHA512()),
    _row(0x0807, "ed25519", (ED25519,), None),
    _row(0x0808, "ed448", (ED448,), None),
    _row(0x0809, "rsa_pss_pss_sha256", (RSA_PSS,), hashes.SHA256()),
    _row(0x080A, "rsa_pss_pss_sha384", (RSA_PSS,), hashes.SHA384()),
    _row(0x080B, "rsa_pss_pss_sha512", (RSA_PSS,), hashes.SHA512()),
    # §4.2.3: PKCS#1 v1.5 only for certificates, never in CertificateVerify.
    _row(0x0401, "rsa_pkcs1_sha256", (RSA,), hashes.SHA256(), for_handshake=False),
    _row(0x0501, "rsa_pkcs1_sha384", (RSA,), hashes.SHA384(), for_handshake=False),
    _row(0x0601, "rsa_pkcs1_sha512", (RSA,), hashes.SHA512(), for_handshake=False),
)

#: Every scheme we know (handshake and certificate-only), by code point.
SCHEMES: dict[int, SignatureScheme] = {s.code: s for s in _ROWS}
BY_NAME: dict[str, int] = {s.name: s.code for s in _ROWS}
#: Schemes usable in CertificateVerify, in our preference order.
HANDSHAKE_SCHEMES: tuple[int, ...] = tuple(s.code for s in _ROWS if s.for_handshake)


def schemes_for_kind(kind: str | None, offered: tuple[int, ...] | list[int]) -> list[int]:
    """The handshake schemes in ``offered`` (in that order) that a key of ``kind`` can use."""
    out = []
    for code in offered:
        scheme = SCHEMES.get(code)
        if scheme is not None and scheme.for_handshake and scheme.fits(kind):
            out.append(code)
    return out


def check_certificate_fits(scheme: SignatureScheme, cert: x509.Certificate) -> None:
    """§4.4.3: the CertificateVerify scheme must fit the peer's certificate key, including
    the rsaEncryption / RSASSA-PSS distinction (illegal_parameter otherwise)."""
    if not scheme.for_handshake or not scheme.fits(certificate_key_kind(cert)):
        raise TLSError(
            AlertDescription.illegal_parameter, f"{scheme.name} does not fit the certificate"
        )


def scheme_name(code: int) -> str:
    scheme = SCHEMES.get(code)
    return scheme.name if scheme else f"0x{code:04X}"
