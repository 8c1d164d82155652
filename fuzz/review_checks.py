"""Reproducers for the defects listed in docs/review-engine.md (run by hand).

    python3 fuzz/review_checks.py        # one line per finding: DEFECT or fixed

Each check drives the engine in memory and reports whether the behaviour the
RFC requires is there yet.  They are not part of the test suite because the
engine files are owned by other engineers: when a fix lands, its author turns
the matching check into a test of their own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from engine_helpers import (  # type: ignore[import-not-found]  # noqa: E402
    MiniClient,
    plaintext_record,
    pump,
)

from fuzz.targets import client_config, fixed_pki, server_config  # noqa: E402
from tls13 import events  # noqa: E402
from tls13 import extensions as ext  # noqa: E402
from tls13.alerts import AlertDescription, TLSError  # noqa: E402
from tls13.client import ClientConnection  # noqa: E402
from tls13.config import ClientConfig  # noqa: E402
from tls13.messages import ClientHello  # noqa: E402
from tls13.server import ServerConnection  # noqa: E402
from tls13.tickets import ReplayRegister  # noqa: E402

X25519, P256 = 0x001D, 0x0017
CCS = b"\x14\x03\x03\x00\x01\x01"


def _client_config() -> ClientConfig:
    # No verification: the fuzz server serves an Ed25519 leaf the Web PKI verifier refuses.
    return replace(client_config(), ca_certificates=None)


def _alert_of(action: Callable[[], object]) -> AlertDescription | None:
    try:
        action()
    except TLSError as error:
        return error.alert
    return None


def cross_name_resumption_bypasses_client_auth() -> bool:
    """R1: a ticket from a name without client auth resumes on a name requiring it."""
    base = replace(server_config(), client_auth="none", client_ca=())
    secure = replace(base, client_auth="required", client_ca=(fixed_pki().ca,))
    listener = replace(
        base, config_for_name=lambda name: secure if name == "secure.example" else base
    )
    config = replace(_client_config(), certificate=None)
    client = ClientConnection(config, server_name="public.example")
    client.start()
    client_events, _ = pump(client, ServerConnection(listener))
    ticket = next(e.ticket for e in client_events if isinstance(e, events.NewSessionTicketReceived))
    # A malicious client simply offers the ticket under the other name.
    client = ClientConnection(
        config, server_name="secure.example", session=replace(ticket, server_name=None)
    )
    client.start()
    server = ServerConnection(listener)
    if _alert_of(lambda: pump(client, server)) is not None:
        return False
    return server.info is not None and server.info.resumed


def early_data_skipping_survives_hello_retry() -> bool:
    """R2: after HRR + ClientHello2, undecryptable records are still silently dropped."""
    mini = MiniClient(
        groups=(X25519, P256), share_groups=(P256,), schemes=(0x0807,),
        extra_extensions=[(ext.ExtensionType.early_data, b"")],
    )  # fmt: skip
    server = ServerConnection(replace(server_config(), groups=(X25519,)))
    server.receive_data(mini.hello_record())
    mini.extra_extensions = []
    server.receive_data(mini.handle_server_hello(server.data_to_send()))
    mini.handle_server_hello(server.data_to_send())
    garbage = b"\x17\x03\x03\x00\x40" + os.urandom(64)
    return _alert_of(lambda: server.receive_data(garbage)) is not AlertDescription.bad_record_mac


def legacy_version_alert_is_protocol_version() -> bool:
    """R3: legacy_version != 0x0303 (with supported_versions) must be illegal_parameter."""
    hello = ClientHello.parse(MiniClient(schemes=(0x0807,)).hello()[4:])
    record = plaintext_record(22, replace(hello, legacy_version=0x0301).serialize())
    server = ServerConnection(server_config())
    return _alert_of(lambda: server.receive_data(record)) is not AlertDescription.illegal_parameter


def alpn_mismatch_is_not_refused() -> bool:
    """R4: no common ALPN protocol must be no_application_protocol (RFC 7301 §3.2)."""
    client = ClientConnection(_client_config(), server_name="localhost", alpn_protocols=("x",))
    client.start()
    return _alert_of(lambda: pump(client, ServerConnection(server_config()))) is None


def client_rejects_ccs_before_server_hello() -> bool:
    """R5: a CCS after our ClientHello must be dropped, not unexpected_message."""
    client = ClientConnection(_client_config(), server_name="localhost")
    client.start()
    client.data_to_send()
    return _alert_of(lambda: client.receive_data(CCS)) is not None


def second_ccs_is_fatal() -> bool:
    """R6: every unprotected 0x01 CCS during the handshake must be dropped."""
    client = ClientConnection(_client_config(), server_name="localhost")
    client.start()
    server = ServerConnection(server_config())
    server.receive_data(client.data_to_send())
    flight = server.data_to_send()
    cut = flight.index(CCS) + len(CCS)
    return _alert_of(lambda: client.receive_data(flight[:cut] + CCS + flight[cut:])) is not None


def unsolicited_client_certificate_extension_accepted() -> bool:
    """R7: status_request in the client's CertificateEntry was never requested."""
    import tls13.client as client_module

    name = "CertificateEntry"  # patched where client.py looks it up
    original = vars(client_module)[name]
    ocsp = ext.encode_certificate_status(b"\x30\x03\x0a\x01\x00")

    def with_status(der: bytes, extensions: object = ()) -> object:
        return original(der, [(ext.ExtensionType.status_request, ocsp)])

    setattr(client_module, name, with_status)
    try:
        client = ClientConnection(_client_config(), server_name="localhost")
        client.start()
        server = ServerConnection(server_config())
        return _alert_of(lambda: pump(client, server)) is None
    finally:
        setattr(client_module, name, original)


