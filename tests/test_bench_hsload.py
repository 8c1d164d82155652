"""bench/hsload.py makes genuine full TLS 1.3 handshakes: against ``openssl s_server`` it
completes them, reads the response, and counts a handshake whose Finished the server
rejects as a failure, not a success.  No timing thresholds."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_certs  # noqa: E402
import bench_targets  # noqa: E402
import hsload  # noqa: E402

from tls13.keyschedule import derive_secret, hkdf_expand_label  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def test_prebuilt_labels_expand_like_the_engine_key_schedule() -> None:
    secret, transcript = bytes(range(32)), bytes(range(32, 64))
    sha256 = hashes.SHA256()
    assert hsload.expand(secret, hsload.INFO_KEY, 16) == hkdf_expand_label(
        sha256, secret, b"key", b"", 16
    )
    assert hsload.expand(secret, hsload.INFO_IV, 12) == hkdf_expand_label(
        sha256, secret, b"iv", b"", 12
    )
    assert hsload.expand(secret, hsload.PREFIX_S_AP + transcript) == derive_secret(
        sha256, secret, b"s ap traffic", transcript
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """``openssl s_server -www -tls1_3`` on loopback with the benchmark's ECDSA chain."""
    directory = tmp_path_factory.mktemp("s_server")
    material = bench_certs.write_material(directory)
    port = _free_port()
    log = directory / "s_server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                "openssl",
                "s_server",
                "-accept",
                f"127.0.0.1:{port}",
                "-www",
                "-tls1_3",
                "-cert",
                str(material.chain),
                "-key",
                str(material.key),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(60)
def test_full_handshakes_and_responses_against_s_server(s_server: tuple[int, Path]) -> None:
    port, _log = s_server
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "hsload.py"),
            "--port",
            str(port),
            "--duration",
            "1",
            "--concurrency",
            "4",
        ],
        capture_output=True,
        timeout=50,
        check=False,
    )
    report = json.loads(done.stdout)
    assert report["handshakes"] > 0, report
    assert report["failures"] == {}, report
    # s_server -www answers "HTTP/1.0 200 ok": every finished connection read a response.
    assert report["responses"] > 0
    assert report["handshakes"] - report["responses"] <= report["concurrency"]
    assert report["cpu_seconds"] > 0
    assert done.returncode == 0


def test_s_server_reports_each_handshake_as_new(s_server: tuple[int, Path]) -> None:
    """``s_server -www`` describes the session in its page: "New" (full handshake) or
    "Reused" (resumption).  hsload's must all be new."""
    port, _log = s_server
    template = hsload.Template.create("localhost", b"GET / HTTP/1.0\r\n\r\n")
    generator = hsload.LoadGenerator("127.0.0.1", port, 1, template, keep_response=1 << 16)
    report = generator.run(0.3)
    assert report.responses > 0 and not report.failures, report
    assert b"New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256" in generator.last_response
    assert b"Reused" not in generator.last_response


@pytest.mark.timeout(60)
def test_a_wrong_client_finished_is_a_failure(
    s_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server must refuse our Finished when it is wrong (RFC 8446 §4.4.4): hsload then
    counts no handshake, only the alert, so its successes are the server's."""
    port, log = s_server
    monkeypatch.setattr(hsload, "INFO_FINISHED", hsload.hkdf_label(b"finishez", b"", 32))
    template = hsload.Template.create("localhost", b"GET / HTTP/1.0\r\n\r\n")
    report = hsload.LoadGenerator("127.0.0.1", port, 2, template).run(0.5)
    assert report.handshakes == 0 and report.responses == 0
    assert report.failures and all("decrypt_error" in why for why in report.failures), (
        report.failures
    )


def _hsload(port: int, duration: float, concurrency: int) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "hsload.py"),
            "--port",
            str(port),
            "--duration",
            str(duration),
            "--concurrency",
            str(concurrency),
        ],
        capture_output=True,
        timeout=duration + 50,
        check=False,
    )
    report: dict[str, object] = json.loads(done.stdout)
    return report


@pytest.mark.timeout(90)
def test_our_daemon_logs_each_hsload_connection_as_full_and_clean(tmp_path: Path) -> None:
    """Our access log, per connection: resumed=false (a full handshake), and end=ok for
    every connection hsload finished (response read, close_notify both ways)."""
    material = bench_certs.write_material(tmp_path)
    backend, backend_port = bench_targets.start_backend(tmp_path, None, "light_backend.py")
    port = bench_targets.free_port()
    config = tmp_path / "ours.toml"
    text = bench_targets.ours_config(material, tmp_path, port, backend_port, 1)
    config.write_text(text.replace("access_log = false", "access_log = true"))
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config)],
            cwd=bench_targets.REPO_DIR,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        bench_targets.wait_for_port(port, daemon, timeout=30)
        report = _hsload(port, 1.0, 4)
        assert report["handshakes"] and report["failures"] == {}, report
        deadline = time.monotonic() + 10
        while True:  # each access line is written when its connection has ended
            lines = [line for line in log.read_text().splitlines() if "event=access" in line]
            ok = [line for line in lines if " end=ok" in line]
            if len(ok) >= int(str(report["responses"])) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
        backend.terminate()
        backend.wait(10)
    assert len(ok) == report["responses"]
    # Every connection that got through a handshake says it was full (the port probe of
    # wait_for_port never started one, so its line has no version).
    handshaken = [line for line in lines if " version=TLSv1.3 " in line]
    assert len(handshaken) >= len(ok)
    assert all(" resumed=false " in line for line in handshaken)
