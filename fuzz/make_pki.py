"""Write the fixed fuzzing PKI into fuzz/pki (run once; the corpus depends on these bytes).

    python3 fuzz/make_pki.py --force

A P-256 CA (the Web PKI profile of ``cryptography``'s verifier refuses
Ed25519 keys), an Ed25519 server leaf (deterministic signatures), a P-256 server
leaf and a P-256 client leaf, valid 2025-01-01 .. 2045-01-01.  Test-only keys.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PKI_DIR = Path(__file__).resolve().parent / "pki"
NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
NOT_AFTER = datetime.datetime(2045, 1, 1, tzinfo=datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name("tls13-proxy fuzz CA"))
        .issuer_name(_name("tls13-proxy fuzz CA"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    ca: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    name: str,
    serial: int,
    client: bool,
) -> x509.Certificate:
    eku = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    return (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write(stem: str, certs: list[x509.Certificate], key: object) -> None:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    (PKI_DIR / f"{stem}.pem").write_bytes(pem)
    if key is not None:
        (PKI_DIR / f"{stem}.key").write_bytes(
            key.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def main() -> None:
    if (PKI_DIR / "ca.pem").exists() and "--force" not in sys.argv:
        sys.exit("fuzz/pki exists; the corpus depends on it (use --force to replace)")
    PKI_DIR.mkdir(exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca(ca_key)
    _write("ca", [ca], None)
    server_key = ed25519.Ed25519PrivateKey.generate()
    _write("server", [_leaf(ca, ca_key, server_key, "localhost", 2, False), ca], server_key)
    ecdsa_key = ec.generate_private_key(ec.SECP256R1())
    _write("server-ecdsa", [_leaf(ca, ca_key, ecdsa_key, "localhost", 3, False), ca], ecdsa_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    _write("client", [_leaf(ca, ca_key, client_key, "fuzz-client", 4, True), ca], client_key)


if __name__ == "__main__":
    main()
