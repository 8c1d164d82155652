"""Key-exchange groups for the key_share extension (RFC 8446 §4.2.7, §4.2.8, §7.4).

Each :class:`Group` knows how to make a private share (client side), how to
answer a client's share (server side) and how to validate a peer's share.  Any
malformed or degenerate peer share becomes ``illegal_parameter``.

Supported:

* ECDHE over X25519/X448 (RFC 7748) and secp256r1/384r1/521r1 (uncompressed
  points only, RFC 8446 §4.2.8.2);
* finite-field DHE with the RFC 7919 groups ffdhe2048…8192 (§4.2.8.1: shares
  and shared secrets are left-padded to the size of the prime);
* the hybrid post-quantum groups X25519MLKEM768, SecP256r1MLKEM768 and
  SecP384r1MLKEM1024 (draft-ietf-tls-ecdhe-mlkem §3).

Randomness is injectable only where the primitive lets us (X25519/X448 private
keys are 32/56 random bytes); NIST curves, FFDH and ML-KEM use the generators
of ``cryptography``.  ``Group.private_from_bytes`` rebuilds a private share from
raw key bytes so that published traces can be replayed exactly.
"""

from __future__ import annotations

import hmac
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dh, ec, mlkem, x448, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning

from .alerts import AlertDescription, TLSError, illegal_parameter

Random = Callable[[int], bytes]


@contextmanager
def _ffdh_allowed() -> Iterator[None]:
    """Silence cryptography's FFDH deprecation warning: RFC 8446 still defines these groups."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


# Merely touching an FFDH name in cryptography's dh module warns, so bind them once, quietly.
with _ffdh_allowed():
    _DHParameterNumbers = dh.DHParameterNumbers
    _DHPublicNumbers = dh.DHPublicNumbers
    _DHPrivateNumbers = dh.DHPrivateNumbers


class PrivateShare(ABC):
    """Our half of one key exchange: the encoded ``public`` share and the private key."""

    __slots__ = ("group", "public")

    def __init__(self, group: Group, public: bytes) -> None:
        self.group = group
        self.public = public

    @abstractmethod
    def exchange(self, peer_share: bytes) -> bytes:
        """Validate the peer's encoded share and return the shared secret (illegal_parameter)."""


class Group(ABC):
    """A named group (IANA ``code``/``name``); stateless and shared by all connections."""

    __slots__ = ("code", "name")

    def __init__(self, code: int, name: str) -> None:
        self.code = code
        self.name = name

    def __repr__(self) -> str:
        return f"<Group {self.name} 0x{self.code:04X}>"

    @property
    @abstractmethod
    def client_share_len(self) -> int:
        """Exact length of a valid client key_exchange value."""

    @property
    def server_share_len(self) -> int:
        """Exact length of a valid server key_exchange value (same as the client's for DH)."""
        return self.client_share_len

    @abstractmethod
    def generate(self, random: Random) -> PrivateShare:
        """A fresh private share for a ClientHello (or for a server's DH half)."""

    @abstractmethod
    def private_from_bytes(self, raw: bytes) -> PrivateShare:
        """Rebuild a private share from raw private key bytes (traces and tests)."""

    def respond(
        self, client_share: bytes, random: Random, private: PrivateShare | None = None
    ) -> tuple[bytes, bytes]:
        """Server side: answer ``client_share``; returns ``(server_share, shared_secret)``."""
        share = self._own(private) if private is not None else self.generate(random)
        return share.public, share.exchange(client_share)

    def _own(self, private: PrivateShare) -> PrivateShare:
        if private.group is not self:
            raise TLSError(AlertDescription.internal_error, f"injected share is not {self.name}")
        return private


# --- X25519 / X448 (RFC 7748, RFC 8446 §7.4.2) -----------------------------------------------


class _MontgomeryShare(PrivateShare):
    __slots__ = ("_key",)

    def __init__(
        self, group: MontgomeryGroup, key: x25519.X25519PrivateKey | x448.X448PrivateKey
    ) -> None:
        super().__init__(group, key.public_key().public_bytes_raw())
        self._key = key

    def exchange(self, peer_share: bytes) -> bytes:
        group = self.group
        assert isinstance(group, MontgomeryGroup)
        if len(peer_share) != group.key_len:
            raise illegal_parameter(f"{group.name} share must be {group.key_len} bytes")
        try:
            if isinstance(self._key, x25519.X25519PrivateKey):
                shared = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_share))
            else:
                shared = self._key.exchange(x448.X448PublicKey.from_public_bytes(peer_share))
        except ValueError:
            # cryptography refuses a low-order point (all-zero result).
            raise illegal_parameter(f"{group.name}: all-zero shared secret") from None
        # RFC 8446 §7.4.2: MUST check the shared secret is not all zeros.
        if hmac.compare_digest(shared, bytes(len(shared))):
            raise illegal_parameter(f"{group.name}: all-zero shared secret")
        return shared


