"""proxy.metrics: the per-connection API, label bounding, exposition and the HTTP endpoint."""

from __future__ import annotations

import datetime
import errno
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from certs import Issued, make_ca, make_leaf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from hypothesis import given
from hypothesis import strategies as st
from metrics_helpers import (
    PROMTOOL,
    FakeHandshake,
    FakeTLSError,
    parse_exposition,
    promtool_check_metrics,
    read_line,
    scrape,
    start_helper,
    stop,
)
from prometheus_client import generate_latest

from proxy import metrics
from proxy.metrics import M
from proxy.metrics_http import AddressError, parse_address

pytestmark = pytest.mark.timeout(60)


def value(name: str, **labels: str) -> float:
    """Current value of one sample in this process's registry (0 when absent)."""
    return M.registry.get_sample_value(name, labels) or 0.0


class Delta:
    """Snapshot a sample so a test can assert on its change (the registry is process-global)."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels
        self.start = value(name, **labels)

    @property
    def change(self) -> float:
        return value(self.name, **self.labels) - self.start


def test_connection_lifecycle_counts_once_and_flushes_bytes_at_close() -> None:
    accepted = Delta("tls13proxy_connections_accepted_total", listener="lc")
    received = Delta("tls13proxy_received_bytes_total", listener="lc")
    sent = Delta("tls13proxy_sent_bytes_total", listener="lc")
    durations = Delta("tls13proxy_connection_duration_seconds_count", listener="lc")
    conn = metrics.ConnectionMetrics("lc")
    assert accepted.change == 1
    assert value("tls13proxy_connections_active", listener="lc") == 1
    conn.add_received(300)
    conn.add_sent(700)
    assert received.change == 0 and sent.change == 0, "bytes must not hit a counter per call"
    conn.close()
    conn.close()
    assert (received.change, sent.change) == (300, 700)
    assert durations.change == 1
    assert value("tls13proxy_connections_active", listener="lc") == 0


def test_large_transfers_flush_before_close() -> None:
    received = Delta("tls13proxy_received_bytes_total", listener="big")
    with metrics.ConnectionMetrics("big") as conn:
        for _ in range(3):
            conn.add_received(metrics.BYTES_FLUSH_THRESHOLD // 2)
        assert received.change == metrics.BYTES_FLUSH_THRESHOLD
        conn.add_received(5)
    assert received.change == 3 * (metrics.BYTES_FLUSH_THRESHOLD // 2) + 5


def test_context_manager_closes_on_exception() -> None:
    with pytest.raises(RuntimeError), metrics.ConnectionMetrics("exc"):
        raise RuntimeError("boom")
    assert value("tls13proxy_connections_active", listener="exc") == 0


def test_handshake_labels_come_from_fixed_tables() -> None:
    full = Delta(
        "tls13proxy_handshakes_total",
        listener="hs",
        version="TLSv1.3",
        cipher_suite="TLS_CHACHA20_POLY1305_SHA256",
        group="X25519MLKEM768",
        resumed="false",
        hello_retry="true",
    )
    odd = Delta(
        "tls13proxy_handshakes_total",
        listener="hs",
        version="other",
        cipher_suite="other",
        group="none",
        resumed="true",
        hello_retry="false",
    )
    with metrics.ConnectionMetrics("hs") as conn:
        conn.handshake_completed(
            FakeHandshake(
                cipher_suite="TLS_CHACHA20_POLY1305_SHA256",
                group="X25519MLKEM768",
                hello_retry=True,
            )
        )
        conn.handshake_completed(FakeHandshake())  # a second report is ignored
    with metrics.ConnectionMetrics("hs") as conn:
        conn.handshake_completed(
            FakeHandshake(
                version="evil\nversion", cipher_suite="TLS_EVIL", group=None, resumed=True
            )
        )
    assert full.change == 1
    assert odd.change == 1
    assert value("tls13proxy_handshake_duration_seconds_count", listener="hs") == 2


def test_early_data_outcomes() -> None:
    outcome = {
        o: Delta("tls13proxy_early_data_total", listener="ed", outcome=o)
        for o in metrics.EARLY_DATA_OUTCOMES
    }
    with metrics.ConnectionMetrics("ed") as conn:
        conn.handshake_completed(FakeHandshake(early_data_accepted=True), offered_early_data=True)
    with metrics.ConnectionMetrics("ed") as conn:
        conn.handshake_completed(FakeHandshake(), offered_early_data=True)
        conn.early_data_replay_refused()
    with metrics.ConnectionMetrics("ed") as conn:
        conn.handshake_completed(FakeHandshake(), offered_early_data=False)
    assert {o: d.change for o, d in outcome.items()} == {
        "accepted": 1,
        "rejected": 1,
        "replay_refused": 1,
    }


def test_tls_errors_count_alerts_and_handshake_failures_by_origin() -> None:
    local = Delta(
        "tls13proxy_handshake_failures_total", listener="te", reason="decode_error", origin="local"
    )
    peer = Delta(
        "tls13proxy_handshake_failures_total", listener="te", reason="unknown_ca", origin="peer"
    )
    sent = Delta("tls13proxy_alerts_sent_total", listener="te", alert="decode_error")
    received = Delta("tls13proxy_alerts_received_total", listener="te", alert="unknown_ca")
    late = Delta("tls13proxy_alerts_sent_total", listener="te", alert="bad_record_mac")
    with metrics.ConnectionMetrics("te") as conn:
        conn.tls_error(FakeTLSError(alert=50))
    with metrics.ConnectionMetrics("te") as conn:
        conn.tls_error(FakeTLSError(alert=48, sent_by_peer=True))
    with metrics.ConnectionMetrics("te") as conn:
        conn.handshake_completed(FakeHandshake())
        conn.tls_error(FakeTLSError(alert=20))  # after the handshake: an alert, not a failure
    assert (local.change, peer.change, sent.change, received.change) == (1, 1, 1, 1)
    assert late.change == 1
    assert (
        value(
            "tls13proxy_handshake_failures_total",
            listener="te",
            reason="bad_record_mac",
            origin="local",
        )
        == 0
    )


def test_handshake_failure_reasons_are_bounded() -> None:
    other = Delta(
        "tls13proxy_handshake_failures_total", listener="hf", reason="other", origin="local"
    )
    timeout = Delta(
        "tls13proxy_handshake_failures_total", listener="hf", reason="timeout", origin="local"
    )
    with metrics.ConnectionMetrics("hf") as conn:
        conn.handshake_failed("client said something weird")
    with metrics.ConnectionMetrics("hf") as conn:
        conn.handshake_failed("timeout")
    assert (other.change, timeout.change) == (1, 1)


def test_handshake_failed_with_an_alert_name_counts_the_alert_once() -> None:
    sent = Delta("tls13proxy_alerts_sent_total", listener="hfa", alert="illegal_parameter")
    received = Delta("tls13proxy_alerts_received_total", listener="hfa", alert="bad_certificate")
    timeouts = Delta("tls13proxy_alerts_sent_total", listener="hfa", alert="unknown")
    with metrics.ConnectionMetrics("hfa") as conn:
        conn.handshake_failed("illegal_parameter")
        conn.tls_error(FakeTLSError(alert=47))  # same failure reported twice: counted once
    with metrics.ConnectionMetrics("hfa") as conn:
        conn.handshake_failed("bad_certificate", by_peer=True)
    with metrics.ConnectionMetrics("hfa") as conn:
        conn.handshake_failed("timeout")
    assert (sent.change, received.change, timeouts.change) == (1, 1, 0)


def test_alert_label_never_exposes_unknown_codes() -> None:
    assert metrics.alert_label(40) == "handshake_failure"
    assert metrics.alert_label(255) == "unknown"
    assert metrics.alert_label("no_such_alert") == "unknown"
    assert metrics.alert_label("close_notify") == "close_notify"


def test_bounded_label_caps_distinct_values() -> None:
    guard = metrics._BoundedLabel(metrics._CODE_NAME, limit=3)
    assert [guard(n) for n in ("a", "b", "c", "d", "a")] == ["a", "b", "c", "other", "a"]
    assert guard("Not An Identifier") == "other"
    rejected = Delta("tls13proxy_connections_rejected_total", listener="rj", reason="other")
    metrics.connection_rejected("rj", "198.51.100.7 said hi")
    assert rejected.change == 1


def test_limits_and_rejections() -> None:
    hits = Delta("tls13proxy_limit_hits_total", limit="max_handshake_message")
    rejected = Delta(
        "tls13proxy_connections_rejected_total", listener="rj", reason="proxy_protocol"
    )
    metrics.limit_hit("max_handshake_message")
    metrics.connection_rejected("rj", "proxy_protocol")
    assert (hits.change, rejected.change) == (1, 1)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError(), "refused"),
        (ConnectionResetError(), "reset"),
        (TimeoutError(), "timeout"),
        (OSError(errno.EHOSTUNREACH, "no route"), "unreachable"),
        (KeyboardInterrupt(), "cancelled"),
        (ValueError("odd"), "error"),
    ],
)
def test_backend_connect_classifies_failures(error: BaseException, reason: str) -> None:
    attempts = Delta("tls13proxy_backend_connect_attempts_total", pool="p", server="s:1")
    failures = Delta(
        "tls13proxy_backend_connect_failures_total", pool="p", server="s:1", reason=reason
    )
    successes = Delta("tls13proxy_backend_connect_duration_seconds_count", pool="p", server="s:1")
    with pytest.raises(type(error)), metrics.backend_connect("p", "s:1"):
        raise error
    assert (attempts.change, failures.change, successes.change) == (1, 1, 0)


def test_backend_connect_success_observes_latency() -> None:
    total = Delta("tls13proxy_backend_connect_duration_seconds_sum", pool="p", server="s:2")
    count = Delta("tls13proxy_backend_connect_duration_seconds_count", pool="p", server="s:2")
    with metrics.backend_connect("p", "s:2"):
        time.sleep(0.02)
    assert count.change == 1
    assert 0.015 <= total.change < 5


def test_backend_health_gauge() -> None:
    metrics.set_backend_up("p", "s:3", True)
    assert value("tls13proxy_backend_up", pool="p", server="s:3") == 1
    metrics.set_backend_up("p", "s:3", False)
    assert value("tls13proxy_backend_up", pool="p", server="s:3") == 0


def test_config_reload_metrics() -> None:
    reloads = Delta("tls13proxy_config_reloads_total")
    failures = Delta("tls13proxy_config_reload_failures_total")
    before = time.time()
    metrics.config_reloaded(True)
    assert value("tls13proxy_config_last_reload_successful") == 1
    assert value("tls13proxy_config_last_reload_success_timestamp_seconds") >= before
    metrics.config_reloaded(False)
    assert value("tls13proxy_config_last_reload_successful") == 0
    assert (reloads.change, failures.change) == (2, 1)


def test_worker_reload_reports_only_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a worker (multi-process dir inherited, not owned) the parent has counted the reload."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "/nonexistent-inherited-dir")
    reloads = Delta("tls13proxy_config_reloads_total")
    failures = Delta("tls13proxy_config_reload_failures_total")
    metrics.config_reloaded(True)
    assert (reloads.change, failures.change) == (0, 0)
    metrics.config_reloaded(False)
    assert (reloads.change, failures.change) == (0, 1)
    assert value("tls13proxy_config_last_reload_successful") == 0


def test_certificates_are_replaced_and_ocsp_age_is_computed_at_scrape() -> None:
    issued = make_ca("metrics test CA")
    now = datetime.datetime.now(datetime.timezone.utc)
    metrics.set_certificates(
        {
            "main": metrics.certificate_times(issued.cert, now - datetime.timedelta(hours=3)),
            "old": metrics.CertificateTimes(now + datetime.timedelta(days=1)),
        }
    )
    expected = issued.cert.not_valid_after_utc.timestamp()
    assert value("tls13proxy_certificate_not_after_timestamp_seconds", certificate="main") == (
        expected
    )
    exposed = parse_exposition(generate_latest(metrics.exposition_registry()).decode())
    age = exposed.value("tls13proxy_ocsp_staple_age_seconds", certificate="main")
    assert age is not None and 3 * 3600 - 5 < age < 3 * 3600 + 60
    metrics.set_certificates({"main": metrics.certificate_times(issued.cert)})
    names = {
        labels
        for (name, labels) in parse_exposition(
            generate_latest(metrics.exposition_registry()).decode()
        ).samples
        if name == "tls13proxy_certificate_not_after_timestamp_seconds"
    }
    assert names == {(("certificate", "main"),)}


def _ocsp_response(issuer: Issued, leaf: Issued, produced_at: datetime.datetime) -> bytes:
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf.cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=produced_at,
            next_update=produced_at + datetime.timedelta(days=7),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
    )
    response = builder.sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]
    return response.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class FakeChain:
    certificates: tuple[x509.Certificate, ...]
    ocsp_response: bytes | None = None


def test_chain_times_reads_leaf_expiry_and_staple_age() -> None:
    issuer = make_ca("metrics OCSP CA")
    leaf = make_leaf(issuer, ("example.test",))
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    staple = _ocsp_response(issuer, leaf, before - datetime.timedelta(hours=5))
    times = metrics.chain_times(FakeChain((leaf.cert, issuer.cert), staple))
    assert times.not_after == leaf.cert.not_valid_after_utc
    # producedAt is when the responder signed (the builder uses "now"), not thisUpdate.
    assert times.ocsp_produced_at is not None
    assert abs((times.ocsp_produced_at - before).total_seconds()) <= 5
    assert metrics.chain_times(FakeChain((leaf.cert,))).ocsp_produced_at is None
    assert metrics.chain_times(FakeChain((leaf.cert,), b"garbage")).ocsp_produced_at is None
    unsuccessful = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER
    ).public_bytes(serialization.Encoding.DER)
    assert metrics.chain_times(FakeChain((leaf.cert,), unsuccessful)).ocsp_produced_at is None


def test_describe_matches_registry() -> None:
    described = {d.name for d in metrics.describe_metrics()}
    exposed = set(parse_exposition(generate_latest(metrics.exposition_registry()).decode()).types)
    assert described == exposed
    assert all(d.name.startswith("tls13proxy_") for d in metrics.describe_metrics())


def test_connection_accounting_is_cheap() -> None:
    """A whole connection's accounting must cost microseconds, not milliseconds."""
    info = FakeHandshake()
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        with metrics.ConnectionMetrics("perf") as conn:
            conn.handshake_completed(info)
            for _ in range(10):
                conn.add_received(1400)
                conn.add_sent(1400)
    per_connection = (time.perf_counter() - started) / rounds
    assert per_connection < 500e-6, f"{per_connection * 1e6:.1f} µs per connection"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
        (":9464", ("0.0.0.0", 9464)),
        (("::1", 80), ("::1", 80)),
    ],
)
def test_parse_address(text: str | tuple[str, int], expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["9464", "::1:9464", "[::1]9464", "host:http", "host:70000", "systemd:metrics"]
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_endpoint_serves_metrics_only_at_metrics_path(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    with metrics.start_metrics_server((host, 0)) as server:
        port = server.address[1]
        body = scrape(port, host)
        assert "# TYPE tls13proxy_connections_accepted_total counter" in body
        assert "_created" not in body
        assert "metrics" in scrape(port, host, "/")
        with pytest.raises(urllib.error.HTTPError) as missing:
            scrape(port, host, "/secret")
        assert missing.value.code == 404
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restart would
        probe.bind((host, port))  # the listening socket is released on close


def test_endpoint_supports_openmetrics_negotiation() -> None:
    with metrics.start_metrics_server("127.0.0.1:0") as server:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.address[1]}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().rstrip().endswith("# EOF")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_accepts_sample_process_output() -> None:
    proc = start_helper("sample")
    try:
        port = int(read_line(proc))
        text = scrape(port)
    finally:
        stop(proc)
    checked = promtool_check_metrics(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    exposition = parse_exposition(text)
    assert (
        exposition.value("tls13proxy_alerts_received_total", listener="public", alert="unknown_ca")
        == 1
    )
    assert exposition.value("tls13proxy_backend_up", pool="web", server="10.0.0.2:8080") == 0


def test_endpoint_adopts_a_socket_bound_elsewhere() -> None:
    """systemd socket activation hands over a bound, listening socket ("systemd:NAME")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    with metrics.start_metrics_server(sock) as server:
        assert server.address == ("127.0.0.1", port)
        assert "tls13proxy_build_info" in scrape(port)
    assert sock.fileno() == -1, "closing the server closes the adopted socket"


@given(st.text(max_size=80))
def test_network_derived_labels_stay_in_their_tables(text: str) -> None:
    assert metrics._from_table(text, metrics.CIPHER_SUITES) in metrics.CIPHER_SUITES | {"other"}
    assert metrics._from_table(text, metrics.GROUPS) in metrics.GROUPS | {"other"}
    assert metrics.alert_label(text) in metrics.ALERT_NAMES | {"unknown"}


@given(st.integers(min_value=-(2**31), max_value=2**31))
def test_alert_codes_map_into_the_enum(code: int) -> None:
    assert metrics.alert_label(code) in metrics.ALERT_NAMES | {"unknown"}


@given(st.lists(st.text(max_size=60), max_size=40))
def test_code_supplied_labels_are_identifiers_or_other(values: list[str]) -> None:
    guard = metrics._BoundedLabel(metrics._CODE_NAME, limit=8)
    admitted = {guard(v) for v in values}
    assert len(admitted - {"other"}) <= 8
    assert all(v == "other" or metrics._CODE_NAME.fullmatch(v) for v in admitted)
