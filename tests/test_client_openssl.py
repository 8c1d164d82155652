"""Our client against ``openssl s_server -tls1_3`` on loopback: every cipher suite and
group OpenSSL offers, HelloRetryRequest, client certificates, and data both ways."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Issued, make_ca, make_leaf, write_pair
from conftest import free_port
from msg_helpers import SocketClient, start_openssl_server

from tls13 import events
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain
from tls13.client import ClientConnection
from tls13.config import ClientConfig
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.suites import BY_NAME as SUITE_CODES

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed"),
    pytest.mark.timeout(60),
]

OPENSSL_SUITES = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
]
# Our group name -> OpenSSL's name for it (OpenSSL 3.0 has no ML-KEM hybrids).
OPENSSL_GROUPS = {
    "x25519": "X25519",
    "x448": "X448",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
    "ffdhe2048": "ffdhe2048",
    "ffdhe3072": "ffdhe3072",
    "ffdhe4096": "ffdhe4096",
    "ffdhe6144": "ffdhe6144",
    "ffdhe8192": "ffdhe8192",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("openssl-pki")
    ca = make_ca()
    server = make_leaf(ca, ("localhost", "127.0.0.1"))
    rsa_server = make_leaf(ca, ("localhost",), kind="rsa2048")
    client = make_leaf(ca, ("client.example",), client=True)
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.cert_pem())
    cert, key = write_pair(directory, "server", server)
    rsa_cert, rsa_key = write_pair(directory, "rsa", rsa_server)
    return {
        "ca": ca,
        "ca_path": ca_path,
        "cert": cert,
        "key": key,
        "rsa_cert": rsa_cert,
        "rsa_key": rsa_key,
        "client": client,
    }


@pytest.fixture
def openssl(pki: dict[str, object], processes: list[subprocess.Popen[bytes]]) -> Iterator[object]:
    """A factory: start an s_server with extra arguments, return its port."""

    def start(*extra: str, mode: str = "-www", rsa: bool = False, naccept: int = 2) -> int:
        port = free_port()
        cert = pki["rsa_cert" if rsa else "cert"]
        key = pki["rsa_key" if rsa else "key"]
        process = start_openssl_server(port, str(cert), str(key), extra, mode=mode, naccept=naccept)
        processes.append(process)
        return port

    yield start


def _client(pki: dict[str, object], **config: object) -> ClientConnection:
    ca = pki["ca"]
    assert isinstance(ca, Issued)
    config.setdefault("ca_certificates", (ca.cert,))
    return ClientConnection(ClientConfig(**config), server_name="localhost")  # type: ignore[arg-type]


def _get_status_page(client: SocketClient) -> bytes:
    client.conn.send_data(b"GET / HTTP/1.0\r\n\r\n")
    return client.read_to_eof()


@pytest.mark.parametrize("suite", OPENSSL_SUITES)
def test_cipher_suites(pki: dict[str, object], openssl: object, suite: str) -> None:
    port = openssl("-ciphersuites", suite)  # type: ignore[operator]
    client = SocketClient(_client(pki, cipher_suites=(SUITE_CODES[suite],)), port)
    try:
        info = client.handshake()
        assert info.cipher_suite == suite
        page = _get_status_page(client)
    finally:
        client.close()
    assert page.startswith(b"HTTP/1.0 200 ok")
    # s_server -www reports the negotiated suite on its status page.
    assert suite.encode() in page


@pytest.mark.parametrize("ours,theirs", sorted(OPENSSL_GROUPS.items()))
def test_groups(pki: dict[str, object], openssl: object, ours: str, theirs: str) -> None:
    code = GROUP_CODES[ours]
    port = openssl("-groups", theirs)  # type: ignore[operator]
    client = SocketClient(_client(pki, groups=(code,), key_share_groups=(code,)), port)
    try:
        info = client.handshake()
        assert info.group == ours and not info.hello_retry
        assert _get_status_page(client).startswith(b"HTTP/1.0 200 ok")
    finally:
        client.close()


def test_hello_retry_request(pki: dict[str, object], openssl: object) -> None:
    port = openssl("-groups", "P-384")  # type: ignore[operator]
    x25519, p384 = GROUP_CODES["x25519"], GROUP_CODES["secp384r1"]
    client = SocketClient(_client(pki, groups=(x25519, p384), key_share_groups=(x25519,)), port)
    try:
        info = client.handshake()
        assert info.hello_retry and info.group == "secp384r1"
        assert _get_status_page(client).startswith(b"HTTP/1.0 200 ok")
    finally:
        client.close()


def test_rsa_server_and_tickets(pki: dict[str, object], openssl: object) -> None:
    port = openssl("-num_tickets", "2", rsa=True)  # type: ignore[operator]
    client = SocketClient(_client(pki), port)
    try:
        info = client.handshake()
        assert info.signature_scheme is not None and info.signature_scheme.startswith("rsa_pss")
        _get_status_page(client)
    finally:
        client.close()
    tickets = [e for e in client.events if isinstance(e, events.NewSessionTicketReceived)]
    assert len(tickets) == 2


def test_echo_and_key_update(pki: dict[str, object], openssl: object) -> None:
    port = openssl(mode="-rev")  # type: ignore[operator]
    client = SocketClient(_client(pki), port)
    try:
        client.handshake()
        client.conn.send_data(b"hello openssl\n")
        client.until(lambda: b"\n" in client.received)
        assert bytes(client.received).startswith(b"hello openssl"[::-1])
        client.received.clear()
        # A KeyUpdate asking openssl to update too; data keeps flowing both ways.
        client.conn.update_keys(request_peer=True)
        client.conn.send_data(b"after update\n")
        client.until(lambda: b"\n" in client.received)
        assert bytes(client.received).startswith(b"after update"[::-1])
        assert any(isinstance(e, events.KeyUpdated) for e in client.events)
        client.conn.close()
        client.flush()
    finally:
        client.close()


def test_client_certificate(pki: dict[str, object], openssl: object) -> None:
    port = openssl("-Verify", "1", "-verifyCAfile", str(pki["ca_path"]), "-verify_return_error")  # type: ignore[operator]
    issued = pki["client"]
    assert isinstance(issued, Issued)
    chain = CertificateChain((issued.cert,), issued.key)  # type: ignore[arg-type]
    client = SocketClient(_client(pki, certificate=chain), port)
    try:
        client.handshake()
        page = _get_status_page(client)
    finally:
        client.close()
    assert page.startswith(b"HTTP/1.0 200 ok")
    assert b"client.example" in page  # s_server shows the verified client certificate


def test_missing_client_certificate(pki: dict[str, object], openssl: object) -> None:
    port = openssl("-Verify", "1", "-verifyCAfile", str(pki["ca_path"]), "-verify_return_error")  # type: ignore[operator]
    client = SocketClient(_client(pki), port)
    try:
        # Our handshake completes before the server judges our (empty) Certificate;
        # its alert then ends the connection.
        client.conn.start()
        with pytest.raises(TLSError) as err:
            client.until(lambda: False)
    finally:
        client.close()
    assert err.value.sent_by_peer
    assert err.value.alert in (
        AlertDescription.certificate_required,
        AlertDescription.handshake_failure,
    )


def test_untrusted_server_is_rejected(pki: dict[str, object], openssl: object) -> None:
    port = openssl()  # type: ignore[operator]
    stranger = make_ca("stranger")
    client = SocketClient(_client(pki, ca_certificates=(stranger.cert,)), port)
    try:
        with pytest.raises(TLSError) as err:
            client.handshake()
    finally:
        client.close()
    assert err.value.alert is AlertDescription.unknown_ca and not err.value.sent_by_peer


def test_wrong_server_name_is_rejected(pki: dict[str, object], openssl: object) -> None:
    port = openssl()  # type: ignore[operator]
    ca = pki["ca"]
    assert isinstance(ca, Issued)
    connection = ClientConnection(
        ClientConfig(ca_certificates=(ca.cert,)), server_name="other.example"
    )
    client = SocketClient(connection, port)
    try:
        with pytest.raises(TLSError) as err:
            client.handshake()
    finally:
        client.close()
    assert err.value.alert in (
        AlertDescription.bad_certificate,
        AlertDescription.certificate_unknown,
    )


# --------------------------------------------------------------------- resumption and 0-RTT


def _first_ticket(pki: dict[str, object], port: int, **config: object) -> object:
    client = SocketClient(_client(pki, **config), port)
    try:
        client.handshake()
        client.conn.send_data(b"first\n")
        client.until(
            lambda: any(isinstance(e, events.NewSessionTicketReceived) for e in client.events)
        )
        client.conn.close()
        client.flush()
    finally:
        client.close()
    ticket = next(e for e in client.events if isinstance(e, events.NewSessionTicketReceived))
    return ticket.ticket


def _early_server(
    pki: dict[str, object],
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    *extra: str,
) -> tuple[int, Path, subprocess.Popen[bytes]]:
    """A plain-mode s_server accepting 0-RTT: it prints what it receives to a file."""
    port = free_port()
    output = tmp_path / "received"
    with output.open("wb") as sink:
        process = start_openssl_server(
            port,
            str(pki["cert"]),
            str(pki["key"]),
            ["-early_data", "-max_early_data", "16384", "-num_tickets", "1", *extra],
            mode="",
            naccept=3,
            stdout=sink,
        )
    processes.append(process)
    return port, output, process


def _finish(client: SocketClient, process: subprocess.Popen[bytes]) -> None:
    client.conn.close()
    client.flush()
    client.close()
    process.wait(timeout=10)  # naccept reached: s_server exits and flushes its output


def test_resumption_with_early_data(
    pki: dict[str, object], processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, output, process = _early_server(pki, processes, tmp_path)
    ticket = _first_ticket(pki, port)
    assert ticket.max_early_data == 16384  # type: ignore[attr-defined]
    connection = ClientConnection(
        ClientConfig(ca_certificates=(pki["ca"].cert,)),  # type: ignore[attr-defined]
        server_name="localhost",
        session=ticket,  # type: ignore[arg-type]
    )
    client = SocketClient(connection, port)
    try:
        connection.start()
        assert connection.early_data_allowed == 16384
        connection.send_early_data(b"early bytes\n")
        client.until(lambda: connection.handshake_complete)
        info = connection.info
        assert info is not None and info.resumed and info.early_data_accepted
        assert info.peer_certificates == ()  # a resumed handshake has no Certificate
        connection.send_data(b"late bytes\n")
        _finish(client, process)
    finally:
        client.close()
    received = output.read_bytes()
    assert b"early bytes\n" in received and b"late bytes\n" in received


def test_resumption_without_early_data(
    pki: dict[str, object], processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, output, process = _early_server(pki, processes, tmp_path)
    ticket = _first_ticket(pki, port)
    connection = ClientConnection(
        ClientConfig(ca_certificates=(pki["ca"].cert,)),  # type: ignore[attr-defined]
        server_name="localhost",
        session=ticket,  # type: ignore[arg-type]
    )
    client = SocketClient(connection, port)
    try:
        # 0-RTT offered but nothing sent: EndOfEarlyData must still close it (§4.5).
        client.handshake()
        info = connection.info
        assert info is not None and info.resumed and info.early_data_accepted
        connection.send_data(b"only late\n")
        _finish(client, process)
    finally:
        client.close()
    assert b"only late\n" in output.read_bytes()


def test_early_data_after_hello_retry(
    pki: dict[str, object], processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, output, process = _early_server(pki, processes, tmp_path, "-groups", "P-256")
    p256, x25519 = GROUP_CODES["secp256r1"], GROUP_CODES["x25519"]
    ticket = _first_ticket(pki, port, groups=(p256,), key_share_groups=(p256,))
    connection = ClientConnection(
        ClientConfig(
            ca_certificates=(pki["ca"].cert,),  # type: ignore[attr-defined]
            groups=(x25519, p256),
            key_share_groups=(x25519,),
        ),
        server_name="localhost",
        session=ticket,  # type: ignore[arg-type]
    )
    client = SocketClient(connection, port)
    try:
        connection.start()
        connection.send_early_data(b"rejected early\n")
        client.until(lambda: connection.handshake_complete)
        info = connection.info
        # OpenSSL's anti-replay consumed the ticket with ClientHello1, so the
        # handshake after the retry may be a full one; 0-RTT is rejected either way.
        assert info is not None and info.hello_retry
        assert not info.early_data_accepted
        assert any(isinstance(e, events.EarlyDataRejected) for e in client.events)
        connection.send_data(b"resent\n")
        _finish(client, process)
    finally:
        client.close()
    received = output.read_bytes()
    assert b"resent\n" in received and b"rejected early" not in received


def test_resumption_after_hello_retry(pki: dict[str, object], openssl: object) -> None:
    # The binder of ClientHello2 covers message_hash(CH1) + HRR + truncated CH2 (§4.2.11.2).
    port = openssl("-groups", "P-256", naccept=3)  # type: ignore[operator]
    p256, x25519 = GROUP_CODES["secp256r1"], GROUP_CODES["x25519"]
    ticket = _first_ticket(pki, port, groups=(p256,), key_share_groups=(p256,))
    connection = ClientConnection(
        ClientConfig(
            ca_certificates=(pki["ca"].cert,),  # type: ignore[attr-defined]
            groups=(x25519, p256),
            key_share_groups=(x25519,),
        ),
        server_name="localhost",
        session=ticket,  # type: ignore[arg-type]
    )
    client = SocketClient(connection, port)
    try:
        info = client.handshake()
        assert info.hello_retry and info.resumed and info.group == "secp256r1"
        assert _get_status_page(client).startswith(b"HTTP/1.0 200 ok")
    finally:
        client.close()


def test_expired_ticket_is_not_offered(pki: dict[str, object], openssl: object) -> None:
    port = openssl(naccept=3)  # type: ignore[operator]
    ticket = _first_ticket(pki, port)
    later = ticket.received_at + ticket.lifetime + 1  # type: ignore[attr-defined]
    connection = ClientConnection(
        ClientConfig(ca_certificates=(pki["ca"].cert,), clock=lambda: later),  # type: ignore[attr-defined]
        server_name="localhost",
        session=ticket,  # type: ignore[arg-type]
    )
    connection.start()
    hello = connection.data_to_send()
    assert ticket.ticket not in hello  # type: ignore[attr-defined]
