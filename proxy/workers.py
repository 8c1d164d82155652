"""Worker processes: a supervising parent and ``workers = N`` children sharing each port.

The parent binds one socket per listener address *per worker slot* with SO_REUSEPORT, so
the kernel spreads new connections over the workers, and hands each slot's sockets to its
worker. Because the parent keeps the sockets open, a worker that crashes is replaced on the
same sockets and connections queued meanwhile are not lost. The parent also owns the
metrics endpoint (aggregating the workers' files), the systemd notifications and watchdog,
and the session ticket keys, which it sends to every worker so a ticket issued by one worker
resumes on any other.

Signals: SIGHUP makes the parent validate the new configuration; if it is invalid the reload
is rejected (logged, counted) and nothing changes. If it is valid and the listening addresses
are the same, SIGHUP is relayed and each worker reloads in place (established connections
stay). If addresses changed, a new generation of workers starts on new sockets and the old
one drains. SIGTERM/SIGINT are relayed; the parent waits for the workers to drain.

OCSP files: every worker re-reads changed ones itself (as a single process does); the parent
follows the same files only to report staleness once (gauge and log line) for all of them.

The control channel to a worker is its stdin: one JSON line to start (configuration path,
state dir, socket descriptors, ticket keys), later lines with fresh ticket keys. EOF on it
means the parent is gone, and the worker drains and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from proxy import metrics, systemd
from proxy.daemon import (
    STATUS_INTERVAL,
    Activated,
    ListenerSockets,
    ProxyProcess,
    activated_sockets,
    bind_listeners,
    listener_shape,
    make_access_log,
    remember_early_signals,
    serve_with_early_signals,
    split_metrics_socket,
    start_metrics_endpoint,
)
from proxy.settings import ConfigError, Settings, embedded_default, load_settings, reload_settings
from proxy.tlsconfig import (
    OcspWatcher,
    adopt_keys,
    generated_keys_enabled,
    keyring_from_text,
    keyring_to_text,
    load_chains,
    make_keyring,
)
from tls13 import CertificateChain, TicketKeyring

if TYPE_CHECKING:  # the engine's register type, for annotations only
    from tls13.tickets import ReplayRegister

log = logging.getLogger(__name__)

RESTART_BACKOFF_MIN = 0.5
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
KILL_GRACE = 5.0
# Workers report (listeners up, connections) this often over their report pipe; one silent
# for HEARTBEAT_STALE seconds is wedged, and the parent withholds the systemd watchdog ping.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_STALE = 10.0


# -- the 0-RTT strike register shared by all workers ---------------------------------------

REPLAY_SLOT = struct.Struct("=16sd")  # digest of the ticket, time it was first used
REPLAY_SLOTS = 65536
REPLAY_PROBE = 32
REPLAY_WINDOW = 10.0


class SharedReplayRegister:
    """RFC 8446 §8.2 strike register in memory shared by every worker process.

    A per-process register would let a 0-RTT ClientHello replayed to another worker through
    (SO_REUSEPORT spreads connections by source port). This one lives in a memfd the parent
    creates and passes to each worker; a POSIX record lock (owned per process, so shared
    descriptors do not defeat it) serialises the few microseconds of each check. It offers
    what the engine uses of ``tls13.tickets.ReplayRegister``: ``window`` and
    ``check_and_add``. When the probed neighbourhood is full of live entries it refuses,
    so 0-RTT falls back to 1-RTT rather than forgetting a ticket too early.
    """

    def __init__(self, fd: int, slots: int = REPLAY_SLOTS, window: float = REPLAY_WINDOW) -> None:
        self.fd = fd
        self.slots = slots
        self.window = window
        # Why the latest check_and_add refused: True = no free slot, False = a replay.
        self.last_refusal_full = False
        self._memory = mmap.mmap(fd, slots * REPLAY_SLOT.size)

    @classmethod
    def create(
        cls, slots: int = REPLAY_SLOTS, window: float = REPLAY_WINDOW
    ) -> SharedReplayRegister:
        fd = os.memfd_create("tls13-proxy-0rtt-strikes", 0)
        os.ftruncate(fd, slots * REPLAY_SLOT.size)
        return cls(fd, slots, window)

    def check_and_add(self, key: bytes, now: float) -> bool:
        """True exactly once per ``key`` within the window, across all workers."""
        digest = hashlib.sha256(key).digest()[:16]
        start = int.from_bytes(digest[:8], "big") % self.slots
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            free = None
            for step in range(REPLAY_PROBE):
                offset = ((start + step) % self.slots) * REPLAY_SLOT.size
                stored, stamp = REPLAY_SLOT.unpack_from(self._memory, offset)
                live = stamp != 0.0 and stamp > now - self.window  # 0.0: never used
                if live and stored == digest:
                    self.last_refusal_full = False
                    return False
                if not live and free is None:
                    free = offset
            if free is None:
                self.last_refusal_full = True
                return False
            REPLAY_SLOT.pack_into(self._memory, free, digest, now)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)


# -- the parent ---------------------------------------------------------------------------


@dataclass
class WorkerSlot:
    """One worker position: its sockets (kept by the parent) and its current process."""

    index: int
    sockets: ListenerSockets
    process: trio.Process | None = None
    started: float = 0.0
    failures: int = 0
    retired: bool = False
    # From the current process's reports: its listeners are up; when it last reported.
    ready: bool = False
    last_report: float = 0.0
    connections: int = 0

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def report(self, line: bytes) -> None:
        """One report line from the worker (``{"ready": true, "connections": N}``)."""
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("worker %d: malformed report line ignored", self.index)
            return
        if not isinstance(message, dict):
            return
        self.last_report = time.monotonic()
        self.ready = self.ready or message.get("ready") is True
        connections = message.get("connections")
        if isinstance(connections, int) and connections >= 0:
            self.connections = connections


@dataclass
class Supervisor:
    settings: Settings
    config_path: Path | None
    keyring: TicketKeyring | None = None
    slots: list[WorkerSlot] = field(default_factory=list)
    stopping: bool = False
    restarts: int = 0
    replay: SharedReplayRegister | None = None
    # One ticket issuer id for all workers, as they share one strike register (review R22).
    instance_id: bytes = field(default_factory=lambda: os.urandom(16))
    # Serialises control lines: a key rotation may coincide with a worker's bootstrap.
    control_lock: trio.Lock = field(default_factory=trio.Lock)
    # READY=1 went out for the current set of slots (reset when a new generation starts).
    announced_ready: bool = False
    # The parent's view of the OCSP files: it alone reports staleness (gauge, log line);
    # each worker watches the same files to swap its own staples.
    ocsp: OcspWatcher | None = None

    def watch_ocsp(self, settings: Settings, chains: dict[str, CertificateChain]) -> None:
        """Follow the OCSP files of ``settings`` (just loaded as ``chains``) and report."""
        self.ocsp = OcspWatcher(settings, chains, previous=self.ocsp)
        self.ocsp.publish(time.time())

    def refresh_ocsp(self) -> None:
        if self.ocsp is not None:
            self.ocsp.refresh()
            self.ocsp.publish(time.time())

    def bootstrap(self, slot: WorkerSlot, report_fd: int) -> tuple[bytes, list[int]]:
        """The first control line for a worker and the descriptors it inherits."""
        fds = {name: [s.fileno() for s in socks] for name, socks in slot.sockets.items()}
        message = {
            "slot": slot.index,
            "config": str(self.config_path) if self.config_path is not None else None,
            "state_dir": str(self.settings.global_.state_dir),
            "listeners": fds,
            "ticket_keys": keyring_to_text(self.keyring) if self.keyring is not None else "",
            "replay_fd": self.replay.fd if self.replay is not None else None,
            "instance_id": self.instance_id.hex(),
            "report_fd": report_fd,
        }
        passed = [fd for numbers in fds.values() for fd in numbers] + [report_fd]
        if self.replay is not None:
            passed.append(self.replay.fd)
        return (json.dumps(message) + "\n").encode(), passed

    async def run_slot(self, slot: WorkerSlot) -> None:
        """Keep a worker running in this slot, restarting it (with backoff) when it dies."""
        while not self.stopping and not slot.retired:
            report_read, report_write = os.pipe()
            try:
                line, fds = self.bootstrap(slot, report_write)
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "proxy.workers"],
                    stdin=subprocess.PIPE,
                    pass_fds=fds,
                    env=_worker_environment(),
                )
            except BaseException:
                os.close(report_read)
                raise
            finally:
                os.close(report_write)  # the worker has its copy; EOF when it exits
            slot.process, slot.started = process, time.monotonic()
            slot.ready, slot.last_report, slot.connections = False, slot.started, 0
            assert process.stdin is not None
            async with self.control_lock:
                await _send_control(process, line)
            log.info("worker %d started (pid %d)", slot.index, process.pid)
            async with trio.open_nursery() as watching:
                watching.start_soon(self._read_reports, slot, report_read)
                status = await process.wait()
                watching.cancel_scope.cancel()
            slot.ready = False
            metrics.mark_worker_dead(process.pid)
            await process.stdin.aclose()
            if self.stopping or slot.retired:
                return
            await self._after_crash(slot, process.pid, status)

    async def _read_reports(self, slot: WorkerSlot, fd: int) -> None:
        """Follow a worker's report pipe; announce READY=1 once every worker is up."""
        buffer = b""
        async with trio.lowlevel.FdStream(fd) as reports:
            while chunk := await reports.receive_some(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    slot.report(line)
                self.announce_if_ready()

    def all_ready(self) -> bool:
        """Every current slot's worker has its listeners up."""
        return bool(self.slots) and all(slot.running() and slot.ready for slot in self.slots)

    def announce_if_ready(self) -> None:
        """READY=1 (sd_notify) only when every worker reported its listeners up."""
        if not self.announced_ready and self.all_ready():
            self.announced_ready = True
            systemd.notify_ready(self.status())

    def healthy(self) -> bool:
        """For the systemd watchdog: some worker serves and no running worker is wedged.

        A worker being restarted after a crash does not count against health (the
        supervisor handles it); a live worker that stopped reporting does, and so does
        having no serving worker at all.
        """
        now = time.monotonic()
        running = [slot for slot in self.slots if slot.running()]
        fresh = all(now - slot.last_report < HEARTBEAT_STALE for slot in running)
        return fresh and any(slot.ready for slot in running)

    def status(self) -> str:
        """The STATUS= line: workers serving out of those configured, and connections."""
        serving = sum(1 for slot in self.slots if slot.running() and slot.ready)
        connections = sum(slot.connections for slot in self.slots if slot.running())
        return f"{serving}/{len(self.slots)} workers serving, {connections} connection(s)"

    async def _after_crash(self, slot: WorkerSlot, pid: int, status: int) -> None:
        uptime = time.monotonic() - slot.started
        slot.failures = 0 if uptime > STABLE_AFTER else slot.failures + 1
        delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_MIN * (2**slot.failures))
        how = (
            f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited ({status})"
        )
        log.error(
            "worker %d (pid %d) %s; restarting in %.1fs",
            slot.index,
            pid,
            how,
            delay if slot.failures else 0.0,
        )
        self.restarts += 1
        metrics.worker_restarted()
        if slot.failures:
            await trio.sleep(delay)

    def signal_workers(self, signum: int, slots: Sequence[WorkerSlot] | None = None) -> None:
        for slot in self.slots if slots is None else slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signum)

    async def send_keys(self) -> None:
        if self.keyring is None:
            return
        line = (json.dumps({"ticket_keys": keyring_to_text(self.keyring)}) + "\n").encode()
        async with self.control_lock:
            for slot in self.slots:
                if slot.process is not None and slot.process.returncode is None:
                    await _send_control(slot.process, line)


