"""Issue 4: post-handshake client authentication (RFC 8446 §4.6.2) with openssl s_client.

The server asks with request_client_certificate() right after the handshake;
``s_client -enable_pha`` answers with its certificate (or an empty one), and
the server tells the client who it now is.  A client that did not offer
post_handshake_auth is never asked.
"""

from __future__ import annotations

import shutil
import socket
import ssl
from pathlib import Path

import pytest
from conftest import free_port
from engine_helpers import GREETING, ConnectionRecord, EngineServer, run_client, store_for
from interop_helpers import OpenSSLServer, Pki, make_pki, run_until_exit, s_client
from msg_helpers import SocketClient

from tls13 import events
from tls13.alerts import AlertDescription
from tls13.certificates import CertificateChain
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.connection import ConnectionStateError
from tls13.server import ServerConnection

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]

NOT_OFFERED = b"post-handshake auth not offered\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pha-pki"))


def config_for(pki: Pki) -> ServerConfig:
    # No client certificate during the handshake; the CA list is for the later request.
    store = store_for([(pki.server_chain.read_bytes(), pki.server_key.read_bytes())])
    return ServerConfig(certificates=store, client_auth="none", client_ca=(pki.ca.cert,))


def ask_after_handshake(conn: ServerConnection, event: events.Event) -> None:
    """Greet, ask for a certificate, then report the identity; echo data meanwhile."""
    if isinstance(event, events.HandshakeComplete):
        conn.send_data(GREETING)
        try:
            conn.request_client_certificate()
        except ConnectionStateError:
            conn.send_data(NOT_OFFERED)
    elif isinstance(event, events.ClientCertificateReceived):
        who = ",".join(event.identity.names) if event.identity is not None else "anonymous"
        conn.send_data(f"authenticated as {who}\n".encode())
    elif isinstance(event, events.ApplicationData):
        conn.send_data(event.data)
    elif isinstance(event, events.ConnectionClosed):
        conn.close()


def received_identity(record: ConnectionRecord) -> events.ClientCertificateReceived:
    (received,) = [e for e in record.events if isinstance(e, events.ClientCertificateReceived)]
    return received


def test_s_client_answers_with_its_certificate(pki: Pki) -> None:
    with EngineServer(config_for(pki), behaviour=ask_after_handshake) as server:
        argv = s_client(server.port, pki.ca_file, "-enable_pha")
        argv += ["-cert", str(pki.client_cert), "-key", str(pki.client_key)]
        run = run_client(argv, [b"after\n"], wait_for=b"authenticated as alice.example")
        (record,) = server.wait_for(1)
    assert "after" in run.stdout  # the connection carries on after authentication
    assert record.error is None and record.info is not None
    assert record.info.client_identity is None  # nobody was authenticated in the handshake
    identity = received_identity(record).identity
    assert identity is not None and identity.names == ("alice.example",)
    assert identity.certificates[0] == pki.client.cert
    assert bytes(record.received) == b"after\n"


def test_s_client_without_certificate_answers_empty(pki: Pki) -> None:
    with EngineServer(config_for(pki), behaviour=ask_after_handshake) as server:
        argv = s_client(server.port, pki.ca_file, "-enable_pha")
        run_client(argv, [b"after\n"], wait_for=b"authenticated as anonymous")
        (record,) = server.wait_for(1)
    assert record.error is None
    assert received_identity(record).identity is None


def test_client_that_did_not_offer_is_not_asked(pki: Pki) -> None:
    with EngineServer(config_for(pki), behaviour=ask_after_handshake) as server:
        run = run_client(s_client(server.port, pki.ca_file), [b"x\n"], wait_for=NOT_OFFERED.strip())
        (record,) = server.wait_for(1)
    assert "x" in run.stdout and record.error is None
    assert not any(isinstance(e, events.ClientCertificateReceived) for e in record.events)


