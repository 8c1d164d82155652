"""In-memory benchmark of the TLS 1.3 engine: handshakes/s and record throughput.

Our ClientConnection and ServerConnection run in one process with no sockets,
so the figures are the engine's own CPU cost:

* handshakes/s for a full 1-RTT handshake per group and certificate type, for a
  HelloRetryRequest (stateful and stateless) and for ticket resumption; plus the
  server's CPU time per handshake (``time.process_time`` around the server-side
  calls only: what a proxy pays per accepted connection) and the full-versus-
  resumed comparison on one configuration;
* application-data throughput at 16 KiB per ``send_data`` call, protect
  (server ``send_data`` + ``data_to_send``) and unprotect (client
  ``receive_data``) separately, per cipher suite.

Usage: ``python3 bench/engine.py [--seconds S] [--quick] [--only TEXT ...] [--no-throughput]``;
prints a table.  ``--only`` keeps the handshake scenarios whose name contains one of the
texts (e.g. ``--only "x25519 + ECDSA" resumed``), for quick interleaved before/after runs.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from tls13 import events  # noqa: E402
from tls13.certificates import CertificateChain, CertificateStore  # noqa: E402
from tls13.client import ClientConnection  # noqa: E402
from tls13.config import ClientConfig, ServerConfig  # noqa: E402
from tls13.connection import Connection  # noqa: E402
from tls13.groups import BY_NAME as GROUPS  # noqa: E402
from tls13.server import ServerConnection  # noqa: E402
from tls13.suites import BY_NAME as SUITES  # noqa: E402
from tls13.tickets import SessionTicket, TicketKeyring  # noqa: E402

RECORD = 16 * 1024


@dataclass
class Pki:
    ca: x509.Certificate
    chains: dict[str, CertificateChain]


def _certificate(
    subject: str, key: object, issuer: str, signer: object, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        ).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),  # type: ignore[attr-defined]
            critical=False,
        )
    else:
        builder = (
            builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),  # type: ignore[attr-defined]
                critical=False,
            )
        )
    return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


def make_pki() -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("bench CA", ca_key, "bench CA", ca_key, ca=True)
    keys = {
        "ecdsa-p256": ec.generate_private_key(ec.SECP256R1()),
        "rsa-2048": rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }
    chains = {
        name: CertificateChain(
            (_certificate("localhost", key, "bench CA", ca_key, ca=False),),
            key,  # type: ignore[arg-type]
        )
        for name, key in keys.items()
    }
    return Pki(ca, chains)


def pump(client: Connection, server: ServerConnection, clock: list[float]) -> list[events.Event]:
    """Exchange bytes until quiet; adds the server's CPU time to ``clock[0]``."""
    client_events: list[events.Event] = []
    while True:
        to_server = client.data_to_send()
        start = time.process_time()
        if to_server:
            server.receive_data(to_server)
        to_client = server.data_to_send()
        clock[0] += time.process_time() - start
        if to_client:
            client_events += client.receive_data(to_client)
        if not to_server and not to_client:
            return client_events


@dataclass
class Scenario:
    name: str
    server: ServerConfig
    client: ClientConfig
    session: Callable[[], SessionTicket | None] = lambda: None


def handshake_rate(scenario: Scenario, seconds: float) -> tuple[float, float]:
    """(handshakes/s for the pair, server CPU microseconds per handshake)."""
    done = 0
    server_time = [0.0]
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline or done < 5:
        client = ClientConnection(
            scenario.client, server_name="localhost", session=scenario.session()
        )
        client.start()
        created = time.process_time()
        server = ServerConnection(scenario.server)
        server_time[0] += time.process_time() - created
        pump(client, server, server_time)
        if not (client.handshake_complete and server.handshake_complete):
            raise RuntimeError(f"{scenario.name}: handshake did not complete")
        done += 1
    elapsed = time.perf_counter() - start
    return done / elapsed, 1e6 * server_time[0] / done


def first_ticket(server_config: ServerConfig, client_config: ClientConfig) -> SessionTicket:
    client = ClientConnection(client_config, server_name="localhost")
    server = ServerConnection(server_config)
    client.start()
    for event in pump(client, server, [0.0]):
        if isinstance(event, events.NewSessionTicketReceived):
            return event.ticket
    raise RuntimeError("the server issued no ticket")