async def _send_control(process: trio.Process, line: bytes) -> None:
    """One control line to a worker; a worker that just died is the restart loop's business."""
    if process.stdin is None:
        return
    try:
        await process.stdin.send_all(line)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.warning("control message to worker pid %d not delivered: %s", process.pid, exc)


def _worker_environment() -> dict[str, str]:
    """Workers inherit our environment minus what belongs to the parent alone."""
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(name, None)
    return env


def make_slots(settings: Settings, count: int, activated: Activated = ()) -> list[WorkerSlot]:
    """Bind every slot's sockets (SO_REUSEPORT); activated sockets are shared by all slots."""
    return [
        WorkerSlot(i, bind_listeners(settings, reuse_port=True, activated=activated))
        for i in range(count)
    ]


def close_slot_sockets(slots: Sequence[WorkerSlot]) -> None:
    for slot in slots:
        for sockets in slot.sockets.values():
            for sock in sockets:
                sock.close()


async def supervise_async(supervisor: Supervisor, early_signals: Sequence[int] = ()) -> None:
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            for slot in supervisor.slots:
                nursery.start_soon(supervisor.run_slot, slot)
            nursery.start_soon(partial(systemd.watchdog_loop, healthy=supervisor.healthy))
            nursery.start_soon(_rotate_keys, supervisor)
            nursery.start_soon(_report_status, supervisor)
            nursery.start_soon(_refresh_ocsp, supervisor)
            for signum in early_signals:  # sent while we were starting up
                if not await _on_signal(supervisor, nursery, signum):
                    break
            else:
                async for signum in signals:
                    if not await _on_signal(supervisor, nursery, signum):
                        break
            await _wait_all(supervisor)
            nursery.cancel_scope.cancel()


