"""The tls13-proxy command line: check, run, --version and exit codes."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
from settings_helpers import MINIMAL, REPO, Workspace, workspace

from proxy import __version__
from proxy.cli import EXIT_CONFIG, EXIT_NO_DAEMON, EXIT_OK, EXIT_USAGE, main
from proxy.settings import Settings


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return workspace(tmp_path)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == EXIT_OK
    assert result.stdout.strip() == f"tls13-proxy {__version__}"


def test_check_valid_file(ws: Workspace) -> None:
    path = ws.write(MINIMAL)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.strip() == (
        f"tls13-proxy: configuration {path} is valid: "
        "1 listener, 1 route, 1 backend pool, 1 certificate"
    )
    assert result.stderr == ""


def test_check_lists_every_error_and_fails(ws: Workspace) -> None:
    path = ws.write(
        MINIMAL.replace('pool = "app"', 'pool = "nope"').replace(
            'servers = ["127.0.0.1:8080"]', 'servers = ["127.0.0.1:8080", "app:http"]'
        )
    )
    (ws.certs / "site.key").chmod(0o644)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == EXIT_CONFIG
    lines = result.stderr.splitlines()
    assert (
        f"tls13-proxy: error: {path}: routes.web.pool: no backend pool named 'nope'"
        in "\n".join(lines)
    )
    assert any(
        line.startswith(f"tls13-proxy: error: {path}: backends.app.servers[1]: ") for line in lines
    )
    assert any(
        line.startswith(f"tls13-proxy: warning: {path}: certificates.site.key: ") for line in lines
    )
    assert lines[-1] == f"tls13-proxy: configuration {path} is invalid (2 errors)"
    assert result.stdout == ""


def test_check_prints_warnings_but_succeeds(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    (ws.certs / "site.key").chmod(0o644)
    assert main(["check", "-c", str(ws.write(MINIMAL))]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "is valid" in out
    assert "tls13-proxy: warning:" in err and "world-readable" in err


def test_check_accepts_options_before_the_command(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(ws.write(MINIMAL)), "check"]) == EXIT_OK
    assert "is valid" in capsys.readouterr().out


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(tmp_path / "absent.toml")]) == EXIT_CONFIG
    assert "cannot read" in capsys.readouterr().err


def test_check_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--state-dir", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "configuration <embedded default> is valid" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["frobnicate"], ["check", "--bogus"], ["check", "--config"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == EXIT_USAGE
    assert "usage: tls13-proxy" in capsys.readouterr().err


def test_run_hands_settings_to_the_daemon(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Settings, Path | None]] = []

    def fake_run(settings: Settings, config_path: Path | None) -> int:
        calls.append((settings, config_path))
        return 7

    fake = types.ModuleType("proxy.daemon")
    fake.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proxy.daemon", fake)
    path = ws.write(MINIMAL)
    assert main(["run", "--config", str(path)]) == 7
    assert main(["--state-dir", str(ws.root / "state")]) == 7
    assert main(["run", "-c", str(path), "--state-dir", str(ws.root / "other")]) == 7
    (file_settings, file_path), (default_settings, default_path), (overridden, _) = calls
    assert file_path == path and file_settings.listener("web").name == "web"
    assert overridden.global_.state_dir == ws.root / "other"
    assert overridden.listeners == file_settings.listeners
    assert default_path is None
    assert default_settings.global_.state_dir == ws.root / "state"
    assert default_settings.certificates[0].self_signed


def test_run_refuses_an_invalid_configuration(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = types.ModuleType("proxy.daemon")
    fake.run = lambda settings, path: pytest.fail("daemon started on a bad config")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proxy.daemon", fake)
    assert main(["run", "--config", str(ws.write("[routes.x]\npool = 3\n"))]) == EXIT_CONFIG
    assert "routes.x.pool" in capsys.readouterr().err


def test_run_without_the_daemon_fails_clearly(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "proxy.daemon", None)
    assert main(["run", "--config", str(ws.write(MINIMAL))]) == EXIT_NO_DAEMON
    assert "the daemon (proxy.daemon) is not part of this installation" in capsys.readouterr().err


def test_console_script_is_declared() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert 'tls13-proxy = "proxy.cli:main"' in text
