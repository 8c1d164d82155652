"""Cross-checks of a converted configuration, and the defaults that depend on other tables.

Conversion (proxy.settings) checks each value on its own; this module checks how they fit
together — routes pointing at pools that exist, listeners with certificates and routes, unique
listen addresses, client auth with a CA — and loads the files the configuration names
(certificates, keys, CA bundles, ticket keys). It also resolves the defaults that depend on
other tables: a certificate's names from the certificate, a listener's certificates and routes
(all, in file order) and its default certificate (the first).
"""

from __future__ import annotations

import dataclasses
import grp
import pwd
from collections.abc import Callable, Mapping, Sequence

from proxy.settings import (
    SELF_SIGNED_NAMES,
    CertificateSettings,
    ListenerSettings,
    PoolSettings,
    RouteSettings,
    Settings,
    TicketSettings,
    TLSSettings,
    group_names,
    suite_names,
)
from proxy.settings_checks import (
    CertificateInfo,
    Problems,
    Where,
    check_ca_file,
    check_certificate,
    check_ticket_key_file,
    check_writable_parent,
    name_covered,
)
from proxy.settings_convert import did_you_mean

Origins = Mapping[tuple[str, str], str]

#: GnuTLS refuses a server's record_size_limit below this (RFC 8449 itself allows 64).
GNUTLS_MIN_RECORD_SIZE_LIMIT = 512
#: ``where(kind, name)``: the place of a named table, in the file that defined it.
_WhereFactory = Callable[[str, str], Where]


def _where(problems: Problems, origins: Origins, kind: str, name: str, main: str) -> Where:
    return Where(problems, origins.get((kind, name), main), f"{kind}.{name}")


def validate(settings: Settings, problems: Problems, main: str, origins: Origins) -> Settings:
    """Check ``settings`` as a whole, report to ``problems``, return it with defaults resolved."""

    def where(kind: str, name: str) -> Where:
        return _where(problems, origins, kind, name, main)

    _check_global(settings, Where(problems, main, "global"))
    tls = _check_tls(settings.tls, Where(problems, main, "tls"))
    infos: dict[str, CertificateInfo] = {}
    certificates = tuple(
        _check_certificate(cert, where("certificates", cert.name), infos)
        for cert in settings.certificates
    )
    _check_single_self_signed(certificates, where)
    backends = tuple(settings.backends)
    for pool in backends:
        _check_pool(pool, where("backends", pool.name))
    pool_names = [pool.name for pool in backends]
    for route in settings.routes:
        _check_route(route, pool_names, where("routes", route.name))
    listeners = tuple(
        _check_listener(listener, settings, tls, where("listeners", listener.name))
        for listener in settings.listeners
    )
    for listener in listeners:
        _check_signature_schemes(listener, infos, where("listeners", listener.name))
    if not listeners:
        Where(problems, main, "listeners").error(
            "no listener defined: add a [listeners.NAME] table with addresses"
        )
    _check_addresses(listeners, settings, where, Where(problems, main, "metrics.listen"))
    _warn_unused_pools(settings, where)
    return dataclasses.replace(
        settings, tls=tls, certificates=certificates, listeners=listeners, backends=backends
    )


def _check_global(settings: Settings, where: Where) -> None:
    """The user and group to drop to should exist here (check may run on another host: warn)."""
    user, group = settings.global_.user, settings.global_.group
    if user is not None and not _exists(pwd.getpwnam, user):
        where.at("user").warn(f"no user {user!r} on this system: dropping privileges will fail")
    if group is not None and not _exists(grp.getgrnam, group):
        where.at("group").warn(f"no group {group!r} on this system: dropping privileges will fail")


