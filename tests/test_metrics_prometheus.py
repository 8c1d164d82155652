"""End to end with a real Prometheus: it scrapes the proxy, evaluates our rules, and its HTTP API
shows the counters moving as traffic goes through."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port
from metrics_helpers import REPO, child_env, command, read_line, start_helper, stop

PROMETHEUS = shutil.which("prometheus")
RULES = REPO / "deploy" / "prometheus" / "tls13-proxy-rules.yml"
WAIT = 30.0  # bound on every wait for Prometheus to see a change

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed"),
]


@dataclass
class Prometheus:
    """A running Prometheus server and helpers for its HTTP API."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> object:
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = self.api("query", query=expr)
        assert isinstance(data, dict)
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def scalar(self, expr: str) -> float | None:
        """The single value of ``expr`` (None while it has no result)."""
        result = self.query(expr)
        return result[0][1] if result else None

    def wait_for(self, expr: str, check: Callable[[float], bool], what: str) -> float:
        """Poll ``expr`` until ``check`` holds (bounded by WAIT seconds)."""
        deadline = time.monotonic() + WAIT
        seen: float | None = None
        while time.monotonic() < deadline:
            seen = self.scalar(expr)
            if seen is not None and check(seen):
                return seen
            time.sleep(0.5)
        raise AssertionError(f"{what}: {expr} was {seen} after {WAIT}s\n{self.tail_log()}")

    def tail_log(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready within {WAIT}s: {log.read_text()[-2000:]}")


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    """Factory: a Prometheus scraping 127.0.0.1:<metrics port> every second, with our rules."""
    started: list[subprocess.Popen[bytes]] = []

    def start(metrics_port: int) -> Prometheus:
        assert PROMETHEUS is not None
        shutil.copy(RULES, tmp_path / RULES.name)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES.name}\n"
            "scrape_configs:\n  - job_name: tls13-proxy\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n"
        )
        port = free_port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        started.append(process)
        _wait_ready(port, process, log)
        return Prometheus(port, process, log)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_prometheus_sees_aggregated_workers_and_fires_restart_alert(
    tmp_path: Path, start_prometheus: Callable[[int], Prometheus]
) -> None:
    """The metrics parent with a forked and a spawned worker (tests/metrics_helpers.py)."""
    parent = start_helper("parent", str(tmp_path / "metrics-dir"), "4")
    try:
        port = 0
        while not port:
            line = read_line(parent)
            port = int(line) if line.isdigit() else 0
        prometheus = start_prometheus(port)
        prometheus.wait_for('up{job="tls13-proxy"}', lambda v: v == 1, "target up")
        prometheus.wait_for(
            'sum(tls13proxy_connections_accepted_total{job="tls13-proxy"})',
            lambda v: v == 10,
            "accepted summed over both workers (4 closed + 1 open each)",
        )
        prometheus.wait_for("sum(tls13proxy_worker_processes)", lambda v: v == 2, "two workers")
        assert command(parent, "kill spawn") == "killed"
        prometheus.wait_for("sum(tls13proxy_worker_processes)", lambda v: v == 1, "one left")
        prometheus.wait_for(
            'count(ALERTS{alertname="TLS13ProxyWorkerRestarts", alertstate="firing"})',
            lambda v: v == 1,
            "worker restart alert firing",
        )
        assert prometheus.scalar("sum(tls13proxy_connections_accepted_total)") == 10
    finally:
        stop(parent)


# --------------------------------------------------------------------------- the real daemon


def _proxy_config(directory: Path, tls_port: int, metrics_port: int) -> Path:
    config = directory / "proxy.toml"
    config.write_text(
        f"""
[global]
state_dir = "{directory / "state"}"
workers = 2
access_log = false

[metrics]
listen = "127.0.0.1:{metrics_port}"

[tls]
alpn = ["http/1.1"]

[certificates.default]
self_signed = true

[listeners.public]
addresses = ["127.0.0.1:{tls_port}"]

[routes.default]
default = true
pool = "demo"

[backends.demo]
servers = ["demo"]
health = {{ enabled = false }}
"""
    )
    return config


