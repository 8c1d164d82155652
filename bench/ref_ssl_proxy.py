"""Reference terminator: what a Python user would write with trio and the standard ``ssl`` module.

It is deliberately plain, so the benchmark compares our engine with the idiomatic
alternative rather than with a tuned one: ``trio.serve_tcp`` accepts, ``trio.SSLStream``
does TLS (OpenSSL underneath), the handshake is completed before the backend is dialled,
and two pumps copy bytes until either side ends.  TLS 1.3 only; session tickets are left
as the ``ssl`` defaults give them (OpenSSL issues two stateless tickets per handshake).
``--workers N`` forks N processes sharing the port through SO_REUSEPORT, the usual way to
use more than one core from Python.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import socket
import ssl
import sys
from functools import partial

import trio

PUMP_CHUNK = 65536
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def make_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    return context


async def pump_to_backend(
    client: trio.SSLStream[trio.SocketStream], backend: trio.SocketStream
) -> None:
    """Copy client plaintext to the backend; forward the client's end as a TCP half-close."""
    try:
        while data := await client.receive_some(PUMP_CHUNK):
            await backend.send_all(data)
        await backend.send_eof()
    except STREAM_ERRORS:
        # The client vanished (EOF without close_notify, reset) or the other pump closed it:
        # drop the backend too, which also wakes the other pump if it is still waiting.
        await trio.aclose_forcefully(backend)


async def pump_to_client(
    backend: trio.SocketStream, client: trio.SSLStream[trio.SocketStream]
) -> None:
    """Copy backend bytes to the client; when the backend ends, close TLS with close_notify.

    Closing here (rather than cancelling the other pump) matters: a cancelled
    ``SSLStream`` operation leaves the stream broken, and a broken stream drops the
    connection without close_notify, which OpenSSL clients treat as an error that
    makes the session non-resumable.
    """
    try:
        while data := await backend.receive_some(PUMP_CHUNK):
            await client.send_all(data)
        await client.aclose()
    except STREAM_ERRORS:
        await trio.aclose_forcefully(client)  # unblocks the other pump


async def handle(
    context: ssl.SSLContext, backend_addr: tuple[str, int], tcp: trio.SocketStream
) -> None:
    # https_compatible stays False: in trio it would also suppress our close_notify, and an
    # OpenSSL client that sees a bare EOF treats it as an error and drops the session.
    client = trio.SSLStream(tcp, context, server_side=True)
    try:
        await client.do_handshake()
        backend = await trio.open_tcp_stream(*backend_addr)
    except (trio.BrokenResourceError, OSError):
        await trio.aclose_forcefully(client)
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_to_backend, client, backend)
            nursery.start_soon(pump_to_client, backend, client)
    finally:
        await trio.aclose_forcefully(backend)
        await trio.aclose_forcefully(client)


async def serve(
    context: ssl.SSLContext, host: str, port: int, backend_addr: tuple[str, int]
) -> None:
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    await listener.bind((host, port))
    listener.listen(4096)
    listeners = [trio.SocketListener(listener)]
    await trio.serve_listeners(partial(handle, context, backend_addr), listeners)


def worker(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    context = make_context(args.cert, args.key)
    trio.run(serve, context, args.host, args.port, (args.backend_host, args.backend_port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend-host", default="127.0.0.1")
    parser.add_argument("--backend-port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="certificate chain PEM")
    parser.add_argument("--key", required=True, help="private key PEM")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.workers <= 1:
        worker(args)
        return
    procs = [multiprocessing.Process(target=worker, args=(args,)) for _ in range(args.workers)]
    for proc in procs:
        proc.start()

    def stop(signum: int, _frame: object) -> None:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(5)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()


if __name__ == "__main__":
    main()
