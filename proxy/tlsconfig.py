"""The one bridge from settings to the engine: ``build_server_config(settings, listener)``.

Reading certificate and key files happens here, once per (re)load, before privileges are
dropped; the result is a frozen ``tls13.ServerConfig`` shared by every connection of the
listener. Per-route TLS differences (0-RTT allowed or not, a client certificate required)
become per-name variants chosen through ``ServerConfig.config_for_name`` before the server
answers the ClientHello. A name no route takes (and no default route) is refused there with
unrecognized_name (RFC 6066 §3), before any certificate is chosen.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from proxy import metrics, selfsigned
from proxy.connection import EarlyDataHandler, Established, SessionInfo
from proxy.routing import Route, RouteTable, table_for_listener
from proxy.settings import (
    SELF_SIGNED_NAMES,
    CertificateSettings,
    ListenerSettings,
    Settings,
    TLSSettings,
)
from proxy.tlsstream import SocketTransport, TLSStream
from tls13 import (
    AlertDescription,
    CertificateChain,
    CertificateStore,
    Limits,
    ServerConfig,
    ServerConnection,
    TicketKeyring,
    TLSError,
)
from tls13.events import ClientHelloReceived, HandshakeComplete
from tls13.groups import BY_NAME as GROUPS_BY_NAME
from tls13.signatures import BY_NAME as SCHEMES_BY_NAME
from tls13.suites import BY_NAME as SUITES_BY_NAME

if TYPE_CHECKING:  # the strike register type only; the engine makes the objects
    from tls13.tickets import ReplayRegister

log = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    """Certificates or keys could not be loaded; the message names the file and the reason."""


def load_chain(cert: CertificateSettings, state_dir: Path) -> CertificateChain:
    """One configured certificate (generated and stored in the state dir if self-signed)."""
    if cert.self_signed:
        paths = selfsigned.ensure_self_signed(state_dir, cert.names or SELF_SIGNED_NAMES)
        chain_path, key_path = paths.cert, paths.key
    else:
        if cert.chain is None or cert.key is None:
            raise TLSConfigError(f"certificate {cert.name}: chain and key are required")
        chain_path, key_path = cert.chain, cert.key
    try:
        ocsp = cert.ocsp.read_bytes() if cert.ocsp is not None else None
        return CertificateChain.from_pem(chain_path.read_bytes(), key_path.read_bytes(), ocsp=ocsp)
    except (OSError, ValueError, TLSError) as exc:
        raise TLSConfigError(f"certificate {cert.name} ({chain_path}): {exc}") from exc


def load_chains(settings: Settings) -> dict[str, CertificateChain]:
    """Every configured certificate by name, each file read once per (re)load."""
    state_dir = settings.global_.state_dir
    return {cert.name: load_chain(cert, state_dir) for cert in settings.certificates}


def load_store(
    settings: Settings,
    listener: ListenerSettings,
    loaded: dict[str, CertificateChain] | None = None,
) -> CertificateStore:
    """The listener's certificates, its default first."""
    state_dir = settings.global_.state_dir
    chains = [
        loaded[c.name] if loaded is not None and c.name in loaded else load_chain(c, state_dir)
        for c in settings.certificates_for(listener)
    ]
    if not chains:
        raise TLSConfigError(f"listener {listener.name}: no certificate")
    return CertificateStore(chains, default=chains[0])


def load_client_ca(listener: ListenerSettings) -> tuple[x509.Certificate, ...]:
    if listener.client_ca is None:
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(listener.client_ca.read_bytes()))
    except (OSError, ValueError) as exc:
        raise TLSConfigError(
            f"listener {listener.name}: client_ca {listener.client_ca}: {exc}"
        ) from exc


def _codes(names: tuple[str, ...], table: dict[str, int]) -> tuple[int, ...]:
    return tuple(table[name] for name in names)


_keylog_writers: dict[Path, Callable[[str], None]] = {}


