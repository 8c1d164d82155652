"""Every example in config/ loads and passes `tls13-proxy check` once its files exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from settings_helpers import CONFIG_DIR, copy_examples, example_files

from proxy.cli import main
from proxy.settings import ConfigError, load_settings

EXAMPLES = [path.name for path in example_files()]


def test_the_common_cases_have_examples() -> None:
    assert {
        "single-site.toml",
        "multi-site.toml",
        "mtls-internal-api.toml",
        "zero-rtt.toml",
        "with-includes.toml",
    } <= set(EXAMPLES)
    assert (CONFIG_DIR / "certs" / "README").is_file()
    assert len(list((CONFIG_DIR / "conf.d").glob("*.toml"))) >= 2


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_examples(tmp_path_factory.mktemp("examples"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_loads_without_warnings(examples: Path, name: str) -> None:
    settings = load_settings(examples / name)
    assert settings.warnings == (), [str(w) for w in settings.warnings]
    assert settings.listeners and settings.routes and settings.backends


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_passes_check(
    examples: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(examples / name)]) == 0
    out, err = capsys.readouterr()
    assert "is valid" in out
    assert err == ""


def test_examples_use_what_they_describe(examples: Path) -> None:
    zero_rtt = load_settings(examples / "zero-rtt.toml")
    assert zero_rtt.tls.max_early_data == 16384
    assert [r.name for r in zero_rtt.routes if r.early_data] == ["static"]
    mtls = load_settings(examples / "mtls-internal-api.toml")
    assert mtls.listener("api").client_auth == "required"
    assert mtls.pool("api").proxy_protocol == 2
    multi = load_settings(examples / "multi-site.toml")
    assert len(multi.certificates) == 3 and multi.route("tenants").server_names == (
        "*.example.org",
    )
    included = load_settings(examples / "with-includes.toml")
    assert [c.name for c in included.certificates] == ["www", "docs"]
    assert included.listener("https").routes == ("www", "default", "docs")
    assert len(included.files) == 3


def test_examples_without_their_certificates_fail_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The shipped config/ holds no keys: check must say which files are missing.
    with pytest.raises(ConfigError) as caught:
        load_settings(CONFIG_DIR / "single-site.toml")
    keys = {p.key for p in caught.value.problems}
    assert keys == {"certificates.example.chain", "certificates.example.key"}
    assert main(["check", "--config", str(CONFIG_DIR / "single-site.toml")]) == 1
    assert "example.com.crt" in capsys.readouterr().err
