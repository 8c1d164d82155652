"""The daemon: bind, build, serve, reload on SIGHUP, drain on SIGTERM/SIGINT.

``run(settings, config_path)`` is the entry point. With ``workers = 1`` this process serves;
with more, ``proxy.workers`` supervises worker processes that each run :class:`ProxyProcess`
on sockets the parent bound.

A *generation* is everything built from one configuration: TLS configs (certificates read
from disk), route tables, backend pools and their health checks. SIGHUP builds the next
generation completely before swapping it in, so an invalid configuration or an unreadable key
is rejected (logged, counted) while the old generation keeps serving; connections already
running keep the generation they started with.

Between reloads, each certificate's OCSP file is checked every ``ocsp_refresh_interval``: a
changed, valid response rebuilds only the TLS configs of the current generation
(:meth:`ProxyProcess.refresh_ocsp`). The single process also reports stale staples (gauge,
one log line); with workers their parent does (``proxy.workers``).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from proxy import metrics, systemd
from proxy.accesslog import AccessLog, AccessRecord, configure_logging
from proxy.backends import BackendPool, BackendServer, InProcessBackends, pool_from_settings
from proxy.connection import ConnectionRecord, ListenerRuntime, Timeouts, log_limited
from proxy.demo import serve_demo
from proxy.health import HealthChecker, options_from_settings
from proxy.listener import ConnectionTracker, Listener, bind_addresses, to_trio
from proxy.metrics_http import MetricsServer
from proxy.privileges import PrivilegeError, drop_privileges
from proxy.routing import table_for_listener
from proxy.settings import (
    ConfigError,
    ListenerSettings,
    Settings,
    embedded_default,
    reload_settings,
)
from proxy.tlsconfig import (
    OcspWatcher,
    TLSTerminator,
    build_server_config,
    generated_keys_enabled,
    load_chains,
    make_keyring,
    reset_early_data_refusal,
    take_early_data_refusal,
    tickets_enabled,
)
from tls13 import CertificateChain, TicketKeyring

if TYPE_CHECKING:  # the strike register type only; the engine makes the objects
    from tls13.tickets import ReplayRegister

log = logging.getLogger(__name__)

ListenerSockets = dict[str, list[socket.socket]]
STATUS_INTERVAL = 5.0  # seconds between STATUS= refreshes for systemctl status
RELOAD_ERRORS = (ConfigError, OSError, ValueError)
# Young-generation threshold of the cyclic garbage collector once serving (CPython's default
# is 700): see settle_gc.
GC_YOUNG_THRESHOLD = 10_000


# -- binding ------------------------------------------------------------------------------


Activated = Sequence[tuple[str, socket.socket]]
"""Sockets from systemd socket activation with their FileDescriptorName."""


def bind_listeners(
    settings: Settings, reuse_port: bool = False, activated: Activated = ()
) -> ListenerSockets:
    """Listening sockets per listener: systemd-activated ones by name, else bound here."""
    bound: ListenerSockets = {}
    try:
        for listener in settings.listeners:
            bound[listener.name] = _sockets_for(listener, reuse_port, activated)
    except BaseException:
        for sockets in bound.values():
            for sock in sockets:
                sock.close()
        raise
    return bound


def _sockets_for(
    listener: ListenerSettings, reuse_port: bool, activated: Activated
) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    for address in listener.addresses:
        if address.systemd_name is None:
            sockets.extend(bind_addresses(address.host, address.port, listener.backlog, reuse_port))
            continue
        wanted = address.systemd_name  # "" = every socket systemd passed
        chosen = [sock for name, sock in activated if not wanted or name == wanted]
        if not chosen:
            raise OSError(f"listener {listener.name}: systemd passed no socket for {address}")
        sockets.extend(chosen)
    for sock in sockets:
        sock.setblocking(False)
    return sockets


def listener_shape(settings: Settings) -> dict[str, tuple[str, ...]]:
    """What needs new sockets when it changes: each listener's addresses (and backlog)."""
    return {
        item.name: tuple(str(a) for a in item.addresses) + (str(item.backlog),)
        for item in settings.listeners
    }