def _keylogger(path: Path | None) -> Callable[[str], None] | None:
    """NSS key log lines for debugging (the settings document the danger); one open file per
    path for the life of the process, however often the configuration is reloaded."""
    if path is None:
        return None
    writer = _keylog_writers.get(path)
    if writer is not None:
        return writer
    handle: IO[str] = open(path, "a", encoding="ascii")  # noqa: SIM115 - kept open on purpose
    log.warning("TLS key logging to %s is ON: every session secret is written there", path)

    def write(line: str) -> None:
        handle.write(line + "\n")
        handle.flush()

    _keylog_writers[path] = write
    return write


def build_server_config(
    settings: Settings,
    listener: ListenerSettings,
    ticket_keys: TicketKeyring | None = None,
    routes: RouteTable | None = None,
    chains: dict[str, CertificateChain] | None = None,
    anti_replay: ReplayRegister | None = None,
    instance_id: bytes | None = None,
) -> ServerConfig:
    """The listener's ``ServerConfig``, with per-name variants for route TLS differences.

    ``chains`` are certificates already loaded by ``load_chains`` (else read here);
    ``anti_replay`` is the listener's 0-RTT strike register from before a reload, so a
    reload does not open a window for replaying early data seen just before it.
    ``instance_id`` names the processes sharing that register: the engine accepts 0-RTT
    only on tickets issued under the same id (None: a random one per config).
    """
    table = routes if routes is not None else table_for_listener(settings, listener)
    base = _base_config(settings, listener, ticket_keys, table, chains)
    if instance_id is not None:
        base = dataclasses.replace(base, instance_id=instance_id)
    register = anti_replay if anti_replay is not None else base.anti_replay
    if base.max_early_data and register is not None:
        base = dataclasses.replace(base, anti_replay=observed_register(register))
    variants = {route.name: _route_variant(base, route) for route in _all_routes(table)}

    def config_for_name(server_name: str | None) -> ServerConfig | None:
        route = table.tls_route_for_name(server_name)
        if route is None:
            # RFC 6066 §3: a name we do not serve at all gets unrecognized_name.
            raise TLSError(AlertDescription.unrecognized_name, "no route for this server name")
        return variants[route.name]

    return dataclasses.replace(base, config_for_name=config_for_name)


def _all_routes(table: RouteTable) -> list[Route]:
    routes = list(table.routes)
    if table.default is not None:
        routes.append(table.default)
    return routes


def _base_config(
    settings: Settings,
    listener: ListenerSettings,
    ticket_keys: TicketKeyring | None,
    table: RouteTable,
    chains: dict[str, CertificateChain] | None,
) -> ServerConfig:
    tls: TLSSettings = listener.tls
    tickets_on = tls.tickets.enabled and ticket_keys is not None
    optional: dict[str, object] = {}
    if tls.signature_schemes:
        optional["signature_schemes"] = _codes(tls.signature_schemes, SCHEMES_BY_NAME)
    return ServerConfig(
        certificates=load_store(settings, listener, chains),
        cipher_suites=_codes(tls.cipher_suites, SUITES_BY_NAME),
        groups=_codes(tls.groups, GROUPS_BY_NAME),
        alpn_protocols=tls.alpn or table.alpn_protocols(),
        alpn_required=tls.alpn_required and bool(tls.alpn or table.alpn_protocols()),
        record_padding=tls.record_padding,
        record_size_limit=tls.record_size_limit,
        stateless_retry=tls.stateless_hrr,
        tickets=tls.tickets.count if tickets_on else 0,
        tickets_after_resumption=min(tls.tickets.count_after_resumption, tls.tickets.count),
        ticket_lifetime=int(tls.tickets.lifetime),
        ticket_keys=ticket_keys if tickets_on else None,
        max_early_data=tls.max_early_data if tickets_on else 0,
        client_auth=listener.client_auth,  # type: ignore[arg-type]
        client_ca=load_client_ca(listener),
        limits=engine_limits(settings),
        keylog=_keylogger(tls.keylog_file),
        **optional,  # type: ignore[arg-type]
    )


def engine_limits(settings: Settings) -> Limits:
    """The engine's per-connection bounds from [limits] (docs/robustness.md)."""
    limits = settings.limits
    return Limits(
        max_handshake_message=limits.max_handshake_size,
        max_handshake_buffer=max(131072, 2 * limits.max_handshake_size),
        max_key_updates_per_minute=limits.key_updates_per_minute,
        max_empty_records=limits.max_empty_records,
        max_warning_alerts=limits.max_warning_alerts,
        max_ccs=limits.max_change_cipher_spec,
    )


