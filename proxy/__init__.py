"""tls13-proxy: a TLS 1.3 terminating reverse proxy on the project's own sans-IO engine."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("tls13-proxy")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"
