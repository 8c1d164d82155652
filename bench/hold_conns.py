"""Open N TLS 1.3 connections to a target, make one keep-alive request on each, and hold them.

Run by the harness as a separate process (so the load generator's memory is never counted
against the target).  Each connection completes the handshake and one HTTP/1.1 request,
so every target has both its client and its backend connection open; then it idles.
Prints one JSON line (``{"established": n, "failed": m, "errors": {...}}``) when all
attempts are done, and holds everything until its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from collections import Counter

import trio

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # throughput tool: the certificate is our own
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


async def read_response(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Read one response with a Content-Length body, leaving the connection idle after it."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        body += chunk


class Holder:
    def __init__(self, port: int, count: int, concurrency: int, deadline: float) -> None:
        self.port = port
        self.deadline = deadline
        self.count = count
        self.limiter = trio.CapacityLimiter(concurrency)
        self.context = client_context()
        self.established = 0
        self.errors: Counter[str] = Counter()
        self.done = trio.Event()
        self.attempts_finished = 0
        self.release = trio.Event()

    async def hold_one(self) -> None:
        try:
            async with self.limiter:
                tcp = await trio.open_tcp_stream("127.0.0.1", self.port)
                stream = trio.SSLStream(tcp, self.context, server_hostname="localhost")
                with trio.fail_after(60):
                    await stream.do_handshake()
                    await stream.send_all(REQUEST)
                    await read_response(stream)
            self.established += 1
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, ConnectionError) as error:
            self.errors[type(error).__name__ + ": " + str(error)[:80]] += 1
            return
        finally:
            self.attempts_finished += 1
            if self.attempts_finished == self.count:
                self.done.set()
        await self.release.wait()  # hold the connection open (and referenced) until told
        await trio.aclose_forcefully(stream)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.count):
                nursery.start_soon(self.hold_one)
            with trio.move_on_after(self.deadline):
                await self.done.wait()
            # Attempts still running at the deadline are reported as unfinished, not failed.
            report = {
                "established": self.established,
                "failed": sum(self.errors.values()),
                "unfinished": self.count - self.attempts_finished,
                "errors": dict(self.errors.most_common(5)),
            }
            print(json.dumps(report), flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # the harness closes stdin to end us
            self.release.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--deadline",
        type=float,
        default=300.0,
        help="report after this many seconds even if attempts are pending",
    )
    args = parser.parse_args(argv)
    trio.run(Holder(args.port, args.count, args.concurrency, args.deadline).run)


if __name__ == "__main__":
    main()