async def _report_status(supervisor: Supervisor) -> None:
    """Keep ``systemctl status`` current: a STATUS= line whenever the figures change."""
    last = ""
    while True:
        await trio.sleep(STATUS_INTERVAL)
        status = supervisor.status()
        if status != last and supervisor.announced_ready:
            systemd.notify_status(status)
            last = status


async def _refresh_ocsp(supervisor: Supervisor) -> None:
    """Every ``ocsp_refresh_interval``, as each worker does: the parent's report."""
    while True:
        await trio.sleep(supervisor.settings.global_.ocsp_refresh_interval)
        supervisor.refresh_ocsp()


async def _on_signal(supervisor: Supervisor, nursery: trio.Nursery, signum: int) -> bool:
    """Reload on SIGHUP; otherwise start stopping. False once stopping."""
    if signum == signal.SIGHUP:
        await _reload(supervisor, nursery)
        return True
    log.info("received %s: stopping workers", signal.Signals(signum).name)
    systemd.notify_stopping("draining workers")
    supervisor.stopping = True
    supervisor.signal_workers(signal.SIGTERM)
    nursery.start_soon(_kill_after, supervisor, supervisor.settings.limits.drain_timeout)
    return False


async def _wait_all(supervisor: Supervisor) -> None:
    for slot in supervisor.slots:
        if slot.process is not None:
            await slot.process.wait()