# -- observing connections: metrics and the access log ------------------------------------


@dataclass
class DaemonObserver:
    """Feeds each connection's facts to the metrics and the access log."""

    access_log: AccessLog | None
    _open: dict[int, metrics.ConnectionMetrics] = field(default_factory=dict)

    def connection_opened(self, record: ConnectionRecord) -> None:
        self._open[id(record)] = metrics.ConnectionMetrics(record.listener)
        reset_early_data_refusal()  # called in the connection's own task, as handshake_done

    def handshake_done(self, record: ConnectionRecord) -> None:
        accounting = self._open.get(id(record))
        session = record.session
        if accounting is None or session is None or session.handshake is None:
            return
        refusal = take_early_data_refusal()
        offered = session.offered_early_data and not session.early_data
        # RFC 8446 §8.2: a ClientHello whose 0-RTT the strike register had seen is counted
        # as replay_refused, not as an ordinary rejection.
        replay = offered and refusal == "replay"
        accounting.handshake_completed(session.handshake, offered_early_data=offered and not replay)
        if replay:
            accounting.early_data_replay_refused()
        elif offered and refusal == "full":
            metrics.limit_hit("early_data_replay_register")

    def connection_finished(self, record: ConnectionRecord) -> None:
        accounting = self._open.pop(id(record), None)
        if accounting is not None:
            self._account(accounting, record)
        if self.access_log is not None:
            self.access_log.write(access_record(record))

    def _account(self, accounting: metrics.ConnectionMetrics, record: ConnectionRecord) -> None:
        if record.tickets_issued:
            accounting.ticket_issued(record.tickets_issued)
        if record.session is not None:
            _account_alerts_after_handshake(accounting, record)
        accounting.add_received(record.wire_from_client)
        accounting.add_sent(record.wire_to_client)
        if record.outcome == "handshake_timeout":
            accounting.handshake_failed("timeout")
            metrics.limit_hit("handshake_timeout")
        elif record.outcome == "tls_error" and record.session is None:
            accounting.handshake_failed(record.alert, by_peer=record.alert_by_peer)
        elif record.session is None:
            reason = "shutdown" if record.outcome == "shutdown" else "connection_error"
            accounting.handshake_failed(reason)
        if record.outcome == "idle_timeout":
            metrics.limit_hit("idle_timeout")
        for limit in record.limits_hit:
            metrics.limit_hit(limit)
        if record.outcome in ("no_route", "no_backend", "backend_unavailable"):
            metrics.connection_rejected(record.listener, record.outcome)
        if record.outcome == "client_certificate_required":
            metrics.connection_rejected(record.listener, "client_certificate")
        accounting.set_end(record.outcome)
        accounting.close()


def _account_alerts_after_handshake(
    accounting: metrics.ConnectionMetrics, record: ConnectionRecord
) -> None:
    """Alerts once the connection is established (handshake alerts come with the failure)."""
    for code in record.warning_alerts:
        accounting.alert_received(code)
    if record.close_notify_received:
        accounting.alert_received("close_notify")
    if record.close_notify_sent:
        accounting.alert_sent("close_notify")
    if record.tls_error is not None:
        accounting.tls_error(record.tls_error)


def access_record(record: ConnectionRecord) -> AccessRecord:
    session = record.session
    port = f":{record.client_port}" if record.client_port else ""
    host = f"[{record.client_address}]" if ":" in record.client_address else record.client_address
    return AccessRecord(
        client=f"{host}{port}" if host else None,
        listener=record.listener,
        sni=session.server_name if session else None,
        alpn=session.alpn if session else None,
        version=session.version if session else None,
        cipher=session.cipher if session else None,
        group=session.group if session else None,
        resumed=session.resumed if session else None,
        hello_retry=session.hello_retry if session else None,
        early_data=session.early_data if session else None,
        client_cn=session.client_subject or None if session else None,
        route=record.route or None,
        backend=record.backend or None,
        bytes_in=record.bytes_from_client,
        bytes_out=record.bytes_to_client,
        duration=record.duration,
        end=record.outcome,
        error=record.detail or None,
    )


