"""Session tickets (RFC 8446 §4.6.1) and 0-RTT anti-replay (§8).

Server side
    :class:`SessionState` is what a ticket remembers (PSK, suite, ALPN, SNI, …);
    :class:`TicketKeyring` seals it into an opaque, self-authenticating ticket
    with a session ticket encryption key (STEK) and opens tickets again, under
    the current key or the previous ones (rotation).  :class:`ReplayRegister`
    is a bounded strike register that admits each 0-RTT ClientHello once.

Client side
    :class:`SessionTicket` is a received NewSessionTicket plus the PSK derived
    from it, ready to offer in a later ClientHello.

Ticket layout (all ours, opaque to clients)::

    key_name[16] || nonce[12] || AES-256-GCM(key, nonce, state, aad=key_name) (+16 tag)

Key file format (``TicketKeyring.load`` / ``save``), like nginx's
``ssl_session_ticket_key`` but with one AEAD key: the file is N >= 1 records of
exactly 48 bytes, each a 16-byte key name followed by a 32-byte AES-256-GCM
key; the **first record is the current key** (used to seal), the others are
still accepted when opening.  Several servers sharing one file accept each
other's tickets.  Generate one with ``head -c 48 /dev/urandom > ticket.key``.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .alerts import TLSError
from .codec import Reader

Random = Callable[[int], bytes]

KEY_NAME_LEN = 16
KEY_LEN = 32
KEY_RECORD_LEN = KEY_NAME_LEN + KEY_LEN
_NONCE_LEN = 12
_TAG_LEN = 16
_OVERHEAD = KEY_NAME_LEN + _NONCE_LEN + _TAG_LEN
# Sealed state format: 1 = without issuer (still opened: such tickets resume, never 0-RTT),
# 2 = with the issuing instance's id appended.
_STATE_VERSION = 2
_STATE_VERSION_NO_ISSUER = 1
MAX_TICKET_LIFETIME = 604800  # §4.6.1: at most seven days
# version, suite, created (ms), age_add, lifetime, max_early_data
_STATE_FIXED = struct.Struct(">BHQIII")


def _text(raw: object) -> str | None:
    """Decode an optional UTF-8 string field (empty means absent)."""
    if not isinstance(raw, bytes):
        raise ValueError("expected bytes")
    return raw.decode("utf-8") or None


# --- what a ticket remembers -----------------------------------------------------------------


@dataclass(frozen=True)
class SessionState:
    """The server's memory of a session, sealed inside the ticket it issued.

    ``created`` is in milliseconds (the server clock when the ticket was issued),
    ``lifetime`` in seconds; ``client_chain`` holds the DER certificates the
    client authenticated with (leaf first), empty when it did not. ``issuer`` is
    the ``ServerConfig.instance_id`` of the server that issued the ticket: only
    that instance accepts its 0-RTT, because only its strike register saw it.
    """

    psk: bytes
    suite: int
    created: int
    age_add: int
    lifetime: int = 7200
    max_early_data: int = 0
    alpn: str | None = None
    sni: str | None = None
    client_chain: tuple[bytes, ...] = ()
    issuer: bytes = b""

    def encode(self) -> bytes:
        alpn = (self.alpn or "").encode("utf-8")
        sni = (self.sni or "").encode("utf-8")
        psk, issuer = self.psk, self.issuer
        if max(len(psk), len(alpn), len(issuer)) > 0xFF or len(sni) > 0xFFFF:
            raise ValueError("vector too long for its length prefix")
        chain = b"".join(len(der).to_bytes(3, "big") + der for der in self.client_chain)
        if len(chain) > 0xFFFFFF:
            raise ValueError("vector too long for its length prefix")
        fixed = _STATE_FIXED.pack(
            _STATE_VERSION, self.suite, self.created, self.age_add, self.lifetime,
            self.max_early_data,
        )  # fmt: skip
        return b"".join(
            (
                fixed,
                bytes((len(psk),)),
                psk,
                bytes((len(alpn),)),
                alpn,
                len(sni).to_bytes(2, "big"),
                sni,
                len(chain).to_bytes(3, "big"),
                chain,
                bytes((len(issuer),)),
                issuer,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> SessionState:
        """Parse :meth:`encode` output; raises ``ValueError`` on anything else."""
        try:
            if len(data) < _STATE_FIXED.size:
                raise ValueError("truncated session state")
            version, suite, created, age_add, lifetime, max_early = _STATE_FIXED.unpack_from(data)
            if version not in (_STATE_VERSION, _STATE_VERSION_NO_ISSUER):
                raise ValueError("unknown session state version")
            r = Reader(data, _STATE_FIXED.size)
            psk = r.vector(1, 1)
            alpn = _text(r.vector(1))
            sni = _text(r.vector(2))
            chain_reader = r.sub(3)
            chain = []
            while not chain_reader.at_end():
                chain.append(chain_reader.vector(3, 1))
            issuer = r.vector(1) if version == _STATE_VERSION else b""
            r.expect_end("session state")
        except (TLSError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed session state: {exc}") from None
        return cls(
            psk, suite, created, age_add, lifetime, max_early, alpn, sni, tuple(chain), issuer
        )

    def expired(self, now_ms: int) -> bool:
        """True once the ticket lifetime has passed (or the clock went backwards a lot)."""
        age = now_ms - self.created
        return age < -1000 or age > min(self.lifetime, MAX_TICKET_LIFETIME) * 1000

    def client_age_ms(self, obfuscated_age: int) -> int:
        """§4.2.11.1: the client's view of the ticket age, un-obfuscated."""
        return (obfuscated_age - self.age_add) & 0xFFFFFFFF

    def age_is_fresh(self, obfuscated_age: int, now_ms: int, tolerance_ms: int) -> bool:
        """§8.3: the client's ticket age must agree with ours within ``tolerance_ms``
        (only then may 0-RTT be accepted)."""
        expected = now_ms - self.created
        return abs(self.client_age_ms(obfuscated_age) - expected) <= tolerance_ms


