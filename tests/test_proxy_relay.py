"""The accept loop and relay over plain TCP (a terminator without TLS), with real backends:
balancing, failover, backpressure, half-close, timeouts, connection limit, drain."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio
from proxy_helpers import (
    EchoServer,
    PlainTerminator,
    RecordingObserver,
    SlowReader,
    SlowTerminator,
    pattern,
)

from proxy.backends import BackendPool, PoolOptions
from proxy.connection import (
    EarlyDataHandler,
    Established,
    ListenerRuntime,
    SessionInfo,
    Terminator,
    Timeouts,
)
from proxy.listener import ConnectionTracker, Listener, bind_addresses, to_trio
from proxy.routing import Route, RouteTable
from proxy.settings import BackendAddress


@dataclass
class Proxy:
    port: int
    observer: RecordingObserver
    tracker: ConnectionTracker
    pools: dict[str, BackendPool]
    listener_scope: trio.CancelScope


def make_runtime(
    ports: list[int],
    terminator: Terminator | None = None,
    timeouts: Timeouts | None = None,
    options: PoolOptions | None = None,
    observer: RecordingObserver | None = None,
) -> ListenerRuntime:
    pool = BackendPool(
        "main",
        [BackendAddress("tcp", "127.0.0.1", p) for p in ports],
        options or PoolOptions(connect_timeout=1.0),
    )
    return ListenerRuntime(
        "test",
        terminator or PlainTerminator(),
        RouteTable([], Route("default", "main")),
        {"main": pool},
        timeouts or Timeouts(handshake=2.0, idle=5.0),
        observer or RecordingObserver(),
    )


async def start_proxy(nursery: trio.Nursery, runtime: ListenerRuntime, limit: int = 0) -> Proxy:
    sockets = to_trio(bind_addresses("127.0.0.1", 0))
    tracker = ConnectionTracker(limit)
    listener = Listener("test", sockets, lambda: runtime, tracker)
    scope = trio.CancelScope()

    async def serve() -> None:
        with scope:
            await listener.serve(nursery)

    nursery.start_soon(serve)
    return Proxy(
        listener.addresses()[0][1],
        runtime.observer,  # type: ignore[arg-type]
        tracker,
        dict(runtime.pools),
        scope,
    )


async def roundtrip(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        received = bytearray()
        while chunk := await stream.receive_some(65536):
            received += chunk
        return bytes(received)


async def refused(port: int) -> bool:
    """True when the proxy closed (or reset) the connection without relaying anything."""
    try:
        return await roundtrip(port, b"data") == b""
    except trio.BrokenResourceError:
        return True


def run(test: Callable[[trio.Nursery], Awaitable[None]], limit: float = 30) -> None:
    async def main() -> None:
        with trio.fail_after(limit):
            async with trio.open_nursery() as nursery:
                await test(nursery)
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_round_robin_spread_and_half_close() -> None:
    async def body(nursery: trio.Nursery) -> None:
        echoes = [EchoServer(tag=bytes([65 + i])) for i in range(3)]
        ports = [await e.start(nursery) for e in echoes]
        proxy = await start_proxy(nursery, make_runtime(ports))
        replies = [await roundtrip(proxy.port, b"hello") for _ in range(9)]
        assert sorted(r[:1] for r in replies) == [b"A"] * 3 + [b"B"] * 3 + [b"C"] * 3
        assert all(r[1:] == b"hello" for r in replies)
        assert [e.connections for e in echoes] == [3, 3, 3]
        await wait_for(lambda: len(proxy.observer.finished) == 9)
        assert {r.outcome for r in proxy.observer.finished} == {"ok"}
        assert all(
            r.bytes_from_client == 5 and r.bytes_to_client == 6 for r in proxy.observer.finished
        )

    run(body)


async def wait_for(condition: Callable[[], bool], limit: float = 5) -> None:
    with trio.fail_after(limit):
        while not condition():
            await trio.sleep(0.01)


def test_failover_when_backend_dies() -> None:
    async def body(nursery: trio.Nursery) -> None:
        live = EchoServer(tag=b"L")
        live_port = await live.start(nursery)
        dead_port = free_tcp_port()
        proxy = await start_proxy(
            nursery,
            make_runtime(
                [dead_port, live_port], options=PoolOptions(connect_timeout=1, max_fails=2)
            ),
        )
        for _ in range(4):
            assert await roundtrip(proxy.port, b"x") == b"Lx"
        dead = proxy.pools["main"].servers[0]
        assert dead.ejected_until > 0, "the refusing server should have been ejected"
        records = proxy.observer.finished
        await wait_for(lambda: len(records) == 4)
        assert max(r.backend_attempts for r in records) == 2

    run(body)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_backend_killed_mid_test_then_pool_empty_refuses_fast() -> None:
    async def body(nursery: trio.Nursery) -> None:
        echo = EchoServer(tag=b"E")
        scope = trio.CancelScope()

        async def serve_echo(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    listeners = await inner.start(
                        partial(trio.serve_tcp, echo.handler, 0, host="127.0.0.1")
                    )
                    task_status.started(listeners[0].socket.getsockname()[1])

        port = await nursery.start(serve_echo)
        proxy = await start_proxy(
            nursery, make_runtime([port], options=PoolOptions(connect_timeout=1, max_fails=1))
        )
        assert await roundtrip(proxy.port, b"1") == b"E1"
        scope.cancel()
        await trio.sleep(0.05)
        assert await refused(proxy.port)  # the connect fails: closed without data
        with trio.fail_after(1):
            assert await refused(proxy.port)  # ejected: not even attempted, fast
        outcomes = [r.outcome for r in proxy.observer.finished]
        assert outcomes[-2:] == ["backend_unavailable", "no_backend"]

    run(body)


def test_slow_backend_reader_bounds_proxy_buffering() -> None:
    async def body(nursery: trio.Nursery) -> None:
        slow = SlowReader(delay=0.02, chunk=4096)
        port = await slow.start(nursery)
        proxy = await start_proxy(nursery, make_runtime([port]))
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sent = 0
        with trio.move_on_after(1.5):
            while True:
                await stream.send_all(b"z" * 16384)
                sent += 16384
        # Everything we managed to send is in kernel buffers or delivered: the proxy holds
        # at most one chunk in user space, so "sent - delivered" stays bounded by socket
        # buffers (a few MiB at most) rather than growing with time.
        in_flight = sent - slow.received
        assert in_flight < 8 * 1024 * 1024, in_flight
        assert slow.received > 0
        await stream.aclose()

    run(body)


def test_stalled_handshake_is_dropped_at_timeout() -> None:
    async def body(nursery: trio.Nursery) -> None:
        echo = EchoServer()
        port = await echo.start(nursery)
        proxy = await start_proxy(
            nursery,
            make_runtime([port], terminator=SlowTerminator(), timeouts=Timeouts(0.5, 5)),
        )
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await stream.send_all(b"slo")
        start = trio.current_time()
        with trio.fail_after(3):
            assert await stream.receive_some(10) == b""
        assert 0.4 < trio.current_time() - start < 2
        await wait_for(lambda: len(proxy.observer.finished) == 1)
        assert proxy.observer.finished[0].outcome == "handshake_timeout"
        assert echo.connections == 0

    run(body)


def test_idle_timeout_closes_both_sides() -> None:
    async def body(nursery: trio.Nursery) -> None:
        echo = EchoServer()
        port = await echo.start(nursery)
        proxy = await start_proxy(nursery, make_runtime([port], timeouts=Timeouts(2, 0.5)))
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await stream.send_all(b"ping")
        assert await stream.receive_some(10) == b"ping"
        with trio.fail_after(3):
            assert await stream.receive_some(10) == b""
        await wait_for(lambda: len(proxy.observer.finished) == 1)
        assert proxy.observer.finished[0].outcome == "idle_timeout"

    run(body)


def test_connection_limit_refuses_cleanly_and_counts() -> None:
    async def body(nursery: trio.Nursery) -> None:
        echo = EchoServer()
        port = await echo.start(nursery)
        proxy = await start_proxy(nursery, make_runtime([port]), limit=2)
        held = [await trio.open_tcp_stream("127.0.0.1", proxy.port) for _ in range(2)]
        for s in held:
            await s.send_all(b"a")
            assert await s.receive_some(10) == b"a"
        extra = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        with trio.fail_after(2):
            assert await extra.receive_some(10) == b""
        assert proxy.tracker.refused == 1
        for s in held:
            await s.aclose()
        await wait_for(lambda: proxy.tracker.active == 0)
        assert await roundtrip(proxy.port, b"again") == b"again"

    run(body)


def test_many_concurrent_connections_every_byte_checked() -> None:
    count, size = 1000, 32 * 1024

    async def body(nursery: trio.Nursery) -> None:
        echoes = [EchoServer() for _ in range(2)]
        ports = [await e.start(nursery) for e in echoes]
        proxy = await start_proxy(nursery, make_runtime(ports))
        failures: list[int] = []

        async def client(i: int) -> None:
            payload = pattern(i, size)
            if await roundtrip(proxy.port, payload) != payload:
                failures.append(i)

        async with trio.open_nursery() as clients:
            for i in range(count):
                clients.start_soon(client, i)
        assert failures == []
        assert sum(e.connections for e in echoes) == count

    run(body, limit=120)


def test_drain_lets_connections_finish_then_cancels() -> None:
    from proxy.daemon import drain

    async def body(nursery: trio.Nursery) -> None:
        echo = EchoServer()
        port = await echo.start(nursery)
        runtime = make_runtime([port])
        tracker = ConnectionTracker(0)
        sockets = to_trio(bind_addresses("127.0.0.1", 0))
        listener = Listener("t", sockets, lambda: runtime, tracker)
        proxy_port = listener.addresses()[0][1]
        async with trio.open_nursery() as connections:
            accept_scope = trio.CancelScope()

            async def serve() -> None:
                with accept_scope:
                    await listener.serve(connections)

            connections.start_soon(serve)
            stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
            await stream.send_all(b"hi")
            assert await stream.receive_some(10) == b"hi"
            started = trio.current_time()
            await drain([accept_scope], tracker, connections, 0.5)
            assert 0.4 < trio.current_time() - started < 2
        assert await stream.receive_some(10) == b""
        records = runtime.observer.finished  # type: ignore[attr-defined]
        assert records[0].outcome == "shutdown"

    run(body)


class EarlyTerminator:
    """Simulates a resumed handshake with 0-RTT: the early bytes arrive, then the handshake
    completes only once ``finish`` is set; the negotiated ALPN can differ from the offer."""

    def __init__(self, offered: tuple[str, ...], negotiated: str | None) -> None:
        self.offered = offered
        self.negotiated = negotiated
        self.finish = trio.Event()

    async def establish(
        self, transport: trio.SocketStream, early: EarlyDataHandler | None = None
    ) -> Established:
        forwarded = early is not None and await early.begin("e.test", self.offered)
        if forwarded:
            assert early is not None
            await early.data(b"early ")
        await self.finish.wait()
        info = SessionInfo(server_name="e.test", alpn=self.negotiated, early_data=True)
        return Established(transport, info, b"" if forwarded else b"early ", forwarded)


def early_runtime(port: int, terminator: EarlyTerminator) -> ListenerRuntime:
    pool = BackendPool(
        "main", [BackendAddress("tcp", "127.0.0.1", port)], PoolOptions(connect_timeout=1.0)
    )
    routes = RouteTable(
        [
            Route("zero-rtt", "main", ("e.test",), ("h2",), allow_early_data=True),
            Route("held", "main", ("e.test",), ("http/1.1",)),
        ]
    )
    return ListenerRuntime(
        "test", terminator, routes, {"main": pool}, Timeouts(5, 5), RecordingObserver()
    )


def test_early_data_reaches_an_allowing_route_before_the_handshake_completes() -> None:
    async def body(nursery: trio.Nursery) -> None:
        echo = EchoServer()
        port = await echo.start(nursery)
        terminator = EarlyTerminator(("h2",), "h2")
        proxy = await start_proxy(nursery, early_runtime(port, terminator))
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await wait_for(lambda: echo.connections == 1)  # backend reached mid-handshake
        terminator.finish.set()
        await stream.send_all(b"late")
        await stream.send_eof()
        received = b""
        while chunk := await stream.receive_some(100):
            received += chunk
        assert received == b"early late"

    run(body)


def test_early_data_is_held_for_routes_that_do_not_allow_it() -> None:
    async def body(nursery: trio.Nursery) -> None:
        echo = EchoServer()
        port = await echo.start(nursery)
        terminator = EarlyTerminator(("http/1.1",), "http/1.1")
        proxy = await start_proxy(nursery, early_runtime(port, terminator))
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await trio.sleep(0.3)
        assert echo.connections == 0  # nothing reaches a backend before the handshake
        terminator.finish.set()
        await stream.send_eof()
        assert await stream.receive_some(100) == b"early "

    run(body)


def test_early_data_routed_elsewhere_than_negotiated_is_aborted() -> None:
    async def body(nursery: trio.Nursery) -> None:
        echo = EchoServer()
        port = await echo.start(nursery)
        terminator = EarlyTerminator(("h2",), "http/1.1")  # ALPN changed under us
        runtime = early_runtime(port, terminator)
        proxy = await start_proxy(nursery, runtime)
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await wait_for(lambda: echo.connections == 1)
        terminator.finish.set()
        assert await stream.receive_some(100) == b""
        await wait_for(lambda: len(proxy.observer.finished) == 1)
        assert proxy.observer.finished[0].outcome == "early_data_route_mismatch"

    run(body)
