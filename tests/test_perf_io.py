"""The proxy's fast I/O paths behave like the trio streams they replace (no timing asserts)."""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from certs import Issued, make_leaf

from proxy.connection import ConnectionRecord, _SpliceState
from proxy.listener import _Acceptor, _address, _fixed_local_address, _set_nodelay
from proxy.tlsstream import FAIR_STREAK, FastSocketStream, TLSStream, connect_tcp
from tls13 import (
    CertificateChain,
    CertificateStore,
    ClientConfig,
    ClientConnection,
    ServerConfig,
    ServerConnection,
    TicketKeyring,
    events,
)


def in_trio(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test under trio.run (the suite does not use pytest-trio)."""

    @functools.wraps(test)
    def run() -> None:
        trio.run(test)

    return run


async def _tcp_pair() -> tuple[FastSocketStream, FastSocketStream]:
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    _set_nodelay(listener)
    client = await connect_tcp(socket.AF_INET, listener.getsockname())
    accepted, _ = await listener.accept()
    listener.close()
    server = FastSocketStream.wrap(accepted)
    assert isinstance(client, FastSocketStream) and isinstance(server, FastSocketStream)
    return client, server


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(65536)
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)


@in_trio
async def test_round_trip_options_and_eof() -> None:
    client, server = await _tcp_pair()
    # TCP_NODELAY: set before connect on ours, inherited from the listener on the accepted end.
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await client.send_all(b"hello")
    assert await _receive_exactly(server, 5) == b"hello"
    await client.send_eof()
    await client.send_eof()  # idempotent, like trio.SocketStream
    assert await server.receive_some() == b""
    await server.send_all(b"still open the other way")
    assert await _receive_exactly(client, 24) == b"still open the other way"
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"after eof")
    await client.aclose()
    await server.aclose()


@in_trio
async def test_large_transfer_with_backpressure() -> None:
    """More than the socket buffers hold: the sender must park and resume, byte-exact."""
    client, server = await _tcp_pair()
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
    received = bytearray()

    async def reader() -> None:
        await trio.sleep(0.05)  # let the sender fill the buffers first
        received.extend(await _receive_exactly(server, len(payload)))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await client.send_all(payload)
    assert received == payload
    await client.aclose()
    await server.aclose()


@in_trio
async def test_close_wakes_a_parked_receiver_and_errors_map_like_trio() -> None:
    client, server = await _tcp_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def parked() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await server.receive_some(10)

            nursery.start_soon(parked)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some(10)
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")
    # The peer is gone: sending to it ends in BrokenResourceError, never a raw OSError.
    with pytest.raises(trio.BrokenResourceError), trio.fail_after(5):
        for _ in range(1000):
            await client.send_all(b"x" * 65536)
    await client.aclose()


@in_trio
async def test_a_drained_stream_waits_first_and_still_sees_data_close_and_eof() -> None:
    client, server = await _tcp_pair()
    await client.send_all(b"ab")
    assert await _receive_exactly(server, 2) == b"ab"  # less than asked: drained
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def late_sender() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await client.send_all(b"cd")

            nursery.start_soon(late_sender)
            assert await server.receive_some(10) == b"cd"  # parked first, then read
    await client.send_eof()
    assert await server.receive_some(10) == b""
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some(10)  # drained and closed: no raw ValueError from epoll
    await client.aclose()


@in_trio
async def test_concurrent_senders_are_refused() -> None:
    client, server = await _tcp_pair()
    big = b"y" * (8 << 20)  # cannot fit in the socket buffers: the first sender parks
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, big)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await client.send_all(b"z")
            nursery.cancel_scope.cancel()
    await client.aclose()
    await server.aclose()


@in_trio
async def test_a_stream_that_never_blocks_still_lets_others_run() -> None:
    """Data always ready: calls must still yield now and then (fairness) and see cancels."""
    client, server = await _tcp_pair()
    await client.send_all(b"x" * 200_000)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            before = ticks
            for _ in range(4 * FAIR_STREAK):
                await server.receive_some(1)  # data is there: no call blocks
            assert ticks > before
            nursery.cancel_scope.cancel()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await server.receive_some(1)
    await client.aclose()
    await server.aclose()


def test_wrap_falls_back_to_trio_stream_without_a_stdlib_socket() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError):  # trio.SocketStream refuses a non-socket: the fallback ran
        FastSocketStream.wrap(Opaque())  # type: ignore[arg-type]


@in_trio
async def test_listener_addresses_known_without_syscalls() -> None:
    assert _address(("::1", 443, 0, 0)) == ("::1", 443)
    assert _address("/run/socket") is None
    bound = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    wildcard = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await bound.bind(("127.0.0.1", 0))
        await wildcard.bind(("0.0.0.0", 0))
        assert _fixed_local_address(bound) == ("127.0.0.1", bound.getsockname()[1])
        assert _fixed_local_address(wildcard) is None  # each connection asks its own socket
    finally:
        bound.close()
        wildcard.close()


@in_trio
async def test_idle_deadline_moves_rarely_but_never_early() -> None:
    record = ConnectionRecord("l", "", 0, "", 0)
    with trio.CancelScope() as scope:
        state = _SpliceState(scope, 16.0, record, 1024)
        assert state.slack == 1.0
        state.touch()
        first = scope.deadline
        now = trio.current_time()
        assert first >= now + 16.0  # never sooner than the idle timeout after this byte
        state.touch()
        assert scope.deadline == first  # within the slack: not re-registered
    short = _SpliceState(trio.CancelScope(), 0.5, record, 1024)
    assert short.slack == pytest.approx(0.5 / 16)


class CountingStream(trio.abc.HalfCloseableStream):
    """Records every write the TLS stream makes to its transport."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_tickets_leave_with_the_first_response(test_ca: Issued) -> None:
    """RFC 8446 §4.6.1 lets tickets go any time after the client's Finished: ours share the
    first response's write, and the client still receives every ticket before the data."""
    leaf = make_leaf(test_ca, ("localhost",))
    chain = CertificateChain.from_pem(leaf.cert_pem(), leaf.key_pem())
    config = ServerConfig(
        CertificateStore([chain]), tickets=2, ticket_keys=TicketKeyring.generate()
    )

    async def main() -> None:
        left, right = trio.socket.socketpair()
        transport = CountingStream(FastSocketStream.wrap(left))
        server = TLSStream(transport, ServerConnection(config))
        client_stream = FastSocketStream.wrap(right)
        client = ClientConnection(ClientConfig(ca_certificates=(test_ca.cert,)), "localhost")
        client.start()
        seen: list[events.Event] = []
        with trio.fail_after(20):
            await client_stream.send_all(client.data_to_send())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.do_handshake)
                while not client.handshake_complete:
                    seen += client.receive_data(await client_stream.receive_some())
                await client_stream.send_all(client.data_to_send())
            assert len(transport.writes) == 1  # the server's flight; the tickets wait
            await server.send_all(b"response")
            assert len(transport.writes) == 2
            while not any(isinstance(e, events.ApplicationData) for e in seen):
                seen += client.receive_data(await client_stream.receive_some())
        kinds = [type(e) for e in seen if not isinstance(e, events.HandshakeComplete)]
        assert kinds == [events.NewSessionTicketReceived] * 2 + [events.ApplicationData]
        await server.aclose()
        await client_stream.aclose()

    trio.run(main)