def _route_variant(base: ServerConfig, route: Route) -> ServerConfig:
    """The base config adjusted for one route: no 0-RTT unless allowed, client auth if needed."""
    changes: dict[str, object] = {}
    if not route.allow_early_data and base.max_early_data:
        changes["max_early_data"] = 0
    if route.require_client_certificate and base.client_auth == "none" and base.client_ca:
        changes["client_auth"] = "required"
    if not changes:
        return base
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- 0-RTT replays, for the metrics --------------------------------------------------------


class StrikeRegister(Protocol):
    """What the engine uses of a 0-RTT strike register (``tls13.tickets.ReplayRegister``)."""

    @property
    def window(self) -> float: ...

    def check_and_add(self, key: bytes, now: float) -> bool: ...


# Set in the task of the connection whose ClientHello the register refused: "replay" (seen
# before) or "full" (no room to remember it). Read by the daemon's observer in that task.
_refusal: ContextVar[str | None] = ContextVar("tls13proxy_0rtt_refusal", default=None)


class ObservedRegister:
    """A strike register that tells the connection why it refused 0-RTT.

    The engine declines early data silently (``early_data_accepted`` is False whatever the
    reason), but the metrics count a replay (RFC 8446 §8.2) apart from other refusals.
    ``check_and_add`` runs synchronously inside ``ServerConnection.receive_data``, in the
    trio task of the connection being checked, so a context variable hands the outcome to
    that task's observer without any state shared between connections.
    """

    def __init__(self, inner: StrikeRegister) -> None:
        self.inner = inner

    @property
    def window(self) -> float:
        return self.inner.window

    def check_and_add(self, key: bytes, now: float) -> bool:
        if self.inner.check_and_add(key, now):
            return True
        _refusal.set("full" if _register_full(self.inner) else "replay")
        return False


def _register_full(register: StrikeRegister) -> bool:
    """Whether the latest refusal was for lack of room rather than a key seen before."""
    full = getattr(register, "last_refusal_full", None)  # proxy.workers' shared register
    if isinstance(full, bool):
        return full
    capacity = getattr(register, "max_entries", None)  # tls13.tickets.ReplayRegister
    return isinstance(capacity, int) and len(cast("ReplayRegister", register)) >= capacity


def observed_register(register: StrikeRegister) -> ReplayRegister:
    """``register`` wrapped (once) so refusals reach :func:`take_early_data_refusal`."""
    if not isinstance(register, ObservedRegister):
        register = ObservedRegister(register)
    return cast("ReplayRegister", register)  # duck-typed: window + check_and_add


def reset_early_data_refusal() -> None:
    """Call at the start of a connection's task. A fresh context normally has no refusal,
    and then nothing is set: a set copies the task's context mapping (about 120 bytes kept
    per connection) for a value equal to the default."""
    if _refusal.get() is not None:
        _refusal.set(None)


def take_early_data_refusal() -> str | None:
    """Why the strike register refused this task's 0-RTT ("replay", "full"), then forget it
    (a write only when there was something to forget, as in the reset)."""
    reason = _refusal.get()
    if reason is not None:
        _refusal.set(None)
    return reason


