"""Routing: (SNI, ALPN) → a route naming a backend pool.

A route lists server names (exact, or ``*.example.com`` wildcards matching exactly one
leftmost label, as RFC 6125 §6.4.3 allows) and optionally ALPN protocols. Lookup tries, in
order: routes whose exact name matches, routes whose wildcard matches, routes with no names
(catch-alls), then the default route. Within a tier the first route whose ALPN list contains
the negotiated protocol wins, else the first route of that tier without an ALPN list.

The name alone must be enough to pick TLS parameters (certificate, client auth, early data)
because they are decided before ALPN is negotiated; ``routes_for_name`` serves that step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proxy.settings import ListenerSettings, RouteSettings, Settings


@dataclass(frozen=True)
class Route:
    """One routing rule, with the per-route TLS requirements the TLS layer enforces."""

    name: str
    pool: str
    server_names: tuple[str, ...] = ()
    alpn: tuple[str, ...] = ()
    allow_early_data: bool = False
    require_client_certificate: bool = False


def normalize_name(name: str) -> str:
    """Lower-case, strip one trailing dot: DNS names compare case-insensitively."""
    return name.lower().removesuffix(".")


def wildcard_base(name: str) -> str | None:
    """For ``a.example.com`` the wildcard key ``example.com`` (None for single labels)."""
    head, sep, rest = name.partition(".")
    return rest if sep and head and rest else None


class RouteTable:
    """An immutable lookup structure built once per configuration (reload builds a new one)."""

    def __init__(self, routes: Sequence[Route], default: Route | None = None) -> None:
        self.routes = tuple(routes)
        self.default = default
        self._exact: dict[str, list[Route]] = {}
        self._wildcard: dict[str, list[Route]] = {}
        self._catch_all: list[Route] = []
        for route in self.routes:
            self._index(route)

    def _index(self, route: Route) -> None:
        if not route.server_names:
            self._catch_all.append(route)
        for raw in route.server_names:
            name = normalize_name(raw)
            if name.startswith("*."):
                self._wildcard.setdefault(name[2:], []).append(route)
            else:
                self._exact.setdefault(name, []).append(route)

    def routes_for_name(self, server_name: str | None) -> list[Route]:
        """Candidate routes for a name, best tier first; empty means the name is unknown."""
        tiers: list[Route] = []
        if server_name:
            name = normalize_name(server_name)
            tiers += self._exact.get(name, [])
            base = wildcard_base(name)
            if base is not None:
                tiers += self._wildcard.get(base, [])
        tiers += self._catch_all
        if self.default is not None:
            tiers.append(self.default)
        return tiers

    def knows_name(self, server_name: str | None) -> bool:
        """False when no route (not even a default) would take this name: unrecognized_name."""
        return bool(self.routes_for_name(server_name))

    def tls_route_for_name(self, server_name: str | None) -> Route | None:
        """The route whose TLS settings apply to a name (first candidate), before ALPN is known."""
        candidates = self.routes_for_name(server_name)
        return candidates[0] if candidates else None

    def match(self, server_name: str | None, alpn: str | None) -> Route | None:
        """The route for a completed handshake, or None when nothing fits."""
        candidates = self.routes_for_name(server_name)
        if alpn is not None:
            for route in candidates:
                if alpn in route.alpn:
                    return route
        for route in candidates:
            if not route.alpn:
                return route
        return None

    def alpn_protocols(self) -> tuple[str, ...]:
        """Every protocol some route names, in first-seen order: the listener's ALPN offer."""
        return tuple(_unique(p for r in (*self.routes, self.default) if r for p in r.alpn))


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def route_from_settings(settings: RouteSettings) -> Route:
    return Route(
        settings.name,
        settings.pool,
        settings.server_names,
        settings.alpn,
        allow_early_data=settings.early_data,
        require_client_certificate=settings.client_certificate_required,
    )


def table_for_listener(settings: Settings, listener: ListenerSettings) -> RouteTable:
    """The listener's routes in its order; the ``default = true`` route is the fallback.

    A default route that also names server names takes part in normal matching as well.
    """
    configured = settings.routes_for(listener)
    default = next((r for r in configured if r.default), None)
    ordinary = [route_from_settings(r) for r in configured if not r.default or r.server_names]
    return RouteTable(ordinary, route_from_settings(default) if default is not None else None)
