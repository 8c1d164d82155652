"""Valid configurations load into the typed, frozen settings the daemon consumes."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest
from settings_helpers import MINIMAL, Workspace, find, workspace

from proxy.settings import (
    DEFAULT_GROUPS,
    DEFAULT_SETTINGS,
    DEFAULT_SUITES,
    BackendAddress,
    ConfigError,
    ListenAddress,
    Settings,
    default_state_dir,
    embedded_default,
    load_settings,
    reload_settings,
)

FULL = """\
include = "conf.d/*.toml"

[global]
workers = 3
user = "root"
state_dir = "state"
log_format = "json"
log_level = "debug"

[limits]
max_connections = 500
handshake_timeout = "250ms"
idle_timeout = "1h30m"
drain_timeout = 12
buffer_size = "16KiB"
max_handshake_size = "1MiB"
key_updates_per_minute = 10

[metrics]
listen = "[::1]:9100"

[tls]
cipher_suites = ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"]
groups = ["x25519"]
alpn = ["h2", "http/1.1"]
record_padding = 256
tickets = { count = 1, lifetime = "1h", rotation_interval = "1h" }

[certificates.site]
chain = "certs/site.crt"
key = "certs/site.key"

[listeners.public]
addresses = ["127.0.0.1:8443", "[::1]:8443"]
max_connections = 100
client_auth = "optional"
client_ca = "certs/ca.crt"

[listeners.public.tls]
max_early_data = "16KiB"
tickets = { count = 4 }

[listeners.internal]
addresses = ["127.0.0.2:9443", "systemd:internal"]
routes = ["api"]
client_auth = "required"
client_ca = "certs/ca.crt"

[routes.api]
server_names = ["API.example.com"]
alpn = ["h2"]
pool = "api"
client_certificate_required = true

[routes.fallback]
default = true
pool = "web"
early_data = true

[backends.api]
servers = ["127.0.0.1:9001", "[::1]:9002", "backend.internal:80", "unix:run/api.sock"]
balancing = "least_connections"
proxy_protocol = 2
retries = 0
health = { type = "http", path = "/healthz", expect_status = 204, interval = "2s", timeout = "500ms" }
"""

SNIPPET = """\
[backends.web]
servers = ["demo"]

