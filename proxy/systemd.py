"""systemd integration without libsystemd: sd_notify, the watchdog and socket activation.

Everything here degrades to a no-op outside systemd, so the daemon calls these
functions unconditionally.  The wire formats follow sd_notify(3), sd_watchdog_enabled(3)
and sd_listen_fds(3):

* ``$NOTIFY_SOCKET`` names an ``AF_UNIX`` datagram socket; a leading ``@`` means the
  Linux abstract namespace.  Each message is newline-separated ``KEY=VALUE`` lines.
* ``$WATCHDOG_USEC`` (and optionally ``$WATCHDOG_PID``) asks for ``WATCHDOG=1`` pings;
  we ping at half the interval, as sd_watchdog_enabled(3) recommends.
* ``$LISTEN_PID``/``$LISTEN_FDS``/``$LISTEN_FDNAMES`` pass listening sockets starting
  at file descriptor 3.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

import trio

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
"""The first inherited descriptor (sd_listen_fds(3))."""

UNKNOWN_FD_NAME = "unknown"
"""The name systemd gives a passed descriptor without FileDescriptorName= (sd_listen_fds(3))."""

_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_WATCHDOG_VARIABLES = ("WATCHDOG_USEC", "WATCHDOG_PID")


def _notify_address(value: str) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into a ``connect()`` address, or None if we cannot use it."""
    if value.startswith("@"):
        # Abstract namespace: '@' stands for the leading NUL byte.
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    # systemd >= 254 also allows "vsock:CID:PORT"; nothing we start runs in a VM guest
    # talking to a host manager, so say so once rather than guessing.
    log.warning("unsupported NOTIFY_SOCKET address %r; not notifying systemd", value)
    return None


def _with_reload_timestamp(lines: tuple[str, ...]) -> tuple[str, ...]:
    """Add MONOTONIC_USEC to a RELOADING=1 message (required by Type=notify-reload, systemd 253+)."""
    if "RELOADING=1" in lines and not any(line.startswith("MONOTONIC_USEC=") for line in lines):
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return (*lines, f"MONOTONIC_USEC={usec}")
    return lines


def notify(*lines: str, unset_environment: bool = False) -> bool:
    """Send ``KEY=VALUE`` lines to the service manager; return whether a message was sent.

    ``notify("READY=1", "STATUS=serving")``.  A no-op (returns False) when
    ``$NOTIFY_SOCKET`` is unset.  ``RELOADING=1`` automatically gets the
    ``MONOTONIC_USEC`` stamp systemd >= 253 expects.  Failures are logged, never
    raised: losing a status message must not take the proxy down.
    ``unset_environment`` removes ``$NOTIFY_SOCKET`` afterwards so child processes
    cannot impersonate us (sd_notify(3)'s ``unset_environment``).
    """
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"sd_notify lines are single KEY=VALUE lines, got {line!r}")
    value = os.environ.get("NOTIFY_SOCKET", "")
    if unset_environment:
        os.environ.pop("NOTIFY_SOCKET", None)
    if not value or not lines:
        return False
    address = _notify_address(value)
    if address is None:
        return False
    message = "\n".join(_with_reload_timestamp(lines)).encode()
    return _send_datagram(address, message)


def _send_datagram(address: str | bytes, message: bytes) -> bool:
    """One non-blocking datagram to the notify socket; False (logged) on failure."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message)
    except OSError as exc:
        level = logging.DEBUG if exc.errno == errno.EAGAIN else logging.WARNING
        log.log(level, "sd_notify failed: %s", exc)
        return False
    return True


def notify_ready(status: str | None = None) -> bool:
    """READY=1 (plus an optional STATUS=): the listeners are bound and serving."""
    return notify("READY=1", *_status(status))


def notify_reloading(status: str | None = None) -> bool:
    """RELOADING=1 with MONOTONIC_USEC; follow with :func:`notify_ready` when done."""
    return notify("RELOADING=1", *_status(status))


def notify_stopping(status: str | None = None) -> bool:
    """STOPPING=1: graceful shutdown has begun."""
    return notify("STOPPING=1", *_status(status))


def notify_status(status: str) -> bool:
    """A free-form STATUS= line shown by ``systemctl status``."""
    return notify(*_status(status))


def notify_mainpid(pid: int) -> bool:
    """MAINPID=: tell systemd which process is the service's main process."""
    return notify(f"MAINPID={pid}")