def _exists(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def _supported(configured: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    # Explicit unknown names were already reported; defaults the engine lacks are dropped.
    return tuple(name for name in configured if name in known)


def _check_tls(tls: TLSSettings, where: Where, inherited: TLSSettings | None = None) -> TLSSettings:
    """Engine-support filtering and the checks of TLS options.

    For a listener's overrides, ``inherited`` is the [tls] table: values it already had were
    checked (and warned about) there, so only the listener's own changes are checked again.
    """
    suites = _supported(tls.cipher_suites, list(suite_names()))
    groups = _supported(tls.groups, list(group_names()))
    if not suites:
        where.at("cipher_suites").error("none of these cipher suites is supported by the engine")
    if not groups:
        where.at("groups").error("none of these groups is supported by the engine")
    if inherited is None or tls.tickets != inherited.tickets:
        _check_tickets(tls.tickets, where.at("tickets"), inherited.tickets if inherited else None)
    if tls.keylog_file is not None and (
        inherited is None or tls.keylog_file != inherited.keylog_file
    ):
        check_writable_parent(tls.keylog_file, where.at("keylog_file"))
        where.at("keylog_file").warn(
            "writes every session secret to disk: anyone who reads it can decrypt the traffic; "
            "for debugging only"
        )
    if tls.max_early_data and not tls.tickets.enabled:
        where.at("max_early_data").warn("0-RTT needs session tickets, which are disabled")
    if tls.record_size_limit < GNUTLS_MIN_RECORD_SIZE_LIMIT and (
        inherited is None or tls.record_size_limit != inherited.record_size_limit
    ):
        # RFC 8449 allows 64, but GnuTLS clients abort the handshake below 512.
        where.at("record_size_limit").warn(
            f"below {GNUTLS_MIN_RECORD_SIZE_LIMIT}: GnuTLS clients refuse smaller limits"
        )
    return dataclasses.replace(tls, cipher_suites=suites, groups=groups)


def _check_tickets(tickets: TicketSettings, where: Where, inherited: TicketSettings | None) -> None:
    if tickets.key_file is not None:
        if inherited is None or tickets.key_file != inherited.key_file:
            check_ticket_key_file(tickets.key_file, where.at("key_file"))
    # Only the current and previous keys are kept, so a ticket sealed just before a rotation
    # stays usable for one rotation interval at least, two at most.
    elif tickets.enabled and tickets.lifetime > tickets.rotation_interval:
        where.at("lifetime").warn(
            "longer than tickets.rotation_interval: some tickets will stop working before "
            "they expire (only the current and previous keys are kept)"
        )


def _check_certificate(
    cert: CertificateSettings, where: Where, infos: dict[str, CertificateInfo]
) -> CertificateSettings:
    """Check one certificate's files; record what it is in ``infos`` for listener checks."""
    if cert.self_signed:
        for attr in ("chain", "key", "ocsp"):
            if getattr(cert, attr) is not None:
                where.at(attr).error("cannot be set with self_signed = true (it is generated)")
        return dataclasses.replace(cert, names=cert.names or SELF_SIGNED_NAMES)
    missing = [
        attr
        for attr in ("chain", "key")
        if getattr(cert, attr) is None and not where.at(attr).is_invalid()
    ]
    for attr in missing:
        where.at(attr).error(f"{attr} is required (or set self_signed = true)")
    if cert.chain is None or cert.key is None:
        return cert
    info = check_certificate(cert.chain, cert.key, cert.ocsp, where)
    if info is None:
        return cert
    infos[cert.name] = info
    for index, name in enumerate(cert.names):
        if info.names and not name_covered(name, info.names):
            where.at(f"names[{index}]").warn(
                f"{name!r} is not among the certificate's names ({', '.join(info.names)}): "
                "clients will reject it"
            )
    if not cert.names and not info.names:
        where.at("names").warn("the certificate names no host: set names explicitly")
    return dataclasses.replace(cert, names=cert.names or info.names)


def _check_signature_schemes(
    listener: ListenerSettings, infos: Mapping[str, CertificateInfo], where: Where
) -> None:
    """With an explicit signature_schemes list, every certificate must be able to sign."""
    allowed = set(listener.tls.signature_schemes)
    if not allowed:
        return
    for name in listener.certificates:
        info = infos.get(name)
        if info is not None and not info.signature_schemes & allowed:
            where.at("tls.signature_schemes").error(
                f"certificate {name!r} ({info.key_description}) can sign with none of "
                f"{', '.join(sorted(allowed))}; it needs one of "
                f"{', '.join(sorted(info.signature_schemes))}"
            )


def _check_single_self_signed(
    certificates: Sequence[CertificateSettings], where: _WhereFactory
) -> None:
    generated = [cert.name for cert in certificates if cert.self_signed]
    for name in generated[1:]:
        where("certificates", name).at("self_signed").error(
            f"only one self-signed certificate is supported (already: {generated[0]!r})"
        )


def _check_pool(pool: PoolSettings, where: Where) -> None:
    if not pool.servers and not where.at("servers").is_invalid():
        where.at("servers").error('servers is required: e.g. servers = ["127.0.0.1:8080"]')
    kinds = {server.kind for server in pool.servers}
    if "demo" in kinds and len(pool.servers) > 1:
        where.at("servers").error('"demo" must be the only server of its pool')
    if pool.health.enabled and pool.health.timeout >= pool.health.interval:
        where.at("health.timeout").error(
            f"must be shorter than health.interval ({pool.health.interval:g}s)"
        )


def _check_route(route: RouteSettings, pool_names: Sequence[str], where: Where) -> None:
    if where.at("pool").is_invalid():
        pass
    elif not route.pool:
        where.at("pool").error("pool is required: the [backends.NAME] this route sends to")
    elif route.pool not in pool_names:
        where.at("pool").error(
            f"no backend pool named {route.pool!r}{did_you_mean(route.pool, pool_names)}"
            + ("" if pool_names else ": define [backends.NAME]")
        )
    if not (route.server_names or route.alpn or route.default):
        where.error("matches nothing: set server_names and/or alpn, or default = true")


def _resolve_names(
    listed: Sequence[str], known: Sequence[str], what: str, where: Where
) -> tuple[str, ...]:
    for index, name in enumerate(listed):
        if name not in known:
            where.at(f"[{index}]").error(f"no {what} named {name!r}{did_you_mean(name, known)}")
    return tuple(listed) if listed else tuple(known)


def _check_listener(
    listener: ListenerSettings, settings: Settings, global_tls: TLSSettings, where: Where
) -> ListenerSettings:
    if not listener.addresses and not where.at("addresses").is_invalid():
        where.at("addresses").error('addresses is required: e.g. addresses = ["0.0.0.0:443"]')
    cert_names = [cert.name for cert in settings.certificates]
    certificates = _resolve_names(
        listener.certificates, cert_names, "certificate", where.at("certificates")
    )
    if not cert_names:
        where.at("certificates").error("no certificate to serve: define [certificates.NAME]")
    default_cert = listener.default_certificate
    if default_cert is not None and default_cert not in certificates:
        where.at("default_certificate").error(
            f"{default_cert!r} is not one of this listener's certificates ({', '.join(certificates)})"
        )
    route_names = [route.name for route in settings.routes]
    routes = _resolve_names(listener.routes, route_names, "route", where.at("routes"))
    if not route_names:
        where.at("routes").error("no route to send connections to: define [routes.NAME]")
    known_routes = [settings.route(name) for name in routes if name in route_names]
    _check_listener_routes(listener, known_routes, where)
    if listener.tls is settings.tls:
        tls = global_tls
    else:
        tls = _check_tls(listener.tls, where.at("tls"), settings.tls)
    if listener.client_ca is not None:
        check_ca_file(listener.client_ca, where.at("client_ca"))
    if listener.max_connections > settings.limits.max_connections:
        where.at("max_connections").warn(
            f"above limits.max_connections ({settings.limits.max_connections}), which also applies"
        )
    return dataclasses.replace(
        listener,
        certificates=certificates,
        default_certificate=default_cert or (certificates[0] if certificates else None),
        routes=routes,
        tls=tls,
    )


def _warn_shadowed_routes(routes: Sequence[RouteSettings], where: Where) -> None:
    """A route whose (name, ALPN) pair an earlier route of the listener already takes never
    receives a connection for that name."""
    seen: dict[tuple[str, tuple[str, ...]], str] = {}
    for route in routes:
        for name in route.server_names:
            first = seen.setdefault((name, tuple(sorted(route.alpn))), route.name)
            if first != route.name:
                where.at("routes").warn(
                    f"route {route.name!r} never gets {name!r}: route {first!r} "
                    "matches the same name and ALPN first"
                )


def _check_listener_routes(
    listener: ListenerSettings, routes: Sequence[RouteSettings], where: Where
) -> None:
    _warn_shadowed_routes(routes, where)
    defaults = [route.name for route in routes if route.default]
    if len(defaults) > 1:
        where.at("routes").error(
            f"more than one default route ({', '.join(defaults)}): keep one default = true"
        )
    if listener.client_auth != "none" and listener.client_ca is None:
        where.at("client_ca").error(
            f'client_auth = "{listener.client_auth}" needs client_ca (the CA file client '
            "certificates must chain to)"
        )
    for route in routes:
        if route.client_certificate_required and listener.client_ca is None:
            where.at("client_ca").error(
                f"route {route.name!r} requires a client certificate: set client_ca "
                '(and client_auth = "optional" or "required")'
            )
        offered = listener.tls.alpn
        missing = [protocol for protocol in route.alpn if offered and protocol not in offered]
        if missing:
            where.at("tls.alpn").warn(
                f"route {route.name!r} matches ALPN {', '.join(missing)}, which this listener "
                f"never negotiates (it offers {', '.join(offered)})"
            )
        if route.early_data and not listener.tls.max_early_data:
            where.at("tls.max_early_data").warn(
                f"route {route.name!r} allows early data but 0-RTT is off here "
                "(tls.max_early_data = 0)"
            )


def _check_addresses(
    listeners: Sequence[ListenerSettings],
    settings: Settings,
    where: _WhereFactory,
    metrics_where: Where,
) -> None:
    seen: dict[str, str] = {}
    for listener in listeners:
        for index, address in enumerate(listener.addresses):
            text = str(address)
            here = where("listeners", listener.name).at(f"addresses[{index}]")
            if text in seen:
                here.error(f"{text} is already used by listeners.{seen[text]}")
            else:
                seen[text] = listener.name
    metrics = settings.metrics
    if metrics.enabled and str(metrics.listen) in seen:
        metrics_where.error(
            f"{metrics.listen} is already used by listeners.{seen[str(metrics.listen)]}"
        )
    if metrics.enabled and metrics.listen.systemd_name == "":
        # A bare "systemd:" would take whichever socket systemd passed first.
        metrics_where.error('name the socket: "systemd:NAME" (its FileDescriptorName=)')


def _warn_unused_pools(settings: Settings, where: _WhereFactory) -> None:
    used = {route.pool for route in settings.routes}
    for pool in settings.backends:
        if pool.name not in used:
            where("backends", pool.name).warn("not used by any route")
