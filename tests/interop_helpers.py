"""Helpers for the real-peer tests of resumption, 0-RTT, mTLS, post-handshake auth and OCSP.

* :func:`make_pki` writes a CA, a server chain and client certificates (good,
  expired, wrong EKU, from a stranger CA) as PEM files for command-line peers.
* :func:`s_client` builds an ``openssl s_client`` command line (without
  ``-brief``: the tests read its "Reused"/"Early data" lines).
* :func:`ocsp_response` signs an OCSP response for a leaf with the test CA.
* :class:`RecordingRelay` forwards one TCP connection and keeps the bytes the
  client sent, so a real client's ClientHello and 0-RTT data can be replayed.
* :class:`ServerProcess` runs :class:`engine_helpers.EngineServer` in a separate
  Python process (``python3 interop_helpers.py serve ...``), so two processes can
  share a ticket key file the way two proxy workers or hosts do.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backend_helpers import ThreadedBackend
from certs import Issued, make_ca, make_leaf, write_pair
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

TIMEOUT = 20.0
_HANDSHAKE = 22  # TLS record content types (RFC 8446 §5.1)
_APPLICATION_DATA = 23

# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """Every certificate the interop tests use, as objects and as PEM files."""

    directory: Path
    ca: Issued
    ca_file: Path
    server: Issued
    server_chain: Path  # leaf + CA
    server_key: Path
    client: Issued
    client_cert: Path
    client_key: Path
    expired_cert: Path
    expired_key: Path
    bad_eku_cert: Path  # a serverAuth-only certificate used as a client certificate
    bad_eku_key: Path
    stranger_cert: Path  # issued by a CA the server does not trust
    stranger_key: Path


def make_pki(directory: Path) -> Pki:
    ca = make_ca("interop test CA")
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    server = make_leaf(ca, ("localhost", "127.0.0.1"))
    server_chain, server_key = write_pair(directory, "server", server, ca)
    client = make_leaf(ca, ("alice.example",), client=True)
    client_cert, client_key = write_pair(directory, "client", client)
    expired = make_leaf(ca, ("old.example",), client=True, days=-1, not_before_days=-10)
    expired_cert, expired_key = write_pair(directory, "expired", expired)
    bad_eku = make_leaf(ca, ("server-only.example",), client=False)
    bad_eku_cert, bad_eku_key = write_pair(directory, "bad-eku", bad_eku)
    stranger = make_leaf(make_ca("stranger CA"), ("mallory.example",), client=True)
    stranger_cert, stranger_key = write_pair(directory, "stranger", stranger)
    return Pki(
        directory,
        ca,
        ca_file,
        server,
        server_chain,
        server_key,
        client,
        client_cert,
        client_key,
        expired_cert,
        expired_key,
        bad_eku_cert,
        bad_eku_key,
        stranger_cert,
        stranger_key,
    )


def ocsp_response(
    ca: Issued,
    leaf: Issued,
    this_update: datetime.datetime,
    next_update: datetime.datetime | None,
) -> bytes:
    """A successful, "good" OCSP response for ``leaf`` signed by ``ca`` (DER)."""
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf.cert,
            issuer=ca.cert,
            algorithm=hashes.SHA1(),  # RFC 6960 CertID: SHA-1 is what every client matches
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=this_update,
            next_update=next_update,
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, ca.cert)
    )
    response = builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    return response.public_bytes(Encoding.DER)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


# --------------------------------------------------------------------------- command lines


def s_client(port: int, ca_file: Path, *extra: str) -> list[str]:
    """``openssl s_client`` for TLS 1.3 to 127.0.0.1:port, verifying against ``ca_file``."""
    return [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-tls1_3",
        "-servername",
        "localhost",
        "-CAfile",
        str(ca_file),
        "-verify_return_error",
        *extra,
    ]


def run_until_exit(argv: Sequence[str], timeout: float = TIMEOUT) -> str:
    """Run a client that the server will cut off; stdout + stderr as text.

    Its stdin stays open (but silent) until it exits, so it cannot shut down on
    stdin EOF before it has read the server's alert.
    """
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run(list(argv), stdin=read_end, capture_output=True, timeout=timeout)
    finally:
        os.close(read_end)
        os.close(write_end)
    return (proc.stdout + proc.stderr).decode(errors="replace")


# --------------------------------------------------------------------------- replay relay


class RecordingRelay:
    """Forward one TCP connection to ``target_port`` and keep what the client sent.

    Used to capture a real client's ClientHello + 0-RTT records so that the
    exact bytes can be sent again (a replay attack, RFC 8446 §8).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.from_client = bytearray()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RecordingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(timeout=TIMEOUT)

    def _run(self) -> None:
        self._listener.settimeout(TIMEOUT)
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        with client, socket.create_connection(("127.0.0.1", self.target_port), TIMEOUT) as up:
            self._shuttle(client, up)

    def _shuttle(self, client: socket.socket, up: socket.socket) -> None:
        deadline = time.monotonic() + TIMEOUT
        peers = {client: up, up: client}
        while time.monotonic() < deadline:
            ready, _, _ = select.select(list(peers), [], [], 0.2)
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if sock is client:
                    self.from_client += data
                peers[sock].sendall(data)


