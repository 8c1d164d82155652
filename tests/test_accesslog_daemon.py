"""End to end: the daemon's access log and logging, as a log reader (or journald) sees them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Issued
from conftest import free_port
from systemd_helpers import (
    NotifyReceiver,
    daemon_command,
    daemon_env,
    https_get,
    write_daemon_config,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed as the TLS client"),
]


@pytest.fixture
def notify() -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(abstract=True)
    yield receiver
    receiver.close()


def _run_one_request(
    tmp_path: Path, leaf: Issued, notify: NotifyReceiver, global_extra: str, journal: bool
) -> tuple[list[str], list[str]]:
    """Start the daemon, make one HTTPS request, stop it; return its stdout and stderr lines.

    With ``journal``, ``$JOURNAL_STREAM`` names the stdout pipe, as systemd does when
    StandardOutput=journal.
    """
    port = free_port()
    config = write_daemon_config(
        tmp_path, leaf.cert_pem(), leaf.key_pem(), [f"127.0.0.1:{port}"], global_extra
    )
    read_end, write_end = os.pipe()
    extra = {}
    if journal:
        status = os.fstat(write_end)
        extra["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
    process = subprocess.Popen(
        daemon_command(config),
        env=daemon_env(notify, **extra),
        stdout=write_end,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(write_end)
    try:
        notify.wait_for("READY", "1", timeout=40, process=process)
        result = https_get(port)
        assert result.stdout == "200", result.stderr
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate(timeout=10)
        with os.fdopen(read_end, "rb") as stdout:
            out = stdout.read()
    return out.decode().splitlines(), err.decode().splitlines()


def test_json_access_log_line_per_connection(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver
) -> None:
    out, err = _run_one_request(tmp_path, localhost_leaf, notify, 'log_format = "json"', False)
    records = [json.loads(line) for line in out]
    served = [r for r in records if r["end"] == "ok"]
    assert len(served) == 1, records
    record = served[0]
    assert record["event"] == "access" and record["ts"].endswith("Z")
    assert record["listener"] == "web" and record["client"].startswith("127.0.0.1:")
    assert record["version"] == "TLSv1.3" and record["alpn"] == "http/1.1"
    assert record["cipher"].startswith("TLS_") and record["backend"] == "demo"
    assert record["bytes_in"] > 0 and record["bytes_out"] > 0 and record["duration"] > 0
    assert record["resumed"] is False
    # The daemon's own log lines are JSON too, on stderr.
    logs = [json.loads(line) for line in err if line.startswith("{")]
    assert logs and all({"ts", "level", "logger", "msg"} <= set(entry) for entry in logs)


def test_journal_stream_gets_priorities_and_no_timestamps(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver
) -> None:
    out, err = _run_one_request(tmp_path, localhost_leaf, notify, "", True)
    access = [line for line in out if "event=access" in line]
    assert access and all(line.startswith("<6>event=access ") for line in access), out
    assert not any("ts=" in line for line in access)
    # stderr is not the journal stream here, so daemon messages keep their timestamps.
    assert any(line.startswith("ts=") for line in err), err