[certificates.other]
chain = "../certs/site.crt"
key = "../certs/site.key"
names = ["example.com"]
"""


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return workspace(tmp_path)


def load_full(ws: Workspace) -> Settings:
    ws.write(SNIPPET, "conf.d/20-web.toml")
    return ws.load(FULL)


def test_full_configuration_values(ws: Workspace) -> None:
    settings = load_full(ws)
    assert settings.warnings == ()
    assert settings.source == ws.root / "proxy.toml"
    assert settings.files == (ws.root / "proxy.toml", ws.root / "conf.d" / "20-web.toml")
    g = settings.global_
    assert (g.workers, g.user, g.group, g.log_format, g.log_level) == (
        3,
        "root",
        None,
        "json",
        "debug",
    )
    assert g.state_dir == ws.root / "state"
    limits = settings.limits
    assert limits.handshake_timeout == 0.25
    assert limits.idle_timeout == 5400.0
    assert limits.drain_timeout == 12.0
    assert (limits.buffer_size, limits.max_handshake_size) == (16384, 1048576)
    assert limits.max_connections_per_client == 256  # default kept
    assert settings.metrics.listen == ListenAddress("::1", 9100)


def test_listener_tls_overrides_inherit_the_rest(ws: Workspace) -> None:
    settings = load_full(ws)
    public, internal = settings.listeners
    assert public.tls.max_early_data == 16384
    assert public.tls.tickets.count == 4
    assert public.tls.tickets.lifetime == 3600.0  # from [tls.tickets]
    assert public.tls.alpn == ("h2", "http/1.1")  # from [tls]
    assert public.tls.cipher_suites == ("TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")
    assert internal.tls == settings.tls
    assert settings.tls.max_early_data == 0
    assert settings.tls.record_padding == 256


def test_listener_defaults_resolved_from_other_tables(ws: Workspace) -> None:
    settings = load_full(ws)
    public, internal = settings.listeners
    assert public.routes == ("api", "fallback")
    assert public.certificates == ("site", "other")
    assert public.default_certificate == "site"
    assert internal.routes == ("api",)
    assert internal.client_auth == "required"
    assert internal.client_ca == ws.certs / "ca.crt"
    assert internal.addresses[1] == ListenAddress("", 0, "internal")
    assert str(internal.addresses[1]) == "systemd:internal"
    assert [r.name for r in settings.routes_for(internal)] == ["api"]
    assert [c.name for c in settings.certificates_for(public)] == ["site", "other"]


def test_routes_pools_and_backends(ws: Workspace) -> None:
    settings = load_full(ws)
    api = settings.route("api")
    assert api.server_names == ("api.example.com",)
    assert (api.alpn, api.pool, api.client_certificate_required) == (("h2",), "api", True)
    assert settings.route("fallback").default and settings.route("fallback").early_data
    pool = settings.pool("api")
    assert pool.servers == (
        BackendAddress("tcp", "127.0.0.1", 9001),
        BackendAddress("tcp", "::1", 9002),
        BackendAddress("tcp", "backend.internal", 80),
        BackendAddress("unix", path=str(ws.root / "run" / "api.sock")),
    )
    assert [str(s) for s in pool.servers][1] == "[::1]:9002"
    assert (pool.balancing, pool.proxy_protocol, pool.retries) == ("least_connections", 2, 0)
    assert (pool.health.type, pool.health.path, pool.health.expect_status) == (
        "http",
        "/healthz",
        204,
    )
    assert (pool.health.interval, pool.health.timeout, pool.health.rise) == (2.0, 0.5, 2)
    assert settings.pool("web").is_demo and not pool.is_demo
    with pytest.raises(KeyError):
        settings.pool("nope")


def test_certificate_names_from_the_certificate_or_given(ws: Workspace) -> None:
    settings = load_full(ws)
    site = settings.certificate("site")
    assert site.names == ("localhost", "example.com", "*.example.com", "127.0.0.1")
    assert site.chain == ws.certs / "site.crt" and site.key == ws.certs / "site.key"
    # Paths in a snippet are relative to the snippet's own directory.
    other = settings.certificate("other")
    assert other.chain == ws.certs / "site.crt"
    assert other.names == ("example.com",)


def test_settings_are_frozen_and_picklable(ws: Workspace) -> None:
    settings = load_full(ws)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.limits.max_connections = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.listeners[0].tls.tickets.count = 1  # type: ignore[misc]
    assert isinstance(settings.listeners, tuple)
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_safe_defaults() -> None:
    tls = DEFAULT_SETTINGS.tls
    assert tls.max_early_data == 0
    assert tls.cipher_suites == DEFAULT_SUITES
    assert all("CCM_8" not in suite for suite in tls.cipher_suites)
    assert tls.groups == DEFAULT_GROUPS
    assert tls.tickets.enabled and tls.tickets.count == 2
    assert DEFAULT_SETTINGS.metrics.listen == ListenAddress("127.0.0.1", 9464)
    assert DEFAULT_SETTINGS.limits.handshake_timeout == 10.0


def test_workers_auto(ws: Workspace) -> None:
    settings = ws.load(MINIMAL + '\n[global]\nworkers = "auto"\n')
    assert settings.global_.workers == len(os.sched_getaffinity(0))


def test_include_list_and_order(ws: Workspace) -> None:
    ws.write('[backends.b]\nservers = ["demo"]\n', "sites/b.toml")
    ws.write('[backends.a]\nservers = ["demo"]\n', "sites/a.toml")
    ws.write('[backends.c]\nservers = ["demo"]\n', "extra.toml")
    text = 'include = ["sites/*.toml", "extra.toml", "empty/*.toml"]\n' + MINIMAL
    settings = ws.load(text)
    assert [p.name for p in settings.backends] == ["app", "a", "b", "c"]


def test_include_a_directory(ws: Workspace) -> None:
    ws.write('[backends.z]\nservers = ["demo"]\n', "sites.d/z.toml")
    ws.write('[backends.y]\nservers = ["demo"]\n', "sites.d/y.toml")
    ws.write("not toml at all", "sites.d/README")
    settings = ws.load('include = "sites.d"\n' + MINIMAL)
    assert [p.name for p in settings.backends] == ["app", "y", "z"]


def test_include_errors_name_the_snippet(ws: Workspace) -> None:
    snippet = ws.write(
        '[backends.app]\nservers = ["demo"]\n[global]\nworkers = 2\n', "conf.d/x.toml"
    )
    ws.write('include = "more.toml"\n[routes.r]\npool = "nope"\ndefault = true\n', "conf.d/y.toml")
    problems = ws.errors('include = ["conf.d/*.toml", "missing.toml"]\n' + MINIMAL)
    duplicate = find(problems, "backends.app")
    assert duplicate.file == str(snippet)
    assert "already defined in" in duplicate.message and "proxy.toml" in duplicate.message
    assert "only be set in the main file" in find(problems, "global").message
    assert find(problems, "global").file == str(snippet)
    assert "only be set in the main file" in find(problems, "include").message
    assert "missing.toml does not exist" in find(problems, "include[1]").message
    bad_pool = find(problems, "routes.r.pool")
    assert bad_pool.file.endswith("y.toml")


def test_include_must_be_strings(ws: Workspace) -> None:
    problem = find(ws.errors("include = 3\n" + MINIMAL), "include")
    assert "glob string" in problem.message


def test_embedded_default(tmp_path: Path) -> None:
    settings = embedded_default(tmp_path / "state")
    assert settings.source is None and settings.warnings == ()
    assert settings.global_.state_dir == tmp_path / "state"
    (listener,) = settings.listeners
    assert listener.addresses[0] == ListenAddress("127.0.0.1", 8443)
    assert all(a.port == 8443 and a.host in ("127.0.0.1", "::1") for a in listener.addresses)
    (cert,) = settings.certificates
    assert cert.self_signed and cert.names == ("localhost", "127.0.0.1", "::1")
    (route,) = settings.routes
    assert route.default
    assert settings.pool(route.pool).servers == (BackendAddress("demo"),)
    assert settings.metrics.enabled and settings.metrics.listen == ListenAddress("127.0.0.1", 9464)
    assert not (tmp_path / "state").exists()  # loading never creates state


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert default_state_dir() == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    expected = (
        Path("/var/lib/tls13-proxy") if os.geteuid() == 0 else tmp_path / "xdg" / "tls13-proxy"
    )
    assert default_state_dir() == expected
    if os.geteuid() != 0:
        monkeypatch.delenv("XDG_STATE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path))
        assert default_state_dir() == tmp_path / ".local" / "state" / "tls13-proxy"


def test_reload_accepts_a_valid_change(ws: Workspace) -> None:
    path = ws.write(MINIMAL)
    first = load_settings(path)
    ws.write(MINIMAL.replace('"127.0.0.1:8080"', '"127.0.0.1:8081"'))
    second = reload_settings(path, first)
    assert second.pool("app").servers == (BackendAddress("tcp", "127.0.0.1", 8081),)
    assert second.warnings == ()


def test_reload_rejects_an_invalid_file(ws: Workspace) -> None:
    path = ws.write(MINIMAL)
    first = load_settings(path)
    ws.write(MINIMAL.replace('pool = "app"', 'pool = "gone"'))
    with pytest.raises(ConfigError) as caught:
        reload_settings(path, first)
    assert find(caught.value.problems, "routes.web.pool")


def test_reload_keeps_restart_only_settings(ws: Workspace) -> None:
    path = ws.write(MINIMAL + "\n[global]\nworkers = 2\n")
    first = load_settings(path)
    ws.write(MINIMAL.replace("enabled = false", "enabled = true") + "\n[global]\nworkers = 4\n")
    second = reload_settings(path, first)
    assert second.global_.workers == 2
    assert not second.metrics.enabled
    assert "only after a restart" in find(list(second.warnings), "global").message
    assert "only after a restart" in find(list(second.warnings), "metrics").message


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [
        ("p384", "ecdsa_secp384r1_sha384"),
        ("p521", "ecdsa_secp521r1_sha512"),
        ("rsa2048", "rsa_pss_rsae_sha256"),
        ("ed25519", "ed25519"),
        ("ed448", "ed448"),
    ],
)
def test_every_engine_key_type_loads(ws: Workspace, kind: str, scheme: str) -> None:
    ws.pair("typed", ("localhost",), kind=kind)
    text = MINIMAL.replace("site.crt", "typed.crt").replace("site.key", "typed.key")
    text = text.replace("[metrics]", f'[tls]\nsignature_schemes = ["{scheme}"]\n[metrics]')
    settings = ws.load(text)
    assert settings.warnings == ()
    assert settings.certificate("site").names == ("localhost",)
