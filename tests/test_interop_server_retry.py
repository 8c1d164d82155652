"""Stateless HelloRetryRequest with a real client (RFC 8446 §4.2.2), over loopback TCP.

The server below throws its ServerConnection away right after sending a
HelloRetryRequest and hands the rest of the TCP stream (OpenSSL's
compatibility CCS, then ClientHello2) to a brand-new one built from the same
configuration.  ``openssl s_client`` checks our Finished over a transcript that
the fresh connection rebuilt from the cookie alone, so a completed handshake
proves the rebuilt message_hash + HelloRetryRequest are byte-exact; with
``-sess_in`` the PSK binder of ClientHello2 is checked over it too.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from certs import Issued, make_ca, make_leaf
from engine_helpers import ConnectionRecord, EngineServer, echo_behaviour, run_client, store_for

from tls13 import events
from tls13.alerts import TLSError
from tls13.config import ServerConfig
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.server import ServerConnection, ServerState
from tls13.tickets import TicketKeyring

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]


class ForgetfulServer(EngineServer):
    """Each TCP connection: a new ServerConnection takes over after a HelloRetryRequest."""

    retries = 0

    def _serve(self, sock: socket.socket, record: ConnectionRecord) -> None:
        conn = ServerConnection(self.config)
        sock.settimeout(self.timeout)
        try:
            while True:
                data = sock.recv(65536)
                new_events = conn.receive_data(data)
                record.events.extend(new_events)
                closed = False
                for event in new_events:
                    echo_behaviour(conn, event)
                    closed = closed or isinstance(event, events.ConnectionClosed)
                sock.sendall(conn.data_to_send())
                if conn.state is ServerState.WAIT_CH2:
                    # Nothing survives the retry but the configuration (and the cookie
                    # the client carries).
                    conn = ServerConnection(self.config)
                    ForgetfulServer.retries += 1
                if closed or not data:
                    return
        except TLSError as error:
            record.error = error
        except OSError:
            pass
        finally:
            record.info = conn.info
            sock.close()
            record.done.set()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued, Path]:
    ca = make_ca()
    leaf = make_leaf(ca, ("localhost",), kind="p256")
    ca_file = tmp_path_factory.mktemp("retry-ca") / "ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    return ca, leaf, ca_file


def stateless_config(pki: tuple[Issued, Issued, Path], **extra: object) -> ServerConfig:
    ca, leaf, _ = pki
    store = store_for([(leaf.cert_pem() + ca.cert_pem(), leaf.key_pem())])
    return ServerConfig(
        certificates=store,
        groups=(GROUP_CODES["secp384r1"],),  # openssl shares x25519 only: a retry is needed
        stateless_retry=True,
        **extra,  # type: ignore[arg-type]
    )


def s_client(port: int, ca_file: Path, *extra: str) -> list[str]:
    return [
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
        "-servername", "localhost", "-CAfile", str(ca_file), "-verify_return_error",
        "-groups", "x25519:P-384", *extra,
    ]  # fmt: skip


def test_openssl_finishes_on_a_fresh_connection(pki: tuple[Issued, Issued, Path]) -> None:
    before = ForgetfulServer.retries
    with ForgetfulServer(stateless_config(pki)) as server:
        run = run_client(s_client(server.port, pki[2], "-brief"), [b"ping\n"])
        (record,) = server.wait_for(1)
    assert "ping" in run.stdout, run.stderr
    assert record.error is None and record.info is not None
    assert record.info.hello_retry and record.info.group == "secp384r1"
    assert ForgetfulServer.retries == before + 1


def test_openssl_resumes_across_a_stateless_retry(
    pki: tuple[Issued, Issued, Path], tmp_path: Path
) -> None:
    session = tmp_path / "session.pem"
    config = stateless_config(pki, ticket_keys=TicketKeyring.generate())
    with ForgetfulServer(config) as server:
        run_client(s_client(server.port, pki[2], "-sess_out", str(session)), [b"one\n"])
        resumed = run_client(s_client(server.port, pki[2], "-sess_in", str(session)), [b"two\n"])
        first, second = server.wait_for(2)
    assert "Reused, TLSv1.3" in resumed.stdout, resumed.stdout
    assert first.info is not None and not first.info.resumed
    assert second.error is None and second.info is not None
    assert second.info.resumed and second.info.hello_retry
