"""Helpers for the metrics tests, also runnable as the child processes those tests start.

``python tests/metrics_helpers.py sample``   one process: sample traffic through every API
                                             call, serves /metrics, prints the port, waits.
``python tests/metrics_helpers.py parent DIR``  multi-process parent: a forked and a spawned
                                             worker; commands on stdin (``kill fork`` …).
``python tests/metrics_helpers.py worker NAME N``  a worker (spawned, or the forked child body).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
LISTENER = "public"
POOL = "web"
SERVERS = ("10.0.0.1:8080", "10.0.0.2:8080")


# ----------------------------------------------------------------------------- test side


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a helper child: repo importable, no inherited multi-process dir."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def start_helper(*args: str) -> subprocess.Popen[str]:
    """Start this file as a child with ``args``; stdin/stdout are line-based pipes."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=str(REPO),
    )


_line_queues: dict[int, queue.Queue[str | None]] = {}


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """A queue fed by a reader thread (select() cannot see lines already in Python's buffer)."""
    lines = _line_queues.get(proc.pid)
    if lines is None:
        lines = _line_queues[proc.pid] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
    return lines


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The child's next stdout line (bounded wait: a hung child fails the test)."""
    try:
        line = _lines_of(proc).get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no output from helper within {timeout}s") from None
    if line is None:
        raise EOFError(f"helper exited with {proc.wait(timeout=5)}")
    return line.strip()


def command(proc: subprocess.Popen[str], text: str) -> str:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()
    return read_line(proc)


def scrape(port: int, host: str = "127.0.0.1", path: str = "/metrics") -> str:
    """GET the endpoint and return the body (raises on non-200)."""
    netloc = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{netloc}:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


@dataclass(frozen=True)
class Exposition:
    """Parsed text exposition: samples by (name, sorted labels), and # TYPE lines."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    types: dict[str, str]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str, **labels: str) -> float:
        """Sum of every sample of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample_name, sample_labels), value in self.samples.items()
            if sample_name == name and wanted <= set(sample_labels)
        )


def parse_exposition(text: str) -> Exposition:
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return Exposition(samples, types)


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def stop(proc: subprocess.Popen[str]) -> None:
    """Ask a helper to quit, then make sure it is gone."""
    if proc.poll() is None:
        try:
            command(proc, "quit")
            proc.wait(timeout=10)
        except (OSError, EOFError, TimeoutError, subprocess.TimeoutExpired):
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# ----------------------------------------------------------------------------- child side


@dataclass(frozen=True)
class FakeHandshake:
    """Stands in for ``tls13.events.HandshakeComplete`` (only the fields metrics read)."""

    version: str = "TLSv1.3"
    cipher_suite: str = "TLS_AES_128_GCM_SHA256"
    group: str | None = "x25519"
    hello_retry: bool = False
    resumed: bool = False
    early_data_accepted: bool = False


@dataclass(frozen=True)
class FakeTLSError:
    alert: int
    sent_by_peer: bool = False


def drive_connections(count: int) -> None:
    """``count`` full handshakes, each moving 1000 bytes in and 2000 out, then closed."""
    from proxy import metrics

    for _ in range(count):
        with metrics.ConnectionMetrics(LISTENER) as conn:
            conn.add_received(1000)
            conn.handshake_completed(FakeHandshake())
            conn.ticket_issued(2)
            conn.add_sent(2000)


def drive_everything() -> None:
    """Touch every metric at least once (the sample process for promtool and the docs test)."""
    from proxy import metrics

    metrics.config_loaded()
    metrics.worker_started()
    metrics.declare_listener(LISTENER)
    drive_connections(3)
    with metrics.ConnectionMetrics(LISTENER) as conn:
        conn.handshake_completed(
            FakeHandshake(group=None, resumed=True, early_data_accepted=True),
            offered_early_data=True,
        )
        conn.early_data_replay_refused()
        conn.alert_received("close_notify")
        conn.alert_sent("close_notify")
    with metrics.ConnectionMetrics(LISTENER) as conn:
        conn.tls_error(FakeTLSError(alert=40))
    with metrics.ConnectionMetrics(LISTENER) as conn:
        conn.tls_error(FakeTLSError(alert=48, sent_by_peer=True))
    metrics.connection_rejected(LISTENER, "max_connections")
    metrics.limit_hit("max_connections")
    for server in SERVERS:
        metrics.declare_backend(POOL, server)
    with metrics.backend_connect(POOL, SERVERS[0]):
        pass
    metrics.observe_backend_connect(POOL, SERVERS[1], 1.5, failure="timeout")
    metrics.set_backend_up(POOL, SERVERS[0], True)
    metrics.set_backend_up(POOL, SERVERS[1], False)
    metrics.config_reloaded(True)
    metrics.config_reloaded(False)
    now = datetime.datetime.now(datetime.timezone.utc)
    metrics.set_certificates(
        {
            "main": metrics.CertificateTimes(
                now + datetime.timedelta(days=30), now - datetime.timedelta(hours=2)
            ),
            "legacy": metrics.CertificateTimes(now + datetime.timedelta(days=3)),
        }
    )
    metrics.set_ocsp_staple_states({"main": False, "legacy": True})
    metrics.worker_restarted()


