"""tls13: a sans-IO TLS 1.3 implementation (RFC 8446) on the ``cryptography`` package.

The public API (see docs/architecture.md) is exported lazily: importing a
leaf module such as ``tls13.codec`` does not pull in the whole engine, and the
names resolve on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import events
    from .alerts import AlertDescription, AlertLevel, TLSError
    from .certificates import CertificateChain, CertificateStore
    from .client import ClientConnection
    from .config import ClientConfig, Limits, ServerConfig
    from .connection import ConnectionStateError
    from .server import ServerConnection
    from .tickets import SessionTicket, TicketKeyring

# public name -> module that defines it
_EXPORTS = {
    "ServerConnection": "server",
    "ClientConnection": "client",
    "ServerConfig": "config",
    "ClientConfig": "config",
    "Limits": "config",
    "CertificateChain": "certificates",
    "CertificateStore": "certificates",
    "TicketKeyring": "tickets",
    "SessionTicket": "tickets",
    "TLSError": "alerts",
    "AlertDescription": "alerts",
    "AlertLevel": "alerts",
    "ConnectionStateError": "connection",
}

__all__ = [
    "AlertDescription",
    "AlertLevel",
    "CertificateChain",
    "CertificateStore",
    "ClientConfig",
    "ClientConnection",
    "ConnectionStateError",
    "Limits",
    "ServerConfig",
    "ServerConnection",
    "SessionTicket",
    "TLSError",
    "TicketKeyring",
    "events",
]


def __getattr__(name: str) -> Any:
    if name == "events":
        return importlib.import_module(".events", __name__)
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value