def plaintext_alert_after_server_hello_misreported() -> bool:
    """R8: a client's cleartext alert after ServerHello (allowed, bis A.1) is not reported."""
    client = ClientConnection(_client_config(), server_name="localhost")
    client.start()
    server = ServerConnection(server_config())
    server.receive_data(client.data_to_send())
    server.data_to_send()
    try:
        server.receive_data(b"\x15\x03\x03\x00\x02\x02\x2f")
    except TLSError as error:
        return not error.sent_by_peer
    return True


def tls12_hello_with_compression_gets_illegal_parameter() -> bool:
    """R9: a TLS 1.2 ClientHello offering deflate deserves protocol_version."""
    hello = ClientHello.parse(MiniClient(schemes=(0x0807,)).hello()[4:])
    old = replace(
        hello,
        legacy_compression_methods=b"\x01\x00",
        extensions=[e for e in hello.extensions if e[0] != ext.ExtensionType.supported_versions],
    )
    server = ServerConnection(server_config())
    alert = _alert_of(lambda: server.receive_data(plaintext_record(22, old.serialize())))
    return alert is not AlertDescription.protocol_version


def ip_literal_server_name_accepted() -> bool:
    """R10: an IP literal in HostName (RFC 6066 §3) must not be routed on as a name.

    Decision (see docs/review-engine.md R10): it is ignored like an absent extension, as
    OpenSSL and nginx do, so the handshake proceeds without SNI. The defect is a server
    that either fails the handshake or reports the literal as the server name.
    """
    name = b"127.0.0.1"
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    body = len(entry).to_bytes(2, "big") + entry
    mini = MiniClient(server_name=None, schemes=(0x0807,), extra_extensions=[(0, body)])
    server = ServerConnection(server_config())
    try:
        received = server.receive_data(mini.hello_record())
    except TLSError:
        return True
    return any(
        isinstance(e, events.ClientHelloReceived) and e.server_name is not None for e in received
    )


def zero_rtt_replayable_after_register_window() -> bool:
    """R11: a 0-RTT ClientHello with a fast client clock is accepted again later."""
    now = {"server": 1000.0, "client": 1000.0}
    server_config_ = replace(
        server_config(), clock=lambda: now["server"], anti_replay=ReplayRegister(10.0, 1000)
    )
    client_config_ = replace(_client_config(), certificate=None, clock=lambda: now["client"])
    client = ClientConnection(client_config_, server_name="localhost", alpn_protocols=("h2",))
    client.start()
    client_events, _ = pump(client, ServerConnection(server_config_))
    ticket = next(e.ticket for e in client_events if isinstance(e, events.NewSessionTicketReceived))
    now["server"] += 100.0
    now["client"] += 108.0  # the client's clock was stepped 8 s forward meanwhile
    client = ClientConnection(
        client_config_, server_name="localhost", alpn_protocols=("h2",), session=ticket
    )
    client.start()
    client.send_early_data(b"POST /transfer")
    flight = client.data_to_send()
    accepted = 0
    for delay in (0.0, 5.0, 5.5, 4.0):  # the original, then replays at +5, +10.5, +14.5 s
        now["server"] += delay
        got = ServerConnection(server_config_).receive_data(flight)
        accepted += any(isinstance(e, events.EarlyData) for e in got)
    return accepted > 1


CHECKS: list[Callable[[], bool]] = [
    cross_name_resumption_bypasses_client_auth,
    early_data_skipping_survives_hello_retry,
    legacy_version_alert_is_protocol_version,
    alpn_mismatch_is_not_refused,
    client_rejects_ccs_before_server_hello,
    second_ccs_is_fatal,
    unsolicited_client_certificate_extension_accepted,
    plaintext_alert_after_server_hello_misreported,
    tls12_hello_with_compression_gets_illegal_parameter,
    ip_literal_server_name_accepted,
    zero_rtt_replayable_after_register_window,
]


def main() -> int:
    open_defects = 0
    for check in CHECKS:
        defect = check()
        open_defects += defect
        summary = (check.__doc__ or "").strip().splitlines()[0]
        print(f"{'DEFECT' if defect else 'fixed '}  {summary}")
    return 1 if open_defects else 0


if __name__ == "__main__":
    sys.exit(main())
