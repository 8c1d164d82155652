"""Helpers for the configuration tests: write configs and certificates into a temporary directory."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs import Issued, make_ca, make_leaf, write_pair

from proxy.settings import ConfigError, ConfigProblem, Settings, load_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"

# A complete minimal configuration; tests append or replace tables to break it.
MINIMAL = """\
[metrics]
enabled = false

[certificates.site]
chain = "certs/site.crt"
key = "certs/site.key"

[listeners.web]
addresses = ["127.0.0.1:8443"]

[routes.web]
default = true
pool = "app"

[backends.app]
servers = ["127.0.0.1:8080"]
"""


@dataclass
class Workspace:
    """A directory holding a config file and the certificates it refers to."""

    root: Path
    ca: Issued

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    def write(self, text: str, name: str = "proxy.toml") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def pair(self, stem: str, names: tuple[str, ...] = ("localhost",), **kwargs: object) -> None:
        """certs/<stem>.crt (leaf + CA) and certs/<stem>.key (mode 0600)."""
        self.certs.mkdir(exist_ok=True)
        write_pair(self.certs, stem, make_leaf(self.ca, names, **kwargs), self.ca)  # type: ignore[arg-type]

    def load(self, text: str) -> Settings:
        """Load a valid configuration; its warnings must name the file they come from."""
        path = self.write(text)
        settings = load_settings(path)
        self._check_files(list(settings.warnings), path)
        return settings

    def errors(self, text: str, name: str = "proxy.toml") -> list[ConfigProblem]:
        """The problems of a configuration expected to be invalid (each naming its file)."""
        path = self.write(text, name)
        try:
            load_settings(path)
        except ConfigError as exc:
            self._check_files(exc.problems + exc.warnings, path)
            return exc.problems
        raise AssertionError("configuration unexpectedly valid")

    def _check_files(self, problems: list[ConfigProblem], main: Path) -> None:
        # Problems of the main file name it; included snippets live under the same root.
        for problem in problems:
            assert problem.file == str(main) or problem.file.startswith(f"{self.root}/"), problem
            assert problem.key and problem.message, problem


_CA: Issued | None = None


def shared_ca() -> Issued:
    global _CA
    if _CA is None:
        _CA = make_ca("tls13-proxy config test CA")
    return _CA


def workspace(tmp_path: Path) -> Workspace:
    """A workspace with certs/site.{crt,key} (localhost, *.example.com) and certs/ca.crt."""
    ws = Workspace(tmp_path, shared_ca())
    ws.pair("site", ("localhost", "example.com", "*.example.com", "127.0.0.1"))
    (ws.certs / "ca.crt").write_bytes(ws.ca.cert_pem())
    return ws


def find(problems: list[ConfigProblem], key: str) -> ConfigProblem:
    """The problem reported at ``key`` (fails listing them all if there is none)."""
    for problem in problems:
        if problem.key == key:
            return problem
    listing = "\n".join(str(p) for p in problems)
    raise AssertionError(f"no problem at {key!r}; got:\n{listing}")


def example_files() -> list[Path]:
    """The example main files (snippets in conf.d/ are loaded through with-includes.toml)."""
    return sorted(CONFIG_DIR.glob("*.toml"))


def _referenced_files(data: dict[str, Any], base: Path) -> Iterator[tuple[str, Path]]:
    """(kind, path) of every file a parsed example names: certs, keys, CAs, ticket keys."""
    tls_tables = [data.get("tls", {})]
    for listener in data.get("listeners", {}).values():
        tls_tables.append(listener.get("tls", {}))
        if "client_ca" in listener:
            yield "ca", base / listener["client_ca"]
    for tls in tls_tables:
        if "key_file" in tls.get("tickets", {}):
            yield "tickets", base / tls["tickets"]["key_file"]
    for cert in data.get("certificates", {}).values():
        if "chain" in cert:
            yield "chain", base / cert["chain"]


def _server_names(files: list[Path]) -> tuple[str, ...]:
    names: list[str] = ["localhost"]
    for path in files:
        for route in tomllib.loads(path.read_text()).get("routes", {}).values():
            names += [n for n in route.get("server_names", []) if n not in names]
    return tuple(names)


def copy_examples(destination: Path) -> Path:
    """Copy config/ into ``destination`` and create every file the examples name.

    Certificates are issued by the shared test CA for every server name any example routes
    (so none warns about uncovered names); keys are mode 0600; ticket key files hold one
    48-byte key; client CA files hold the test CA.
    """
    target = destination / "config"
    shutil.copytree(CONFIG_DIR, target)
    files = sorted(target.rglob("*.toml"))
    names = _server_names(files)
    ca = shared_ca()
    for path in files:
        for kind, ref in _referenced_files(tomllib.loads(path.read_text()), path.parent):
            ref.parent.mkdir(parents=True, exist_ok=True)
            if kind == "chain":
                write_pair(ref.parent, ref.stem, make_leaf(ca, names), ca)
            elif kind == "ca":
                ref.write_bytes(ca.cert_pem())
            else:
                ref.write_bytes(os.urandom(48))
                ref.chmod(0o600)
    return target