class TLSTerminator:
    """Runs the TLS handshake on an accepted transport (``proxy.connection.Terminator``)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    async def establish(
        self, transport: SocketTransport, early: EarlyDataHandler | None = None
    ) -> Established:
        """Handshake; 0-RTT data goes to ``early`` as it arrives if it takes it, else it is
        held and returned with the established stream (forwarded after completion)."""
        stream = TLSStream(transport, ServerConnection(self.config))
        forwarding: bool | None = None  # None: no early data seen yet
        while stream.info is None:
            await stream.handshake_step()
            hello = stream.client_hello
            if early is None or not stream.early_data or hello is None:
                continue
            if forwarding is None:
                forwarding = await early.begin(hello.server_name, hello.alpn_protocols)
            if forwarding:
                await early.data(stream.take_early_data())
        if forwarding and stream.early_data:
            await early.data(stream.take_early_data())  # type: ignore[union-attr]
        info = session_info(stream.info, stream.client_hello)
        return Established(stream, info, stream.take_early_data(), bool(forwarding))


def session_info(info: HandshakeComplete, hello: ClientHelloReceived | None = None) -> SessionInfo:
    """The printable summary of a completed handshake."""
    identity = info.client_identity
    return SessionInfo(
        server_name=info.server_name,
        alpn=info.alpn_protocol,
        version=info.version,
        cipher=info.cipher_suite,
        group=info.group or "",
        signature_scheme=info.signature_scheme or "",
        resumed=info.resumed,
        early_data=info.early_data_accepted,
        offered_early_data=hello.offered_early_data if hello is not None else False,
        hello_retry=info.hello_retry,
        client_subject=identity.subject if identity is not None else "",
        handshake=info,
    )


# -- session ticket keys ------------------------------------------------------------------


def tickets_enabled(settings: Settings) -> bool:
    return settings.tls.tickets.enabled or any(
        listener.tls.tickets.enabled for listener in settings.listeners
    )


def generated_keys_enabled(settings: Settings) -> bool:
    """Keys are ours to generate and rotate when tickets are on and no key file is set."""
    return tickets_enabled(settings) and settings.tls.tickets.key_file is None


def make_keyring(settings: Settings) -> TicketKeyring | None:
    """The ticket keys for this run: the configured key file, else freshly generated."""
    if not tickets_enabled(settings):
        return None
    key_file = settings.tls.tickets.key_file
    if key_file is None:
        return TicketKeyring.generate()
    try:
        return TicketKeyring.load(key_file)
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"ticket key file {key_file}: {exc}") from exc


def keyring_to_text(keyring: TicketKeyring) -> str:
    """Key material for the worker control channel (a pipe; never logged)."""
    return keyring.to_bytes().hex()


def keyring_from_text(text: str) -> TicketKeyring:
    return TicketKeyring.from_bytes(bytes.fromhex(text))


def adopt_keys(keyring: TicketKeyring, text: str) -> None:
    """Make ``keyring`` seal with the supervisor's current key (after it rotated).

    The keyring object is shared by the live ServerConfigs, so it is updated in place:
    ``rotate`` draws the new name and key from the supplied bytes instead of randomness.
    """
    offered = keyring_from_text(text)
    name = offered.current_name
    if name == keyring.current_name:
        return
    record = offered.to_bytes()[:TICKET_RECORD_LENGTH]
    parts = iter((record[:TICKET_NAME_LENGTH], record[TICKET_NAME_LENGTH:]))
    keyring.rotate(random=lambda size: next(parts))


TICKET_NAME_LENGTH = 16
TICKET_RECORD_LENGTH = 48


# -- OCSP staples: refreshed from their files, staleness reported --------------------------

FileSignature = tuple[int, int, int]  # (mtime_ns, size, inode): "has the file changed?"


def _signature(path: Path) -> FileSignature:
    info = path.stat()
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def ocsp_problem(response: bytes, leaf: x509.Certificate) -> str | None:
    """Why ``response`` cannot be this leaf's OCSP response, or None if it can.

    A stale response is still *valid* here (it replaces the old one and is reported
    stale); what fails is anything the engine would never staple: not DER, not
    successful (RFC 6960 §4.2.1), or about another certificate (serial and issuer name).
    """
    try:
        parsed = ocsp.load_der_ocsp_response(response)
    except ValueError:
        return "not a DER-encoded OCSP response"
    if parsed.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return f"OCSP response status is {parsed.response_status.name}"
    try:
        serial, name_hash = parsed.serial_number, parsed.issuer_name_hash
        digest = hashes.Hash(parsed.hash_algorithm)
    except (ValueError, UnsupportedAlgorithm) as exc:
        return f"unusable OCSP response: {exc}"
    digest.update(leaf.issuer.public_bytes())
    if serial != leaf.serial_number or digest.finalize() != name_hash:
        return "the OCSP response is about another certificate"
    return None


def next_update_text(response: bytes | None) -> str:
    """The response's nextUpdate for log lines ("none" when absent or unparsable)."""
    try:
        moment = ocsp.load_der_ocsp_response(response or b"").next_update_utc
    except ValueError:
        return "none"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "none"