# --- sealing tickets -------------------------------------------------------------------------


class TicketKeyring:
    """Session ticket encryption keys: ``keys[0]`` seals, every key opens.

    ``rotate()`` puts a fresh key in front and drops the oldest beyond
    ``keep`` (current + previous by default), so tickets issued under the
    previous key stay valid for one more rotation period.
    """

    __slots__ = ("_keys", "_by_name", "keep")

    def __init__(self, keys: Sequence[tuple[bytes, bytes]], keep: int = 2) -> None:
        if not keys:
            raise ValueError("a ticket keyring needs at least one key")
        if keep < 1:
            raise ValueError("keep must be at least 1")
        for name, key in keys:
            if len(name) != KEY_NAME_LEN or len(key) != KEY_LEN:
                raise ValueError("ticket keys are a 16-byte name and a 32-byte key")
        self.keep = keep
        self._keys: list[tuple[bytes, bytes]] = []  # (name, key), current first
        self._by_name: dict[bytes, AESGCM] = {}
        for name, key in keys:
            self._add(name, key, front=False)

    @classmethod
    def generate(cls, random: Random = os.urandom, keep: int = 2) -> TicketKeyring:
        return cls([(random(KEY_NAME_LEN), random(KEY_LEN))], keep)

    def _add(self, name: bytes, key: bytes, front: bool) -> None:
        if name in self._by_name:
            raise ValueError("duplicate ticket key name")
        self._keys.insert(0 if front else len(self._keys), (name, key))
        self._by_name[name] = AESGCM(key)

    @property
    def current_name(self) -> bytes:
        return self._keys[0][0]

    @property
    def names(self) -> tuple[bytes, ...]:
        return tuple(name for name, _ in self._keys)

    def rotate(self, random: Random = os.urandom) -> None:
        """Start sealing with a fresh key; keep the last ``keep - 1`` keys for opening."""
        self._add(random(KEY_NAME_LEN), random(KEY_LEN), front=True)
        while len(self._keys) > self.keep:
            name, _ = self._keys.pop()
            del self._by_name[name]

    def seal(self, state: bytes, random: Random = os.urandom) -> bytes:
        """Encrypt and authenticate ``state`` under the current key."""
        name = self._keys[0][0]
        nonce = random(_NONCE_LEN)
        return name + nonce + self._by_name[name].encrypt(nonce, state, name)

    def open(self, ticket: bytes) -> bytes | None:
        """The state sealed in ``ticket``; None for an unknown key or a forged ticket."""
        if len(ticket) < _OVERHEAD:
            return None
        name = bytes(ticket[:KEY_NAME_LEN])
        aead = self._by_name.get(name)
        if aead is None:
            return None
        nonce = ticket[KEY_NAME_LEN : KEY_NAME_LEN + _NONCE_LEN]
        try:
            return aead.decrypt(nonce, ticket[KEY_NAME_LEN + _NONCE_LEN :], name)
        except InvalidTag:
            return None

    def seal_state(self, state: SessionState, random: Random = os.urandom) -> bytes:
        return self.seal(state.encode(), random)

    def open_state(self, ticket: bytes) -> SessionState | None:
        """Open and decode in one step; any failure means "no usable session" (None)."""
        data = self.open(ticket)
        if data is None:
            return None
        try:
            return SessionState.decode(data)
        except ValueError:
            return None

    # --- key files ---------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, keep: int | None = None) -> TicketKeyring:
        """Parse the key file format described in the module docstring."""
        if not data or len(data) % KEY_RECORD_LEN:
            raise ValueError(
                f"ticket key data must be a non-empty multiple of {KEY_RECORD_LEN} bytes"
            )
        records = [data[i : i + KEY_RECORD_LEN] for i in range(0, len(data), KEY_RECORD_LEN)]
        keys = [(r[:KEY_NAME_LEN], r[KEY_NAME_LEN:]) for r in records]
        return cls(keys, keep if keep is not None else max(2, len(keys)))

    def to_bytes(self) -> bytes:
        """Key material in file format.  Secret: never log it."""
        return b"".join(name + key for name, key in self._keys)

    @classmethod
    def load(cls, path: str | os.PathLike[str], keep: int | None = None) -> TicketKeyring:
        return cls.from_bytes(Path(path).read_bytes(), keep)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file atomically with mode 0600."""
        target = Path(path)
        # mkstemp creates the file with mode 0600, before any secret is written.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.to_bytes())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --- client side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionTicket:
    """A ticket the client received, with everything needed to resume (§4.6.1, §4.2.11).

    ``received_at`` and ``lifetime`` are in seconds on the client's clock.
    """

    ticket: bytes
    psk: bytes
    cipher_suite: int
    lifetime: int
    age_add: int
    received_at: float
    max_early_data: int = 0
    server_name: str | None = None
    alpn_protocol: str | None = None

    def obfuscated_age(self, now: float) -> int:
        """§4.2.11.1: the ticket age in ms plus age_add, modulo 2^32."""
        return (int((now - self.received_at) * 1000) + self.age_add) & 0xFFFFFFFF

    def usable(self, now: float) -> bool:
        age = now - self.received_at
        return 0 <= age <= min(self.lifetime, MAX_TICKET_LIFETIME)


# --- anti-replay -----------------------------------------------------------------------------


class ReplayRegister:
    """A strike register for 0-RTT (RFC 8446 §8.2): each ClientHello identity (e.g. its
    PSK binder) is admitted once within ``window_seconds``.

    Memory is bounded by ``max_entries``; when full of unexpired entries the
    register refuses (0-RTT falls back to 1-RTT) rather than forget too early.
    """

    __slots__ = ("window", "max_entries", "_seen")

    def __init__(self, window_seconds: float, max_entries: int) -> None:
        if window_seconds <= 0 or max_entries < 1:
            raise ValueError("window_seconds and max_entries must be positive")
        self.window = window_seconds
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        seen = self._seen
        while seen:
            key, stamp = next(iter(seen.items()))
            if stamp > horizon:
                break
            seen.popitem(last=False)

    def check_and_add(self, key: bytes, now: float) -> bool:
        """True exactly once per ``key`` within the window; False for a replay or when full."""
        self._expire(now)
        if key in self._seen:
            return False
        if len(self._seen) >= self.max_entries:
            return False
        self._seen[bytes(key)] = now
        return True
