"""Record real client and server flights as seed corpus files (run by hand, not by tests).

    python3 fuzz/record_corpus.py                # rewrites fuzz/corpus/{server,client}/
    python3 fuzz/record_corpus.py --client-only  # only fuzz/corpus/client/
    python3 fuzz/record_corpus.py --variants-only  # only fuzz/corpus/server_variants/

Server corpus: openssl s_client, gnutls-cli, curl and Python's ssl module talk
to a loopback ServerConnection built from :func:`fuzz.targets.server_config`;
everything each client sent is saved (prefixed with chunking byte 0).  As the
server is deterministic, replaying a file reaches the same states again, the
client's Finished included.  Client corpus: the deterministic ClientConnection
of :func:`fuzz.targets.new_client` talks to ``openssl s_server`` and to our own
server, and the server's bytes are saved.  The RFC 8448 trace ClientHellos are
added from the shared specs.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz.targets import (  # noqa: E402
    ALPN,
    SERVER_NAME,
    VARIANT_CLIENT_AUTH_REQUIRED,
    VARIANT_PADDING,
    VARIANT_PSK_KE_ONLY,
    VARIANT_SMALL_RECORDS,
    VARIANT_STATELESS_RETRY,
    VARIANT_STRICT_GROUPS,
    client_config,
    exchange,
    fixed_pki,
    new_client,
    react,
    server_config,
    start_resuming_client,
    variant_config,
)
from tls13.alerts import TLSError  # noqa: E402
from tls13.client import ClientConnection  # noqa: E402
from tls13.config import ServerConfig  # noqa: E402
from tls13.server import ServerConnection  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
TRACES = Path("/work/shared/specs/tls13-example-traces.txt")
TIMEOUT = 15.0
GROUP_P256 = 0x0017


class Recorder:
    """Loopback TCP server: one deterministic ServerConnection per socket, input recorded."""

    def __init__(self, config: Callable[[], ServerConfig] = server_config) -> None:
        self.config = config
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.streams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.listener], [], [], 0.1)
            if ready:
                sock, _ = self.listener.accept()
                self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        conn = ServerConnection(self.config())
        received = bytearray()
        sock.settimeout(TIMEOUT)
        try:
            while True:
                data = sock.recv(65536)
                received += data
                done = False
                for event in conn.receive_data(data):
                    react(conn, event)
                    done = done or type(event).__name__ == "ConnectionClosed"
                sock.sendall(conn.data_to_send())
                if done or not data:
                    break
        except (TLSError, OSError) as error:
            print(f"  server side ended: {error}", file=sys.stderr)
            try:
                sock.sendall(conn.data_to_send())
            except OSError:
                pass
        finally:
            sock.close()
            self.streams.append(bytes(received))


def _run(argv: list[str], stdin: bytes = b"hi\n", delay: float = 1.0) -> None:
    """Run a client, give it time to finish the handshake, then close its stdin."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None
    try:
        time.sleep(delay)
        for line in stdin.splitlines(keepends=True):
            proc.stdin.write(line)
            proc.stdin.flush()
            time.sleep(0.3)
        proc.stdin.close()
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _python_client(port: int, ca: Path, post_auth: bool, cert: tuple[Path, Path] | None) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(list(ALPN))
    if post_auth:
        context.post_handshake_auth = True
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            tls.recv(100)
            tls.sendall(b"ping")
            tls.recv(100)
            tls.unwrap()


