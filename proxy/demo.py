"""The built-in demo backend: a minimal HTTP/1.1 server showing what TLS negotiated.

It runs inside the proxy process (``backend = "demo"``): the connection task hands it one
end of a socketpair plus a mapping of the negotiated parameters, so nothing has to be parsed
back out of the byte stream. It answers every request with a small page (HTML, or plain text
when the client prefers it), honours keep-alive and HEAD, and closes on malformed input.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

import trio

MAX_HEAD = 16384
MAX_BODY = 1 << 20
READ_SIZE = 16384


class HTTPError(Exception):
    """A request we cannot serve; ``status`` goes back to the client before closing."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: Mapping[str, str]

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


class _Reader:
    """Buffered reads of an HTTP/1.1 request head and body from a stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def read_head(self) -> bytes | None:
        """The head up to and including the blank line; None on clean EOF between requests."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) > MAX_HEAD:
                raise HTTPError(431, "Request Header Fields Too Large")
            chunk = await self.stream.receive_some(READ_SIZE)
            if not chunk:
                if self.buffer.strip():
                    raise HTTPError(400, "Bad Request")
                return None
            self.buffer += chunk

    async def skip(self, length: int) -> None:
        """Discard a request body of ``length`` bytes (bounded by MAX_BODY)."""
        while len(self.buffer) < length:
            chunk = await self.stream.receive_some(READ_SIZE)
            if not chunk:
                raise HTTPError(400, "Bad Request")
            self.buffer += chunk
        del self.buffer[:length]


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (RFC 9112 §3, §5); reject what we do not accept."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise HTTPError(400, "Bad Request") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HTTPError(505, "HTTP Version Not Supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(400, "Bad Request")
        headers[name.lower()] = value.strip()
    return Request(method, target, version, headers)


def body_length(request: Request) -> int:
    if "transfer-encoding" in request.headers:
        raise HTTPError(501, "Not Implemented")
    raw = request.headers.get("content-length", "0")
    if not raw.isdigit():
        raise HTTPError(400, "Bad Request")
    length = int(raw)
    if length > MAX_BODY:
        raise HTTPError(413, "Content Too Large")
    return length


def render_page(info: Mapping[str, str], request: Request) -> tuple[bytes, str]:
    """The page body and its content type: plain text when asked for, else HTML."""
    rows = [(key, value) for key, value in info.items()]
    if "text/plain" in request.headers.get("accept", "") or request.target == "/info.txt":
        text = "tls13-proxy demo backend\n" + "".join(f"{k}: {v}\n" for k, v in rows)
        return text.encode("utf-8"), "text/plain; charset=utf-8"
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>\n" for k, v in rows
    )
    page = (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>tls13-proxy</title>'
        "</head><body>\n<h1>tls13-proxy demo backend</h1>\n"
        f"<p>{html.escape(request.method)} {html.escape(request.target)}</p>\n"
        f"<table>\n{cells}</table>\n</body></html>\n"
    )
    return page.encode("utf-8"), "text/html; charset=utf-8"


def response_bytes(
    status: int, reason: str, body: bytes, content_type: str, keep_alive: bool, head_only: bool
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Server: tls13-proxy-demo\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + body


async def serve_demo(stream: trio.abc.Stream, context: object) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until the client closes or asks to."""
    info: Mapping[str, str] = context if isinstance(context, Mapping) else {}
    reader = _Reader(stream)
    try:
        while True:
            head = await reader.read_head()
            if head is None:
                return
            request = parse_head(head)
            await reader.skip(body_length(request))
            body, content_type = render_page(info, request)
            await stream.send_all(
                response_bytes(
                    200, "OK", body, content_type, request.keep_alive, request.method == "HEAD"
                )
            )
            if not request.keep_alive:
                return
    except HTTPError as exc:
        message = f"{exc.status} {exc.reason}\n".encode()
        await stream.send_all(
            response_bytes(exc.status, exc.reason, message, "text/plain", False, False)
        )