def _serve_until_quit(server_port: int, handlers: dict[str, object] | None = None) -> None:
    print(server_port, flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            print("bye", flush=True)
            return
        handler = (handlers or {}).get(words[0])
        if handler is None:
            print(f"unknown command {words[0]}", flush=True)
            continue
        print(handler(*words[1:]), flush=True)  # type: ignore[operator]


def run_sample() -> None:
    from proxy import metrics

    drive_everything()
    server = metrics.start_metrics_server(os.environ.get("METRICS_ADDRESS", "127.0.0.1:0"))
    try:
        _serve_until_quit(server.address[1])
    finally:
        server.close()


def holds_socket(inode: int) -> bool:
    """Whether this process has any descriptor on the socket with ``inode`` (Linux /proc)."""
    target = f"socket:[{inode}]"
    for entry in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(entry) == target:
                return True
        except OSError:
            continue
    return False


def run_worker(name: str, count: int, parent_metrics_inode: int = -1) -> None:
    """Worker body: traffic, one connection left open, then wait for "quit" on stdin."""
    from proxy import metrics

    metrics.worker_started()
    metrics.config_reloaded(True)  # an in-place reload: the parent already counted it
    drive_connections(count)
    open_conn = metrics.ConnectionMetrics(LISTENER)
    metrics.set_backend_up(POOL, SERVERS[0], name == "spawn")
    inherited = "n/a"
    if parent_metrics_inode >= 0:
        inherited = "open" if holds_socket(parent_metrics_inode) else "closed"
    metrics.flush()  # what proxy.workers does on a timer (a no-op in the forked worker)
    print(json.dumps({"worker": name, "pid": os.getpid(), "metrics_fd": inherited}), flush=True)
    sys.stdin.readline()
    open_conn.close()


def run_parent(directory: str, count: int) -> None:
    """Parent: set up aggregation, serve, start a forked and a spawned worker, obey commands."""
    from proxy import metrics

    metrics.setup_multiprocess(directory)
    metrics.config_loaded()
    server = metrics.start_metrics_server("127.0.0.1:0")
    metrics_inode = os.fstat(server._server.socket.fileno()).st_ino
    assert holds_socket(metrics_inode)
    read_fd, write_fd = os.pipe()
    forked = os.fork()
    if forked == 0:
        os.close(write_fd)
        os.dup2(read_fd, 0)
        sys.stdin = os.fdopen(0, "r")
        try:
            run_worker("fork", count, metrics_inode)
        finally:
            os._exit(0)
    os.close(read_fd)
    spawned = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "worker", "spawn", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    workers = {"fork": forked, "spawn": spawned.pid}
    assert spawned.stdout is not None
    spawned_report = spawned.stdout.readline().strip()

    def kill(name: str) -> str:
        pid = workers.pop(name)
        os.kill(pid, signal.SIGKILL)
        if name == "spawn":
            spawned.wait(timeout=10)
        else:
            os.waitpid(pid, 0)
        metrics.mark_worker_dead(pid)
        metrics.worker_restarted()
        return "killed"

    def reload(outcome: str) -> str:
        metrics.config_reloaded(outcome == "ok")
        return "reloaded"

    try:
        # The forked worker's report goes straight to our stdout (shared); print the other.
        print(spawned_report, flush=True)
        _serve_until_quit(server.address[1], {"kill": kill, "reload": reload})
    finally:
        for name, pid in workers.items():
            os.kill(pid, signal.SIGKILL)
            if name == "fork":
                os.waitpid(pid, 0)
        if spawned.poll() is None:
            spawned.wait(timeout=10)
        os.close(write_fd)
        server.close()
        metrics.cleanup_multiprocess()


def families_in(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            yield line.split(" ")[2]


def finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "sample":
        run_sample()
    elif mode == "worker":
        run_worker(sys.argv[2], int(sys.argv[3]))
    elif mode == "parent":
        run_parent(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5)
    else:
        raise SystemExit(f"unknown mode {mode}")
