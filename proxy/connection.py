"""One client connection: handshake (bounded), route, backend connect, two pumps, close.

The pumps give backpressure in both directions: each reads a chunk only after the previous
one was fully written to the other side, so a slow reader throttles its writer through TCP
flow control instead of growing our buffers. End-of-stream travels across: a client
close_notify becomes a TCP FIN towards the backend and a backend FIN becomes close_notify, and
the connection ends when both directions are done. An abrupt end on either side (a TCP reset,
or a client EOF without close_notify) aborts both sides so a truncation is never passed on
as a clean end.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

from proxy import proxyprotocol
from proxy.backends import BackendError, BackendLease, BackendPool, NoHealthyBackend
from proxy.reactor import (
    DownstreamRelay,
    SendFailed,
    Unsent,
    UpstreamRelay,
    current_reactor,
)
from proxy.routing import Route, RouteTable
from proxy.tlsstream import (
    FastSocketStream,
    SocketTransport,
    TLSStream,
    TLSStreamError,
    TLSTruncated,
)

if TYPE_CHECKING:
    from tls13.alerts import TLSError
    from tls13.events import HandshakeComplete

log = logging.getLogger(__name__)

CHUNK = 65536
# Upper bound on how far past the idle timeout an idle connection may live (see _SpliceState).
IDLE_SLACK = 1.0
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True)
class SessionInfo:
    """What the client side negotiated; every field is printable for logs and the demo."""

    server_name: str | None = None
    alpn: str | None = None
    version: str = ""
    cipher: str = ""
    group: str = ""
    signature_scheme: str = ""
    resumed: bool = False
    early_data: bool = False
    offered_early_data: bool = False
    hello_retry: bool = False
    client_subject: str = ""
    # The engine's HandshakeComplete event (None without TLS): PROXY v2 TLVs come from it.
    handshake: HandshakeComplete | None = field(default=None, compare=False)


@dataclass
class Established:
    """A ready client stream: the handshake is done and held early data is attached.

    ``early_forwarded`` says 0-RTT data already went to the backend during the handshake
    (a route that allows early data); ``early_data`` is what was held back instead.
    """

    stream: trio.abc.HalfCloseableStream
    info: SessionInfo
    early_data: bytes = b""
    early_forwarded: bool = False


class EarlyDataHandler(Protocol):
    """Takes 0-RTT data during the handshake, if the route for the name allows it."""

    async def begin(self, server_name: str | None, alpn_offered: tuple[str, ...]) -> bool: ...

    async def data(self, chunk: bytes) -> None: ...


class Terminator(Protocol):
    """Turns an accepted transport into an application stream (TLS in production)."""

    async def establish(
        self, transport: SocketTransport, early: EarlyDataHandler | None = None
    ) -> Established: ...


@dataclass
class ConnectionRecord:
    """Everything the access log and metrics need about one connection, filled as it goes."""

    listener: str
    client_address: str
    client_port: int
    local_address: str
    local_port: int
    started: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    handshake_seconds: float = 0.0
    session: SessionInfo | None = None
    route: str = ""
    pool: str = ""
    backend: str = ""
    backend_attempts: int = 0
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    outcome: str = "open"
    detail: str = ""
    alert: str = ""
    alert_by_peer: bool = False
    tickets_issued: int = 0
    # Bytes on the client socket (TLS records included); the plaintext counts are above.
    wire_from_client: int = 0
    wire_to_client: int = 0
    # After the handshake, for the alert metrics: the fatal TLS error that ended the client
    # stream, warning alerts received, and close_notify in each direction.
    tls_error: TLSError | None = None
    warning_alerts: tuple[int, ...] = ()
    close_notify_sent: bool = False
    close_notify_received: bool = False
    # Named bounds this connection ran into (metrics: tls13proxy_limit_hits_total).
    limits_hit: list[str] = field(default_factory=list)

    def finish(self, outcome: str, detail: str = "") -> None:
        """Keep the first meaningful outcome: later cleanup must not overwrite the cause."""
        if self.outcome == "open":
            self.outcome, self.detail = outcome, detail


class ConnectionObserver(Protocol):
    """Where connection facts go (metrics and access log are wired in by the daemon)."""

    def connection_opened(self, record: ConnectionRecord) -> None: ...

    def handshake_done(self, record: ConnectionRecord) -> None: ...

    def connection_finished(self, record: ConnectionRecord) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    handshake: float = 10.0
    idle: float = 300.0


@dataclass(frozen=True)
class ListenerRuntime:
    """A listener's behaviour for new connections; reload swaps in a whole new instance."""

    name: str
    terminator: Terminator
    routes: RouteTable
    pools: Mapping[str, BackendPool]
    timeouts: Timeouts
    observer: ConnectionObserver
    # Bytes read per direction at a time (the per-connection buffer bound).
    chunk: int = CHUNK
    # Shared by a process's listeners: bounds handshakes in progress (CPU protection);
    # waiting for a slot counts against the handshake timeout.
    handshake_slots: trio.CapacityLimiter | None = None