class MontgomeryGroup(Group):
    """X25519 or X448: any ``key_len`` random bytes are a valid private key (clamped)."""

    __slots__ = ("key_len",)

    def __init__(self, code: int, name: str, key_len: int) -> None:
        super().__init__(code, name)
        self.key_len = key_len

    @property
    def client_share_len(self) -> int:
        return self.key_len

    def generate(self, random: Random) -> PrivateShare:
        return self.private_from_bytes(random(self.key_len))

    def private_from_bytes(self, raw: bytes) -> PrivateShare:
        if len(raw) != self.key_len:
            raise ValueError(f"{self.name} private key must be {self.key_len} bytes")
        if self.key_len == 32:
            return _MontgomeryShare(self, x25519.X25519PrivateKey.from_private_bytes(raw))
        return _MontgomeryShare(self, x448.X448PrivateKey.from_private_bytes(raw))


# --- NIST curves (RFC 8446 §4.2.8.2) ---------------------------------------------------------


class _ECShare(PrivateShare):
    __slots__ = ("_key",)

    def __init__(self, group: ECGroup, key: ec.EllipticCurvePrivateKey) -> None:
        public = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        super().__init__(group, public)
        self._key = key

    def exchange(self, peer_share: bytes) -> bytes:
        group = self.group
        assert isinstance(group, ECGroup)
        peer = group.load_peer(peer_share)
        # The ECDH result is the x-coordinate, padded to the field size (§7.4.2).
        return self._key.exchange(ec.ECDH(), peer)


class ECGroup(Group):
    """secp256r1/384r1/521r1 with uncompressed points only (legacy_form = 4)."""

    __slots__ = ("curve", "coordinate_len")

    def __init__(self, code: int, name: str, curve: ec.EllipticCurve) -> None:
        super().__init__(code, name)
        self.curve = curve
        self.coordinate_len = (curve.key_size + 7) // 8

    @property
    def client_share_len(self) -> int:
        return 1 + 2 * self.coordinate_len

    def load_peer(self, share: bytes) -> ec.EllipticCurvePublicKey:
        """Parse and validate an UncompressedPointRepresentation (§4.2.8.2)."""
        if len(share) != self.client_share_len or share[0] != 4:
            raise illegal_parameter(f"{self.name} share is not an uncompressed point")
        try:
            # from_encoded_point checks that the point is on the curve.
            return ec.EllipticCurvePublicKey.from_encoded_point(self.curve, share)
        except ValueError:
            raise illegal_parameter(f"{self.name} share is not a point on the curve") from None

    def generate(self, random: Random) -> PrivateShare:
        return _ECShare(self, ec.generate_private_key(self.curve))

    def private_from_bytes(self, raw: bytes) -> PrivateShare:
        return _ECShare(self, ec.derive_private_key(int.from_bytes(raw, "big"), self.curve))


# --- Finite-field DHE (RFC 7919, RFC 8446 §4.2.8.1) ------------------------------------------


class _FFDHShare(PrivateShare):
    __slots__ = ("_key",)

    def __init__(self, group: FFDHGroup, key: dh.DHPrivateKey) -> None:
        y = key.public_key().public_numbers().y
        super().__init__(group, y.to_bytes(group.prime_len, "big"))
        self._key = key

    def exchange(self, peer_share: bytes) -> bytes:
        group = self.group
        assert isinstance(group, FFDHGroup)
        peer = group.load_peer(peer_share)
        try:
            shared = self._key.exchange(peer)
        except ValueError:
            raise illegal_parameter(f"{group.name}: invalid peer value") from None
        # RFC 8446 §7.4.1: the shared secret is left-padded with zeros to the prime size.
        return shared.rjust(group.prime_len, b"\0")


