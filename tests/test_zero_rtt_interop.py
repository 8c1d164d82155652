"""Issue 3: 0-RTT with real peers and our ServerConnection (and our client against s_server).

Accepted when the server allows it (s_client prints "Early data was accepted"
and the server sees an EarlyData event; gnutls-cli --earlydata too); rejected,
with the handshake still completing, when 0-RTT is off or a HelloRetryRequest
intervenes; and a replay of a real client's recorded ClientHello + early data
is refused (RFC 8446 §8.2).  Our client reusing a ticket for 0-RTT is declined
by s_server's anti-replay and resends after the handshake.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from engine_helpers import EngineServer, run_client, store_for
from interop_helpers import (
    Pki,
    RecordingRelay,
    ServerProcess,
    first_flight,
    make_pki,
    s_client,
    send_raw,
)
from msg_helpers import SocketClient, start_openssl_server

from tls13 import events
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.events import NewSessionTicketReceived
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.tickets import SessionTicket, TicketKeyring

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]

EARLY = b"GET /zero-rtt\n"
MAX_EARLY = 16384


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("zero-rtt-pki"))


@pytest.fixture
def early_file(tmp_path: Path) -> Path:
    path = tmp_path / "early.txt"
    path.write_bytes(EARLY)
    return path


def config_for(pki: Pki, keyring: TicketKeyring, max_early_data: int) -> ServerConfig:
    store = store_for([(pki.server_chain.read_bytes(), pki.server_key.read_bytes())])
    return ServerConfig(certificates=store, ticket_keys=keyring, max_early_data=max_early_data)


@pytest.fixture
def zero_rtt_server(pki: Pki) -> Iterator[EngineServer]:
    with EngineServer(config_for(pki, TicketKeyring.generate(), MAX_EARLY)) as srv:
        yield srv


def store_session(port: int, pki: Pki, session: Path) -> None:
    run = run_client(s_client(port, pki.ca_file, "-sess_out", str(session)), [b"one\n"])
    assert "Max Early Data: 16384" in run.stdout  # the ticket allows 0-RTT
    assert session.stat().st_size > 0


def early_data_run(port: int, pki: Pki, session: Path, early: Path) -> str:
    argv = s_client(port, pki.ca_file, "-sess_in", str(session), "-early_data", str(early))
    run = run_client(argv, [b"late\n"])
    assert "late" in run.stdout
    return run.stdout


def early_data_of(record_events: list[events.Event]) -> bytes:
    return b"".join(e.data for e in record_events if isinstance(e, events.EarlyData))


def test_early_data_accepted(
    zero_rtt_server: EngineServer, pki: Pki, tmp_path: Path, early_file: Path
) -> None:
    session = tmp_path / "session.pem"
    store_session(zero_rtt_server.port, pki, session)
    stdout = early_data_run(zero_rtt_server.port, pki, session, early_file)
    assert "Reused, TLSv1.3" in stdout and "Early data was accepted" in stdout
    _, second = zero_rtt_server.wait_for(2)
    assert second.error is None and second.info is not None
    assert second.info.resumed and second.info.early_data_accepted
    assert early_data_of(second.events) == EARLY
    # 0-RTT data comes before the handshake completes, 1-RTT data after it.
    kinds = [type(e) for e in second.events]
    assert kinds.index(events.EarlyData) < kinds.index(events.HandshakeComplete)
    assert bytes(second.received) == b"late\n"


def test_early_data_rejected_when_zero_rtt_is_off(
    pki: Pki, tmp_path: Path, early_file: Path
) -> None:
    # Same ticket keys, but the serving configuration has 0-RTT off (max_early_data 0),
    # as after a configuration change: the ticket still resumes, 0-RTT is declined.
    keyring = TicketKeyring.generate()
    session = tmp_path / "session.pem"
    with EngineServer(config_for(pki, keyring, MAX_EARLY)) as issuer:
        store_session(issuer.port, pki, session)
    with EngineServer(config_for(pki, keyring, 0)) as server:
        stdout = early_data_run(server.port, pki, session, early_file)
        (record,) = server.wait_for(1)
    assert "Early data was rejected" in stdout and "Reused, TLSv1.3" in stdout
    assert record.error is None and record.info is not None
    assert record.info.resumed and not record.info.early_data_accepted
    assert early_data_of(record.events) == b""
    assert bytes(record.received) == b"late\n"  # the handshake completed; 1-RTT data flows


def test_early_data_not_offered_for_a_ticket_without_it(
    pki: Pki, tmp_path: Path, early_file: Path
) -> None:
    # A server with 0-RTT off issues tickets without the early_data extension (§4.6.1),
    # so s_client does not even try.
    with EngineServer(config_for(pki, TicketKeyring.generate(), 0)) as server:
        session = tmp_path / "session.pem"
        run = run_client(s_client(server.port, pki.ca_file, "-sess_out", str(session)), [b"x\n"])
        assert "Max Early Data: 0" in run.stdout
        stdout = early_data_run(server.port, pki, session, early_file)
        _, second = server.wait_for(2)
    assert "Early data was not sent" in stdout
    assert second.info is not None and second.info.resumed
    assert not any(
        isinstance(e, events.ClientHelloReceived) and e.offered_early_data for e in second.events
    )


def test_replayed_client_hello_and_early_data_are_refused(
    zero_rtt_server: EngineServer, pki: Pki, tmp_path: Path, early_file: Path
) -> None:
    session = tmp_path / "session.pem"
    store_session(zero_rtt_server.port, pki, session)
    with RecordingRelay(zero_rtt_server.port) as relay:
        stdout = early_data_run(relay.port, pki, session, early_file)
    assert "Early data was accepted" in stdout
    # The attacker's copy: everything up to the end of the early data (the records
    # before the client's second flight: ClientHello, CCS, 0-RTT application data).
    captured = first_flight(bytes(relay.from_client))
    answer = send_raw(zero_rtt_server.port, captured)
    assert answer  # the server still answers the (valid) ClientHello with 1-RTT keys
    _, original, replay = zero_rtt_server.wait_for(3)
    assert early_data_of(original.events) == EARLY
    assert early_data_of(replay.events) == b""
    hello = next(e for e in replay.events if isinstance(e, events.ClientHelloReceived))
    assert hello.offered_early_data
    assert replay.info is None  # the replayer cannot finish the handshake


def test_early_data_rejected_by_a_hello_retry(pki: Pki, tmp_path: Path, early_file: Path) -> None:
    # We only take P-384 and s_client sends its first share for X25519: the retry
    # ends 0-RTT (RFC 8446 §4.2.10) and we skip its early records (§4.2.10, D.3).
    keyring = TicketKeyring.generate()
    store = store_for([(pki.server_chain.read_bytes(), pki.server_key.read_bytes())])
    config = ServerConfig(
        certificates=store,
        ticket_keys=keyring,
        max_early_data=MAX_EARLY,
        groups=(GROUP_CODES["secp384r1"],),
    )
    session = tmp_path / "session.pem"
    with EngineServer(config) as server:
        store_session(server.port, pki, session)
        argv = s_client(server.port, pki.ca_file, "-sess_in", str(session))
        argv += ["-early_data", str(early_file), "-groups", "X25519:P-384"]
        run = run_client(argv, [b"late\n"])
        _, second = server.wait_for(2)
    assert "Early data was rejected" in run.stdout and "Reused, TLSv1.3" in run.stdout
    assert second.error is None and second.info is not None
    assert second.info.hello_retry and second.info.resumed
    assert not second.info.early_data_accepted and early_data_of(second.events) == b""
    assert bytes(second.received) == b"late\n"


# ----------------------------------------------------------------------------- our client


def _client(pki: Pki, session: SessionTicket | None = None) -> ClientConnection:
    return ClientConnection(
        ClientConfig(ca_certificates=(pki.ca.cert,)), server_name="localhost", session=session
    )


def test_our_client_reusing_a_ticket_is_refused_by_openssl_anti_replay(
    pki: Pki, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # s_server (anti-replay on by default) takes 0-RTT once per ticket; the second
    # attempt is declined, and our client must finish the handshake and resend.
    port, output = free_port(), tmp_path / "received"
    with output.open("wb") as sink:
        extra = ["-early_data", "-max_early_data", "16384", "-num_tickets", "1"]
        process = start_openssl_server(
            port,
            str(pki.server_chain),
            str(pki.server_key),
            extra,
            mode="",
            naccept=4,
            stdout=sink,
        )
    processes.append(process)
    ticket = _fetch_ticket(pki, port)
    first = _early_connection(pki, port, ticket, b"first early\n", b"first late\n")
    assert first.early_data_accepted and first.resumed
    again = _early_connection(pki, port, ticket, b"reused early\n", b"resent\n")
    assert not again.early_data_accepted
    process.wait(timeout=20)  # naccept reached: s_server flushes and exits
    received = output.read_bytes()
    assert b"first early\n" in received and b"first late\n" in received
    assert b"resent\n" in received and b"reused early" not in received


def _fetch_ticket(pki: Pki, port: int) -> SessionTicket:
    client = SocketClient(_client(pki), port)
    try:
        client.handshake()
        client.until(lambda: any(isinstance(e, NewSessionTicketReceived) for e in client.events))
        client.conn.close()
        client.flush()
    finally:
        client.close()
    return next(e.ticket for e in client.events if isinstance(e, NewSessionTicketReceived))


def _early_connection(
    pki: Pki, port: int, ticket: SessionTicket, early: bytes, late: bytes
) -> events.HandshakeComplete:
    connection = _client(pki, ticket)
    client = SocketClient(connection, port)
    try:
        connection.start()
        connection.send_early_data(early)
        client.until(lambda: connection.handshake_complete)
        info = connection.info
        assert info is not None
        rejected = any(isinstance(e, events.EarlyDataRejected) for e in client.events)
        assert rejected != info.early_data_accepted
        connection.send_data(late)
        connection.close()
        client.flush()
    finally:
        client.close()
    return info


# ----------------------------------------------------------------------------- gnutls-cli


@pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="gnutls-cli missing")
def test_gnutls_early_data_accepted(
    zero_rtt_server: EngineServer, pki: Pki, early_file: Path
) -> None:
    argv = ["gnutls-cli", "--port", str(zero_rtt_server.port), "--x509cafile", str(pki.ca_file)]
    argv += ["--sni-hostname", "localhost", "--verify-hostname", "localhost"]
    argv += ["--resume", "--earlydata", str(early_file), "127.0.0.1"]
    run_client(argv, [b"late\n"], wait_for=b"This is a resumed session")
    first, second = zero_rtt_server.wait_for(2)
    assert first.info is not None and not first.info.resumed
    assert early_data_of(first.events) == b""
    assert second.error is None and second.info is not None
    assert second.info.resumed and second.info.early_data_accepted
    assert early_data_of(second.events) == EARLY
    assert bytes(second.received) == b"late\n"


def test_same_session_file_twice_gets_early_data_once(pki: Pki, tmp_path: Path) -> None:
    """Review R20: ``s_client -sess_in S -early_data F`` twice: the ticket's 0-RTT is
    single-use (RFC 8446 §8.1), the second run resumes with early data rejected."""
    early = tmp_path / "early.txt"
    early.write_bytes(EARLY)
    session = tmp_path / "session.pem"
    with EngineServer(config_for(pki, TicketKeyring.generate(), MAX_EARLY)) as server:
        store_session(server.port, pki, session)
        first = early_data_run(server.port, pki, session, early)
        second = early_data_run(server.port, pki, session, early)
        _, one, two = server.wait_for(3)
    assert "Early data was accepted" in first and early_data_of(one.events) == EARLY
    assert "Early data was rejected" in second and early_data_of(two.events) == b""


def test_replay_to_another_process_sharing_the_key_file(pki: Pki, tmp_path: Path) -> None:
    """Review R22: a recorded first flight replayed to another process that shares the
    ticket key file (but not the strike register) resumes without its early data."""
    early = tmp_path / "early.txt"
    early.write_bytes(EARLY)
    keys = tmp_path / "ticket.keys"
    TicketKeyring.generate().save(keys)
    args = ("--chain", str(pki.server_chain), "--key", str(pki.server_key))
    args += ("--ticket-keys", str(keys), "--max-early-data", str(MAX_EARLY))
    session = tmp_path / "session.pem"
    with ServerProcess(*args) as a, ServerProcess(*args) as b:
        store_session(a.port, pki, session)
        with RecordingRelay(a.port) as relay:
            assert "Early data was accepted" in early_data_run(relay.port, pki, session, early)
        send_raw(b.port, first_flight(bytes(relay.from_client)))
        _, original = a.connections(2)
        (replay,) = b.connections(1)
    assert original["early_data"] == EARLY.decode()
    assert replay["early_data"] == ""