def describe_session(info: SessionInfo) -> dict[str, str]:
    """The negotiated parameters as display strings (the demo backend's page)."""
    return {
        "TLS version": info.version or "-",
        "Cipher suite": info.cipher or "-",
        "Key exchange group": info.group or "-",
        "Signature scheme": info.signature_scheme or "-",
        "SNI": info.server_name or "-",
        "ALPN": info.alpn or "-",
        "Resumed": "yes" if info.resumed else "no",
        "0-RTT": "yes" if info.early_data else "no",
        "HelloRetryRequest": "yes" if info.hello_retry else "no",
        "Client certificate": info.client_subject or "-",
    }


LOG_INTERVAL = 1.0
_last_logged: dict[str, float] = {}


def log_limited(key: str, level: int, message: str, *args: object) -> None:
    """Log at most once a second per ``key``: an outage or a flood of bad connections must
    produce a clear line, not a line per connection (the metrics count every one)."""
    now = time.monotonic()
    if now - _last_logged.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
        _last_logged[key] = now
        log.log(level, message, *args)


# The `limit` label /metrics gives each tls13.Limits bound (docs/robustness.md): the [limits]
# setting that feeds it where there is one, so a dashboard speaks the configuration's words.
# The engine names the bound on the error itself (TLSError.limit), never only in its message.
LIMIT_LABELS: Mapping[str, str] = {
    "max_handshake_message": "max_handshake_size",
    "max_handshake_buffer": "max_handshake_buffer",
    "max_empty_records": "max_empty_records",
    "max_warning_alerts": "max_warning_alerts",
    "max_ccs": "max_change_cipher_spec",
    "max_key_updates_per_minute": "key_updates_per_minute",
    "max_record_buffer": "max_record_buffer",
}


def engine_limit(error: TLSError | None) -> str | None:
    """The metric label of the engine bound behind a TLSError we raised, else None. A bound
    this table does not know yet keeps the engine's own name: counted, never dropped."""
    if error is None or error.sent_by_peer or error.limit is None:
        return None
    return LIMIT_LABELS.get(error.limit, error.limit)


def note_tls_error(record: ConnectionRecord, exc: TLSStreamError) -> None:
    """Record a TLS failure: the alert sent or received, and the limit behind it, if any."""
    alert = getattr(exc.tls_error, "alert", None)
    record.alert = getattr(alert, "name", "") or "internal_error"
    record.alert_by_peer = bool(getattr(exc.tls_error, "sent_by_peer", False))
    limit = engine_limit(exc.tls_error)
    if limit is not None:
        record.limits_hit.append(limit)
    side = "received" if record.alert_by_peer else "sent"
    record.finish("tls_error", f"{record.alert} ({side}): {exc.tls_error or exc}")


def _peer(stream: SocketTransport, local: bool) -> tuple[str, int]:
    try:
        address = stream.socket.getsockname() if local else stream.socket.getpeername()
    except OSError:
        return "", 0
    if isinstance(address, tuple):
        return str(address[0]), int(address[1])
    return str(address), 0