def why_not_stapled(chain: CertificateChain) -> str:
    """For the log line when a certificate stops being stapled: stale, or what is wrong."""
    response = chain.ocsp_response
    if not response:
        return "the OCSP response is empty"
    problem = ocsp_problem(response, chain.leaf)
    if problem is not None:
        return problem
    return f"the OCSP response is past its nextUpdate {next_update_text(response)}"


class OcspWatcher:
    """Each configured ``ocsp`` file of one generation: swapped in when it changes, and
    judged stale or not.

    ``refresh()`` stats every file; one whose (mtime, size, inode) changed is read and, if
    it is a usable response for the leaf, replaces that certificate's chain in ``chains``
    (the caller rebuilds the TLS configs for new connections). An unreadable or invalid
    file is logged once per distinct problem and the previous response stays. ``publish``
    sets ``tls13proxy_ocsp_staple_stale`` and logs one WARNING when a certificate's
    staple becomes stale. With ``report=False`` (a worker, whose parent reports) nothing
    is published and file problems are logged at DEBUG only.
    """

    def __init__(
        self,
        settings: Settings,
        chains: dict[str, CertificateChain],
        report: bool = True,
        previous: OcspWatcher | None = None,
    ) -> None:
        self.chains = dict(chains)
        self.report = report
        self.paths = {
            cert.name: cert.ocsp
            for cert in settings.certificates
            if cert.ocsp is not None and cert.name in chains
        }
        # None until the first refresh compares the file with what the load read.
        self._signatures: dict[str, FileSignature | None] = dict.fromkeys(self.paths)
        self._problems: dict[str, str] = {}
        # Across a reload a certificate that was already stale is not announced again.
        self._stale: dict[str, bool] = dict(previous._stale) if previous is not None else {}

    def refresh(self) -> list[str]:
        """Re-read changed files; the names whose chain was replaced."""
        return [name for name, path in self.paths.items() if self._refresh_one(name, path)]

    def _refresh_one(self, name: str, path: Path) -> bool:
        try:
            signature = _signature(path)
            if signature == self._signatures[name]:
                return False
            data = path.read_bytes()
        except OSError as exc:
            self._problem(name, f"cannot read {path}: {exc.strerror or exc}")
            return False
        self._signatures[name] = signature
        chain = self.chains[name]
        if data == chain.ocsp_response:
            self._problems.pop(name, None)
            return False
        problem = ocsp_problem(data, chain.leaf)
        if problem is not None:
            self._problem(name, f"{path}: {problem}")
            return False
        self._problems.pop(name, None)
        self.chains[name] = CertificateChain(chain.certificates, chain.private_key, data)
        log.log(
            logging.INFO if self.report else logging.DEBUG,
            "certificate %s: new OCSP response from %s (nextUpdate %s)",
            name,
            path,
            next_update_text(data),
        )
        return True

    def revert(self, names: list[str], chains: dict[str, CertificateChain]) -> None:
        """The caller could not install ``names``' new chains: back to ``chains`` (what is
        served), and read those files again at the next refresh."""
        for name in names:
            self.chains[name] = chains[name]
            self._signatures[name] = None

    def _problem(self, name: str, message: str) -> None:
        if self._problems.get(name) == message:
            return
        self._problems[name] = message
        log.log(
            logging.WARNING if self.report else logging.DEBUG,
            "certificate %s: OCSP file not used, the previous response stays: %s",
            name,
            message,
        )

    def stale(self, now: float) -> dict[str, bool]:
        """Per watched certificate: True when nothing would be stapled at ``now``."""
        return {name: self.chains[name].ocsp_staple(now) is None for name in self.paths}

    def publish(self, now: float) -> None:
        """Gauge and transition log lines (only when this process reports)."""
        if not self.report:
            return
        verdicts = self.stale(now)
        for name, stale in verdicts.items():
            if stale and not self._stale.get(name, False):
                log.warning(
                    "certificate %s: %s; not stapling it",
                    name,
                    why_not_stapled(self.chains[name]),
                )
            elif not stale and self._stale.get(name, False):
                log.info("certificate %s: OCSP response is fresh again; stapling it", name)
        self._stale = verdicts
        metrics.set_ocsp_staple_states(verdicts)