def _wait_port(port: int, proxy: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise AssertionError(f"proxy exited: {log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"port {port} not open within {WAIT}s: {log.read_text()[-3000:]}")


def _https_get(port: int) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the proxy's self-signed certificate
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def _failed_handshake(port: int) -> None:
    """A ClientHello that is not one: the proxy must answer with an alert and count a failure."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(bytes.fromhex("16030100050100000100"))
        raw.settimeout(10)
        try:
            while raw.recv(4096):
                pass
        except OSError:
            pass


@dataclass(frozen=True)
class RunningProxy:
    tls_port: int
    metrics_port: int
    pid: int


@pytest.fixture
def running_proxy(tmp_path: Path) -> Iterator[RunningProxy]:
    tls_port, metrics_port = free_port(), free_port()
    config = _proxy_config(tmp_path, tls_port, metrics_port)
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=str(REPO),
        )
    try:
        _wait_port(tls_port, proxy, log)
        _wait_port(metrics_port, proxy, log)
        yield RunningProxy(tls_port, metrics_port, proxy.pid)
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(timeout=10)


def test_prometheus_sees_proxy_traffic(
    running_proxy: RunningProxy, start_prometheus: Callable[[int], Prometheus]
) -> None:
    tls_port, metrics_port = running_proxy.tls_port, running_proxy.metrics_port
    prometheus = start_prometheus(metrics_port)
    prometheus.wait_for('up{job="tls13-proxy"}', lambda v: v == 1, "proxy target up")
    prometheus.wait_for("sum(tls13proxy_worker_processes)", lambda v: v == 2, "two workers")
    before = prometheus.scalar("sum(tls13proxy_handshakes_total)") or 0.0

    requests = 6
    for _ in range(requests):
        assert _https_get(tls_port).startswith(b"HTTP/1.1 ")
    _failed_handshake(tls_port)

    prometheus.wait_for(
        "sum(tls13proxy_handshakes_total)", lambda v: v >= before + requests, "handshakes"
    )
    prometheus.wait_for(
        'sum(tls13proxy_connections_accepted_total{listener="public"})',
        lambda v: v >= requests + 1,
        "accepted connections",
    )
    prometheus.wait_for("sum(tls13proxy_handshake_failures_total)", lambda v: v >= 1, "failure")
    prometheus.wait_for("sum(tls13proxy_sent_bytes_total)", lambda v: v > 0, "bytes sent")
    prometheus.wait_for("sum(tls13proxy_received_bytes_total)", lambda v: v > 0, "bytes received")
    prometheus.wait_for(
        "sum(tls13proxy_handshake_duration_seconds_count)",
        lambda v: v >= requests,
        "handshake latency observations",
    )
    prometheus.wait_for("sum(tls13proxy_connections_active)", lambda v: v == 0, "all closed")
    prometheus.wait_for(
        "count(instance:tls13proxy_handshakes:rate5m)", lambda v: v == 1, "recording rule"
    )
    labels = prometheus.query("tls13proxy_handshakes_total")[0][0]
    assert labels["version"] == "TLSv1.3"
    assert labels["cipher_suite"].startswith("TLS_")
    assert prometheus.scalar("tls13proxy_config_last_reload_successful") == 1


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.extend(int(child) for child in text.split())
    return found


def test_prometheus_sees_reload_and_worker_restart(
    running_proxy: RunningProxy, start_prometheus: Callable[[int], Prometheus]
) -> None:
    tls_port, metrics_port = running_proxy.tls_port, running_proxy.metrics_port
    prometheus = start_prometheus(metrics_port)
    prometheus.wait_for("sum(tls13proxy_worker_processes)", lambda v: v == 2, "two workers")
    for _ in range(3):
        _https_get(tls_port)
    handshakes = prometheus.wait_for(
        "sum(tls13proxy_handshakes_total)", lambda v: v >= 3, "handshakes before the restart"
    )
    parent = running_proxy.pid

    os.kill(parent, signal.SIGHUP)
    prometheus.wait_for("tls13proxy_config_reloads_total", lambda v: v >= 1, "reload counted")
    time.sleep(3)  # workers reload in place; their successes must not be counted again
    assert prometheus.scalar("tls13proxy_config_reloads_total") == 1
    assert prometheus.scalar("tls13proxy_config_last_reload_successful") == 1

    victim = _children(parent)[0]
    os.kill(victim, signal.SIGKILL)
    prometheus.wait_for("tls13proxy_worker_restarts_total", lambda v: v == 1, "restart counted")
    prometheus.wait_for(
        'count(ALERTS{alertname="TLS13ProxyWorkerRestarts", alertstate="firing"})',
        lambda v: v == 1,
        "restart alert",
    )
    prometheus.wait_for("sum(tls13proxy_worker_processes)", lambda v: v == 2, "replaced")
    # The dead worker's counts are kept: the total never goes backwards.
    assert (prometheus.scalar("sum(tls13proxy_handshakes_total)") or 0) >= handshakes
    assert prometheus.scalar("sum(resets(tls13proxy_handshakes_total[5m]))") == 0