async def _kill_after(supervisor: Supervisor, drain_timeout: float) -> None:
    await trio.sleep(drain_timeout + KILL_GRACE)
    log.error("workers did not stop within the drain timeout; killing them")
    supervisor.signal_workers(signal.SIGKILL)


async def _reload(supervisor: Supervisor, nursery: trio.Nursery) -> None:
    """Validate (configuration and certificates) here; reject, reload in place, or replace."""
    systemd.notify_reloading("validating configuration")
    try:
        new = _load_next(supervisor)
        chains = load_chains(new)
        if listener_shape(new) == listener_shape(supervisor.settings):
            supervisor.settings = new
            supervisor.signal_workers(signal.SIGHUP)
            log.info("configuration valid; workers reload in place")
        else:
            _replace_generation(supervisor, new, nursery)
        supervisor.watch_ocsp(new, chains)
    except (ConfigError, OSError, ValueError) as exc:
        log.error("configuration reload rejected; workers keep the running one: %s", exc)
        metrics.config_reloaded(False)
        systemd.notify_ready(supervisor.status())
        return
    except Exception:  # a bug here must not take the supervisor (and its workers) down
        log.exception("configuration reload failed; workers keep the running one")
        metrics.config_reloaded(False)
        systemd.notify_ready(supervisor.status())
        return
    metrics.config_reloaded(True)
    # A new generation announces READY=1 once its workers are up (announce_if_ready).
    if supervisor.announced_ready:
        systemd.notify_ready(supervisor.status())


def _load_next(supervisor: Supervisor) -> Settings:
    if supervisor.config_path is None:
        return embedded_default(supervisor.settings.global_.state_dir)
    return reload_settings(supervisor.config_path, supervisor.settings)


def _replace_generation(supervisor: Supervisor, new: Settings, nursery: trio.Nursery) -> None:
    """Listening addresses changed: new workers, the old ones drain.

    Listeners whose addresses did not change keep their sockets (no connection queued in a
    backlog is lost); only new or moved listeners get fresh sockets.
    """
    old_shape, new_shape = listener_shape(supervisor.settings), listener_shape(new)
    kept = {name for name in new_shape if old_shape.get(name) == new_shape[name]}
    changed = dataclasses.replace(
        new, listeners=tuple(item for item in new.listeners if item.name not in kept)
    )
    old = supervisor.slots
    fresh = [
        WorkerSlot(
            slot.index,
            {name: slot.sockets[name] for name in kept} | bind_listeners(changed, reuse_port=True),
        )
        for slot in old
    ]
    for slot in old:
        slot.retired = True
        if slot.process is not None and slot.process.returncode is None:
            slot.process.send_signal(signal.SIGTERM)
        slot.sockets = {name: socks for name, socks in slot.sockets.items() if name not in kept}
    supervisor.settings, supervisor.slots = new, fresh
    supervisor.announced_ready = False
    for slot in fresh:
        nursery.start_soon(supervisor.run_slot, slot)
    close_slot_sockets(old)
    log.info("listening addresses changed: started a new generation of workers")


async def _rotate_keys(supervisor: Supervisor) -> None:
    """Generated ticket keys rotate on schedule; every worker gets the new current key."""
    while True:
        await trio.sleep(supervisor.settings.tls.tickets.rotation_interval)
        if supervisor.keyring is not None and generated_keys_enabled(supervisor.settings):
            supervisor.keyring.rotate()
            await supervisor.send_keys()
            log.info("session ticket keys rotated")