class FFDHGroup(Group):
    """An RFC 7919 safe-prime group with generator 2 and q = (p - 1) / 2."""

    __slots__ = ("prime", "prime_len", "_numbers", "_params")

    def __init__(self, code: int, name: str, prime: int) -> None:
        super().__init__(code, name)
        self.prime = prime
        self.prime_len = (prime.bit_length() + 7) // 8
        # Giving q lets OpenSSL also check that peer values lie in the prime-order subgroup.
        self._numbers = _DHParameterNumbers(prime, 2, (prime - 1) // 2)
        with _ffdh_allowed():
            self._params = self._numbers.parameters()

    @property
    def client_share_len(self) -> int:
        return self.prime_len

    def load_peer(self, share: bytes) -> dh.DHPublicKey:
        """Check length (padded to the prime, §4.2.8.1) and 1 < y < p - 1 (RFC 7919 §5.1)."""
        if len(share) != self.prime_len:
            raise illegal_parameter(f"{self.name} share must be {self.prime_len} bytes")
        y = int.from_bytes(share, "big")
        if not 1 < y < self.prime - 1:
            raise illegal_parameter(f"{self.name} share out of range")
        try:
            with _ffdh_allowed():
                return _DHPublicNumbers(y, self._numbers).public_key()
        except ValueError:
            raise illegal_parameter(f"{self.name}: invalid peer value") from None

    def generate(self, random: Random) -> PrivateShare:
        with _ffdh_allowed():
            return _FFDHShare(self, self._params.generate_private_key())

    def private_from_bytes(self, raw: bytes) -> PrivateShare:
        x = int.from_bytes(raw, "big")
        public = _DHPublicNumbers(pow(2, x, self.prime), self._numbers)
        with _ffdh_allowed():
            return _FFDHShare(self, _DHPrivateNumbers(x, public).private_key())


# --- Hybrid ECDHE + ML-KEM (draft-ietf-tls-ecdhe-mlkem §3) -----------------------------------

_MLKEMPrivate = mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey
_MLKEM_SEED_LEN = 64  # FIPS 203 (d || z)


class _KEM:
    """The fixed sizes and key classes of one ML-KEM parameter set."""

    __slots__ = ("private_cls", "public_cls", "ek_len", "ct_len")

    def __init__(
        self,
        private_cls: type[mlkem.MLKEM768PrivateKey] | type[mlkem.MLKEM1024PrivateKey],
        public_cls: type[mlkem.MLKEM768PublicKey] | type[mlkem.MLKEM1024PublicKey],
        ek_len: int,
        ct_len: int,
    ) -> None:
        self.private_cls = private_cls
        self.public_cls = public_cls
        self.ek_len = ek_len
        self.ct_len = ct_len


_MLKEM768 = _KEM(mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, 1184, 1088)
_MLKEM1024 = _KEM(mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, 1568, 1568)


class _HybridShare(PrivateShare):
    __slots__ = ("_kem_key", "classical")

    def __init__(self, group: HybridGroup, kem_key: _MLKEMPrivate, classical: PrivateShare) -> None:
        ek = kem_key.public_key().public_bytes_raw()
        super().__init__(group, group.join(ek, classical.public))
        self._kem_key = kem_key
        self.classical = classical

    def exchange(self, peer_share: bytes) -> bytes:
        """Client side: decapsulate the server's ciphertext and finish the ECDH half."""
        group = self.group
        assert isinstance(group, HybridGroup)
        if len(peer_share) != group.server_share_len:
            raise illegal_parameter(f"{group.name} server share has the wrong length")
        ciphertext, ecdh_share = group.split(peer_share, group.kem.ct_len)
        try:
            kem_secret = self._kem_key.decapsulate(ciphertext)
        except ValueError:
            # draft-ietf-tls-ecdhe-mlkem §3.1.2: other decapsulation failures are internal_error.
            raise TLSError(AlertDescription.internal_error, "ML-KEM decapsulation failed") from None
        return group.join(kem_secret, self.classical.exchange(ecdh_share))


class HybridGroup(Group):
    """ECDHE combined with ML-KEM; ``kem_first`` selects the X25519MLKEM768 ordering.

    X25519MLKEM768 puts the ML-KEM part first in both shares and in the shared
    secret; SecP256r1MLKEM768 and SecP384r1MLKEM1024 put the ECDH part first.
    ``private_from_bytes`` takes the 64-byte ML-KEM seed and the ECDH private
    key concatenated in that same order.
    """

    __slots__ = ("classical", "kem", "kem_first")

    def __init__(
        self, code: int, name: str, classical: Group, kem: _KEM, *, kem_first: bool
    ) -> None:
        super().__init__(code, name)
        self.classical = classical
        self.kem = kem
        self.kem_first = kem_first

    @property
    def client_share_len(self) -> int:
        return self.kem.ek_len + self.classical.client_share_len

    @property
    def server_share_len(self) -> int:
        return self.kem.ct_len + self.classical.server_share_len

    def join(self, kem_part: bytes, ecdh_part: bytes) -> bytes:
        return kem_part + ecdh_part if self.kem_first else ecdh_part + kem_part

    def split(self, value: bytes, kem_len: int) -> tuple[bytes, bytes]:
        """Split a share into ``(kem_part, ecdh_part)`` given the KEM part's length."""
        if self.kem_first:
            return value[:kem_len], value[kem_len:]
        return value[len(value) - kem_len :], value[: len(value) - kem_len]

    def generate(self, random: Random) -> PrivateShare:
        kem_key = self.kem.private_cls.from_seed_bytes(random(_MLKEM_SEED_LEN))
        return _HybridShare(self, kem_key, self.classical.generate(random))

    def private_from_bytes(self, raw: bytes) -> PrivateShare:
        kem_part, ecdh_part = (
            (raw[:_MLKEM_SEED_LEN], raw[_MLKEM_SEED_LEN:])
            if self.kem_first
            else (raw[len(raw) - _MLKEM_SEED_LEN :], raw[: len(raw) - _MLKEM_SEED_LEN])
        )
        kem_key = self.kem.private_cls.from_seed_bytes(kem_part)
        return _HybridShare(self, kem_key, self.classical.private_from_bytes(ecdh_part))

    def respond(
        self, client_share: bytes, random: Random, private: PrivateShare | None = None
    ) -> tuple[bytes, bytes]:
        """Server side: encapsulate to the client's ML-KEM key, answer its ECDH share."""
        if len(client_share) != self.client_share_len:
            raise illegal_parameter(f"{self.name} client share has the wrong length")
        ek_bytes, ecdh_share = self.split(client_share, self.kem.ek_len)
        try:
            # FIPS 203 §7.2 encapsulation key check (the modulus check) happens on load.
            ek = self.kem.public_cls.from_public_bytes(ek_bytes)
        except (ValueError, UnsupportedAlgorithm):
            raise illegal_parameter(f"{self.name}: invalid ML-KEM encapsulation key") from None
        if private is not None:
            own = self._own(private)
            assert isinstance(own, _HybridShare)
            classical = own.classical
        else:
            classical = self.classical.generate(random)
        ecdh_secret = classical.exchange(ecdh_share)
        kem_secret, ciphertext = ek.encapsulate()
        return self.join(ciphertext, classical.public), self.join(kem_secret, ecdh_secret)


# --- The table --------------------------------------------------------------------------------

# RFC 7919 Appendix A primes (hex copied from the RFC; g = 2, q = (p - 1) / 2).
_FFDHE2048_P = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF",
    16,
)
_FFDHE3072_P = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
    16,
)
_FFDHE4096_P = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB"
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A"
    "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038"
    "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF"
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E655F6AFFFFFFFFFFFFFFFF",
    16,
)
_FFDHE6144_P = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB"
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A"
    "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038"
    "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF"
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E0DD9020BFD64B645036C7A"
    "4E677D2C38532A3A23BA4442CAF53EA63BB454329B7624C8917BDD64B1C0FD4C"
    "B38E8C334C701C3ACDAD0657FCCFEC719B1F5C3E4E46041F388147FB4CFDB477"
    "A52471F7A9A96910B855322EDB6340D8A00EF092350511E30ABEC1FFF9E3A26E"
    "7FB29F8C183023C3587E38DA0077D9B4763E4E4B94B2BBC194C6651E77CAF992"
    "EEAAC0232A281BF6B3A739C1226116820AE8DB5847A67CBEF9C9091B462D538C"
    "D72B03746AE77F5E62292C311562A846505DC82DB854338AE49F5235C95B9117"
    "8CCF2DD5CACEF403EC9D1810C6272B045B3B71F9DC6B80D63FDD4A8E9ADB1E69"
    "62A69526D43161C1A41D570D7938DAD4A40E329CD0E40E65FFFFFFFFFFFFFFFF",
    16,
)
_FFDHE8192_P = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB"
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A"
    "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038"
    "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF"
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E0DD9020BFD64B645036C7A"
    "4E677D2C38532A3A23BA4442CAF53EA63BB454329B7624C8917BDD64B1C0FD4C"
    "B38E8C334C701C3ACDAD0657FCCFEC719B1F5C3E4E46041F388147FB4CFDB477"
    "A52471F7A9A96910B855322EDB6340D8A00EF092350511E30ABEC1FFF9E3A26E"
    "7FB29F8C183023C3587E38DA0077D9B4763E4E4B94B2BBC194C6651E77CAF992"
    "EEAAC0232A281BF6B3A739C1226116820AE8DB5847A67CBEF9C9091B462D538C"
    "D72B03746AE77F5E62292C311562A846505DC82DB854338AE49F5235C95B9117"
    "8CCF2DD5CACEF403EC9D1810C6272B045B3B71F9DC6B80D63FDD4A8E9ADB1E69"
    "62A69526D43161C1A41D570D7938DAD4A40E329CCFF46AAA36AD004CF600C838"
    "1E425A31D951AE64FDB23FCEC9509D43687FEB69EDD1CC5E0B8CC3BDF64B10EF"
    "86B63142A3AB8829555B2F747C932665CB2C0F1CC01BD70229388839D2AF05E4"
    "54504AC78B7582822846C0BA35C35F5C59160CC046FD8251541FC68C9C86B022"
    "BB7099876A460E7451A8A93109703FEE1C217E6C3826E52C51AA691E0E423CFC"
    "99E9E31650C1217B624816CDAD9A95F9D5B8019488D9C0A0A1FE3075A577E231"
    "83F81D4A3F2FA4571EFC8CE0BA8A4FE8B6855DFE72B0A66EDED2FBABFBE58A30"
    "FAFABE1C5D71A87E2F741EF8C1FE86FEA6BBFDE530677F0D97D11D49F7A8443D"
    "0822E506A9F4614E011E2A94838FF88CD68C8BB7C5C6424CFFFFFFFFFFFFFFFF",
    16,
)