def scenarios(pki: Pki) -> list[Scenario]:
    def server(chain: str, **kw: object) -> ServerConfig:
        store = CertificateStore([pki.chains[chain]])
        return ServerConfig(certificates=store, tickets=0, **kw)  # type: ignore[arg-type]

    def client(group: str, **kw: object) -> ClientConfig:
        code = GROUPS[group]
        return ClientConfig(
            ca_certificates=(pki.ca,),
            groups=(code,),
            key_share_groups=(code,),
            **kw,  # type: ignore[arg-type]
        )

    out = [
        Scenario("x25519 + ECDSA P-256", server("ecdsa-p256"), client("x25519")),
        Scenario("secp256r1 + ECDSA P-256", server("ecdsa-p256"), client("secp256r1")),
        Scenario("X25519MLKEM768 + ECDSA P-256", server("ecdsa-p256"), client("X25519MLKEM768")),
        Scenario("x25519 + RSA-2048 (PSS)", server("rsa-2048"), client("x25519")),
        Scenario("x25519 + Ed25519", server("ed25519"), client("x25519")),
        Scenario("ffdhe2048 + ECDSA P-256", server("ecdsa-p256"), client("ffdhe2048")),
    ]
    retry_client = ClientConfig(
        ca_certificates=(pki.ca,),
        groups=(GROUPS["x25519"], GROUPS["secp256r1"]),
        key_share_groups=(GROUPS["x25519"],),
    )
    retry_groups = (GROUPS["secp256r1"],)
    out.append(
        Scenario(
            "HelloRetryRequest -> secp256r1",
            server("ecdsa-p256", groups=retry_groups),
            retry_client,
        )
    )
    out.append(
        Scenario(
            "stateless HRR -> secp256r1",
            server("ecdsa-p256", groups=retry_groups, stateless_retry=True),
            retry_client,
        )
    )
    return out + resumption_pair(pki)


FULL_WITH_TICKET = "full (x25519 + ECDSA, 1 ticket)"
RESUMED = "resumed (PSK + x25519, 1 ticket)"


def resumption_pair(pki: Pki) -> list[Scenario]:
    """A full and a resumed handshake on the same configuration, both issuing one ticket."""
    keyring = TicketKeyring.generate()
    config = ServerConfig(
        certificates=CertificateStore([pki.chains["ecdsa-p256"]]), ticket_keys=keyring, tickets=1
    )
    x25519 = GROUPS["x25519"]
    client = ClientConfig(ca_certificates=(pki.ca,), groups=(x25519,), key_share_groups=(x25519,))
    ticket = first_ticket(config, client)
    return [
        Scenario(FULL_WITH_TICKET, config, client),
        Scenario(RESUMED, config, client, lambda: ticket),
    ]


def throughput(pki: Pki, suite: str, megabytes: int) -> tuple[float, float]:
    """(protect MB/s, unprotect MB/s) for 16 KiB application-data writes."""
    server_config = ServerConfig(
        certificates=CertificateStore([pki.chains["ecdsa-p256"]]),
        cipher_suites=(SUITES[suite],),
        tickets=0,
    )
    client = ClientConnection(ClientConfig(ca_certificates=(pki.ca,)), server_name="localhost")
    server = ServerConnection(server_config)
    client.start()
    pump(client, server, [0.0])
    payload = bytes(RECORD)
    rounds = megabytes * 1024 * 1024 // RECORD
    wire: list[bytes] = []
    start = time.perf_counter()
    for _ in range(rounds):
        server.send_data(payload)
        wire.append(server.data_to_send())
    protect = time.perf_counter() - start
    received = 0
    start = time.perf_counter()
    for chunk in wire:
        for event in client.receive_data(chunk):
            if isinstance(event, events.ApplicationData):
                received += len(event.data)
    unprotect = time.perf_counter() - start
    if received != rounds * RECORD:
        raise RuntimeError("throughput run lost data")
    total = rounds * RECORD / 1e6
    return total / protect, total / unprotect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per handshake scenario")
    parser.add_argument("--megabytes", type=int, default=64, help="data per throughput run")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument(
        "--only", nargs="+", metavar="TEXT", help="only scenarios whose name contains a TEXT"
    )
    parser.add_argument(
        "--no-throughput", action="store_true", help="skip the record throughput table"
    )
    args = parser.parse_args(argv)
    seconds, megabytes = (0.2, 4) if args.quick else (args.seconds, args.megabytes)
    pki = make_pki()
    print(f"{'handshake scenario':<34} {'pairs/s':>9} {'server CPU us/hs':>17} {'server hs/s':>12}")
    results: dict[str, tuple[float, float]] = {}
    chosen = [
        scenario
        for scenario in scenarios(pki)
        if not args.only or any(text in scenario.name for text in args.only)
    ]
    for scenario in chosen:
        rate, server_us = handshake_rate(scenario, seconds)
        results[scenario.name] = (rate, server_us)
        print(f"{scenario.name:<34} {rate:>9.1f} {server_us:>17.0f} {1e6 / server_us:>12.0f}")
    if FULL_WITH_TICKET in results and RESUMED in results:
        (full_rate, full_us), (resumed_rate, resumed_us) = (
            results[FULL_WITH_TICKET],
            results[RESUMED],
        )
        print(
            f"full vs resumed: {full_rate:.0f} vs {resumed_rate:.0f} pairs/s; server CPU "
            f"{full_us:.0f} vs {resumed_us:.0f} us per handshake ({full_us / resumed_us:.1f}x)"
        )
    if args.no_throughput:
        return 0
    print()
    print(f"{'record throughput, 16 KiB writes':<34} {'protect MB/s':>13} {'unprotect MB/s':>15}")
    for suite in (
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ):
        protect, unprotect = throughput(pki, suite, megabytes)
        print(f"{suite:<34} {protect:>13.0f} {unprotect:>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