def supervise(
    settings: Settings, config_path: Path | None, early_signals: Sequence[int] = ()
) -> int:
    """Parent entry: bind, start workers, supervise until stopped."""
    chains = load_chains(settings)  # fail here, clearly, rather than in every worker in a loop
    metrics_socket, activated = split_metrics_socket(settings, activated_sockets())
    slots = make_slots(settings, settings.global_.workers, activated)
    metrics_dir = tempfile.mkdtemp(prefix="tls13-proxy-metrics-")
    metrics.setup_multiprocess(metrics_dir)
    server = start_metrics_endpoint(settings, metrics_socket)
    supervisor = Supervisor(settings, config_path, make_keyring(settings), slots)
    supervisor.replay = SharedReplayRegister.create()
    metrics.config_loaded()
    supervisor.watch_ocsp(settings, chains)
    try:
        trio.run(supervise_async, supervisor, early_signals)
    finally:
        close_slot_sockets(supervisor.slots)
        if server is not None:
            server.close()
        metrics.cleanup_multiprocess()
    return 0


# -- the worker ---------------------------------------------------------------------------


def _adopt(fds: dict[str, list[int]]) -> ListenerSockets:
    return {name: [socket.socket(fileno=fd) for fd in numbers] for name, numbers in fds.items()}


def _worker_settings(message: dict[str, Any]) -> Settings:
    if message["config"] is None:
        return embedded_default(Path(message["state_dir"]))
    return load_settings(message["config"])


async def _control(process: ProxyProcess, stdin: trio.abc.ReceiveStream) -> None:
    """Read later control lines (ticket keys); EOF means the parent died: drain and exit."""
    buffer = b""
    while chunk := await stdin.receive_some(65536):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            keys = json.loads(line).get("ticket_keys")
            if keys and process.ticket_keys is not None:
                adopt_keys(process.ticket_keys, keys)
    log.warning("supervisor went away; draining")
    process.stop()


async def _report(process: ProxyProcess, fd: int) -> None:
    """Tell the parent our listeners are up, then keep reporting (the heartbeat it watches:
    a wedged event loop falls silent). A parent that went away is ``_control``'s business."""
    os.set_inheritable(fd, False)
    async with trio.lowlevel.FdStream(fd) as reports:
        while True:
            line = json.dumps({"ready": True, "connections": process.tracker.active})
            try:
                await reports.send_all(line.encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(HEARTBEAT_INTERVAL)


async def _flush_metrics() -> None:
    """Write this worker's metric updates to its file for the parent's scrapes, in batches
    (see ``metrics.flush``); ``worker_main`` writes the last ones at exit."""
    while True:
        metrics.flush()
        await trio.sleep(metrics.WORKER_FLUSH_INTERVAL)


async def worker_async(
    process: ProxyProcess, early_signals: list[int], report_fd: int | None = None
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_with_early_signals, process, early_signals)
        nursery.start_soon(_flush_metrics)
        nursery.start_soon(_control, process, trio.lowlevel.FdStream(os.dup(0)))
        if report_fd is not None:
            nursery.start_soon(_report, process, report_fd)
        await process.stopped.wait()
        nursery.cancel_scope.cancel()


def _shared_replay(message: dict[str, Any]) -> ReplayRegister | None:
    fd = message.get("replay_fd")
    register = SharedReplayRegister(int(fd)) if fd is not None else None
    return register  # type: ignore[return-value] # duck-typed: window + check_and_add


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Worker entry (``python -m proxy.workers``): bootstrap from stdin, then serve."""
    from proxy.accesslog import configure_logging

    early_signals = remember_early_signals()
    argparse.ArgumentParser(prog="proxy.workers").parse_args(argv)
    message = json.loads(sys.stdin.buffer.readline())
    settings = _worker_settings(message)
    configure_logging(settings.global_.log_format, settings.global_.log_level)
    process = ProxyProcess(
        settings,
        Path(message["config"]) if message["config"] else None,
        _adopt(message["listeners"]),
        ticket_keys=keyring_from_text(message["ticket_keys"]) if message["ticket_keys"] else None,
        can_bind=False,
        access_log=make_access_log(settings),
        shared_replay=_shared_replay(message),
        instance_id=bytes.fromhex(message["instance_id"]),
        drop_to=(settings.global_.user, settings.global_.group),
    )
    report_fd = message.get("report_fd")
    try:
        trio.run(
            worker_async, process, early_signals, report_fd if isinstance(report_fd, int) else None
        )
    finally:
        metrics.flush()  # the last connections' counts, before the parent folds our files
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