X25519 = MontgomeryGroup(0x001D, "x25519", 32)
X448 = MontgomeryGroup(0x001E, "x448", 56)
SECP256R1 = ECGroup(0x0017, "secp256r1", ec.SECP256R1())
SECP384R1 = ECGroup(0x0018, "secp384r1", ec.SECP384R1())
SECP521R1 = ECGroup(0x0019, "secp521r1", ec.SECP521R1())
FFDHE2048 = FFDHGroup(0x0100, "ffdhe2048", _FFDHE2048_P)
FFDHE3072 = FFDHGroup(0x0101, "ffdhe3072", _FFDHE3072_P)
FFDHE4096 = FFDHGroup(0x0102, "ffdhe4096", _FFDHE4096_P)
FFDHE6144 = FFDHGroup(0x0103, "ffdhe6144", _FFDHE6144_P)
FFDHE8192 = FFDHGroup(0x0104, "ffdhe8192", _FFDHE8192_P)
SECP256R1MLKEM768 = HybridGroup(0x11EB, "SecP256r1MLKEM768", SECP256R1, _MLKEM768, kem_first=False)
X25519MLKEM768 = HybridGroup(0x11EC, "X25519MLKEM768", X25519, _MLKEM768, kem_first=True)
SECP384R1MLKEM1024 = HybridGroup(
    0x11ED, "SecP384r1MLKEM1024", SECP384R1, _MLKEM1024, kem_first=False
)

_ALL: tuple[Group, ...] = (
    X25519MLKEM768,
    SECP256R1MLKEM768,
    SECP384R1MLKEM1024,
    X25519,
    SECP256R1,
    X448,
    SECP384R1,
    SECP521R1,
    FFDHE2048,
    FFDHE3072,
    FFDHE4096,
    FFDHE6144,
    FFDHE8192,
)

GROUPS: dict[int, Group] = {g.code: g for g in _ALL}
BY_NAME: dict[str, int] = {g.name: g.code for g in _ALL}

#: A sensible server/client preference order: hybrid PQ first, then fast ECDHE.
DEFAULT_GROUPS: tuple[int, ...] = (
    X25519MLKEM768.code,
    X25519.code,
    SECP256R1.code,
    SECP384R1.code,
    X448.code,
    SECP521R1.code,
    FFDHE2048.code,
    FFDHE3072.code,
)


def group_name(code: int) -> str:
    """IANA name of a group code (for events and logs); unknown codes are shown in hex."""
    group = GROUPS.get(code)
    return group.name if group else f"0x{code:04X}"
