"""Replay every fuzz corpus file and crash regression through its target.

A target raises ``fuzz.targets.Crash`` for anything but a well-judged
``TLSError`` (an internal_error counts as a crash), so each replay must simply
return.  The seed corpus was recorded from real clients and servers against a
deterministic engine: the tests below also pin that those recordings still
reach the end of the handshake, or the corpus would silently stop exercising
the deep states.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_helpers import FUZZ_DIR, TARGETS, input_files

from fuzz import targets
from tls13 import events

pytestmark = pytest.mark.timeout(120)

CASES = [(name, path) for name in TARGETS for path in input_files(name)]


@pytest.mark.parametrize(
    ("target", "path"), CASES, ids=[f"{t}/{p.parent.parent.name}/{p.name}" for t, p in CASES]
)
def test_replay_without_crash(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def test_corpus_is_small_and_present() -> None:
    sizes = [p.stat().st_size for name in TARGETS for p in input_files(name)]
    assert len(sizes) >= 20
    assert sum(sizes) < 2 * 1024 * 1024


@pytest.mark.parametrize(
    "path",
    sorted(
        [
            *(FUZZ_DIR / "corpus" / "server").glob("real-*"),
            *(FUZZ_DIR / "corpus" / "server").glob("own-*"),
        ]
    ),
    ids=lambda p: p.name,
)
def test_recorded_client_flights_complete_the_handshake(path: Path) -> None:
    seen = targets.run_server(path.read_bytes())
    assert any(isinstance(e, events.HandshakeComplete) for e in seen), seen
    assert any(isinstance(e, events.ConnectionClosed) for e in seen), seen


@pytest.mark.parametrize(
    "path", sorted((FUZZ_DIR / "corpus" / "server_variants").iterdir()), ids=lambda p: p.name
)
def test_recorded_variant_flights_complete_the_handshake(path: Path) -> None:
    seen = targets.run_server_variants(path.read_bytes())
    assert any(isinstance(e, events.HandshakeComplete) for e in seen), seen


def test_variant_seeds_reach_their_feature() -> None:
    def info(name: str) -> events.HandshakeComplete:
        seen = targets.run_server_variants(
            (FUZZ_DIR / "corpus/server_variants" / name).read_bytes()
        )
        return next(e for e in seen if isinstance(e, events.HandshakeComplete))

    assert info("real-openssl-stateless-hrr").hello_retry
    psk_ke = info("real-openssl-psk-ke-resume")
    assert psk_ke.resumed and psk_ke.group is None  # no (EC)DHE: RFC 8446 §4.2.9 psk_ke
    assert info("real-openssl-client-auth-required").client_identity is not None


def test_recorded_0rtt_flight_is_accepted() -> None:
    seen = targets.run_server((FUZZ_DIR / "corpus/server/real-openssl-resume-0rtt").read_bytes())
    complete = [e for e in seen if isinstance(e, events.HandshakeComplete)]
    assert complete and complete[0].resumed and complete[0].early_data_accepted
    assert any(isinstance(e, events.EarlyData) for e in seen)


def test_recorded_server_flights_complete_the_client() -> None:
    for path in sorted((FUZZ_DIR / "corpus" / "client").iterdir()):
        seen = targets.run_client(path.read_bytes())
        assert any(isinstance(e, events.HandshakeComplete) for e in seen), path.name


def test_recorded_resumption_flights_reach_their_outcome() -> None:
    def info(name: str) -> tuple[events.HandshakeComplete, list[events.Event]]:
        seen = targets.run_client_resumed((FUZZ_DIR / "corpus/client_resumed" / name).read_bytes())
        return next(e for e in seen if isinstance(e, events.HandshakeComplete)), seen

    accepted, _ = info("resumed-0rtt")
    assert accepted.resumed and accepted.early_data_accepted
    declined, seen = info("resumed-0rtt-declined")
    assert declined.resumed and not declined.early_data_accepted
    assert any(isinstance(e, events.EarlyDataRejected) for e in seen)
    retried, _ = info("resumed-hrr")
    assert retried.resumed and retried.hello_retry


def test_resumption_ticket_is_reproducible() -> None:
    """The client_resumed corpus needs the same ticket and PSK in every process."""
    ticket = targets.resumption_ticket()
    assert ticket.max_early_data > 0 and ticket.alpn_protocol == "h2"
    code = (
        "import sys; sys.path.insert(0, '.'); from fuzz import targets; "
        "t = targets.resumption_ticket(); print((t.psk + t.ticket).hex())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=FUZZ_DIR.parent, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert other.stdout.strip() == (ticket.psk + ticket.ticket).hex()


def test_chunking_covers_every_byte() -> None:
    data = bytes([7]) + bytes(range(256)) * 3
    pieces = list(targets.chunks(data))
    assert b"".join(pieces) == data[1:]
    assert len(pieces) > 10 and max(map(len, pieces)) <= 7 * 8


def test_record_by_record_chunking() -> None:
    records = b"\x16\x03\x01\x00\x02ab" + b"\x17\x03\x03\x00\x01c" + b"\x15\x03"
    assert list(targets.chunks(b"\xff" + records)) == [
        b"\x16\x03\x01\x00\x02ab",
        b"\x17\x03\x03\x00\x01c",
        b"\x15\x03",
    ]


def test_recorded_post_handshake_auth_completes() -> None:
    path = FUZZ_DIR / "corpus/server/own-client-post-handshake-auth"
    seen = targets.run_server(path.read_bytes())
    received = [e for e in seen if isinstance(e, events.ClientCertificateReceived)]
    assert received and received[0].identity is not None
    assert any(isinstance(e, events.KeyUpdated) for e in seen)


def test_a_bug_is_reported_as_crash() -> None:
    """The harness must flag an internal_error: otherwise no finding could ever fail."""

    class Broken:
        handshake_complete = False

        def receive_data(self, data: bytes) -> list[events.Event]:
            from tls13.alerts import AlertDescription, TLSError

            raise TLSError(AlertDescription.internal_error, "KeyError: boom")

        def data_to_send(self) -> bytes:
            return b""

    with pytest.raises(targets.Crash):
        targets.drive(Broken(), b"\x00abc")  # type: ignore[arg-type]


def test_a_non_tls_exception_is_reported_as_crash() -> None:
    class Exploding:
        handshake_complete = False

        def receive_data(self, data: bytes) -> list[events.Event]:
            raise IndexError("out of range")

        def data_to_send(self) -> bytes:
            return b""

    with pytest.raises(targets.Crash):
        targets.drive(Exploding(), b"\x00abc")  # type: ignore[arg-type]