def _status(status: str | None) -> tuple[str, ...]:
    if status is None:
        return ()
    # A STATUS= value is one line; newlines would start a bogus new assignment.
    return ("STATUS=" + status.replace("\n", " "),)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None if not asked.

    Per sd_watchdog_enabled(3) the request applies only to ``$WATCHDOG_PID`` when
    that is set, so a forked worker does not ping on the main process's behalf.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text and pid_text != str(os.getpid()):
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec_text)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


def forget_watchdog(environ: MutableMapping[str, str] | None = None) -> None:
    """Remove the watchdog variables so child processes do not inherit the duty."""
    env = os.environ if environ is None else environ
    for name in _WATCHDOG_VARIABLES:
        env.pop(name, None)


async def watchdog_loop(
    interval: float | None = None, healthy: Callable[[], bool] | None = None
) -> None:
    """Ping WATCHDOG=1 every ``interval`` seconds (default: :func:`watchdog_interval`).

    Returns at once when no watchdog is configured; otherwise runs until cancelled.
    ``healthy`` lets the daemon withhold pings when it is wedged (e.g. the event loop
    is alive but no worker is), so systemd restarts it as WatchdogSec= intends.
    Running inside the trio loop also means a blocked loop stops the pings.
    """
    period = watchdog_interval() if interval is None else interval
    if period is None:
        return
    while True:
        if healthy is None or healthy():
            notify("WATCHDOG=1")
        else:
            log.warning("health check failed; withholding the systemd watchdog ping")
        await trio.sleep(period)


def _listen_fd_count(env: Mapping[str, str]) -> int:
    """How many descriptors systemd passed to *this* process (0 if none or not ours)."""
    pid_text = env.get("LISTEN_PID", "")
    fds_text = env.get("LISTEN_FDS", "")
    if not pid_text or not fds_text:
        return 0
    try:
        pid, count = int(pid_text), int(fds_text)
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID/LISTEN_FDS (%r, %r)", pid_text, fds_text)
        return 0
    if pid != os.getpid():
        # The variables were meant for our parent (or leaked from it): not ours to use.
        return 0
    return max(count, 0)


def _listen_fd_names(env: Mapping[str, str], count: int) -> list[str]:
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    if len(names) != count:
        if names:
            log.warning("LISTEN_FDNAMES has %d names for %d descriptors", len(names), count)
        names = [UNKNOWN_FD_NAME] * count
    return names


def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """Sockets passed by socket activation, as ``(FileDescriptorName, socket)`` pairs.

    Descriptors are marked close-on-exec and wrapped in :class:`socket.socket`
    (family and type are read from the kernel).  With ``unset_environment`` (the
    default) the LISTEN_* variables are removed so children do not mistake them for
    their own; call this once, early, and hand the sockets to workers explicitly.
    Passed descriptors that are not sockets are closed and skipped with a warning.
    """
    count = _listen_fd_count(os.environ)
    names = _listen_fd_names(os.environ, count)
    if unset_environment:
        for name in _LISTEN_VARIABLES:
            os.environ.pop(name, None)
    activated: list[tuple[str, socket.socket]] = []
    for index, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + index
        sock = _adopt_socket(fd)
        if sock is not None:
            activated.append((name, sock))
    return activated


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """Sockets passed by socket activation (see :func:`listen_fds_with_names`)."""
    return [sock for _, sock in listen_fds_with_names(unset_environment)]


def listen_fds_by_name(unset_environment: bool = True) -> dict[str, list[socket.socket]]:
    """Sockets passed by socket activation, grouped by ``FileDescriptorName=``.

    The sockets are plain :class:`socket.socket` objects (trio's
    ``from_stdlib_socket`` accepts nothing else), so their names live only here.
    """
    grouped: dict[str, list[socket.socket]] = {}
    for name, sock in listen_fds_with_names(unset_environment):
        grouped.setdefault(name, []).append(sock)
    return grouped


def _adopt_socket(fd: int) -> socket.socket | None:
    """Wrap an inherited descriptor; None (and the fd closed) if it is not a usable socket."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        log.warning("inherited descriptor %d is not a socket (%s); ignoring it", fd, exc)
        if exc.errno != errno.EBADF:
            os.close(fd)
        return None
    return sock


def socket_address_key(sock: socket.socket) -> tuple[int, object]:
    """(family, bound address) of a socket, for matching activated sockets to listeners."""
    return sock.family, sock.getsockname()


def under_systemd() -> bool:
    """True when systemd started us as a unit (``$INVOCATION_ID`` is set by systemd >= 232)."""
    return bool(os.environ.get("INVOCATION_ID"))
