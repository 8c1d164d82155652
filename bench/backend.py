"""A small, fast plain-HTTP/1.1 backend shared by every benchmarked TLS terminator.

Every target proxies to this same process, so differences in the figures come from the
terminators and not from the origin.  It is written on asyncio's low-level Protocol API
(no streams, no per-request tasks) because on this 2-core machine the backend shares a
core with the load generators and must stay cheap.

Endpoints (any method unless noted):
  ``GET /``  (and any other path)  fixed small response (``SMALL_BODY``)
  ``GET /download?bytes=N``        N bytes of filler, sent under transport flow control
  ``POST|PUT /upload``             discards a Content-Length body, answers with its size
HTTP/1.0 requests get ``Connection: close`` (what ``openssl s_time -www`` sends and needs);
HTTP/1.1 requests are kept alive unless the client asks for ``Connection: close``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from urllib.parse import parse_qs, urlsplit

SMALL_BODY = b"tls13-proxy bench backend: small fixed response body, 64 bytes...\n"[:64]
FILLER = b"x" * (1 << 20)  # one MiB, written by slices so a download never copies
MAX_HEADER_BYTES = 16384
MAX_DOWNLOAD = 1 << 34


class HttpBackendProtocol(asyncio.Protocol):
    """One client connection: parses requests back to back and answers them in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.body_remaining = 0  # bytes of an upload body still to discard
        self.body_total = 0
        self.pending_keep_alive = True
        self.download_remaining = 0
        self.close_after_download = False
        self.paused = False

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=4 << 20, low=1 << 20)

    def data_received(self, data: bytes) -> None:
        if self.body_remaining:
            used = min(len(data), self.body_remaining)
            self.body_remaining -= used
            data = data[used:]
            if self.body_remaining == 0:
                self._answer_upload()
        if data:
            self.buffer += data
        self._process_buffer()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump_download()

    def eof_received(self) -> bool:
        return False  # close our side too: every client here is done when it half-closes

    # -- request handling ----------------------------------------------------------------
    def _process_buffer(self) -> None:
        """Handle every complete request in the buffer, unless a body or download is pending."""
        while not self.body_remaining and not self.download_remaining and self.transport:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self._reply(431, b"header too large\n", keep_alive=False)
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            self._handle_head(head)

    def _handle_head(self, head: str) -> None:
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._reply(400, b"bad request line\n", keep_alive=False)
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.pending_keep_alive = _wants_keep_alive(version, headers.get("connection", ""))
        url = urlsplit(target)
        if url.path == "/upload" and method in ("POST", "PUT"):
            self._start_upload(headers)
        elif url.path == "/download":
            self._start_download(parse_qs(url.query))
        else:
            self._reply(200, SMALL_BODY, self.pending_keep_alive)

    def _start_upload(self, headers: dict[str, str]) -> None:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._reply(400, b"bad content-length\n", keep_alive=False)
            return
        if headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Bytes of the body already buffered behind the head count first.
        already = min(len(self.buffer), length)
        del self.buffer[:already]
        self.body_total = length
        self.body_remaining = length - already
        if self.body_remaining == 0:
            self._answer_upload()

    def _answer_upload(self) -> None:
        self._reply(200, f"received {self.body_total}\n".encode(), self.pending_keep_alive)

    def _start_download(self, query: dict[str, list[str]]) -> None:
        try:
            size = int(query.get("bytes", ["1048576"])[0])
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_DOWNLOAD:
            self._reply(400, b"bytes must be an integer within range\n", keep_alive=False)
            return
        assert self.transport is not None
        self.transport.write(_response_head(200, size, self.pending_keep_alive))
        self.download_remaining = size
        self.close_after_download = not self.pending_keep_alive
        self._pump_download()

    def _pump_download(self) -> None:
        """Write filler until the transport asks us to pause (flow control) or we are done."""
        transport = self.transport
        if transport is None:
            return
        view = memoryview(FILLER)
        while self.download_remaining and not self.paused:
            chunk = min(self.download_remaining, len(FILLER))
            transport.write(view[:chunk])
            self.download_remaining -= chunk
        if self.download_remaining == 0 and self.close_after_download:
            transport.close()
            self.transport = None
        elif self.download_remaining == 0:
            self._process_buffer()

    def _reply(self, status: int, body: bytes, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(_response_head(status, len(body), keep_alive) + body)
        if not keep_alive:
            self.transport.close()
            self.transport = None


REASONS = {200: "OK", 400: "Bad Request", 431: "Request Header Fields Too Large"}


def _response_head(status: int, length: int, keep_alive: bool) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Length: {length}\r\nContent-Type: application/octet-stream\r\n"
        f"Connection: {connection}\r\n\r\n"
    ).encode()


def _wants_keep_alive(version: str, connection: str) -> bool:
    tokens = {t.strip().lower() for t in connection.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpBackendProtocol, host, port, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"backend listening on {host}:{bound}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