def test_buffered_plaintext_is_handed_out_in_order_and_within_the_limit(test_ca: Issued) -> None:
    leaf = make_leaf(test_ca, ("localhost",))
    chain = CertificateChain.from_pem(leaf.cert_pem(), leaf.key_pem())
    transport, _ = trio.testing.memory_stream_pair()
    stream = TLSStream(transport, ServerConnection(ServerConfig(CertificateStore([chain]))))
    records = [bytes([n]) * size for n, size in enumerate((5, 16384, 1, 700, 3))]
    stream._handle_events([events.ApplicationData(r) for r in records])
    got = bytearray()
    for limit in (3, 4, 16384, 1, 10_000):
        chunk = stream._take_incoming(limit)
        assert 0 < len(chunk) <= limit
        got += chunk
    got += stream._take_incoming(None)
    assert got == b"".join(records)
    assert not stream._incoming and stream._incoming_size == 0
    stream._handle_events([events.ApplicationData(b"single")])
    assert stream._take_incoming(65536) == b"single"


def test_a_silent_client_still_gets_its_tickets(test_ca: Issued) -> None:
    """Held tickets do not wait for a response that may never come: a client that sends
    nothing after its Finished (a ticket probe, a server-speaks-first protocol) gets them."""
    leaf = make_leaf(test_ca, ("localhost",))
    chain = CertificateChain.from_pem(leaf.cert_pem(), leaf.key_pem())
    config = ServerConfig(
        CertificateStore([chain]), tickets=2, ticket_keys=TicketKeyring.generate()
    )

    async def main() -> None:
        left, right = trio.socket.socketpair()
        server = TLSStream(FastSocketStream.wrap(left), ServerConnection(config))
        client_stream = FastSocketStream.wrap(right)
        client = ClientConnection(ClientConfig(ca_certificates=(test_ca.cert,)), "localhost")
        client.start()
        seen: list[events.Event] = []
        with trio.fail_after(20):
            await client_stream.send_all(client.data_to_send())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.receive_some)  # the upstream pump, waiting
                while not client.handshake_complete:
                    seen += client.receive_data(await client_stream.receive_some())
                await client_stream.send_all(client.data_to_send())
                while sum(isinstance(e, events.NewSessionTicketReceived) for e in seen) < 2:
                    seen += client.receive_data(await client_stream.receive_some())
                client.send_data(b"bye")
                await client_stream.send_all(client.data_to_send())
        await server.aclose()
        await client_stream.aclose()

    trio.run(main)


@in_trio
async def test_acceptor_drains_a_burst_and_parks_when_empty() -> None:
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    acceptor = _Acceptor(listener)
    assert acceptor.raw is not None
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3 * FAIR_STREAK)]
    try:
        with trio.fail_after(10):
            ports = set()
            for _ in clients:
                conn, peer = await acceptor.accept()
                assert isinstance(conn, trio.socket.SocketType)
                ports.add(_address(peer))
                conn.close()
            assert ports == {_address(c.getsockname()) for c in clients}
            async with trio.open_nursery() as nursery:

                async def late_client() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    clients.append(socket.create_connection(listener.getsockname()))

                nursery.start_soon(late_client)
                conn, _ = await acceptor.accept()  # nothing queued: parks, then accepts
                conn.close()
    finally:
        for client in clients:
            client.close()
        listener.close()
