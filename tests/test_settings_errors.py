"""Broken configurations: every error class names the file, the key path and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from certs import make_ca, make_key, make_leaf, write_pair
from cryptography.hazmat.primitives import serialization
from settings_helpers import MINIMAL, Workspace, find, workspace

from proxy.settings import ConfigError, load_settings
from tls13.certificates import CertificateChain, CertificateError


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return workspace(tmp_path)


def edited(old: str, new: str) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new)


def test_minimal_configuration_is_valid(ws: Workspace) -> None:
    settings = ws.load(MINIMAL)
    assert settings.warnings == ()
    assert [listener.name for listener in settings.listeners] == ["web"]


def test_problem_names_file_key_and_problem(ws: Workspace) -> None:
    path = ws.write(
        edited('servers = ["127.0.0.1:8080"]', 'servers = ["127.0.0.1:8080", "app:http"]')
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (problem,) = caught.value.problems
    assert problem.file == str(path)
    assert problem.key == "backends.app.servers[1]"
    assert "'http' is not a number" in problem.message
    assert str(problem) == f"{path}: backends.app.servers[1]: {problem.message}"
    assert f"{path}: backends.app.servers[1]:" in str(caught.value)


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ("[metrics]", "[metrix]", "metrix", 'did you mean "metrics"'),
        (
            "enabled = false",
            "enabled = false\nlisten_on = 1",
            "metrics.listen_on",
            'did you mean "listen"',
        ),
        ("pool = ", "pol = 1\npool = ", "routes.web.pol", 'did you mean "pool"'),
        (
            "[backends.app]",
            "[backends.app]\nhealth = { intervall = '1s' }",
            "backends.app.health.intervall",
            'did you mean "interval"',
        ),
        (
            "[listeners.web]",
            "[listeners.web]\ntls = { grups = ['x25519'] }",
            "listeners.web.tls.grups",
            'did you mean "groups"',
        ),
    ],
)
def test_unknown_keys_suggest_the_closest(
    ws: Workspace, old: str, new: str, key: str, expected: str
) -> None:
    problem = find(ws.errors(edited(old, new)), key)
    assert "unknown key" in problem.message
    assert expected in problem.message


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ("[metrics]", "[global]\nworkers = 'many'\n[metrics]", "global.workers", '"auto"'),
        ("[metrics]", "[global]\nworkers = 0\n[metrics]", "global.workers", "1…1024"),
        ("enabled = false", "enabled = 'no'", "metrics.enabled", "expected a boolean"),
        (
            "[metrics]",
            "[limits]\nmax_connections = '10'\n[metrics]",
            "limits.max_connections",
            "integer",
        ),
        ("[metrics]", "[tls]\nalpn = 'h2'\n[metrics]", "tls.alpn", "expected an array"),
        ("[metrics]", "[tls]\nalpn = ['h2', 3]\n[metrics]", "tls.alpn[1]", "ALPN protocol string"),
        ("[metrics]", "global = 3\n[metrics]", "global", "expected a table"),
        (
            "[metrics]",
            "[global]\nlog_format = 'xml'\n[metrics]",
            "global.log_format",
            '"text" | "json"',
        ),
        ("default = true", "default = 1", "routes.web.default", "boolean"),
        (
            "[backends.app]",
            "[backends.app]\nproxy_protocol = 3",
            "backends.app.proxy_protocol",
            "0 | 1 | 2",
        ),
        (
            "[backends.app]",
            "[backends.app]\nbalancing = 'least_connection'",
            "backends.app.balancing",
            'did you mean "least_connections"',
        ),
    ],
)
def test_wrong_types_and_values(ws: Workspace, old: str, new: str, key: str, expected: str) -> None:
    problem = find(ws.errors(edited(old, new)), key)
    assert expected in problem.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("'10 seconds'", "bad duration"),
        ("'10'", "bad duration"),
        ("'s'", "bad duration"),
        ("'5m10'", "bad duration"),
        ("-1", "≥ 0"),
        ("true", "boolean"),
        ("'0s'", "below the minimum"),
    ],
)
def test_bad_durations(ws: Workspace, value: str, expected: str) -> None:
    text = edited("[metrics]", f"[limits]\nhandshake_timeout = {value}\n[metrics]")
    assert expected in find(ws.errors(text), "limits.handshake_timeout").message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("'16XB'", "bad size"),
        ("'16.5KiB'", "bad size"),
        ("'KiB'", "bad size"),
        ("-5", "≥ 0"),
        ("'1KiB'", "below the minimum"),
        ("'1GiB'", "exceeds the maximum"),
    ],
)
def test_bad_sizes(ws: Workspace, value: str, expected: str) -> None:
    text = edited("[metrics]", f"[limits]\nbuffer_size = {value}\n[metrics]")
    assert expected in find(ws.errors(text), "limits.buffer_size").message


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("localhost:8443", "IP address, not a host name"),
        ("127.0.0.1", "has no port"),
        ("::1:443", "[addr]:port"),
        ("[::1]443", "[addr]:port"),
        ("127.0.0.1:70000", "not a number 1…65535"),
        ("127.0.0.1:0", "not a number 1…65535"),
        (":443", "no host part"),
    ],
)
def test_bad_listen_addresses(ws: Workspace, address: str, expected: str) -> None:
    text = edited('["127.0.0.1:8443"]', f'["[::1]:8443", "{address}"]')
    assert expected in find(ws.errors(text), "listeners.web.addresses[1]").message


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("app", "has no port"),
        ("app_server:80", "neither an IP address nor a host name"),
        ("unix:", "empty Unix socket path"),
        ("unix:/" + "x" * 120, "longer than 107 bytes"),
    ],
)
def test_bad_backend_addresses(ws: Workspace, server: str, expected: str) -> None:
    text = edited('servers = ["127.0.0.1:8080"]', f'servers = ["127.0.0.1:8080", "{server}"]')
    assert expected in find(ws.errors(text), "backends.app.servers[1]").message


def test_metrics_address_is_checked(ws: Workspace) -> None:
    text = edited("enabled = false", 'listen = "example.org:9464"')
    assert "IP address" in find(ws.errors(text), "metrics.listen").message


def test_unreadable_certificate_and_key(ws: Workspace) -> None:
    problems = ws.errors(
        edited('"certs/site.crt"', '"certs/missing.crt"').replace("site.key", "none.key")
    )
    chain = find(problems, "certificates.site.chain")
    key = find(problems, "certificates.site.key")
    assert "cannot read" in chain.message and "missing.crt" in chain.message
    assert "No such file" in key.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_certificate_without_read_permission(ws: Workspace) -> None:
    (ws.certs / "site.key").chmod(0)
    assert "Permission denied" in find(ws.errors(MINIMAL), "certificates.site.key").message


def test_files_that_hold_no_certificate_or_key(ws: Workspace) -> None:
    (ws.certs / "junk.crt").write_text("not a certificate\n")
    (ws.certs / "junk.key").write_bytes((ws.certs / "site.crt").read_bytes())
    problems = ws.errors(edited("site.crt", "junk.crt").replace("site.key", "junk.key"))
    assert "holds no PEM certificate" in find(problems, "certificates.site.chain").message
    assert "holds no usable PEM private key" in find(problems, "certificates.site.key").message


def test_key_that_does_not_match_the_certificate(ws: Workspace) -> None:
    other = make_key("p256")
    (ws.certs / "other.key").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (ws.certs / "other.key").chmod(0o600)
    problem = find(ws.errors(edited("site.key", "other.key")), "certificates.site.key")
    assert "does not match the certificate" in problem.message
    assert "CN=localhost" in problem.message


def test_encrypted_and_weak_keys(ws: Workspace) -> None:
    leaf = make_leaf(ws.ca, ("localhost",))
    write_pair(ws.certs, "enc", leaf, ws.ca)
    (ws.certs / "enc.key").write_bytes(
        leaf.key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    problems = ws.errors(edited("site.crt", "enc.crt").replace("site.key", "enc.key"))
    assert "encrypted with a passphrase" in find(problems, "certificates.site.key").message
    ws.pair("weak", ("localhost",), kind="rsa1024")
    problems = ws.errors(edited("site.crt", "weak.crt").replace("site.key", "weak.key"))
    assert "1024 bits is too weak" in find(problems, "certificates.site.key").message


def test_expired_certificate_is_a_warning(ws: Workspace) -> None:
    ws.pair("old", ("localhost",), days=-1, not_before_days=-30)
    settings = ws.load(edited("site.crt", "old.crt").replace("site.key", "old.key"))
    (warning,) = settings.warnings
    assert warning.key == "certificates.site.chain"
    assert "expired on" in warning.message
    assert warning.file.endswith("proxy.toml")


def test_not_yet_valid_certificate_is_a_warning(ws: Workspace) -> None:
    ws.pair("future", ("localhost",), not_before_days=2, days=30)
    settings = ws.load(edited("site.crt", "future.crt").replace("site.key", "future.key"))
    assert "not valid before" in find(list(settings.warnings), "certificates.site.chain").message


def test_world_readable_key_is_a_warning(ws: Workspace) -> None:
    (ws.certs / "site.key").chmod(0o644)
    settings = ws.load(MINIMAL)
    warning = find(list(settings.warnings), "certificates.site.key")
    assert "world-readable (mode 0644)" in warning.message
    assert "chmod 600" in warning.message


def test_names_not_covered_by_the_certificate_warn(ws: Workspace) -> None:
    text = edited(
        'key = "certs/site.key"', 'key = "certs/site.key"\nnames = ["example.com", "other.org"]'
    )
    settings = ws.load(text)
    warning = find(list(settings.warnings), "certificates.site.names[1]")
    assert "'other.org' is not among the certificate's names" in warning.message


def test_route_to_undefined_pool(ws: Workspace) -> None:
    problem = find(ws.errors(edited('pool = "app"', 'pool = "ap"')), "routes.web.pool")
    assert "no backend pool named 'ap'" in problem.message
    assert 'did you mean "app"' in problem.message


def test_duplicate_listen_addresses(ws: Workspace) -> None:
    text = MINIMAL + '\n[listeners.second]\naddresses = ["[::1]:9000", "127.0.0.1:8443"]\n'
    problem = find(ws.errors(text), "listeners.second.addresses[1]")
    assert "127.0.0.1:8443 is already used by listeners.web" in problem.message
    text = edited('["127.0.0.1:8443"]', '["127.0.0.1:8443", "127.0.0.1:8443"]')
    assert "duplicate entry" in find(ws.errors(text), "listeners.web.addresses[1]").message


def test_metrics_on_a_listener_address(ws: Workspace) -> None:
    text = edited("enabled = false", 'listen = "127.0.0.1:8443"')
    assert "already used by listeners.web" in find(ws.errors(text), "metrics.listen").message


@pytest.mark.parametrize("size", [0, 47, 80, 96 + 1, 100])
def test_ticket_key_file_of_the_wrong_size(ws: Workspace, size: int) -> None:
    (ws.certs / "tickets.key").write_bytes(os.urandom(size))
    text = edited("[metrics]", '[tls.tickets]\nkey_file = "certs/tickets.key"\n[metrics]')
    problem = find(ws.errors(text), "tls.tickets.key_file")
    assert f"holds {size} bytes" in problem.message
    assert "48-byte" in problem.message


@pytest.mark.parametrize("size", [48, 96, 480])
def test_ticket_key_file_of_a_right_size(ws: Workspace, size: int) -> None:
    (ws.certs / "tickets.key").write_bytes(os.urandom(size))
    (ws.certs / "tickets.key").chmod(0o600)
    ws.load(edited("[metrics]", '[tls.tickets]\nkey_file = "certs/tickets.key"\n[metrics]'))


def test_unknown_cipher_suite_and_group_names(ws: Workspace) -> None:
    text = edited(
        "[metrics]",
        "[tls]\ncipher_suites = ['TLS_AES_128_GCM_SHA265']\ngroups = ['x25519', 'P-256']\n[metrics]",
    )
    problems = ws.errors(text)
    suite = find(problems, "tls.cipher_suites[0]")
    assert "unknown cipher suite 'TLS_AES_128_GCM_SHA265'" in suite.message
    assert 'did you mean "TLS_AES_128_GCM_SHA256"' in suite.message
    assert "unknown group 'P-256'" in find(problems, "tls.groups[1]").message


def test_names_are_matched_without_case_and_stored_canonically(ws: Workspace) -> None:
    text = edited("[metrics]", "[tls]\ngroups = ['X25519', 'SECP256R1']\n[metrics]")
    assert ws.load(text).tls.groups == ("x25519", "secp256r1")


def test_ca_file_without_certificate(ws: Workspace) -> None:
    (ws.certs / "empty-ca.crt").write_text("")
    text = edited(
        'addresses = ["127.0.0.1:8443"]',
        'addresses = ["127.0.0.1:8443"]\nclient_auth = "required"\nclient_ca = "certs/empty-ca.crt"',
    )
    problem = find(ws.errors(text), "listeners.web.client_ca")
    assert "holds no PEM certificate" in problem.message


def test_client_auth_without_ca(ws: Workspace) -> None:
    text = edited(
        'addresses = ["127.0.0.1:8443"]', 'addresses = ["127.0.0.1:8443"]\nclient_auth = "optional"'
    )
    assert (
        'client_auth = "optional" needs client_ca'
        in find(ws.errors(text), "listeners.web.client_ca").message
    )
    text = edited("default = true", "default = true\nclient_certificate_required = true")
    problem = find(ws.errors(text), "listeners.web.client_ca")
    assert "route 'web' requires a client certificate" in problem.message


def test_syntax_error_names_the_file(ws: Workspace) -> None:
    path = ws.write(MINIMAL + "\n[routes.x\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.key) == (str(path), "(syntax)")
    assert "invalid TOML" in problem.message and "line" in problem.message


def test_missing_main_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "nope.toml")
    assert "cannot read" in caught.value.problems[0].message


def test_references_to_undefined_routes_and_certificates(ws: Workspace) -> None:
    text = edited(
        'addresses = ["127.0.0.1:8443"]',
        'addresses = ["127.0.0.1:8443"]\nroutes = ["web", "wbe"]\ncertificates = ["sight"]\n'
        'default_certificate = "site"',
    )
    problems = ws.errors(text)
    assert "no route named 'wbe'" in find(problems, "listeners.web.routes[1]").message
    assert 'did you mean "site"' in find(problems, "listeners.web.certificates[0]").message
    assert (
        "not one of this listener's certificates"
        in find(problems, "listeners.web.default_certificate").message
    )


def test_two_default_routes_on_a_listener(ws: Workspace) -> None:
    text = MINIMAL + '\n[routes.other]\ndefault = true\npool = "app"\n'
    problem = find(ws.errors(text), "listeners.web.routes")
    assert "more than one default route (web, other)" in problem.message


def test_route_that_matches_nothing(ws: Workspace) -> None:
    problem = find(ws.errors(edited("default = true", "")), "routes.web")
    assert "matches nothing" in problem.message


def test_missing_required_keys(ws: Workspace) -> None:
    text = (
        MINIMAL.replace('addresses = ["127.0.0.1:8443"]', "")
        .replace('pool = "app"', "")
        .replace('servers = ["127.0.0.1:8080"]', "")
        .replace('chain = "certs/site.crt"', "")
    )
    problems = ws.errors(text)
    assert "addresses is required" in find(problems, "listeners.web.addresses").message
    assert "pool is required" in find(problems, "routes.web.pool").message
    assert "servers is required" in find(problems, "backends.app.servers").message
    assert "chain is required" in find(problems, "certificates.site.chain").message


def test_nothing_to_serve(ws: Workspace) -> None:
    problems = ws.errors("[metrics]\nenabled = false\n")
    assert "no listener defined" in find(problems, "listeners").message


def test_listener_needs_certificates_and_routes(ws: Workspace) -> None:
    problems = ws.errors('[listeners.web]\naddresses = ["127.0.0.1:8443"]\n')
    assert "no certificate to serve" in find(problems, "listeners.web.certificates").message
    assert "no route" in find(problems, "listeners.web.routes").message


def test_self_signed_with_files(ws: Workspace) -> None:
    text = edited('key = "certs/site.key"', 'key = "certs/site.key"\nself_signed = true')
    problems = ws.errors(text)
    assert "cannot be set with self_signed" in find(problems, "certificates.site.chain").message
    assert "cannot be set with self_signed" in find(problems, "certificates.site.key").message


def test_health_timeout_longer_than_interval(ws: Workspace) -> None:
    text = edited("[backends.app]", "[backends.app]\nhealth = { interval = '1s', timeout = '2s' }")
    assert (
        "shorter than health.interval"
        in find(ws.errors(text), "backends.app.health.timeout").message
    )


def test_demo_mixed_with_servers(ws: Workspace) -> None:
    text = edited('servers = ["127.0.0.1:8080"]', 'servers = ["demo", "127.0.0.1:8080"]')
    assert '"demo" must be the only server' in find(ws.errors(text), "backends.app.servers").message


def test_bad_names_and_server_names(ws: Workspace) -> None:
    text = MINIMAL + '\n[backends."bad name"]\nservers = ["demo"]\n'
    assert "a name must be" in find(ws.errors(text), "backends.bad name").message
    text = edited("default = true", 'server_names = ["a.*.example.com", "127.0.0.1"]')
    problems = ws.errors(text)
    assert "wildcard of the form" in find(problems, "routes.web.server_names[0]").message
    assert "is an IP address" in find(problems, "routes.web.server_names[1]").message


def test_every_error_is_collected(ws: Workspace) -> None:
    text = (
        edited('pool = "app"', 'pool = "nope"')
        .replace("enabled = false", "enabled = false\nbogus = 1")
        .replace('servers = ["127.0.0.1:8080"]', 'servers = ["x"]\nconnect_timeout = "fast"')
        .replace("certs/site.key", "certs/gone.key")
    )
    keys = {p.key for p in ws.errors(text)}
    assert {
        "routes.web.pool",
        "metrics.bogus",
        "backends.app.servers[0]",
        "backends.app.connect_timeout",
        "certificates.site.key",
    } <= keys


def test_ticket_lifetime_limits(ws: Workspace) -> None:
    text = edited("[metrics]", "[tls.tickets]\nlifetime = '8d'\n[metrics]")
    assert "exceeds the maximum 7d" in find(ws.errors(text), "tls.tickets.lifetime").message


def test_early_data_and_keylog_warnings(ws: Workspace) -> None:
    text = edited("default = true", "default = true\nearly_data = true").replace(
        "[metrics]", '[tls]\nkeylog_file = "keys.log"\n[metrics]'
    )
    settings = ws.load(text)
    early = find(list(settings.warnings), "listeners.web.tls.max_early_data")
    assert "0-RTT is off" in early.message
    assert "every session secret" in find(list(settings.warnings), "tls.keylog_file").message


def test_keylog_file_in_a_missing_directory(ws: Workspace) -> None:
    text = edited("[metrics]", '[tls]\nkeylog_file = "no/such/dir/keys.log"\n[metrics]')
    assert "does not exist" in find(ws.errors(text), "tls.keylog_file").message


def test_unused_pool_is_a_warning(ws: Workspace) -> None:
    settings = ws.load(MINIMAL + '\n[backends.spare]\nservers = ["demo"]\n')
    assert "not used by any route" in find(list(settings.warnings), "backends.spare").message


def test_chain_out_of_order_is_a_warning(ws: Workspace) -> None:
    stranger = make_ca("unrelated CA")
    site = (ws.certs / "site.crt").read_bytes()
    leaf_pem = site[: site.index(b"-----END CERTIFICATE-----") + 26]
    (ws.certs / "mixed.crt").write_bytes(leaf_pem + stranger.cert_pem())
    settings = ws.load(edited("site.crt", "mixed.crt"))
    warning = find(list(settings.warnings), "certificates.site.chain")
    assert "certificate #2 did not issue certificate #1" in warning.message


def test_leaf_not_first_is_an_error(ws: Workspace) -> None:
    leaf = make_leaf(ws.ca, ("localhost",))
    write_pair(ws.certs, "rev", leaf)
    (ws.certs / "rev.crt").write_bytes(ws.ca.cert_pem() + leaf.cert_pem())
    problems = ws.errors(edited("site.crt", "rev.crt").replace("site.key", "rev.key"))
    assert "does not match the certificate" in find(problems, "certificates.site.key").message


def test_client_ca_that_is_not_a_ca_warns(ws: Workspace) -> None:
    text = edited(
        'addresses = ["127.0.0.1:8443"]',
        'addresses = ["127.0.0.1:8443"]\nclient_auth = "optional"\nclient_ca = "certs/site.crt"',
    )
    settings = ws.load(text)
    warning = find(list(settings.warnings), "listeners.web.client_ca")
    assert "is not a CA" in warning.message


def test_unknown_user_and_group_warn(ws: Workspace) -> None:
    settings = ws.load(MINIMAL + '\n[global]\nuser = "no-such-user-x"\ngroup = "no-such-group-x"\n')
    assert "no user 'no-such-user-x'" in find(list(settings.warnings), "global.user").message
    assert "no group 'no-such-group-x'" in find(list(settings.warnings), "global.group").message
    assert ws.load(MINIMAL + '\n[global]\nuser = "root"\ngroup = "root"\n').warnings == ()


def test_route_alpn_the_listener_never_offers(ws: Workspace) -> None:
    text = edited("default = true", 'alpn = ["h2", "http/1.1"]').replace(
        "[metrics]", '[tls]\nalpn = ["http/1.1"]\n[metrics]'
    )
    warning = find(list(ws.load(text).warnings), "listeners.web.tls.alpn")
    assert "matches ALPN h2, which this listener never negotiates" in warning.message


def test_ticket_lifetime_beyond_rotation_warns_once(ws: Workspace) -> None:
    text = edited(
        "[metrics]",
        '[tls]\nalpn = ["h2"]\ntickets = { lifetime = "2h", rotation_interval = "1h" }\n[metrics]',
    ).replace(
        'addresses = ["127.0.0.1:8443"]',
        'addresses = ["127.0.0.1:8443"]\ntls = { alpn = ["http/1.1"] }',
    )
    warnings = list(ws.load(text).warnings)
    assert [w.key for w in warnings] == ["tls.tickets.lifetime"]
    assert "longer than tickets.rotation_interval" in warnings[0].message


def test_listener_limit_above_the_global_one_warns(ws: Workspace) -> None:
    text = edited(
        'addresses = ["127.0.0.1:8443"]', 'addresses = ["127.0.0.1:8443"]\nmax_connections = 20000'
    )
    warning = find(list(ws.load(text).warnings), "listeners.web.max_connections")
    assert "above limits.max_connections (10000)" in warning.message


def test_signature_schemes_the_certificate_cannot_use(ws: Workspace) -> None:
    text = edited(
        "[metrics]", '[tls]\nsignature_schemes = ["ed25519", "rsa_pss_rsae_sha256"]\n[metrics]'
    )
    problem = find(ws.errors(text), "listeners.web.tls.signature_schemes")
    assert "certificate 'site' (ECDSA secp256r1 key) can sign with none of" in problem.message
    assert "ecdsa_secp256r1_sha256" in problem.message
    text = edited("[metrics]", '[tls]\nsignature_schemes = ["ecdsa_secp256r1_sha256"]\n[metrics]')
    assert ws.load(text).tls.signature_schemes == ("ecdsa_secp256r1_sha256",)


def test_ticket_key_file_the_engine_rejects(ws: Workspace) -> None:
    record = os.urandom(48)
    (ws.certs / "tickets.key").write_bytes(record + record)
    (ws.certs / "tickets.key").chmod(0o600)
    text = edited("[metrics]", '[tls.tickets]\nkey_file = "certs/tickets.key"\n[metrics]')
    assert "duplicate ticket key name" in find(ws.errors(text), "tls.tickets.key_file").message


def test_world_readable_ticket_key_warns(ws: Workspace) -> None:
    (ws.certs / "tickets.key").write_bytes(os.urandom(48))
    (ws.certs / "tickets.key").chmod(0o644)
    text = edited("[metrics]", '[tls.tickets]\nkey_file = "certs/tickets.key"\n[metrics]')
    warning = find(list(ws.load(text).warnings), "tls.tickets.key_file")
    assert "world-readable" in warning.message


def test_engine_rejection_is_reported(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise CertificateError("unsupported key type for TLS 1.3 signatures")

    monkeypatch.setattr(CertificateChain, "from_pem", refuse)
    problem = find(ws.errors(MINIMAL), "certificates.site")
    assert "the TLS engine cannot use" in problem.message
    assert "unsupported key type" in problem.message


def test_shadowed_route_warns(ws: Workspace) -> None:
    text = (
        MINIMAL
        + '\n[routes.a]\nserver_names = ["x.example.com"]\npool = "app"\n'
        + '\n[routes.b]\nserver_names = ["y.example.com", "X.example.com"]\npool = "app"\n'
    )
    warning = find(list(ws.load(text).warnings), "listeners.web.routes")
    assert "route 'b' never gets 'x.example.com': route 'a' matches" in warning.message


def test_scalar_where_an_array_is_expected_suggests_brackets(ws: Workspace) -> None:
    text = edited('servers = ["127.0.0.1:8080"]', 'servers = "127.0.0.1:8080"')
    problem = find(ws.errors(text), "backends.app.servers")
    assert 'write ["127.0.0.1:8080"]' in problem.message


def test_certificate_path_that_is_a_directory(ws: Workspace) -> None:
    (ws.certs / "dir.crt").mkdir()
    problem = find(ws.errors(edited("site.crt", "dir.crt")), "certificates.site.chain")
    assert "cannot read" in problem.message and "Is a directory" in problem.message


def test_certificate_only_signature_schemes_are_refused(ws: Workspace) -> None:
    text = edited("[metrics]", '[tls]\nsignature_schemes = ["rsa_pkcs1_sha256"]\n[metrics]')
    problem = find(ws.errors(text), "tls.signature_schemes[0]")
    assert "unknown signature scheme 'rsa_pkcs1_sha256'" in problem.message