Address = tuple[str, int]


def new_record(
    listener: str,
    transport: SocketTransport,
    peer: Address | None = None,
    local: Address | None = None,
) -> ConnectionRecord:
    """The connection's record; ``peer``/``local`` when the caller knows them already (accept
    returned the peer, a listener bound to one address knows the local end): no syscall."""
    client_host, client_port = peer if peer is not None else _peer(transport, local=False)
    local_host, local_port = local if local is not None else _peer(transport, local=True)
    return ConnectionRecord(listener, client_host, client_port, local_host, local_port)


async def handle_connection(
    transport: SocketTransport,
    runtime: ListenerRuntime,
    peer: Address | None = None,
    local: Address | None = None,
) -> None:
    """The whole life of one accepted connection; never raises for per-connection failures."""
    record = new_record(runtime.name, transport, peer, local)
    runtime.observer.connection_opened(record)
    try:
        await _serve(transport, runtime, record)
    except Exception as exc:
        record.finish("error", repr(exc))
        log.exception("connection from %s failed unexpectedly", record.client_address)
    except BaseException as exc:
        if _is_cancellation(exc):
            record.finish("shutdown", "closed at the end of the drain period")
        raise
    finally:
        record.duration = time.monotonic() - record.started_monotonic
        if _still_open(transport):  # usually the TLS stream closed it already
            with trio.CancelScope(shield=True):
                await transport.aclose()
        runtime.observer.connection_finished(record)


def _is_cancellation(exc: BaseException) -> bool:
    """trio.Cancelled, or an exception group holding nothing else (the pumps' nursery when
    both were cancelled at once; a group on 3.11+ or from the exceptiongroup backport)."""
    if isinstance(exc, trio.Cancelled):
        return True
    inner = getattr(exc, "exceptions", None)
    return isinstance(inner, tuple) and bool(inner) and all(map(_is_cancellation, inner))


async def _close_transport(stream: trio.abc.Stream) -> None:
    """Close a backend stream or the client's TLS stream. Our TCP streams close
    synchronously, and a TLS stream that owes the peer nothing more does too, so the
    scheduler round trip of an ``aclose`` checkpoint is skipped: the connection task is
    about to end anyway. Anything else (close_notify still owed, other stream types) goes
    through ``aclose``."""
    if isinstance(stream, FastSocketStream):
        stream.socket.close()
    elif not (isinstance(stream, TLSStream) and stream.close_now()):
        await stream.aclose()


def _still_open(transport: trio.abc.Stream) -> bool:
    sock = getattr(transport, "socket", None)
    return sock is None or sock.fileno() != -1


async def _serve(
    transport: SocketTransport, runtime: ListenerRuntime, record: ConnectionRecord
) -> None:
    forwarder = EarlyForwarder(runtime, record)
    try:
        established = await _establish(transport, runtime, record, forwarder)
        if established is None:
            return
        client = established.stream
        try:
            try:
                await _proxy(client, established, runtime, record, forwarder)
            finally:
                await _close_transport(client)
        finally:
            stream = established.stream
            record.tickets_issued = getattr(stream, "tickets_issued", 0)
            record.wire_from_client = getattr(stream, "wire_received", record.bytes_from_client)
            record.wire_to_client = getattr(stream, "wire_sent", record.bytes_to_client)
            record.tls_error = getattr(stream, "tls_error", None)
            record.warning_alerts = tuple(getattr(stream, "warning_alerts", ()))
            record.close_notify_sent = getattr(stream, "close_notify_sent", False)
            record.close_notify_received = getattr(stream, "clean_close", None) is True
    finally:
        if forwarder.lease is not None:
            await forwarder.abandon()


