"""Multi-process aggregation: a forked and a spawned worker seen as one view by the parent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from metrics_helpers import (
    LISTENER,
    POOL,
    PROMTOOL,
    SERVERS,
    child_env,
    command,
    parse_exposition,
    promtool_check_metrics,
    read_line,
    scrape,
    start_helper,
    stop,
)

from proxy import metrics

CONNECTIONS_PER_WORKER = 7

pytestmark = pytest.mark.timeout(90)


def _start_parent(directory: Path) -> tuple[object, int, dict[str, dict[str, object]]]:
    proc = start_helper("parent", str(directory), str(CONNECTIONS_PER_WORKER))
    port = 0
    reports: dict[str, dict[str, object]] = {}
    while not port or len(reports) < 2:
        line = read_line(proc)
        if line.isdigit():
            port = int(line)
        else:
            report = json.loads(line)
            reports[str(report["worker"])] = report
    return proc, port, reports


def test_two_worker_processes_aggregate_into_one_view(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    proc, port, reports = _start_parent(directory)
    try:
        # A forked worker must not keep the parent's metrics socket.
        assert reports["fork"]["metrics_fd"] == "closed"
        assert {p.name.rsplit("_", 1)[-1] for p in directory.glob("counter_*.db")} >= {
            f"{reports['fork']['pid']}.db",
            f"{reports['spawn']['pid']}.db",
        }
        before = parse_exposition(scrape(port))
        total = 2 * CONNECTIONS_PER_WORKER
        # Counters summed over both workers: the open connection counts as accepted too.
        assert before.value("tls13proxy_connections_accepted_total", listener=LISTENER) == total + 2
        assert before.value("tls13proxy_received_bytes_total", listener=LISTENER) == total * 1000
        assert before.value("tls13proxy_sent_bytes_total", listener=LISTENER) == total * 2000
        assert before.value("tls13proxy_tickets_issued_total", listener=LISTENER) == total * 2
        assert before.total("tls13proxy_handshakes_total", listener=LISTENER) == total
        assert (
            before.value("tls13proxy_handshake_duration_seconds_count", listener=LISTENER) == total
        )
        # livesum gauges: one open connection and one worker per live process.
        assert before.value("tls13proxy_connections_active", listener=LISTENER) == 2
        assert before.value("tls13proxy_worker_processes") == 2
        # Merged series carry no pid label (livemostrecent/livesum/max modes).
        assert not any("pid" in dict(labels) for _, labels in before.samples)
        assert before.value("tls13proxy_config_last_reload_successful") == 1
        assert before.value("tls13proxy_config_reloads_total") == 0, "workers must not count"
        assert before.value("tls13proxy_build_info", **_build_labels(before)) == 1
        if PROMTOOL:
            checked = promtool_check_metrics(scrape(port))
            assert checked.returncode == 0, checked.stdout + checked.stderr

        assert command(proc, "reload ok") == "reloaded"
        assert parse_exposition(scrape(port)).value("tls13proxy_config_reloads_total") == 1
        assert command(proc, "kill fork") == "killed"
        after = parse_exposition(scrape(port))
        # Counters of the dead worker survive; its live gauges are gone, so the backend state
        # is the surviving (spawned) worker's observation: up.
        assert after.value("tls13proxy_connections_accepted_total", listener=LISTENER) == total + 2
        assert after.value("tls13proxy_connections_active", listener=LISTENER) == 1
        assert after.value("tls13proxy_worker_processes") == 1
        assert after.value("tls13proxy_worker_restarts_total") == 1
        assert after.value("tls13proxy_backend_up", pool=POOL, server=SERVERS[0]) == 1.0
        # The dead worker's files were folded into archives: the directory does not grow.
        assert list(directory.glob(f"*_{reports['fork']['pid']}.db")) == []
        assert (directory / "counter_archive.db").exists()

        assert command(proc, "kill spawn") == "killed"
        last = parse_exposition(scrape(port))
        assert last.value("tls13proxy_connections_accepted_total", listener=LISTENER) == total + 2
        assert last.value("tls13proxy_sent_bytes_total", listener=LISTENER) == total * 2000
        assert last.total("tls13proxy_handshakes_total") == total
        assert last.value("tls13proxy_handshake_duration_seconds_count", listener=LISTENER) == (
            total
        )
        # No live process holds a connection (the series may vanish with its last writer).
        assert not last.value("tls13proxy_connections_active", listener=LISTENER)
        assert last.value("tls13proxy_worker_restarts_total") == 2
        assert last.value("tls13proxy_config_reloads_total") == 1
        pids = {p.stem.rsplit("_", 1)[-1] for p in directory.glob("*.db")}
        assert pids <= {"archive", str(parent_pid(proc))}
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert not directory.exists(), "parent must remove its multi-process directory at exit"


def parent_pid(proc: object) -> int:
    return int(proc.pid)  # type: ignore[attr-defined]


def _build_labels(exposition: object) -> dict[str, str]:
    for name, labels in exposition.samples:  # type: ignore[attr-defined]
        if name == "tls13proxy_build_info":
            return dict(labels)
    raise AssertionError("tls13proxy_build_info missing")


def test_setup_multiprocess_removes_stale_files(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = directory / "counter_999999.db"
    stale.write_bytes(b"\0" * 16)
    proc, port, _ = _start_parent(directory)
    try:
        assert not stale.exists()
        assert "999999" not in scrape(port)
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("counter", 8.0),
        ("histogram", 8.0),
        ("gauge_sum", 8.0),
        ("gauge_max", 5.0),
        ("gauge_min", 3.0),
        ("gauge_mostrecent", 3.0),
    ],
)
def test_fold_into_archive_merges_by_kind(tmp_path: Path, kind: str, expected: float) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    archive = MmapedDict(str(tmp_path / f"{kind}_archive.db"))
    archive.write_value("k", 5.0, 10.0)
    archive.close()
    dead_path = tmp_path / f"{kind}_4242.db"
    dead = MmapedDict(str(dead_path))
    dead.write_value("k", 3.0, 20.0)
    dead.write_value("new", 7.0, 0.0)
    dead.close()
    metrics._fold_into_archive(dead_path, kind)
    assert not dead_path.exists()
    merged = {
        key: value
        for key, value, _, _ in MmapedDict.read_all_values_from_file(
            str(tmp_path / f"{kind}_archive.db")
        )
    }
    assert merged == {"k": expected, "new": 7.0}


def test_fold_leaves_per_process_gauges_alone(tmp_path: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    dead_path = tmp_path / "gauge_all_4242.db"
    dead = MmapedDict(str(dead_path))
    dead.write_value("k", 1.0, 0.0)
    dead.close()
    metrics._fold_into_archive(dead_path, "gauge_all")
    assert dead_path.exists()
    assert not (tmp_path / "gauge_all_archive.db").exists()


WORKER_VALUES_CHILD = """
import json, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values
from proxy import metrics

