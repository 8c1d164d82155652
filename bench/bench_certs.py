"""The one certificate every target serves: an ECDSA P-256 leaf for localhost/127.0.0.1,
issued by a throwaway P-256 CA, so all targets sign with the same key type and send the
same two-certificate chain."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from bench_targets import Material
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    issuer: str,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def write_material(directory: Path) -> Material:
    """Create the CA and leaf; write chain, key, chain+key (hitch's pem-file) and CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(
        "tls13-proxy bench CA", "tls13-proxy bench CA", ca_key.public_key(), ca_key, ca=True
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _issue("localhost", "tls13-proxy bench CA", leaf_key.public_key(), ca_key, ca=False)
    pem = serialization.Encoding.PEM
    chain_pem = leaf.public_bytes(pem) + ca_cert.public_bytes(pem)
    key_pem = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    material = Material(
        directory / "chain.pem",
        directory / "key.pem",
        directory / "combined.pem",
        directory / "ca.pem",
    )
    material.chain.write_bytes(chain_pem)
    material.key.write_bytes(key_pem)
    material.combined.write_bytes(chain_pem + key_pem)
    material.ca.write_bytes(ca_cert.public_bytes(pem))
    for secret in (material.key, material.combined):
        secret.chmod(0o600)
    return material