async def _proxy(
    client: trio.abc.HalfCloseableStream,
    established: Established,
    runtime: ListenerRuntime,
    record: ConnectionRecord,
    forwarder: EarlyForwarder,
) -> None:
    """Route the completed handshake, connect (unless 0-RTT did already), relay."""
    route = _route(runtime.routes, established.info, record)
    if route is None:
        return
    lease = forwarder.adopt(route)
    if lease is None and record.outcome == "open":
        lease = await _connect_backend(route, runtime, record, established.info)
    if lease is None:
        return
    backend = lease.stream
    try:
        await _relay(client, backend, established, runtime, record, lease)
    finally:
        lease.release()
        await _close_transport(backend)


class EarlyForwarder:
    """0-RTT for routes that allow it: connect and forward early data during the handshake.

    The route is chosen from the ClientHello (SNI, offered ALPN); when the offered protocols
    could lead to different routes we do not guess and the data is held instead. After the
    handshake the negotiated route must be the same one, or the connection is aborted.
    The backend sees the PROXY v2 early-data marker: these bytes may be a replay.
    """

    def __init__(self, runtime: ListenerRuntime, record: ConnectionRecord) -> None:
        self.runtime = runtime
        self.record = record
        self.route: Route | None = None
        self.lease: BackendLease | None = None

    async def begin(self, server_name: str | None, alpn_offered: tuple[str, ...]) -> bool:
        route = _early_route(self.runtime.routes, server_name, alpn_offered)
        # A route that needs a client certificate waits for the verified handshake.
        if route is None or not route.allow_early_data or route.require_client_certificate:
            return False
        early_info = SessionInfo(server_name=server_name, version="TLSv1.3", early_data=True)
        self.lease = await _connect_backend(route, self.runtime, self.record, early_info)
        if self.lease is None:
            return False
        self.route = route
        version = self.runtime.pools[route.pool].options.proxy_protocol
        await self._send(early_proxy_header(version, self.record, server_name))
        return True

    async def data(self, chunk: bytes) -> None:
        self.record.bytes_from_client += len(chunk)
        await self._send(chunk)

    async def _send(self, data: bytes) -> None:
        """A backend failure here ends the connection after the handshake, not during it."""
        if self.lease is None or not data:
            return
        try:
            await self.lease.stream.send_all(data)
        except STREAM_ERRORS as exc:
            self.record.finish("backend_error", f"while forwarding early data: {exc}")
            await self.abandon()

    def adopt(self, route: Route) -> BackendLease | None:
        """The early backend connection, if 0-RTT went to the route now negotiated."""
        if self.lease is None:
            return None
        if self.route is not None and route.name != self.route.name:
            self.record.finish("early_data_route_mismatch", f"{self.route.name} != {route.name}")
            return None
        lease, self.lease = self.lease, None
        return lease

    async def abandon(self) -> None:
        """The handshake failed or routing refused: drop the early backend connection."""
        if self.lease is not None:
            lease, self.lease = self.lease, None
            lease.release()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(lease.stream)


def _early_route(
    routes: RouteTable, server_name: str | None, alpn_offered: tuple[str, ...]
) -> Route | None:
    """The route 0-RTT data would take, if every protocol the client offered agrees."""
    candidates = {routes.match(server_name, alpn) for alpn in alpn_offered} or {
        routes.match(server_name, None)
    }
    return candidates.pop() if len(candidates) == 1 else None


def _route(routes: RouteTable, info: SessionInfo, record: ConnectionRecord) -> Route | None:
    """The route for the negotiated name and protocol, enforcing per-route client auth."""
    route = routes.match(info.server_name, info.alpn)
    if route is None:
        record.finish("no_route", f"sni={info.server_name!r} alpn={info.alpn!r}")
        log_limited(f"no-route:{record.listener}", logging.WARNING, "no route: %s", record.detail)
        return None
    if route.require_client_certificate and not info.client_subject:
        record.route = route.name
        record.finish("client_certificate_required", f"route {route.name}")
        return None
    return route