def seen():
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, sys.argv[1])
    return generate_latest(registry).decode()

class Handshake:
    version, cipher_suite, group = "TLSv1.3", "TLS_AES_128_GCM_SHA256", "x25519"
    hello_retry = resumed = early_data_accepted = False

report = {"worker_values": values.ValueClass is metrics._WorkerValue}
metrics.declare_listener("public")
report["declared_before_flush"] = seen()
metrics.flush()
report["declared_after_flush"] = seen()
with metrics.ConnectionMetrics("public") as connection:
    connection.handshake_completed(Handshake())
    connection.add_sent(300)
metrics.config_reloaded(False)
report["updated_before_flush"] = seen()
metrics.flush()
report["updated_after_flush"] = seen()
print(json.dumps(report))
"""


def test_worker_values_reach_the_files_at_flush(tmp_path: Path) -> None:
    """A worker (imported with the directory exported) keeps its updates in memory and
    writes them, in prometheus-client's format, when it flushes."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", WORKER_VALUES_CHILD, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["worker_values"]
    accepted = "tls13proxy_connections_accepted_total"
    assert accepted not in report["declared_before_flush"]
    declared = parse_exposition(report["declared_after_flush"])
    assert declared.value(accepted, listener=LISTENER) == 0, "declared series exposed at zero"
    before = parse_exposition(report["updated_before_flush"])
    assert before.value(accepted, listener=LISTENER) == 0, "nothing written before the flush"
    after = parse_exposition(report["updated_after_flush"])
    assert after.value(accepted, listener=LISTENER) == 1
    assert after.value("tls13proxy_sent_bytes_total", listener=LISTENER) == 300
    assert after.total("tls13proxy_handshakes_total", listener=LISTENER) == 1
    assert after.value("tls13proxy_handshake_duration_seconds_count", listener=LISTENER) == 1
    assert after.value("tls13proxy_connections_active", listener=LISTENER) == 0
    assert after.value("tls13proxy_config_reload_failures_total") == 1
    assert after.value("tls13proxy_config_last_reload_successful") == 0, "mostrecent gauge"