def refused_connection(listener: str, limit: str) -> None:
    """Count every refusal; log at most once a second per listener and limit."""
    log_limited(
        f"limit:{listener}:{limit}",
        logging.WARNING,
        "listener %s: %s reached; refusing connections",
        listener,
        limit,
    )
    metrics.connection_rejected(listener, limit)
    metrics.limit_hit(limit)


# -- a generation -------------------------------------------------------------------------


@dataclass
class Generation:
    """Everything built from one configuration."""

    settings: Settings
    pools: dict[str, BackendPool]
    runtimes: dict[str, ListenerRuntime]
    health: list[HealthChecker]
    # Expiry and OCSP staple dates of every configured certificate, published when installed.
    certificates: dict[str, metrics.CertificateTimes] = field(default_factory=dict)
    # The loaded chains by certificate name (an OCSP refresh replaces one).
    chains: dict[str, CertificateChain] = field(default_factory=dict)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def replay_register(self, listener: str) -> ReplayRegister | None:
        """The listener's 0-RTT strike register, carried into the next generation."""
        runtime = self.runtimes.get(listener)
        terminator = runtime.terminator if runtime is not None else None
        config = getattr(terminator, "config", None)
        return getattr(config, "anti_replay", None)


def build_generation(
    settings: Settings,
    in_process: InProcessBackends,
    observer: DaemonObserver,
    ticket_keys: TicketKeyring | None,
    listener_names: Sequence[str] | None = None,
    handshake_slots: trio.CapacityLimiter | None = None,
    previous: Generation | None = None,
    shared_replay: ReplayRegister | None = None,
    instance_id: bytes | None = None,
) -> Generation:
    """Build (and validate by building) a generation; raises on unreadable keys etc."""
    pools = {p.name: pool_from_settings(p, in_process) for p in settings.backends}
    for pool in pools.values():
        for server in pool.servers:
            metrics.declare_backend(pool.name, str(server.address))
    chains = load_chains(settings)
    timeouts = Timeouts(settings.limits.handshake_timeout, settings.limits.idle_timeout)
    runtimes: dict[str, ListenerRuntime] = {}
    for listener in settings.listeners:
        if listener_names is not None and listener.name not in listener_names:
            continue
        table = table_for_listener(settings, listener)
        register = shared_replay
        if register is None and previous is not None:
            register = previous.replay_register(listener.name)
        config = build_server_config(
            settings, listener, ticket_keys, table, chains, register, instance_id
        )
        terminator = TLSTerminator(config)
        runtimes[listener.name] = ListenerRuntime(
            listener.name,
            terminator,
            table,
            pools,
            timeouts,
            observer,
            chunk=settings.limits.buffer_size,
            handshake_slots=handshake_slots,
        )
        metrics.declare_listener(listener.name)
    health: list[HealthChecker] = [
        ReportingHealthChecker(pools[p.name], options_from_settings(p.health))
        for p in settings.backends
        if p.health.enabled
    ]
    certificates = {name: metrics.chain_times(chain) for name, chain in chains.items()}
    return Generation(settings, pools, runtimes, health, certificates, chains)


class ReportingHealthChecker(HealthChecker):
    """Publishes each server's health state after every probe, not only when it flips: a
    server that starts healthy and stays so must still show ``backend_up 1``."""

    def observe(self, server: BackendServer, ok: bool) -> None:
        super().observe(server, ok)
        metrics.set_backend_up(self.pool.name, str(server.address), server.healthy)


async def _run_health(generation: Generation) -> None:
    with generation.scope:
        async with trio.open_nursery() as nursery:
            for checker in generation.health:
                nursery.start_soon(checker.run)