async def _establish(
    transport: SocketTransport,
    runtime: ListenerRuntime,
    record: ConnectionRecord,
    early: EarlyDataHandler | None = None,
) -> Established | None:
    """Handshake within the handshake timeout (slowloris defence); None if it failed."""
    started = time.monotonic()
    established: Established | None = None
    try:
        # A bare deadline scope: fail_after would add a generator context manager and a
        # second scope per connection, for the same effect.
        with trio.CancelScope(deadline=trio.current_time() + runtime.timeouts.handshake):
            slots = runtime.handshake_slots
            if slots is None:
                established = await runtime.terminator.establish(transport, early)
            else:
                await _take_slot(slots, record)
                try:
                    established = await runtime.terminator.establish(transport, early)
                finally:
                    slots.release()
        if established is None:  # the deadline cancelled the handshake
            record.finish("handshake_timeout")
            return None
    except TLSStreamError as exc:
        note_tls_error(record, exc)
        return None
    except STREAM_ERRORS as exc:
        record.finish("client_gone", str(exc))
        return None
    record.handshake_seconds = time.monotonic() - started
    record.session = info = established.info
    log.debug(
        "%s:%d: handshake complete: %s %s group=%s resumed=%s hello_retry=%s",
        record.client_address, record.client_port, info.version, info.cipher,
        info.group or "-", info.resumed, info.hello_retry,
    )  # fmt: skip
    runtime.observer.handshake_done(record)
    return established


async def _take_slot(slots: trio.CapacityLimiter, record: ConnectionRecord) -> None:
    """A handshake slot; a free one is taken without the scheduler round trip that
    ``async with limiter`` always makes (the handshake's first read is the checkpoint).
    Waiting for one (bounded by the handshake timeout) counts as a limit hit."""
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        record.limits_hit.append("max_concurrent_handshakes")
        await slots.acquire()


async def _connect_backend(
    route: Route, runtime: ListenerRuntime, record: ConnectionRecord, info: SessionInfo
) -> BackendLease | None:
    record.route, record.pool = route.name, route.pool
    pool = runtime.pools[route.pool]
    try:
        lease = await pool.connect(describe_session(info))
    except NoHealthyBackend as exc:
        record.finish("no_backend", str(exc))
        log_limited(f"pool:{pool.name}", logging.ERROR, "refusing connections: %s", exc)
        return None
    except BackendError as exc:
        record.finish("backend_unavailable", str(exc))
        log_limited(f"pool:{pool.name}", logging.ERROR, "refusing connections: %s", exc)
        return None
    record.backend, record.backend_attempts = str(lease.server.address), lease.attempts
    return lease


async def _relay(
    client: trio.abc.HalfCloseableStream,
    backend: trio.abc.Stream,
    established: Established,
    runtime: ListenerRuntime,
    record: ConnectionRecord,
    lease: BackendLease,
) -> None:
    """Send the PROXY header and held early data, then pump both ways until both end."""
    pool = runtime.pools[record.pool]
    preamble = established.early_data
    if not established.early_forwarded:  # else the header went out with the early data
        preamble = proxy_header(pool.options.proxy_protocol, record) + preamble
    record.bytes_from_client += len(established.early_data)
    try:
        if preamble:
            await backend.send_all(preamble)
    except STREAM_ERRORS as exc:
        record.finish("backend_error", str(exc))
        pool.record_failure(lease.server, f"write failed: {exc}")
        return
    await splice(client, backend, runtime.timeouts.idle, record, runtime.chunk)
    pass_abrupt_end(client, backend, record)


# Outcomes where the client side ended abruptly (the backend must not see a clean FIN), and
# where the backend did (the client must not see close_notify).
CLIENT_ABRUPT = frozenset({"client_truncated", "client_error", "tls_error"})
BACKEND_ABRUPT = frozenset({"backend_error"})


def pass_abrupt_end(
    client: trio.abc.Stream, backend: trio.abc.Stream, record: ConnectionRecord
) -> None:
    """An abrupt end on one side becomes an abrupt end on the other (RFC 8446 §6.1): the
    backend gets a TCP reset, the client a TCP end without close_notify (bytes already in
    flight still arrive). The closes themselves happen as the streams' contexts exit."""
    if record.outcome in CLIENT_ABRUPT:
        reset_on_close(backend)
    elif record.outcome in BACKEND_ABRUPT:
        abort = getattr(client, "abort", None)
        if abort is not None:
            abort()


