"""Session tickets: state encoding, sealing/opening, rotation, key files, expiry, anti-replay."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tls13.tickets import (
    KEY_RECORD_LEN,
    ReplayRegister,
    SessionState,
    SessionTicket,
    TicketKeyring,
)

STATE = SessionState(
    psk=b"p" * 32,
    suite=0x1301,
    created=1_700_000_000_000,
    age_add=0xDEADBEEF,
    lifetime=3600,
    max_early_data=16384,
    alpn="h2",
    sni="www.example.com",
    client_chain=(b"\x30\x03leaf", b"\x30\x03ca"),
    issuer=b"instance-7",
)


def test_state_round_trip() -> None:
    assert SessionState.decode(STATE.encode()) == STATE
    minimal = SessionState(psk=b"k" * 48, suite=0x1302, created=0, age_add=0)
    assert SessionState.decode(minimal.encode()) == minimal
    assert minimal.alpn is None and minimal.sni is None and minimal.client_chain == ()


@pytest.mark.parametrize("cut", [0, 1, 10, 30])
def test_state_decode_rejects_truncation(cut: int) -> None:
    with pytest.raises(ValueError):
        SessionState.decode(STATE.encode()[:cut])
    with pytest.raises(ValueError):
        SessionState.decode(STATE.encode() + b"\x00")  # trailing bytes
    with pytest.raises(ValueError):
        SessionState.decode(b"\x03" + STATE.encode()[1:])  # unknown version


def test_state_format_1_without_issuer_still_decodes() -> None:
    # Tickets sealed before the issuer field (format 1) keep resuming after an upgrade.
    current = STATE.encode()
    assert current[0] == 2 and current.endswith(b"\x0ainstance-7")
    old = b"\x01" + current[1 : -len(b"\x0ainstance-7")]
    assert SessionState.decode(old) == replace(STATE, issuer=b"")
    with pytest.raises(ValueError):
        SessionState.decode(old + b"\x00")  # format 1 has no issuer field


def test_seal_open_and_tamper() -> None:
    ring = TicketKeyring.generate()
    ticket = ring.seal_state(STATE)
    assert ticket[:16] == ring.current_name
    assert STATE.psk not in ticket  # encrypted, not merely authenticated
    assert ring.open_state(ticket) == STATE
    for pos in (0, 16, 30, len(ticket) - 1):
        forged = bytearray(ticket)
        forged[pos] ^= 0x40
        assert ring.open(bytes(forged)) is None
    assert ring.open(ticket[:-1]) is None
    assert ring.open(b"") is None
    assert TicketKeyring.generate().open(ticket) is None  # unknown key name


def test_rotation_keeps_previous_key_only() -> None:
    ring = TicketKeyring.generate()
    first = ring.seal(b"one")
    ring.rotate()
    second = ring.seal(b"two")
    assert first[:16] != second[:16]
    assert ring.open(first) == b"one" and ring.open(second) == b"two"
    ring.rotate()
    assert ring.open(first) is None  # two rotations ago: gone
    assert ring.open(second) == b"two"
    assert len(ring.names) == 2


def test_injected_random_is_used() -> None:
    counter = iter(range(1_000_000))

    def random(n: int) -> bytes:
        return bytes([next(counter) % 256]) * n

    ring = TicketKeyring.generate(random)
    a = ring.seal(b"x", lambda n: b"\x07" * n)
    b = ring.seal(b"x", lambda n: b"\x07" * n)
    assert a == b  # same key, same nonce, same state


def test_key_file_round_trip(tmp_path: Path) -> None:
    ring = TicketKeyring.generate()
    ring.rotate()
    path = tmp_path / "ticket.key"
    ring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    assert len(data) == 2 * KEY_RECORD_LEN
    assert data[:16] == ring.current_name  # first record is the current key
    loaded = TicketKeyring.load(path)
    assert loaded.names == ring.names
    ticket = ring.seal(b"shared")
    assert loaded.open(ticket) == b"shared"


def test_key_file_written_by_hand(tmp_path: Path) -> None:
    """`head -c 96 /dev/urandom`: two records, the first seals."""
    raw = os.urandom(2 * KEY_RECORD_LEN)
    ring = TicketKeyring.from_bytes(raw)
    assert ring.current_name == raw[:16] and ring.names[1] == raw[48:64]
    with pytest.raises(ValueError):
        TicketKeyring.from_bytes(raw[:-1])
    with pytest.raises(ValueError):
        TicketKeyring.from_bytes(b"")
    with pytest.raises(ValueError):
        TicketKeyring.from_bytes(raw[:48] * 2)  # duplicate key name


def test_expiry_and_ticket_age() -> None:
    created = STATE.created
    assert not STATE.expired(created)
    assert not STATE.expired(created + 3600 * 1000)
    assert STATE.expired(created + 3600 * 1000 + 1)
    assert STATE.expired(created - 10_000)  # issued "in the future": clock trouble
    client_age = 5000
    obfuscated = (client_age + STATE.age_add) & 0xFFFFFFFF
    assert STATE.client_age_ms(obfuscated) == client_age
    assert STATE.age_is_fresh(obfuscated, created + 5200, tolerance_ms=1000)
    assert not STATE.age_is_fresh(obfuscated, created + 60_000, tolerance_ms=1000)
    week = SessionState(psk=b"k" * 32, suite=0x1301, created=0, age_add=0, lifetime=10**7)
    assert week.expired(604800 * 1000 + 1)  # §4.6.1 caps lifetimes at seven days


def test_client_session_ticket() -> None:
    ticket = SessionTicket(
        ticket=b"t", psk=b"p" * 32, cipher_suite=0x1301, lifetime=60, age_add=10, received_at=100.0
    )
    assert ticket.obfuscated_age(101.5) == 1510
    assert ticket.usable(160.0) and not ticket.usable(160.5) and not ticket.usable(99.0)
    wrap = SessionTicket(b"t", b"p", 0x1301, 60, 0xFFFFFFFF, 0.0)
    assert wrap.obfuscated_age(0.002) == 1


def test_replay_register() -> None:
    reg = ReplayRegister(window_seconds=10, max_entries=3)
    assert reg.check_and_add(b"a", 0.0)
    assert not reg.check_and_add(b"a", 1.0)  # replay
    assert reg.check_and_add(b"b", 2.0) and reg.check_and_add(b"c", 3.0)
    assert not reg.check_and_add(b"d", 4.0)  # full: refuse rather than forget
    assert reg.check_and_add(b"d", 10.5)  # "a" expired, room again
    assert len(reg) == 3
    assert not reg.check_and_add(b"e", 10.6)  # b, c, d still fresh: full again
    assert reg.check_and_add(b"a", 12.5)  # "a" was forgotten only after its window
    with pytest.raises(ValueError):
        ReplayRegister(0, 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_open_never_raises(ticket: bytes) -> None:
    ring = TicketKeyring([(b"n" * 16, b"k" * 32)])
    assert ring.open(ticket) is None
    assert ring.open_state(b"n" * 16 + ticket) is None
