"""The metrics endpoint on a socket systemd passed (``[metrics] listen = "systemd:NAME"``)."""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from certs import Issued
from conftest import free_port
from systemd_helpers import NotifyReceiver, daemon_command, daemon_env, start, stop

from proxy.daemon import split_metrics_socket
from proxy.settings import ListenAddress, MetricsSettings, Settings

READY_TIMEOUT = 40


def _settings(listen: ListenAddress, enabled: bool = True) -> Settings:
    return Settings(metrics=MetricsSettings(enabled=enabled, listen=listen))


def _sockets(*names: str) -> list[tuple[str, socket.socket]]:
    return [(name, socket.socket()) for name in names]


def test_the_named_socket_goes_to_metrics_and_the_rest_to_listeners() -> None:
    activated = _sockets("https", "metrics", "other")
    try:
        chosen, rest = split_metrics_socket(_settings(ListenAddress("", 0, "metrics")), activated)
        assert chosen is activated[1][1]
        assert [name for name, _ in rest] == ["https", "other"]
    finally:
        for _, sock in activated:
            sock.close()


def test_address_or_disabled_metrics_take_no_socket() -> None:
    activated = _sockets("metrics")
    try:
        for settings in (
            _settings(ListenAddress("127.0.0.1", 9464)),
            _settings(ListenAddress("", 0, "metrics"), enabled=False),
        ):
            chosen, rest = split_metrics_socket(settings, activated)
            assert chosen is None and rest == activated
    finally:
        activated[0][1].close()


def test_a_missing_socket_is_a_startup_error() -> None:
    activated = _sockets("https")
    try:
        with pytest.raises(OSError, match="metrics"):
            split_metrics_socket(_settings(ListenAddress("", 0, "metrics")), activated)
    finally:
        activated[0][1].close()


def _config(root: Path, leaf: Issued) -> Path:
    (root / "leaf.crt").write_bytes(leaf.cert_pem())
    (root / "leaf.key").write_bytes(leaf.key_pem())
    config = root / "proxy.toml"
    config.write_text(
        f"""
[global]
state_dir = "{root / "state"}"

[metrics]
listen = "systemd:metrics"

[certificates.site]
chain = "{root / "leaf.crt"}"
key = "{root / "leaf.key"}"

[listeners.public]
addresses = ["systemd:https"]

[routes.default]
default = true
pool = "demo"

[backends.demo]
servers = ["demo"]
"""
    )
    return config


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
def test_metrics_served_on_a_socket_activated_by_systemd(
    tmp_path: Path, localhost_leaf: Issued
) -> None:
    tls_port, metrics_port = free_port(), free_port()
    notify = NotifyReceiver(abstract=True)
    command = [
        "systemd-socket-activate",
        "-l", f"127.0.0.1:{tls_port}",
        "-l", f"127.0.0.1:{metrics_port}",
        "--fdname=https:metrics",
        "-E", "NOTIFY_SOCKET",
        "-E", "PYTHONPATH",
        *daemon_command(_config(tmp_path, localhost_leaf)),
    ]  # fmt: skip
    process = start(command, daemon_env(notify))
    try:
        deadline = time.monotonic() + 10
        while True:  # systemd-socket-activate starts the daemon on the first connection
            try:
                socket.create_connection(("127.0.0.1", metrics_port), timeout=2).close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
                time.sleep(0.1)
        notify.wait_for("READY", "1", timeout=READY_TIMEOUT, process=process)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        assert 'tls13proxy_connections_accepted_total{listener="public"}' in body
        assert 'tls13proxy_certificate_not_after_timestamp_seconds{certificate="site"}' in body
    finally:
        out, err = stop(process)
        notify.close()
    assert b"Traceback" not in err, err.decode()[-3000:]
