"""The metrics HTTP endpoint: ``GET /metrics`` in a background thread.

A thread (not a trio task) so that scrapes keep working whatever the daemon's
event loop is doing — a parent blocked in ``waitpid`` or busy reloading still
answers Prometheus — and so that the endpoint is usable from a plain,
non-trio supervisor process.  The listening socket is closed in any child
forked after the server started: workers must not inherit (and keep bound)
the parent's metrics port.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

METRICS_PATH = "/metrics"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]


class AddressError(ValueError):
    """The configured metrics listen address cannot be parsed."""


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` (or pass a tuple through) into host and port."""
    if isinstance(address, tuple):
        host, port = address
    else:
        text = address.strip()
        if text.startswith("systemd"):
            raise AddressError(
                f"{address!r} is socket-activated: pass the socket from systemd, not the name"
            )
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            if not sep:
                raise AddressError(f"expected [host]:port, got {address!r}")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or ":" in host:
                raise AddressError(f"expected host:port, got {address!r}")
        try:
            port = int(port_text)
        except ValueError as exc:
            raise AddressError(f"port is not a number in {address!r}") from exc
    if not 0 <= port <= 65535:
        raise AddressError(f"port out of range in {address!r}")
    return (host or "0.0.0.0", port)


def _family_for(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        # A host name: let the resolver pick, preferring whatever it lists first.
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return infos[0][0]


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not write an access line per scrape to stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One short-lived thread per scrape so a slow scraper cannot block others."""

    daemon_threads = True
    allow_reuse_address = True


def _make_app(registry_provider: Callable[[], CollectorRegistry]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the current exposition registry at /metrics and 404 elsewhere."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == METRICS_PATH:
            # Built per request: the registry changes when multi-process mode is enabled.
            inner: Callable[..., Iterable[bytes]] = make_wsgi_app(registry_provider())
            return inner(environ, start_response)
        if path == "/":
            body = b'<html><body><a href="/metrics">metrics</a></body></html>\n'
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; metrics are at /metrics\n"]

    return app


def _adopt_socket(sock: socket.socket, app: Callable[..., Iterable[bytes]]) -> WSGIServer:
    """Serve on a socket bound elsewhere (systemd socket activation: ``systemd:NAME``)."""
    server_class = type("_AdoptedServer", (_ThreadingServer,), {"address_family": sock.family})
    server: WSGIServer = server_class(
        sock.getsockname()[:2], _QuietHandler, bind_and_activate=False
    )
    server.socket.close()
    server.socket = sock
    sock.setblocking(True)  # socketserver's accept loop expects a blocking socket
    sock.listen(socket.SOMAXCONN)  # harmless if systemd already listens
    server.server_name = "metrics"
    server.server_port = int(sock.getsockname()[1])
    server.setup_environ()
    server.set_app(app)
    return server


_LIVE_SERVERS: weakref.WeakSet[MetricsServer] = weakref.WeakSet()


class MetricsServer:
    """A running metrics endpoint; ``address`` is the bound (host, port)."""

    def __init__(
        self,
        address: str | tuple[str, int] | socket.socket,
        registry_provider: Callable[[], CollectorRegistry],
    ) -> None:
        app = _make_app(registry_provider)
        if isinstance(address, socket.socket):
            self._server = _adopt_socket(address, app)
        else:
            host, port = parse_address(address)
            server_class = type(
                "_BoundServer", (_ThreadingServer,), {"address_family": _family_for(host)}
            )
            self._server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self._server.socket.set_inheritable(False)
        bound: tuple[Any, ...] = self._server.socket.getsockname()
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name=f"metrics-http-{self.address[1]}",
            daemon=True,
        )
        self._closed = False
        self._thread.start()
        _LIVE_SERVERS.add(self)

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _drop_in_child(self) -> None:
        """After fork: the serving thread does not exist here; just release the socket."""
        self._closed = True
        self._server.socket.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close_inherited_servers() -> None:
    for server in list(_LIVE_SERVERS):
        server._drop_in_child()
    _LIVE_SERVERS.clear()


os.register_at_fork(after_in_child=_close_inherited_servers)
