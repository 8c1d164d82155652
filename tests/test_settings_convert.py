"""Value converters: durations, sizes, addresses, names — parsing, printing and rejection."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.settings_convert import (
    BackendAddr,
    BackendAddress,
    BadValue,
    Duration,
    ListenAddr,
    ListenAddress,
    ListOf,
    PathValue,
    ServerName,
    Size,
    Workers,
    did_you_mean,
    format_duration,
    format_size,
)

BASE = Path("/etc/tls13-proxy")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        ("1.5s", 1.5),
        (12, 12.0),
        (0.5, 0.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert Duration().convert(text, BASE) == seconds


@pytest.mark.parametrize("text", ["", "10", "s", "10x", "1h-5m", "ten seconds", "5m10", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(BadValue, match="bad duration"):
        Duration().convert(text, BASE)


@given(st.integers(min_value=0, max_value=10**7))
def test_duration_format_round_trips(millis: int) -> None:
    seconds = millis / 1000
    assert Duration().convert(format_duration(seconds), BASE) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16KiB", 16384),
        ("1MiB", 1048576),
        ("2GiB", 2 << 30),
        ("64kB", 64000),
        ("1MB", 1000000),
        ("512", 512),
        ("16k", 16384),
        (4096, 4096),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert Size().convert(text, BASE) == size


@given(st.integers(min_value=0, max_value=1 << 40))
def test_size_format_round_trips(size: int) -> None:
    assert Size().convert(format_size(size), BASE) == size


def test_size_show_is_valid_toml_value() -> None:
    assert Size().show(65536) == '"64KiB"'
    assert Size().show(1000) == "1000"


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:443", ListenAddress("0.0.0.0", 443)),
        ("[::]:443", ListenAddress("::", 443)),
        ("[::1]:8443", ListenAddress("::1", 8443)),
        ("[0:0::1]:8443", ListenAddress("::1", 8443)),
        ("systemd:https", ListenAddress("", 0, "https")),
        ("systemd", ListenAddress("", 0, "")),
    ],
)
def test_listen_addresses(text: str, address: ListenAddress) -> None:
    parsed = ListenAddr().convert(text, BASE)
    assert parsed == address
    assert ListenAddr().convert(str(parsed), BASE) == parsed


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_listen_address_text_round_trips(ip: object, port: int) -> None:
    address = ListenAddress(str(ip), port)
    assert ListenAddr().convert(str(address), BASE) == address


def test_backend_addresses() -> None:
    conv = BackendAddr()
    assert conv.convert("demo", BASE) == BackendAddress("demo")
    assert conv.convert("app.internal:80", BASE) == BackendAddress("tcp", "app.internal", 80)
    assert conv.convert("[fd00::5]:80", BASE) == BackendAddress("tcp", "fd00::5", 80)
    assert conv.convert("unix:run/app.sock", BASE) == BackendAddress(
        "unix", path="/etc/tls13-proxy/run/app.sock"
    )
    assert str(conv.convert("unix:/run/app.sock", BASE)) == "unix:/run/app.sock"


def test_server_names() -> None:
    conv = ServerName()
    assert conv.convert("API.Example.COM.", BASE) == "api.example.com"
    assert conv.convert("*.example.com", BASE) == "*.example.com"
    for bad in ("*example.com", "a.*.com", "-a.com", "a..b", "*", "x" * 64 + ".com", "a b.com"):
        with pytest.raises(BadValue):
            conv.convert(bad, BASE)


def test_list_reports_each_bad_element() -> None:
    with pytest.raises(BadValue) as caught:
        ListOf(Size()).convert(["1KiB", "x", 3, "y", "1KiB"], BASE)
    assert [(p.suffix, p.message.split(":")[0]) for p in caught.value.all()] == [
        ("[1]", "bad size 'x'"),
        ("[3]", "bad size 'y'"),
        ("[4]", "duplicate entry '1KiB'"),
    ]


def test_paths_resolve_against_the_declaring_file() -> None:
    assert PathValue().convert("certs/a.pem", BASE) == BASE / "certs" / "a.pem"
    assert PathValue().convert("/abs/a.pem", BASE) == Path("/abs/a.pem")
    assert PathValue().convert("../a.pem", BASE / "conf.d") == BASE / "a.pem"


def test_workers() -> None:
    assert Workers().convert(4, BASE) == 4
    assert Workers().convert("auto", BASE) >= 1
    for bad in (0, -1, "4", True, 2.0):
        with pytest.raises(BadValue):
            Workers().convert(bad, BASE)


def test_did_you_mean() -> None:
    assert did_you_mean("listners", ["listeners", "routes"]) == ' (did you mean "listeners"?)'
    assert did_you_mean("X25519", ["x25519"]) == ' (did you mean "x25519"?)'
    assert did_you_mean("zzz", ["listeners"]) == ""