def test_untrusted_certificate_after_the_handshake_is_unknown_ca(pki: Pki) -> None:
    with EngineServer(config_for(pki), behaviour=ask_after_handshake) as server:
        argv = s_client(server.port, pki.ca_file, "-enable_pha")
        argv += ["-cert", str(pki.stranger_cert), "-key", str(pki.stranger_key)]
        output = run_until_exit(argv)
        (record,) = server.wait_for(1)
    assert record.info is not None  # the handshake itself had completed
    assert record.error is not None and record.error.alert == AlertDescription.unknown_ca
    assert "alert unknown ca" in output and "SSL alert number 48" in output


# ----------------------------------------------------------------------------- our client


def test_our_client_answers_s_server_post_handshake_request(pki: Pki, tmp_path: Path) -> None:
    # No -verify: s_server asks for nothing in the handshake, only when told "c".
    certificate = CertificateChain((pki.client.cert,), pki.client.key)  # type: ignore[arg-type]
    config = ClientConfig(ca_certificates=(pki.ca.cert,), certificate=certificate)
    with OpenSSLServer(free_port(), pki, tmp_path, "-verifyCAfile", str(pki.ca_file)) as server:
        client = SocketClient(ClientConnection(config, server_name="localhost"), server.port)
        try:
            info = client.handshake()
            assert info.peer_certificates[0] == pki.server.cert
            client.conn.send_data(b"before\n")
            client.flush()
            server.wait_output("before")
            server.command(b"c\n")  # SSL_verify_client_post_handshake
            answer_request(client)
            client.conn.send_data(b"after\n")
            client.conn.close()
            client.flush()
            server.wait_output("after")
        finally:
            client.close()
        errors = server.finish()
    # s_server verified the certificate we sent after the handshake (none was sent in it),
    # and the connection carried on.
    assert "depth=0 CN = alice.example" in errors and "verify error" not in errors
    output = server.output()
    assert "SSL_do_handshake -> 1" in output and "after" in output


def answer_request(client: SocketClient) -> None:
    """Read until the client has something of its own to send: after the handshake,
    with nothing written by us, that is its answer to a CertificateRequest (§4.6.2)."""
    client.flush()
    for _ in range(20):
        data = client.sock.recv(65536)
        assert data, "s_server closed the connection"
        client.events += client.conn.receive_data(data)
        answer = client.conn.data_to_send()
        if answer:
            client.sock.sendall(answer)
            return
    raise AssertionError("no post-handshake CertificateRequest arrived")


# ----------------------------------------------------------------------------- Python ssl


def test_python_ssl_post_handshake_auth(pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    context.post_handshake_auth = True  # offer post_handshake_auth (RFC 8446 §4.2.6)
    expected = b"authenticated as alice.example\n"
    with EngineServer(config_for(pki), behaviour=ask_after_handshake) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                received = b""
                # Reading processes the CertificateRequest; OpenSSL answers by itself.
                while not received.endswith(expected):
                    chunk = tls.recv(4096)
                    assert chunk, received
                    received += chunk
                assert received == GREETING + expected
                tls.unwrap()
        (record,) = server.wait_for(1)
    assert record.error is None
    identity = received_identity(record).identity
    assert identity is not None and identity.names == ("alice.example",)


# ----------------------------------------------------------------------------- gnutls-cli


@pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="gnutls-cli missing")
def test_gnutls_post_handshake_auth(pki: Pki) -> None:
    with EngineServer(config_for(pki), behaviour=ask_after_handshake) as server:
        argv = ["gnutls-cli", "--port", str(server.port), "--x509cafile", str(pki.ca_file)]
        argv += ["--sni-hostname", "localhost", "--verify-hostname", "localhost"]
        argv += ["--post-handshake-auth"]
        argv += ["--x509certfile", str(pki.client_cert), "--x509keyfile", str(pki.client_key)]
        run = run_client([*argv, "127.0.0.1"], [b"after\n"], wait_for=b"authenticated as alice")
        (record,) = server.wait_for(1)
    assert "Re-auth was performed" in run.stdout
    assert record.error is None and bytes(record.received) == b"after\n"
    identity = received_identity(record).identity
    assert identity is not None and identity.names == ("alice.example",)
