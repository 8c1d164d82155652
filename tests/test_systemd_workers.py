"""systemd in worker mode: READY=1 waits for every worker, the watchdog follows their
heartbeats, and STATUS= carries worker and connection counts.

The supervisor's bookkeeping is checked directly (stand-in processes, a fake
$NOTIFY_SOCKET); the last test runs the real daemon with two workers, stops one with
SIGSTOP and watches the watchdog pings stop and resume.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from certs import Issued
from conftest import free_port
from systemd_helpers import (
    NotifyReceiver,
    daemon_command,
    daemon_env,
    start,
    stop,
    write_daemon_config,
)

from proxy import workers
from proxy.daemon import STATUS_INTERVAL
from proxy.settings import Settings
from proxy.workers import HEARTBEAT_STALE, Supervisor, WorkerSlot


@dataclass
class StandInProcess:
    """What the supervisor reads of a ``trio.Process``: whether it still runs."""

    returncode: int | None = None
    pid: int = 0


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyReceiver]:
    r = NotifyReceiver(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", r.address)
    yield r
    r.close()


def _supervisor(count: int) -> Supervisor:
    slots = [WorkerSlot(i, {}) for i in range(count)]
    for slot in slots:
        slot.process = StandInProcess()  # type: ignore[assignment]
        slot.last_report = time.monotonic()
    return Supervisor(Settings(), None, slots=slots)


def _report(slot: WorkerSlot, ready: bool = True, connections: int = 0) -> None:
    slot.report(json.dumps({"ready": ready, "connections": connections}).encode())


def test_ready_only_once_every_worker_reported(receiver: NotifyReceiver) -> None:
    supervisor = _supervisor(3)
    _report(supervisor.slots[0], connections=2)
    _report(supervisor.slots[1])
    supervisor.announce_if_ready()
    assert receiver.receive(0.2) is None
    _report(supervisor.slots[2], connections=5)
    supervisor.announce_if_ready()
    message = receiver.receive(2)
    assert message is not None and message["READY"] == "1"
    assert message["STATUS"] == "3/3 workers serving, 7 connection(s)"
    supervisor.announce_if_ready()  # once per generation
    assert receiver.receive(0.2) is None


def test_a_dead_worker_is_not_ready(receiver: NotifyReceiver) -> None:
    supervisor = _supervisor(2)
    for slot in supervisor.slots:
        _report(slot)
    supervisor.slots[1].process.returncode = -9  # type: ignore[union-attr]
    supervisor.announce_if_ready()
    assert receiver.receive(0.2) is None
    assert supervisor.status() == "1/2 workers serving, 0 connection(s)"


def test_malformed_reports_are_ignored() -> None:
    slot = _supervisor(1).slots[0]
    for line in (b"{not json", b"[1, 2]", b'{"connections": -4}', b'{"ready": "yes"}'):
        slot.report(line)
    assert (slot.ready, slot.connections) == (False, 0)


def test_healthy_needs_a_serving_worker_and_no_silent_one() -> None:
    supervisor = _supervisor(2)
    assert not supervisor.healthy()  # nobody serves yet
    for slot in supervisor.slots:
        _report(slot)
    assert supervisor.healthy()
    supervisor.slots[1].last_report -= HEARTBEAT_STALE + 1  # alive but wedged
    assert not supervisor.healthy()
    supervisor.slots[1].process.returncode = 1  # type: ignore[union-attr]
    assert supervisor.healthy()  # a dead worker is being restarted: not a wedge


def test_watchdog_pings_only_while_healthy(receiver: NotifyReceiver) -> None:
    supervisor = _supervisor(1)
    _report(supervisor.slots[0])

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: workers.systemd.watchdog_loop(0.05, healthy=supervisor.healthy)
            )
            await trio.sleep(0.3)
            supervisor.slots[0].last_report -= HEARTBEAT_STALE + 1
            await trio.sleep(0.05)
            received = len(receiver_drain())
            await trio.sleep(0.3)
            assert len(receiver_drain()) == 0, "pinged while a worker was wedged"
            assert received >= 3
            nursery.cancel_scope.cancel()

    def receiver_drain() -> list[dict[str, str]]:
        got = []
        while (message := receiver.receive(0.01)) is not None:
            got.append(message)
        return got

    trio.run(run)


# -- the real daemon ----------------------------------------------------------------------


@pytest.fixture
def notify() -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(abstract=True)
    yield receiver
    receiver.close()


def _worker_pids(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def _pings_within(notify: NotifyReceiver, seconds: float) -> int:
    deadline, count = time.monotonic() + seconds, 0
    while (left := deadline - time.monotonic()) > 0:
        message = notify.receive(min(left, 0.2))
        if message is not None and message.get("WATCHDOG") == "1":
            count += 1
    return count


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_daemon_withholds_the_watchdog_while_a_worker_is_stopped(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver
) -> None:
    port = free_port()
    config = write_daemon_config(
        tmp_path, localhost_leaf.cert_pem(), localhost_leaf.key_pem(), [f"127.0.0.1:{port}"],
        "workers = 2",
    )  # fmt: skip
    process = start(daemon_command(config), daemon_env(notify, WATCHDOG_USEC="1000000"))
    stopped: list[int] = []
    try:
        ready = notify.wait_for("READY", "1", timeout=40, process=process)
        assert ready["STATUS"].startswith("2/2 workers serving"), ready
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert _pings_within(notify, 2) >= 2
        worker = _worker_pids(process.pid)[0]
        os.kill(worker, signal.SIGSTOP)
        stopped.append(worker)
        time.sleep(HEARTBEAT_STALE + 1)
        while notify.receive(0.01) is not None:  # pings queued while it was still fresh
            pass
        assert _pings_within(notify, 2) == 0, "pinged while a worker was wedged"
        os.kill(worker, signal.SIGCONT)
        stopped.clear()
        assert _pings_within(notify, 3) >= 2
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        out, err = stop(process)
    assert b"Traceback" not in err, err.decode()[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("workers", "expected"), [(1, "serving 1 listener(s)"), (2, "workers")])
def test_status_line_follows_open_connections(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver, workers: int, expected: str
) -> None:
    port = free_port()
    config = write_daemon_config(
        tmp_path, localhost_leaf.cert_pem(), localhost_leaf.key_pem(), [f"127.0.0.1:{port}"],
        f"workers = {workers}",
    )  # fmt: skip
    process = start(daemon_command(config), daemon_env(notify))
    try:
        ready = notify.wait_for("READY", "1", timeout=40, process=process)
        assert expected in ready["STATUS"] and "0 connection(s)" in ready["STATUS"], ready
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            deadline = time.monotonic() + STATUS_INTERVAL * 3
            while time.monotonic() < deadline:
                message = notify.receive(0.5)
                if message is not None and "1 connection(s)" in message.get("STATUS", ""):
                    break
            else:
                raise AssertionError(f"no STATUS with the open connection: {notify.messages}")
    finally:
        out, err = stop(process)
    assert b"Traceback" not in err, err.decode()[-3000:]
