"""Key-exchange groups: round trips, share layouts, and rejection of invalid peer shares."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tls13.alerts import AlertDescription, TLSError
from tls13.groups import (
    BY_NAME,
    FFDHE2048,
    GROUPS,
    SECP256R1,
    SECP256R1MLKEM768,
    SECP384R1MLKEM1024,
    X448,
    X25519,
    X25519MLKEM768,
    ECGroup,
    FFDHGroup,
    HybridGroup,
)

# ffdhe6144/8192 are slow; the others cover every code path.
FAST = [g for g in GROUPS.values() if g.name not in ("ffdhe6144", "ffdhe8192")]

EXPECTED_SIZES = {  # name: (client share, server share, shared secret)
    "x25519": (32, 32, 32),
    "x448": (56, 56, 56),
    "secp256r1": (65, 65, 32),
    "secp384r1": (97, 97, 48),
    "secp521r1": (133, 133, 66),
    "ffdhe2048": (256, 256, 256),
    "ffdhe3072": (384, 384, 384),
    "ffdhe4096": (512, 512, 512),
    "X25519MLKEM768": (1216, 1120, 64),
    "SecP256r1MLKEM768": (1249, 1153, 64),
    "SecP384r1MLKEM1024": (1665, 1665, 80),
}


def _illegal(fn: object, *args: object) -> None:
    with pytest.raises(TLSError) as excinfo:
        fn(*args)  # type: ignore[operator]
    assert excinfo.value.alert == AlertDescription.illegal_parameter


@pytest.mark.parametrize("group", FAST, ids=lambda g: g.name)
def test_round_trip_and_sizes(group: object) -> None:
    client = group.generate(os.urandom)  # type: ignore[attr-defined]
    server_share, shared = group.respond(client.public, os.urandom)  # type: ignore[attr-defined]
    assert client.exchange(server_share) == shared
    assert (len(client.public), len(server_share), len(shared)) == EXPECTED_SIZES[group.name]  # type: ignore[attr-defined]
    assert BY_NAME[group.name] == group.code  # type: ignore[attr-defined]


def test_codes_match_iana() -> None:
    assert {n: BY_NAME[n] for n in ("x25519", "secp256r1", "ffdhe2048", "X25519MLKEM768")} == {
        "x25519": 0x001D,
        "secp256r1": 0x0017,
        "ffdhe2048": 0x0100,
        "X25519MLKEM768": 0x11EC,
    }
    assert BY_NAME["SecP256r1MLKEM768"] == 0x11EB and BY_NAME["SecP384r1MLKEM1024"] == 0x11ED


def test_injected_randomness_makes_x25519_deterministic() -> None:
    a = X25519.generate(lambda n: b"\x01" * n)
    b = X25519.generate(lambda n: b"\x01" * n)
    assert a.public == b.public


def test_server_private_injection() -> None:
    client = SECP256R1.generate(os.urandom)
    fixed = SECP256R1.private_from_bytes((12345).to_bytes(32, "big"))
    share1, secret1 = SECP256R1.respond(client.public, os.urandom, private=fixed)
    share2, secret2 = SECP256R1.respond(client.public, os.urandom, private=fixed)
    assert share1 == share2 == fixed.public and secret1 == secret2
    with pytest.raises(TLSError):
        X25519.respond(os.urandom(32), os.urandom, private=fixed)  # share of another group


# --- X25519 / X448 ---------------------------------------------------------------------------


@pytest.mark.parametrize("group", [X25519, X448], ids=lambda g: g.name)
def test_montgomery_low_order_points_rejected(group: object) -> None:
    size = group.key_len  # type: ignore[attr-defined]
    private = group.generate(os.urandom)  # type: ignore[attr-defined]
    _illegal(private.exchange, bytes(size))  # all-zero shared secret
    _illegal(private.exchange, b"\x01" + bytes(size - 1))  # the point of order 1
    _illegal(private.exchange, bytes(size - 1))  # wrong length
    _illegal(group.respond, bytes(size), os.urandom)  # type: ignore[attr-defined]


# --- NIST curves -----------------------------------------------------------------------------


def test_ec_share_validation() -> None:
    private = SECP256R1.generate(os.urandom)
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    uncompressed = peer.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    compressed = peer.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    assert len(private.exchange(uncompressed)) == 32
    _illegal(private.exchange, compressed)  # §4.2.8.2: uncompressed only
    _illegal(private.exchange, b"\x05" + uncompressed[1:])  # legacy_form must be 4
    _illegal(private.exchange, uncompressed[:-1])
    off_curve = bytearray(uncompressed)
    off_curve[-1] ^= 1
    _illegal(private.exchange, bytes(off_curve))
    _illegal(private.exchange, b"\x04" + bytes(64))  # the point at infinity is not on the curve
    other_curve = ec.generate_private_key(ec.SECP384R1()).public_key()
    _illegal(
        private.exchange, other_curve.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )


def test_ec_shared_secret_is_the_x_coordinate() -> None:
    ours = SECP256R1.private_from_bytes((7).to_bytes(32, "big"))
    theirs = ec.derive_private_key(11, ec.SECP256R1())
    shared = ours.exchange(
        theirs.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    point = ec.derive_private_key(77, ec.SECP256R1()).public_key().public_numbers()
    assert shared == point.x.to_bytes(32, "big")


# --- FFDHE -----------------------------------------------------------------------------------


def test_ffdhe_peer_value_range() -> None:
    group: FFDHGroup = FFDHE2048
    private = group.generate(os.urandom)
    p = group.prime
    for bad in (0, 1, p - 1, p, p + 1):  # RFC 7919 §5.1: 1 < y < p - 1
        _illegal(private.exchange, bad.to_bytes(group.prime_len, "big"))
    _illegal(private.exchange, (2).to_bytes(group.prime_len - 1, "big"))  # not padded
    _illegal(group.respond, b"\xff" * group.prime_len, os.urandom)


def test_ffdhe_shares_and_secrets_are_padded() -> None:
    """§4.2.8.1 / §7.4.1: with a tiny private value the share has leading zeros."""
    group = FFDHE2048
    small = group.private_from_bytes((5).to_bytes(1, "big"))
    assert small.public == (2**5).to_bytes(256, "big")
    peer = group.generate(os.urandom)
    shared = small.exchange(peer.public)
    assert len(shared) == 256
    assert int.from_bytes(shared, "big") == pow(int.from_bytes(peer.public, "big"), 5, group.prime)


def test_ffdhe_prime_is_rfc7919() -> None:
    p = FFDHE2048.prime
    assert p.bit_length() == 2048 and hex(p).endswith("ffffffffffffffff")
    assert hex(p)[2:].upper().startswith("FFFFFFFFFFFFFFFFADF85458A2BB4A9A")


# --- hybrid ML-KEM ---------------------------------------------------------------------------


def test_x25519mlkem768_layout_and_order() -> None:
    """draft-ietf-tls-ecdhe-mlkem §3: ML-KEM part first, in shares and in the secret."""
    seed = os.urandom(64)
    x_priv = os.urandom(32)
    client = X25519MLKEM768.private_from_bytes(seed + x_priv)
    kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    x = x25519.X25519PrivateKey.from_private_bytes(x_priv)
    assert client.public == kem.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
    server_share, shared = X25519MLKEM768.respond(client.public, os.urandom)
    ciphertext, server_x = server_share[:1088], server_share[1088:]
    kem_secret = kem.decapsulate(ciphertext)
    x_secret = x.exchange(x25519.X25519PublicKey.from_public_bytes(server_x))
    assert shared == kem_secret + x_secret
    assert client.exchange(server_share) == shared


@pytest.mark.parametrize(
    ("group", "curve", "kem_cls", "point_len", "ct_len"),
    [
        (SECP256R1MLKEM768, ec.SECP256R1(), mlkem.MLKEM768PrivateKey, 65, 1088),
        (SECP384R1MLKEM1024, ec.SECP384R1(), mlkem.MLKEM1024PrivateKey, 97, 1568),
    ],
    ids=["SecP256r1MLKEM768", "SecP384r1MLKEM1024"],
)
def test_nist_hybrid_layout_and_order(
    group: HybridGroup, curve: ec.EllipticCurve, kem_cls: type, point_len: int, ct_len: int
) -> None:
    """ECDH part first for the NIST hybrids, in shares and in the secret."""
    seed = os.urandom(64)
    scalar = (987654321).to_bytes(point_len // 2, "big")
    client = group.private_from_bytes(scalar + seed)
    kem = kem_cls.from_seed_bytes(seed)
    ec_key = ec.derive_private_key(987654321, curve)
    point = ec_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert client.public == point + kem.public_key().public_bytes_raw()
    server_share, shared = group.respond(client.public, os.urandom)
    server_point, ciphertext = server_share[:point_len], server_share[point_len:]
    assert len(ciphertext) == ct_len
    classical: ECGroup = group.classical  # type: ignore[assignment]
    ecdh = ec_key.exchange(ec.ECDH(), classical.load_peer(server_point))
    assert shared == ecdh + kem.decapsulate(ciphertext)
    assert client.exchange(server_share) == shared


@pytest.mark.parametrize(
    "group", [X25519MLKEM768, SECP256R1MLKEM768, SECP384R1MLKEM1024], ids=lambda g: g.name
)
def test_hybrid_invalid_shares(group: HybridGroup) -> None:
    client = group.generate(os.urandom)
    _illegal(group.respond, client.public[:-1], os.urandom)  # wrong length
    _illegal(group.respond, client.public + b"\x00", os.urandom)
    # An encapsulation key whose coefficients are >= q fails the FIPS 203 §7.2 check.
    ek_len = group.kem.ek_len
    bad_ek = b"\xff" * (ek_len - 32) + client.public[:32]
    bad = group.join(bad_ek, group.split(client.public, ek_len)[1])
    _illegal(group.respond, bad, os.urandom)
    server_share, _ = group.respond(client.public, os.urandom)
    _illegal(client.exchange, server_share[:-1])  # ciphertext length checked by the client
    # A broken ECDH half of the server share is illegal_parameter too.
    kem_part, ecdh_part = group.split(server_share, group.kem.ct_len)
    _illegal(client.exchange, group.join(kem_part, bytes(len(ecdh_part))))