def reset_on_close(stream: trio.abc.Stream) -> None:
    """SO_LINGER 0: closing sends RST instead of FIN (the only abrupt end plain TCP has)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already gone: nothing left to tell


def proxy_header(version: int, record: ConnectionRecord) -> bytes:
    """The PROXY protocol header for the backend: v1 line, or v2 with the TLS TLVs.

    The 0-RTT marker TLV says the first bytes arrived as early data; we forward them only
    after the handshake completed, so they are not replayable through us.
    """
    if version == 0:
        return b""
    source = (record.client_address, record.client_port) if record.client_port else None
    destination = (record.local_address, record.local_port) if record.local_port else None
    if version == 1:
        return proxyprotocol.encode_v1(source, destination)
    session = record.session
    tlvs: list[proxyprotocol.TLV] = []
    if session is not None and session.handshake is not None:
        tlvs = proxyprotocol.tlvs_for_handshake(session.handshake, early_data=session.early_data)
    elif session is not None:
        tlvs = proxyprotocol.tls_tlvs(alpn=session.alpn, authority=session.server_name)
    return proxyprotocol.encode_v2(source, destination, tlvs)


def early_proxy_header(version: int, record: ConnectionRecord, server_name: str | None) -> bytes:
    """The header sent before 0-RTT data: the handshake is not finished, so v2 carries only
    what the ClientHello told us (SNI) plus the early-data marker."""
    if version != 2:
        return proxy_header(version, record)
    source = (record.client_address, record.client_port) if record.client_port else None
    destination = (record.local_address, record.local_port) if record.local_port else None
    tlvs = proxyprotocol.tls_tlvs(
        authority=server_name,
        ssl=proxyprotocol.SSLInfo(version="TLSv1.3"),
        early_data=True,
    )
    return proxyprotocol.encode_v2(source, destination, tlvs)


@dataclass
class _SpliceState:
    """The pumps' shared state. The idle deadline moves only once per ``slack`` seconds:
    re-registering a deadline per chunk costs more than a small read. It is set ``slack``
    beyond ``idle``, so a connection is never cut before it was idle ``idle`` seconds (and
    at most ``idle + slack`` after its last byte)."""

    scope: trio.CancelScope
    idle: float
    record: ConnectionRecord
    chunk: int
    slack: float = 0.0
    _moved_at: float = float("-inf")
    # A pump finished (either way): the one that finishes second knows the connection closes
    # next, so it need not half-close its sink first.
    pump_ended: bool = False

    def __post_init__(self) -> None:
        self.slack = min(IDLE_SLACK, self.idle / 16)

    def touch(self) -> None:
        now = trio.current_time()
        if now - self._moved_at >= self.slack:
            self._moved_at = now
            self.scope.deadline = now + self.idle + self.slack

    def moved(self, size: int, upstream: bool) -> None:
        """A chunk went through (proxy.reactor.Progress): push the deadline back, count it."""
        self.touch()
        if upstream:
            self.record.bytes_from_client += size
        else:
            self.record.bytes_to_client += size


async def splice(
    client: trio.abc.Stream,
    backend: trio.abc.Stream,
    idle: float,
    record: ConnectionRecord,
    chunk: int = CHUNK,
) -> None:
    """Two pumps with an idle deadline that any byte in either direction pushes back.
    The deadline sits on the nursery's own cancel scope: a scope of its own would cost every
    idle connection another CancelScope and CancelStatus (about 600 bytes). The caller closes
    both streams when this returns: if the client's direction ends last, the client gets
    close_notify here and the TCP FIN with that close (see ``_pass_eof``)."""
    async with trio.open_nursery() as nursery:
        scope = nursery.cancel_scope
        state = _SpliceState(scope, idle, record, chunk)
        state.touch()
        nursery.start_soon(_pump, backend, client, state, False)
        # Upstream runs in this task: one task start per connection saved.
        await _pump(client, backend, state, True)
    if scope.cancelled_caught and record.outcome == "open":
        record.finish("idle_timeout")
    record.finish("ok")


async def _pass_eof(sink: trio.abc.Stream, closing: bool) -> None:
    """Forward end-of-stream. If the other side is already fully gone, there is nobody left
    to tell: every byte was delivered, so that is not an error of this connection.

    ``closing``: the other direction has ended too, so the connection's teardown closes the
    client's TLS stream right after this, and that close sends the TCP FIN. Only
    close_notify must precede it (RFC 8446 §6.1, the client's end of data); a
    shutdown(SHUT_WR) first would be a syscall for nothing, and fails (ENOTCONN) whenever
    the client closed its socket first, as one that sent close_notify and stopped reading
    does (its kernel answers our close_notify with a reset). A backend's only end signal is
    the FIN, so it always gets it at once; half-close while the other direction still runs
    is unchanged."""
    try:
        if closing and isinstance(sink, TLSStream):
            await sink.send_close_notify()
        elif isinstance(sink, trio.abc.HalfCloseableStream):
            await sink.send_eof()
        else:
            await sink.aclose()
    except STREAM_ERRORS:
        pass


def _relay_for(
    source: trio.abc.Stream, sink: trio.abc.Stream, state: _SpliceState, upstream: bool
) -> UpstreamRelay | DownstreamRelay | None:
    """The reactor-driven fast path for this direction, when both ends are our own streams
    over plain sockets (else the pump uses the streams' ``receive_some``/``send_all``)."""
    client, backend = (source, sink) if upstream else (sink, source)
    if not isinstance(client, TLSStream) or not isinstance(backend, FastSocketStream):
        return None
    client_raw = client.raw_socket
    reactor = current_reactor()
    if client_raw is None or reactor is None:
        return None
    relay: UpstreamRelay | DownstreamRelay
    if upstream:
        relay = UpstreamRelay(reactor, client, client_raw, backend, state)
    else:
        relay = DownstreamRelay(reactor, backend, client, state, state.chunk)
    return relay if reactor.add(relay) else None


async def _pump(
    source: trio.abc.Stream, sink: trio.abc.Stream, state: _SpliceState, upstream: bool
) -> None:
    """Copy one direction; ``upstream`` means client → backend. With a relay, chunks move
    in reactor callbacks and this task only finishes what a callback could not (see
    proxy.reactor); the outcomes and errors are the same as on the streams' own path."""
    receiving = True
    relay = _relay_for(source, sink, state, upstream)
    data: bytes | bytearray | None
    try:
        while True:
            receiving = True
            if relay is not None and relay.usable():
                item = await relay.wait()
                if isinstance(item, (Unsent, SendFailed)):
                    receiving = False
                data = await relay.finish(item, state.chunk)
                item = None  # a write's rest: not held while the pump parks again
                if data is None:
                    continue
            else:
                data = await source.receive_some(state.chunk)
            receiving = False
            if not data:
                break
            state.moved(len(data), upstream)
            await sink.send_all(data)
            # Not held while the pump waits for the next one: after a bulk transfer an idle
            # connection would otherwise keep up to a chunk (64 KiB) per direction.
            data = None
        await _pass_eof(sink, closing=state.pump_ended)
    except TLSTruncated as exc:
        state.record.finish("client_truncated", str(exc))
        state.scope.cancel()
    except TLSStreamError as exc:  # an alert after the handshake (a limit, a bad record)
        note_tls_error(state.record, exc)
        state.scope.cancel()
    except STREAM_ERRORS as exc:
        # Receiving on the client side or sending towards it both point at the client.
        side = "client" if receiving == upstream else "backend"
        state.record.finish(f"{side}_error", str(exc))
        state.scope.cancel()
    finally:
        state.pump_ended = True
        if relay is not None:
            relay.reactor.remove(relay)
