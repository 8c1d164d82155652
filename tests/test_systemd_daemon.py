"""The daemon under systemd's protocols, with us playing systemd: sd_notify lifecycle,
watchdog pings, socket activation, privilege drop, MemoryDenyWriteExecute, and a restart on
an inherited socket that refuses no connection."""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
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
    process_ids,
    start,
    stop,
    write_daemon_config,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed as the TLS client"),
]

READY_TIMEOUT = 40  # a cold start imports the engine and loads keys on a 2-CPU machine


@pytest.fixture
def notify() -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(abstract=True)  # abstract: reachable after a privilege drop
    yield receiver
    receiver.close()


def _config(tmp_path: Path, leaf: Issued, addresses: list[str], global_extra: str = "") -> Path:
    return write_daemon_config(tmp_path, leaf.cert_pem(), leaf.key_pem(), addresses, global_extra)


def _diagnose(process: subprocess.Popen[bytes]) -> str:
    out, err = stop(process)
    return f"exit={process.returncode}\nstdout:\n{out.decode()[-3000:]}\nstderr:\n{err.decode()[-3000:]}"


def _assert_serves(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    result = https_get(port, timeout)
    if result.stdout != "200":
        raise AssertionError(f"GET -> {result.stdout} {result.stderr}\n{_diagnose(process)}")


def _wait_ready(notify: NotifyReceiver, process: subprocess.Popen[bytes]) -> dict[str, str]:
    try:
        return notify.wait_for("READY", "1", timeout=READY_TIMEOUT, process=process)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnose(process)}") from None


@pytest.mark.parametrize("workers", [1, 2])
def test_notify_lifecycle_reload_watchdog_and_stop(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver, workers: int
) -> None:
    port = free_port()
    config = _config(tmp_path, localhost_leaf, [f"127.0.0.1:{port}"], f"workers = {workers}")
    env = daemon_env(notify, WATCHDOG_USEC="1000000")  # ping every 0.5 s
    process = start(daemon_command(config), env)
    try:
        ready = _wait_ready(notify, process)
        # READY=1 promises the listeners are up: the very next connection must succeed.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert "STATUS" in ready
        _assert_serves(port, process)

        notify.messages.clear()
        pings_before = time.monotonic()
        notify.wait_for("WATCHDOG", "1", timeout=3)
        notify.wait_for("WATCHDOG", "1", timeout=3)
        assert time.monotonic() - pings_before < 3.5

        os.kill(process.pid, signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1", timeout=20)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        notify.wait_for("READY", "1", timeout=20)
        _assert_serves(port, process)

        os.kill(process.pid, signal.SIGTERM)
        notify.wait_for("STOPPING", "1", timeout=20)
        assert process.wait(timeout=30) == 0
    finally:
        out, err = stop(process)
    assert b"Traceback" not in err, err.decode()[-3000:]


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
@pytest.mark.parametrize("workers", [1, 2])
def test_serves_on_a_socket_from_systemd_socket_activate(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver, workers: int
) -> None:
    port = free_port()
    config = _config(tmp_path, localhost_leaf, ["systemd:https"], f"workers = {workers}")
    command = [
        "systemd-socket-activate",
        "-l",
        f"127.0.0.1:{port}",
        "--fdname=https",
        # It gives the child a fresh environment: pass on what the daemon needs.
        "-E",
        "NOTIFY_SOCKET",
        "-E",
        "PYTHONPATH",
        *daemon_command(config),
    ]
    process = start(command, daemon_env(notify))
    try:
        # The daemon only starts on the first connection; curl waits in the backlog.
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
                time.sleep(0.1)
        _assert_serves(port, process, timeout=READY_TIMEOUT)
        _wait_ready(notify, process)
        for _ in range(2 * workers):
            _assert_serves(port, process)
    finally:
        out, err = stop(process)
    assert b"Traceback" not in err, err.decode()[-3000:]


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                children.append(int(entry.name))
    return children


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
@pytest.mark.parametrize("workers", [1, 2])
def test_root_start_drops_to_nobody_and_still_serves(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver, workers: int
) -> None:
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    extra = f'user = "nobody"\nworkers = {workers}'
    config = _config(tmp_path, localhost_leaf, [f"127.0.0.1:{port}"], extra)
    assert (tmp_path / "site.key").stat().st_mode & 0o077 == 0  # only root can read the key
    process = start(daemon_command(config), daemon_env(notify))
    try:
        _wait_ready(notify, process)
        for _ in range(2 * workers):  # SO_REUSEPORT spreads these over the workers
            _assert_serves(port, process)
        serving = [process.pid] if workers == 1 else _children(process.pid)
        assert len(serving) == workers, serving
        for pid in serving:
            ids = process_ids(pid)
            assert ids["Uid"] == [nobody.pw_uid] * 4, (pid, ids)
            assert ids["Gid"] == [nobody.pw_gid] * 4, (pid, ids)
            assert 0 not in ids.get("Groups", []), (pid, ids)
    finally:
        out, err = stop(process)
    assert b"Traceback" not in err, err.decode()[-3000:]


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(66, 0, 0, 0, 0) >= 0)  # PR_GET_MDWE, Linux >= 6.3


MDWE_EXEC = (
    "import ctypes, os, sys\n"
    "assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0\n"  # PR_SET_MDWE, REFUSE_EXEC_GAIN
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel lacks PR_SET_MDWE (Linux < 6.3)")
def test_daemon_serves_under_memory_deny_write_execute(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver
) -> None:
    # The unit sets MemoryDenyWriteExecute=yes; PR_SET_MDWE is the same kernel policy and
    # survives execve, so this is the daemon as systemd would run it.
    probe = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, "MDWE not inherited"
    port = free_port()
    config = _config(tmp_path, localhost_leaf, [f"127.0.0.1:{port}"])
    command = [sys.executable, "-c", MDWE_EXEC, *daemon_command(config)[1:]]
    process = start(command, daemon_env(notify))
    try:
        _wait_ready(notify, process)
        _assert_serves(port, process)
    finally:
        out, err = stop(process)
    assert b"Traceback" not in err, err.decode()[-3000:]


def _start_on_inherited_socket(
    listener: socket.socket, config: Path, notify: NotifyReceiver
) -> subprocess.Popen[bytes]:
    """Run the daemon with ``listener`` as fd 3 and LISTEN_* set, as systemd's exec does."""
    fd = listener.fileno()
    argv = " ".join(daemon_command(config))
    script = f"exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=https exec {argv}"
    return start(["bash", "-c", script], daemon_env(notify), pass_fds=(fd,))


def test_restart_on_the_same_socket_refuses_no_connection(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver
) -> None:
    config = _config(tmp_path, localhost_leaf, ["systemd:https"])
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)  # systemd's socket
    port = listener.getsockname()[1]
    first = _start_on_inherited_socket(listener, config, notify)
    second: subprocess.Popen[bytes] | None = None
    waiting: subprocess.Popen[str] | None = None
    try:
        _wait_ready(notify, first)
        _assert_serves(port, first)
        os.kill(first.pid, signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        # No daemon is running now: a client connecting in the gap is queued, not refused.
        waiting = subprocess.Popen(
            ["curl", "-sk", "--http1.1", "--max-time", "60", "-o", "/dev/null", "-w",
             "%{http_code}", f"https://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.5)
        assert waiting.poll() is None, "the connection was refused while no daemon ran"
        second = _start_on_inherited_socket(listener, config, notify)
        out, err = waiting.communicate(timeout=READY_TIMEOUT + 30)
        assert out == "200", err
    finally:
        listener.close()
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
        stop(first)
        if second is not None:
            stop(second)