def first_flight(stream: bytes) -> bytes:
    """What a replaying attacker sends: a client's ClientHello record, its compatibility
    CCS and its first protected record (s_client sends a short early-data file as one
    record, before EndOfEarlyData)."""
    records = []
    pos = 0
    while pos + 5 <= len(stream):
        end = pos + 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
        records.append(stream[pos:end])
        pos = end
    assert records and records[0][0] == _HANDSHAKE, "the stream does not start with a hello"
    first_protected = next(i for i, r in enumerate(records) if r[0] == _APPLICATION_DATA)
    return b"".join(records[: first_protected + 1])


def send_raw(port: int, data: bytes, wait: float = 1.0) -> bytes:
    """Send ``data`` to 127.0.0.1:port, read what comes back for ``wait`` seconds, close."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], remaining)
            if not ready:
                continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return bytes(received)


# --------------------------------------------------------------------------- server process


class ServerProcess:
    """An EngineServer in its own Python process; one JSON line per finished connection."""

    def __init__(self, *args: str) -> None:
        here = Path(__file__).resolve().parent
        argv = [sys.executable, str(here / "interop_helpers.py"), "serve", *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(here), str(here.parent)))}
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self._buffer = b""
        self._lines: list[str] = []
        first = self._read_line(TIMEOUT)
        if first is None or not first.startswith("PORT "):
            self.close()
            raise AssertionError(f"server process did not start: {first!r}")
        self.port = int(first.split()[1])

    def _read_line(self, timeout: float) -> str | None:
        """One line of the child's stdout, read unbuffered so select() tells the truth."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()

    def connections(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, object]]:
        """Wait for ``count`` connection reports (in the order they finished)."""
        deadline = time.monotonic() + timeout
        while len(self._lines) < count:
            remaining = deadline - time.monotonic()
            line = self._read_line(remaining) if remaining > 0 else None
            if line is None:
                raise AssertionError(f"only {len(self._lines)} of {count} connections reported")
            self._lines.append(line)
        return [json.loads(line) for line in self._lines[:count]]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(options: argparse.Namespace) -> None:
    """Serve until stdin closes (or the parent kills us), reporting each connection."""
    from engine_helpers import EngineServer, store_for

    from tls13 import events
    from tls13.config import ServerConfig
    from tls13.tickets import TicketKeyring

    store = store_for([(Path(options.chain).read_bytes(), Path(options.key).read_bytes())])
    config = ServerConfig(
        certificates=store,
        ticket_keys=TicketKeyring.load(options.ticket_keys),
        max_early_data=options.max_early_data,
    )
    with EngineServer(config) as server:
        print(f"PORT {server.port}", flush=True)
        reported = 0
        while not select.select([sys.stdin], [], [], 0.05)[0]:
            while reported < len(server.connections) and server.connections[reported].done.is_set():
                record = server.connections[reported]
                info = record.info
                early = b"".join(e.data for e in record.events if isinstance(e, events.EarlyData))
                report = {
                    "resumed": info is not None and info.resumed,
                    "early_data_accepted": info is not None and info.early_data_accepted,
                    "early_data": early.decode(errors="replace"),
                    "error": None if record.error is None else record.error.alert.name,
                }
                print(json.dumps(report), flush=True)
                reported += 1


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run an EngineServer, one JSON line per connection")
    serve.add_argument("--chain", required=True)
    serve.add_argument("--key", required=True)
    serve.add_argument("--ticket-keys", required=True)
    serve.add_argument("--max-early-data", type=int, default=0)
    options = parser.parse_args(argv)
    _serve(options)


if __name__ == "__main__":
    main(sys.argv[1:])


# --------------------------------------------------------------------------- openssl s_server


class OpenSSLServer:
    """``openssl s_server`` in plain mode *with* its stdin commands (no -quiet).

    Typing ``c`` on its stdin makes a TLS 1.3 s_server send a post-handshake
    CertificateRequest.  Its stdout (received data, command results) goes to a
    file that :meth:`output` reads; it serves one connection (the readiness
    probe is the other accept).
    """

    def __init__(self, port: int, pki: Pki, directory: Path, *extra: str) -> None:
        self.port = port
        self._stdout = directory / "s_server.out"
        self._stderr: str | None = None
        argv = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-tls1_3"]
        argv += ["-cert", str(pki.server_chain), "-key", str(pki.server_key), "-naccept", "2"]
        with self._stdout.open("wb") as sink:
            self.proc = subprocess.Popen(
                [*argv, *extra], stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.PIPE
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("s_server exited early")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("s_server did not start listening")

    def command(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def output(self) -> str:
        return self._stdout.read_text(errors="replace")

    def wait_output(self, needle: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(f"s_server never printed {needle!r}: {self.output()!r}")
            time.sleep(0.05)

    def finish(self) -> str:
        """Close stdin, wait for the exit; its stderr (verification lines, errors)."""
        if self._stderr is None:
            try:  # communicate() closes stdin: s_server then finishes and exits
                _, err = self.proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
            self._stderr = err.decode(errors="replace")
        return self._stderr

    def __enter__(self) -> OpenSSLServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


# --------------------------------------------------------------------------- backend


class RecordingBackend(ThreadedBackend):
    """A TCP echo backend that keeps what each connection delivered (for the daemon tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytearray] = []

    def __enter__(self) -> RecordingBackend:
        super().__enter__()
        return self

    def handle(self, sock: socket.socket) -> None:
        buffer = bytearray()
        with self._lock:
            self.received.append(buffer)
        sock.settimeout(TIMEOUT)
        with sock:
            try:
                while data := sock.recv(65536):
                    buffer += data
                    sock.sendall(data)
            except OSError:
                return

    def all_received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(chunk) for chunk in self.received)
