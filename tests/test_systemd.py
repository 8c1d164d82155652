"""sd_notify, the watchdog and socket activation, against real sockets and systemd's tools."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from conftest import free_port
from systemd_helpers import NotifyReceiver

from proxy import systemd

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyReceiver]:
    r = NotifyReceiver(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", r.address)
    yield r
    r.close()


def test_notify_is_a_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.notify_ready() is False


def test_notify_sends_one_datagram_of_lines(receiver: NotifyReceiver) -> None:
    assert systemd.notify_ready("serving 2 listeners") is True
    assert receiver.receive(5) == {"READY": "1", "STATUS": "serving 2 listeners"}
    assert receiver.raw[-1] == b"READY=1\nSTATUS=serving 2 listeners"


def test_status_newlines_cannot_inject_assignments(receiver: NotifyReceiver) -> None:
    systemd.notify_status("line one\nREADY=1")
    assert receiver.receive(5) is not None
    assert receiver.raw[-1] == b"STATUS=line one READY=1"
    with pytest.raises(ValueError):
        systemd.notify("STATUS=x\nREADY=1")
    with pytest.raises(ValueError):
        systemd.notify("READY")


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    r = NotifyReceiver(abstract=True)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", r.address)
        assert r.address.startswith("@")
        assert systemd.notify_stopping() is True
        assert r.receive(5) == {"STOPPING": "1"}
    finally:
        r.close()


def test_reloading_carries_monotonic_usec(receiver: NotifyReceiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    systemd.notify_reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = receiver.receive(5)
    assert message is not None and message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after
    # An explicit stamp is kept as given, not duplicated.
    systemd.notify("RELOADING=1", "MONOTONIC_USEC=42")
    assert receiver.receive(5) is not None
    assert receiver.raw[-1] == b"RELOADING=1\nMONOTONIC_USEC=42"


def test_mainpid_and_unset_environment(receiver: NotifyReceiver) -> None:
    assert systemd.notify_mainpid(1234)
    assert receiver.receive(5) == {"MAINPID": "1234"}
    assert systemd.notify("STATUS=bye", unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ
    assert systemd.notify("STATUS=again") is False


def test_missing_socket_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    assert systemd.notify("READY=1") is False
    assert "sd_notify failed" in caplog.text
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert systemd.notify("READY=1") is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "SELF"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    environ = {k: (str(os.getpid()) if v == "SELF" else v) for k, v in env.items()}
    assert systemd.watchdog_interval(environ) == expected


def test_forget_watchdog_removes_variables() -> None:
    environ = {"WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "OTHER": "3"}
    systemd.forget_watchdog(environ)
    assert environ == {"OTHER": "3"}


def test_watchdog_loop_pings_at_the_interval(
    receiver: NotifyReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s -> ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    async def main() -> None:
        with trio.move_on_after(0.55):
            await systemd.watchdog_loop()

    trio.run(main)
    pings = 0
    while receiver.receive(0.2) == {"WATCHDOG": "1"}:
        pings += 1
    assert 4 <= pings <= 7


def test_watchdog_loop_withholds_pings_when_unhealthy(receiver: NotifyReceiver) -> None:
    async def main() -> None:
        with trio.move_on_after(0.3):
            await systemd.watchdog_loop(0.05, healthy=lambda: False)

    trio.run(main)
    assert receiver.receive(0.2) is None


def test_watchdog_loop_returns_without_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)

    async def main() -> None:
        with trio.fail_after(2):
            await systemd.watchdog_loop()

    trio.run(main)


# --- socket activation ------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, socket, sys
    sys.path.insert(0, sys.argv[1])
    from proxy import systemd
    pairs = systemd.listen_fds_with_names()
    report = {
        "sockets": [
            [name, int(s.family), int(s.type), list(s.getsockname())[:2], s.fileno(),
             s.get_inheritable(), type(s) is socket.socket]
            for name, s in pairs
        ],
        "env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")},
        "again": len(systemd.listen_fds()),
    }
    if "--serve" in sys.argv:
        conn, _ = pairs[0][1].accept()
        conn.sendall(json.dumps(report).encode())
        conn.close()
    else:
        print(json.dumps(report))
    """
)


def _run_child(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="needs systemd")
def test_listen_fds_under_systemd_socket_activate(tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    script = _run_child(tmp_path)
    activator = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port_a}",
            "-l",
            f"127.0.0.1:{port_b}",
            "--fdname=https:alt",
            sys.executable,
            str(script),
            str(REPO),
            "--serve",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        report = json.loads(_connect_and_read(port_a))
    finally:
        activator.kill()
        activator.wait(10)
    assert [s[0] for s in report["sockets"]] == ["https", "alt"]
    assert all(s[6] for s in report["sockets"]), "trio accepts only exact socket.socket"
    assert [s[3] for s in report["sockets"]] == [["127.0.0.1", port_a], ["127.0.0.1", port_b]]
    assert [s[4] for s in report["sockets"]] == [3, 4]
    assert all(s[1] == socket.AF_INET and s[2] == socket.SOCK_STREAM for s in report["sockets"])
    assert not any(s[5] for s in report["sockets"]), "activated fds must be close-on-exec"
    assert report["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
    assert report["again"] == 0


def _connect_and_read(port: int) -> bytes:
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                return data
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _run_with_fds(tmp_path: Path, env_assignments: str) -> dict[str, object]:
    """Run the child with a listening socket on fd 3 and a pipe on fd 4, via bash's exec."""
    script = _run_child(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    read_end, write_end = os.pipe()
    try:
        command = (
            f"exec 3<&{listener.fileno()} 4<&{read_end}; "
            f"{env_assignments} exec {sys.executable} {script} {REPO} "
            f"{listener.fileno()}<&- {read_end}<&-"
        )
        result = subprocess.run(
            ["bash", "-c", command],
            pass_fds=(listener.fileno(), read_end),
            capture_output=True,
            timeout=20,
            check=False,
        )
    finally:
        listener.close()
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_listen_fds_ignores_variables_meant_for_another_process(tmp_path: Path) -> None:
    report = _run_with_fds(tmp_path, "LISTEN_PID=1 LISTEN_FDS=1")
    assert report["sockets"] == []
    assert report["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


def test_listen_fds_skips_non_sockets_and_defaults_names(tmp_path: Path) -> None:
    report = _run_with_fds(tmp_path, "LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=only-one")
    sockets = report["sockets"]
    assert isinstance(sockets, list) and len(sockets) == 1
    assert sockets[0][0] == systemd.UNKNOWN_FD_NAME  # one name for two fds: not trusted
    assert sockets[0][4] == 3


def test_listen_fds_by_name_groups_sockets(tmp_path: Path) -> None:
    script = tmp_path / "by_name.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from proxy import systemd\n"
        "grouped = systemd.listen_fds_by_name()\n"
        "print(json.dumps({k: [s.fileno() for s in v] for k, v in grouped.items()}))\n"
    )
    first, second = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    try:
        command = (
            f"exec 3<&{first.fileno()} 4<&{second.fileno()}; "
            f"LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=https:https exec {sys.executable} {script}"
        )
        result = subprocess.run(
            ["bash", "-c", command],
            pass_fds=(first.fileno(), second.fileno()),
            capture_output=True,
            timeout=20,
            check=False,
        )
    finally:
        first.close()
        second.close()
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"https": [3, 4]}


def test_listen_fds_without_activation_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTEN_PID", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert systemd.listen_fds() == []