# -- the serving process ------------------------------------------------------------------


async def drain(
    accept_scopes: Sequence[trio.CancelScope],
    tracker: ConnectionTracker,
    connections: trio.Nursery,
    timeout: float,
) -> None:
    """Stop accepting, wait up to ``timeout`` for connections to finish, then cancel them."""
    for scope in accept_scopes:
        scope.cancel()
    with trio.move_on_after(timeout):
        await tracker.wait_idle()
    if tracker.active:
        log.warning("drain timeout: closing %d remaining connection(s)", tracker.active)
    connections.cancel_scope.cancel()


@dataclass
class ProxyProcess:
    """Serves the listeners of one process (the only one, or one worker)."""

    settings: Settings
    config_path: Path | None
    sockets: ListenerSockets
    ticket_keys: TicketKeyring | None = None
    can_bind: bool = True
    access_log: AccessLog | None = None
    # (user, group) to switch to once the first generation has read its keys.
    drop_to: tuple[str | None, str | None] = (None, None)
    # Workers: the 0-RTT strike register all workers share (else one per listener).
    shared_replay: ReplayRegister | None = None
    # Issuer id sealed into our tickets: 0-RTT only where the strike register saw the ticket
    # (workers get the parent's; kept across reloads). Review R22.
    instance_id: bytes = field(default_factory=lambda: os.urandom(16))
    generation: Generation | None = None
    # The current generation's OCSP files (the single process also reports staleness).
    ocsp: OcspWatcher | None = None
    _accept_scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    _listeners: dict[str, Listener] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.observer = DaemonObserver(self.access_log)
        self.stopped = trio.Event()
        self._stop = trio.Event()
        limits = self.settings.limits
        self.tracker = ConnectionTracker(
            limits.max_connections, refused_connection, limits.max_connections_per_client
        )
        self.handshake_slots = trio.CapacityLimiter(limits.max_concurrent_handshakes)

    def runtime_for(self, name: str) -> ListenerRuntime:
        assert self.generation is not None
        return self.generation.runtimes[name]

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop``), reloading on SIGHUP."""
        try:
            await self._serve(task_status)
        finally:
            self.stopped.set()

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as root:
                async with trio.open_nursery() as connections:
                    self._start(root, connections, signals)
                    task_status.started()
                    await self._stop.wait()
                    systemd.notify_stopping("draining connections")
                    timeout = self.settings.limits.drain_timeout
                    scopes = list(self._accept_scopes.values())
                    await drain(scopes, self.tracker, connections, timeout)
                root.cancel_scope.cancel()

    def _start(
        self, root: trio.Nursery, connections: trio.Nursery, signals: AsyncIterator[int]
    ) -> None:
        """Build the first generation (reading keys), drop privileges, start accepting."""
        self._root, self._connections = root, connections
        self._in_process = InProcessBackends(connections, {"demo": serve_demo})
        self._install(self._build(self.settings, self.ticket_keys))
        self._apply_limits()
        drop_privileges(*self.drop_to)
        settle_gc()
        for name, sockets in self.sockets.items():
            self._start_listener(name, sockets)
        root.start_soon(self._signals, signals)
        root.start_soon(self._refresh_ocsp)
        if self.can_bind:  # the only process: watchdog and key rotation are ours
            root.start_soon(systemd.watchdog_loop)
            root.start_soon(self._rotate_ticket_keys)
            root.start_soon(self._report_status)
        metrics.worker_started()
        systemd.notify_ready(self.status())

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> str:
        return f"serving {len(self._listeners)} listener(s), {self.tracker.active} connection(s)"

    async def _report_status(self) -> None:
        """Keep ``systemctl status`` current: a STATUS= line whenever the figures change."""
        last = self.status()
        while True:
            await trio.sleep(STATUS_INTERVAL)
            status = self.status()
            if status != last:
                systemd.notify_status(status)
                last = status

    def _build(
        self,
        settings: Settings,
        keys: TicketKeyring | None,
        names: Sequence[str] | None = None,
    ) -> Generation:
        return build_generation(
            settings,
            self._in_process,
            self.observer,
            keys,
            list(self.sockets) if names is None else names,
            self.handshake_slots,
            self.generation,
            self.shared_replay,
            self.instance_id,
        )

    def _install(self, generation: Generation) -> None:
        old, self.generation = self.generation, generation
        if old is not None:
            old.scope.cancel()
        # Only now: a reload rejected after building must not publish its certificates.
        metrics.set_certificates(generation.certificates)
        self.ocsp = OcspWatcher(
            generation.settings, generation.chains, report=self.can_bind, previous=self.ocsp
        )
        self.ocsp.publish(time.time())
        self._root.start_soon(_run_health, generation)

    async def _refresh_ocsp(self) -> None:
        """Every ``ocsp_refresh_interval``: swap in changed OCSP files, report staleness."""
        while True:
            await trio.sleep(self.settings.global_.ocsp_refresh_interval)
            self.refresh_ocsp()

    def refresh_ocsp(self) -> None:
        """One OCSP check: a changed, valid response is stapled from the next connection on
        (connections already running keep their config, as with a reload)."""
        watcher, generation = self.ocsp, self.generation
        if watcher is None or generation is None:
            return
        changed = watcher.refresh()
        if changed and not self._restaple(generation, watcher.chains):
            watcher.revert(changed, generation.chains)
        watcher.publish(time.time())

    def _restaple(self, generation: Generation, chains: dict[str, CertificateChain]) -> bool:
        """Rebuild the generation's TLS configs around ``chains``, as a reload would, and
        swap them in; pools, health checks and routes stay as they are."""
        listeners = {item.name: item for item in generation.settings.listeners}
        try:
            runtimes = {
                name: dataclasses.replace(
                    runtime,
                    terminator=TLSTerminator(
                        build_server_config(
                            generation.settings,
                            listeners[name],
                            self.ticket_keys,
                            runtime.routes,
                            chains,
                            self.shared_replay or generation.replay_register(name),
                            self.instance_id,
                        )
                    ),
                )
                for name, runtime in generation.runtimes.items()
            }
        except RELOAD_ERRORS as exc:
            log.error("new OCSP response not installed; the previous one stays: %s", exc)
            return False
        generation.runtimes.update(runtimes)
        generation.chains = dict(chains)
        generation.certificates = {name: metrics.chain_times(c) for name, c in chains.items()}
        metrics.set_certificates(generation.certificates)
        return True

    def _start_listener(self, name: str, sockets: list[socket.socket]) -> None:
        getter = partial(self.runtime_for, name)
        limit = self._listener_limit(name)
        listener = Listener(name, to_trio(sockets), getter, self.tracker, limit)
        scope = trio.CancelScope()
        self._listeners[name], self._accept_scopes[name] = listener, scope

        async def accept() -> None:
            with scope:
                await listener.serve(self._connections)

        self._connections.start_soon(accept)
        for host, port in listener.addresses():
            log.info("listener %s: accepting on %s port %d", name, host, port)

    async def _rotate_ticket_keys(self) -> None:
        """Generated keys rotate on schedule; the previous key still opens older tickets."""
        while True:
            await trio.sleep(self.settings.tls.tickets.rotation_interval)
            if self.ticket_keys is not None and generated_keys_enabled(self.settings):
                self.ticket_keys.rotate()
                log.info("session ticket keys rotated")

    def _apply_limits(self) -> None:
        """Limits of the current settings (a reload may change them for new connections)."""
        limits = self.settings.limits
        self.tracker.limit = limits.max_connections
        self.tracker.per_client_limit = limits.max_connections_per_client
        self.handshake_slots.total_tokens = limits.max_concurrent_handshakes
        for name, listener in self._listeners.items():
            listener.limit = self._listener_limit(name)

    def _listener_limit(self, name: str) -> int:
        for item in self.settings.listeners:
            if item.name == name:
                return item.max_connections
        return 0

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.reload()
            else:
                log.info("received %s: draining", signal.Signals(signum).name)
                self.stop()
                return

    def reload(self) -> bool:
        """Load and build the next generation; keep the current one if anything fails."""
        if self.can_bind:
            systemd.notify_reloading("reloading configuration")
        try:
            settings = self._load_next()
            keys = self._next_keyring(settings)
            names = [item.name for item in settings.listeners] if self.can_bind else None
            generation = self._build(settings, keys, names)
            if self.can_bind:
                self._rebind(settings)
        except RELOAD_ERRORS as exc:
            log.error("configuration reload rejected; the running configuration stays: %s", exc)
            self._count_reload(False)
            return False
        except Exception:  # a bug in building must not take the running proxy down
            log.exception("configuration reload failed; the running configuration stays")
            self._count_reload(False)
            return False
        for warning in settings.warnings:
            log.warning("configuration: %s", warning)
        self.settings, self.ticket_keys = settings, keys
        self._install(generation)
        self._apply_limits()
        log.info("configuration reloaded")
        self._count_reload(True)
        return True

    def _count_reload(self, success: bool) -> None:
        """Only the process that owns the service reports reloads (workers' parent does)."""
        if self.can_bind:
            metrics.config_reloaded(success)
            systemd.notify_ready(self.status())

    def _next_keyring(self, settings: Settings) -> TicketKeyring | None:
        """A configured key file is re-read on reload (keys rotated by an operator);
        generated keys carry over so tickets issued before the reload still resume."""
        if not tickets_enabled(settings):
            return None
        if settings.tls.tickets.key_file is not None or self.ticket_keys is None:
            return make_keyring(settings)
        return self.ticket_keys

    def _load_next(self) -> Settings:
        if self.config_path is None:
            return embedded_default(self.settings.global_.state_dir)
        return reload_settings(self.config_path, self.settings)

    def _rebind(self, settings: Settings) -> None:
        """Bind listeners that are new or moved (before swapping: a failure rejects the
        reload); close the ones that went away or moved."""
        old_shape, new_shape = listener_shape(self.settings), listener_shape(settings)
        changed = [n for n in new_shape if old_shape.get(n) != new_shape[n]]
        fresh = bind_listeners(
            Settings(listeners=tuple(s for s in settings.listeners if s.name in changed))
        )
        for name in list(self.sockets):
            if name not in new_shape or name in changed:
                self._accept_scopes.pop(name).cancel()
                self._listeners.pop(name)
                del self.sockets[name]
        for name, sockets in fresh.items():
            self.sockets[name] = sockets
            self._start_listener(name, sockets)


def settle_gc() -> None:
    """Start-up is done: tune the cyclic garbage collector for serving.

    Two costs per connection go away (measured under bench/hsload.py, 32 handshakes in
    flight): with the default young threshold (700 net container allocations) the handshakes
    in flight alone trigger young collections, and each traverses their live objects and
    promotes them, which the middle generation then traverses again, about 65 µs per
    handshake.  At ``GC_YOUNG_THRESHOLD`` the steady state triggers none; what finally
    triggers one is garbage cycles or growth in open connections, and both are then
    collected as before.  ``gc.freeze`` moves what start-up built (modules, configuration,
    some 40,000 objects) out of the collector's view, so the full collections that still
    happen traverse only what serving created.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


# -- entry point --------------------------------------------------------------------------


def make_access_log(settings: Settings) -> AccessLog | None:
    if not settings.global_.access_log:
        return None
    return AccessLog(settings.global_.log_format)


EXIT_STARTUP_FAILED = 1
STARTUP_ERRORS = (OSError, ValueError, PrivilegeError)


def activated_sockets() -> list[tuple[str, socket.socket]]:
    """Sockets passed by systemd socket activation, with their FileDescriptorName."""
    return systemd.listen_fds_with_names()


def split_metrics_socket(
    settings: Settings, activated: Activated
) -> tuple[socket.socket | None, list[tuple[str, socket.socket]]]:
    """The activated socket for ``[metrics] listen = "systemd:NAME"`` and the rest, which
    the listeners take (a listener with a bare ``systemd:`` must not swallow the metrics one)."""
    listen = settings.metrics.listen
    if not settings.metrics.enabled or listen.systemd_name is None:
        return None, list(activated)
    for index, (name, sock) in enumerate(activated):
        if name == listen.systemd_name:
            return sock, [item for i, item in enumerate(activated) if i != index]
    raise OSError(f"metrics: systemd passed no socket for {listen}")


def start_metrics_endpoint(
    settings: Settings, activated: socket.socket | None
) -> MetricsServer | None:
    """Serve /metrics on the activated socket, or bind ``[metrics] listen``; None if off."""
    if not settings.metrics.enabled:
        return None
    if activated is not None:
        return metrics.start_metrics_server(activated)
    return metrics.start_metrics_server(str(settings.metrics.listen))


def startup_error(exc: BaseException) -> BaseException | None:
    """The startup failure inside (possibly nested) exception groups, if it is one we
    report as a plain message (a port in use, an unreadable key, an unknown user)."""
    inner = getattr(exc, "exceptions", None)
    if inner is not None and len(inner) == 1:
        return startup_error(inner[0])
    return exc if isinstance(exc, STARTUP_ERRORS) else None


def remember_early_signals() -> list[int]:
    """Until trio's handlers take over, record SIGHUP/SIGTERM instead of dying of them: a
    reload or stop sent while we start up (the port already accepts) is applied once serving."""
    early: list[int] = []
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, lambda received, _frame: early.append(received))
    return early


async def serve_with_early_signals(
    process: ProxyProcess,
    early: list[int],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve, applying signals that arrived before our handlers existed."""
    async with trio.open_nursery() as nursery:
        await nursery.start(process.serve)
        for signum in early:
            if signum == signal.SIGHUP:
                process.reload()
            else:
                process.stop()
        task_status.started()


def raise_file_limit(needed: int) -> None:
    """Each proxied connection holds two descriptors: raise the soft RLIMIT_NOFILE to the
    hard limit (what systemd's LimitNOFILE= or the shell allows) and warn if still short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open file limit: %s", exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open file limit %d is below the %d that max_connections needs", soft, needed)


def run(settings: Settings, config_path: Path | None) -> int:
    """Run the daemon until told to stop; returns the process exit status."""
    early = remember_early_signals()
    configure_logging(settings.global_.log_format, settings.global_.log_level)
    raise_file_limit(2 * settings.limits.max_connections + 64)
    for warning in settings.warnings:
        log.warning("configuration: %s", warning)
    try:
        if settings.global_.workers > 1:
            from proxy.workers import supervise

            return supervise(settings, config_path, early)
        return _run_single(settings, config_path, early)
    except Exception as exc:
        failure = startup_error(exc)
        if failure is None:
            raise
        log.critical("cannot start: %s", failure)
        return EXIT_STARTUP_FAILED


def _run_single(settings: Settings, config_path: Path | None, early: list[int]) -> int:
    metrics_socket, activated = split_metrics_socket(settings, activated_sockets())
    sockets = bind_listeners(settings, activated=activated)
    process = ProxyProcess(
        settings,
        config_path,
        sockets,
        ticket_keys=make_keyring(settings),
        access_log=make_access_log(settings),
        drop_to=(settings.global_.user, settings.global_.group),
    )
    server = start_metrics_endpoint(settings, metrics_socket)
    metrics.config_loaded()
    try:
        trio.run(serve_with_early_signals, process, early)
    finally:
        if server is not None:
            server.close()
    return 0