def record_server_corpus(tmp: Path) -> dict[str, bytes]:
    pki = fixed_pki()
    ca, crt, key = pki.path("ca.pem"), pki.path("client.pem"), pki.path("client.key")
    sess = tmp / "sess.pem"
    early = tmp / "early.txt"
    early.write_bytes(b"GET /early HTTP/1.1\r\n\r\n")
    out: dict[str, bytes] = {}
    with Recorder() as rec:
        target = f"127.0.0.1:{rec.port}"
        s_client = [
            "openssl",
            "s_client",
            "-connect",
            target,
            "-servername",
            SERVER_NAME,
            "-CAfile",
            str(ca),
            "-tls1_3",
        ]
        runs: list[tuple[str, object]] = [
            ("openssl-default", lambda: _run([*s_client, "-alpn", "h2,http/1.1"])),
            ("openssl-hrr", lambda: _run([*s_client, "-groups", "P-521:X25519"])),
            (
                "openssl-p384-aes256",
                lambda: _run(
                    [*s_client, "-groups", "P-384", "-ciphersuites", "TLS_AES_256_GCM_SHA384"]
                ),
            ),
            (
                "openssl-chacha-x448",
                lambda: _run(
                    [*s_client, "-groups", "X448", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]
                ),
            ),
            ("openssl-ffdhe", lambda: _run([*s_client, "-groups", "ffdhe2048"])),
            ("openssl-client-cert", lambda: _run([*s_client, "-cert", str(crt), "-key", str(key)])),
            ("openssl-keyupdate", lambda: _run([*s_client], stdin=b"hi\nK\nk\nbye\n")),
            ("openssl-ticket", lambda: _run([*s_client, "-sess_out", str(sess)], delay=1.5)),
            (
                "openssl-resume-0rtt",
                lambda: _run([*s_client, "-sess_in", str(sess), "-early_data", str(early)]),
            ),
            (
                "openssl-compat-off",
                lambda: _run(
                    [
                        "openssl",
                        "s_client",
                        "-connect",
                        target,
                        "-noservername",
                        "-tls1_3",
                        "-no_middlebox",
                    ]
                ),
            ),
            (
                "gnutls-default",
                lambda: _run(
                    [
                        "gnutls-cli",
                        "--x509cafile",
                        str(ca),
                        "-p",
                        str(rec.port),
                        "--alpn",
                        "h2",
                        SERVER_NAME.replace("localhost", "127.0.0.1"),
                        "--sni-hostname",
                        SERVER_NAME,
                        "--verify-hostname",
                        SERVER_NAME,
                    ]
                ),
            ),
            (
                "gnutls-client-cert",
                lambda: _run(
                    [
                        "gnutls-cli",
                        "--x509cafile",
                        str(ca),
                        "-p",
                        str(rec.port),
                        "--x509certfile",
                        str(crt),
                        "--x509keyfile",
                        str(key),
                        "127.0.0.1",
                        "--sni-hostname",
                        SERVER_NAME,
                        "--verify-hostname",
                        SERVER_NAME,
                    ]
                ),
            ),
            (
                "gnutls-secp256r1",
                lambda: _run(
                    [
                        "gnutls-cli",
                        "--x509cafile",
                        str(ca),
                        "-p",
                        str(rec.port),
                        "127.0.0.1",
                        "--sni-hostname",
                        SERVER_NAME,
                        "--verify-hostname",
                        SERVER_NAME,
                        "--priority",
                        "NORMAL:-GROUP-ALL:+GROUP-SECP256R1:-VERS-ALL:+VERS-TLS1.3",
                    ]
                ),
            ),
            (
                "curl",
                lambda: _run(
                    [
                        "curl",
                        "-sS",
                        "--max-time",
                        "10",
                        "--cacert",
                        str(ca),
                        "--resolve",
                        f"{SERVER_NAME}:{rec.port}:127.0.0.1",
                        f"https://{SERVER_NAME}:{rec.port}/",
                    ],
                    stdin=b"",
                    delay=0,
                ),
            ),
            ("python-ssl", lambda: _python_client(rec.port, ca, False, None)),
            ("python-ssl-pha", lambda: _python_client(rec.port, ca, True, (crt, key))),
        ]
        for name, action in runs:
            before = len(rec.streams)
            print(f"recording {name}", file=sys.stderr)
            try:
                action()  # type: ignore[operator]
            except (OSError, ssl.SSLError) as error:
                print(f"  client: {error}", file=sys.stderr)
            deadline = time.monotonic() + TIMEOUT
            while len(rec.streams) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            if len(rec.streams) > before:
                out[f"real-{name}"] = b"\x00" + rec.streams[-1]
    return out


def own_client_flights() -> dict[str, bytes]:
    """Our deterministic client against the deterministic server: post-handshake auth,
    KeyUpdate and close_notify, everything the client sent recorded."""
    client = new_client()
    server = ServerConnection(server_config())
    sent = bytearray(_client_hello_bytes())
    server.receive_data(bytes(sent))
    steps = [b"auth please", b"after auth"]
    for _ in range(12):
        to_client = server.data_to_send()
        if to_client:
            for event in client.receive_data(to_client):
                react(client, event)
        if client.handshake_complete and steps:
            client.send_data(steps.pop(0))
            if not steps:
                client.update_keys(request_peer=True)
                client.close()
        to_server = client.data_to_send()
        if not to_server and not to_client:
            break
        sent += to_server
        for event in server.receive_data(to_server):
            react(server, event)
    # One record per receive_data call: the server must have asked before the answer comes.
    return {"own-client-post-handshake-auth": b"\xff" + bytes(sent)}


def record_variant_corpus(tmp: Path) -> dict[str, bytes]:
    """Flights for run_server_variants: variant byte + a stream recorded under that variant."""
    pki = fixed_pki()
    ca, crt, key = pki.path("ca.pem"), pki.path("client.pem"), pki.path("client.key")
    sess = tmp / "variant-sess.pem"
    out: dict[str, bytes] = {}
    plans: list[tuple[str, int, list[str], float]] = [
        ("stateless-hrr", VARIANT_STATELESS_RETRY, ["-groups", "P-521:X25519"], 1.0),
        (
            "client-auth-required",
            VARIANT_CLIENT_AUTH_REQUIRED,
            ["-cert", str(crt), "-key", str(key)],
            1.0,
        ),
        ("psk-ke-ticket", VARIANT_PSK_KE_ONLY, ["-allow_no_dhe_kex", "-sess_out", str(sess)], 1.5),
        ("psk-ke-resume", VARIANT_PSK_KE_ONLY, ["-allow_no_dhe_kex", "-sess_in", str(sess)], 1.0),
        ("padding-small-records", VARIANT_PADDING | VARIANT_SMALL_RECORDS, [], 1.0),
        ("strict-groups-hrr", VARIANT_STRICT_GROUPS, [], 1.0),
    ]
    for name, flags, extra, delay in plans:
        with Recorder(lambda flags=flags: variant_config(flags)) as rec:  # type: ignore[misc]
            print(f"recording variant {name}", file=sys.stderr)
            _run(["openssl", "s_client", "-connect", f"127.0.0.1:{rec.port}", "-servername",
                  SERVER_NAME, "-CAfile", str(ca), "-tls1_3", *extra], delay=delay)  # fmt: skip
            deadline = time.monotonic() + TIMEOUT
            while not rec.streams and time.monotonic() < deadline:
                time.sleep(0.05)
            if rec.streams:
                out[f"real-openssl-{name}"] = bytes([flags, 0]) + rec.streams[-1]
    for seed in ("real-openssl-default", "real-gnutls-default", "real-python-ssl"):
        out[f"base-{seed}"] = b"\x00" + (CORPUS / "server" / seed).read_bytes()
    return out


def trace_client_hellos() -> dict[str, bytes]:
    """The first client record of each RFC 8448-format trace section (a ClientHello)."""
    text = TRACES.read_text()
    out: dict[str, bytes] = {}
    pattern = re.compile(
        r"\{client\}  send handshake record:\s+payload \(\d+ octets\):.*?"
        r"complete record \((\d+) octets\):\s+([0-9a-f \n]+)",
        re.S,
    )
    for index, match in enumerate(pattern.finditer(text)):
        hexes = re.sub(r"[^0-9a-f]", "", match.group(2).split("\n\n")[0])
        record = bytes.fromhex(hexes)[: int(match.group(1))]
        if record[:1] == b"\x16" and record[5:6] == b"\x01":
            out[f"trace-clienthello-{index}"] = b"\x00" + record
    return out


def record_client_corpus(tmp: Path) -> dict[str, bytes]:
    """Server flights answering the deterministic client: ours and openssl s_server's."""
    out: dict[str, bytes] = {}
    client = new_client()
    hello = _client_hello_bytes()
    server = ServerConnection(server_config(ecdsa=True))
    server.receive_data(hello)
    flight = server.data_to_send()
    client.receive_data(flight)
    server.receive_data(client.data_to_send())
    out["own-server-full"] = b"\x00" + flight + server.data_to_send()
    out["own-server-chunked"] = b"\x05" + flight
    ecdsa = server_config(ecdsa=True)
    out["own-server-hrr"] = b"\x00" + _own_exchange(replace(ecdsa, groups=(GROUP_P256,)))
    out["own-server-client-auth"] = b"\x00" + _own_exchange(replace(ecdsa, client_auth="required"))
    out["own-server-post-handshake"] = b"\x03" + _own_exchange(ecdsa, after_handshake=True)
    out.update(_resumed_flights())
    port = _free_port()
    pki = fixed_pki()
    s_server = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(pki.path("server-ecdsa.pem")),
            "-key",
            str(pki.path("server-ecdsa.key")),
            "-tls1_3",
            "-quiet",
            "-naccept",
            "1",
            "-alpn",
            "h2",
            "-verify",
            "1",
            "-CAfile",
            str(pki.path("ca.pem")),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        out["openssl-s_server"] = b"\x00" + _talk_to(port, hello)
    finally:
        s_server.kill()
        s_server.wait()
    return out


def _resumed_flights() -> dict[str, bytes]:
    """Server answers to the resuming client: 0-RTT accepted, 0-RTT declined, HRR."""
    ecdsa = server_config(ecdsa=True)
    configs = {
        "resumed-0rtt": ecdsa,
        "resumed-0rtt-declined": replace(ecdsa, max_early_data=0),
        "resumed-hrr": replace(ecdsa, groups=(GROUP_P256,)),
    }
    out: dict[str, bytes] = {}
    for name, config in configs.items():
        client, first_flight = start_resuming_client()
        server = ServerConnection(config)
        server.receive_data(first_flight)
        sent = server.data_to_send()
        client.receive_data(sent)
        out[name] = b"\x00" + sent + exchange(client, server)
    return out


def _own_exchange(config: ServerConfig, after_handshake: bool = False) -> bytes:
    """Everything our server sends to the deterministic client, the handshake pumped through.

    ``after_handshake`` adds application data, a KeyUpdate, a post-handshake
    CertificateRequest and close_notify from the server.
    """
    client = new_client()
    server = ServerConnection(config)
    sent = bytearray()
    to_server = _client_hello_bytes()
    for _ in range(10):
        if to_server:
            server.receive_data(to_server)
        if after_handshake and server.handshake_complete:
            after_handshake = False
            server.send_data(b"hello after the handshake")
            server.update_keys(request_peer=True)
            server.request_client_certificate()
            server.send_data(b"bye")
            server.close()
        to_client = server.data_to_send()
        if not to_client and not to_server:
            break
        sent += to_client
        client.receive_data(to_client)
        to_server = client.data_to_send()
    return bytes(sent)


def _client_hello_bytes() -> bytes:
    client = ClientConnection(client_config(), server_name=SERVER_NAME, alpn_protocols=ALPN)
    client.start()
    return client.data_to_send()


def _talk_to(port: int, hello: bytes) -> bytes:
    """Send our ClientHello, then our second flight; return all the server sent."""
    client = new_client()
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(hello)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], 0.3)
            if not ready:
                if received:
                    break
                continue
            data = sock.recv(65536)
            if not data:
                break
            received += data
            try:
                client.receive_data(data)
            except TLSError as error:
                print(f"  client: {error}", file=sys.stderr)
                break
            sock.sendall(client.data_to_send())
    return bytes(received)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    """``--client-only`` / ``--variants-only`` re-record only that part of the corpus."""
    client_only = "--client-only" in sys.argv
    variants_only = "--variants-only" in sys.argv
    if variants_only:
        with tempfile.TemporaryDirectory() as tmp:
            _write("server_variants", record_variant_corpus(Path(tmp)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = {} if client_only else record_server_corpus(Path(tmp))
        if not client_only:
            server.update(trace_client_hellos())
        server.update(own_client_flights())
        client = record_client_corpus(Path(tmp))
        _write("server", server)
        resumed = {k: v for k, v in client.items() if k.startswith("resumed-")}
        _write("client", {k: v for k, v in client.items() if k not in resumed})
        _write("client_resumed", resumed)
        if not client_only:
            _write("server_variants", record_variant_corpus(Path(tmp)))


def _write(directory: str, files: dict[str, bytes]) -> None:
    (CORPUS / directory).mkdir(parents=True, exist_ok=True)
    for name, data in sorted(files.items()):
        (CORPUS / directory / name).write_bytes(data)
        print(f"{directory}/{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
