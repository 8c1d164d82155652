"""Privilege drop: run in child processes so the test runner keeps its own identity."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.privileges import (
    PrivilegeError,
    drop_privileges,
    resolve_identity,
    unreadable_code_paths,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tmp_path() -> Iterator[Path]:  # noqa: F811 - a world-traversable tmp_path
    """Like pytest's tmp_path, but under a path every user can traverse (pytest's is 0700),
    so what the dropped process cannot read is decided by the files' own modes."""
    directory = Path(tempfile.mkdtemp(prefix="tls13-proxy-priv-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")

CHILD = textwrap.dedent(
    """
    import json, logging, os, sys
    sys.path.insert(0, sys.argv[1])
    logging.basicConfig(level=logging.WARNING)
    from proxy.privileges import drop_privileges, PrivilegeError
    user, group, secret = sys.argv[2], sys.argv[3] or None, sys.argv[4]
    from cryptography.hazmat.primitives.asymmetric import x25519  # like the daemon's engine
    try:
        changed = drop_privileges(user, group)
    except PrivilegeError as exc:
        print(json.dumps({"error": str(exc)}))
        raise SystemExit(0)
    # Works after the drop even when the installation is unreadable now: preloaded.
    x25519.X25519PrivateKey.generate()
    "xn--bcher-kva.example".encode("ascii").decode("idna")
    try:
        os.setuid(0)
        regained = True
    except PermissionError:
        regained = False
    try:
        open(secret).read()
        read_secret = True
    except PermissionError:
        read_secret = False
    print(json.dumps({
        "changed": changed, "resuid": os.getresuid(), "resgid": os.getresgid(),
        "groups": os.getgroups(), "regained": regained, "read_secret": read_secret,
        "home": os.environ.get("HOME"), "user": os.environ.get("USER"),
        "again": drop_privileges(user, group),
    }))
    """
)


def _drop_in_child(tmp_path: Path, user: str, group: str = "") -> dict[str, object]:
    script = tmp_path / "drop.py"
    script.write_text(CHILD)
    secret = tmp_path / "secret.key"
    secret.write_text("not for you")
    secret.chmod(0o600)
    result = subprocess.run(
        [sys.executable, str(script), str(REPO), user, group, str(secret)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, object] = json.loads(result.stdout)
    return report


@root_only
def test_drop_to_nobody_is_permanent(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    report = _drop_in_child(tmp_path, "nobody")
    assert report["changed"] is True
    assert report["resuid"] == [nobody.pw_uid] * 3
    assert report["resgid"] == [nobody.pw_gid] * 3
    assert 0 not in report["groups"]  # type: ignore[operator]
    assert report["regained"] is False
    assert report["read_secret"] is False
    assert report["home"] == nobody.pw_dir and report["user"] == "nobody"
    assert report["again"] is False  # no longer root: a second call is a no-op


@root_only
def test_drop_with_explicit_group_and_numeric_ids(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    report = _drop_in_child(tmp_path, str(nobody.pw_uid), "nogroup")
    nogroup = grp.getgrnam("nogroup").gr_gid
    assert report["resuid"] == [nobody.pw_uid] * 3
    assert report["resgid"] == [nogroup] * 3
    assert report["groups"] == [nogroup]


@root_only
def test_unknown_user_is_a_clear_error_in_the_child(tmp_path: Path) -> None:
    report = _drop_in_child(tmp_path, "no-such-user-tls13")
    assert "user 'no-such-user-tls13' does not exist" in str(report["error"])


@root_only
def test_unreadable_code_paths(tmp_path: Path) -> None:
    nobody = resolve_identity("nobody")
    private = tmp_path / "private"
    (private / "lib").mkdir(parents=True)
    private.chmod(0o700)
    public = tmp_path / "public"
    public.mkdir(mode=0o755)
    assert unreadable_code_paths(nobody, [private / "lib", public]) == [str(private)]
    assert unreadable_code_paths(resolve_identity("root"), [private / "lib"]) == []
    # Group permission counts for members of the owning group.
    private.chmod(0o750)
    os.chown(private, 0, nobody.gid)
    assert unreadable_code_paths(nobody, [private / "lib"]) == []


def test_unknown_user_and_group_are_clear_errors() -> None:
    with pytest.raises(PrivilegeError, match="does not exist"):
        resolve_identity("no-such-user-tls13")
    with pytest.raises(PrivilegeError, match="group 'no-such-group-tls13' does not exist"):
        resolve_identity("nobody", "no-such-group-tls13")
    with pytest.raises(PrivilegeError, match="empty"):
        resolve_identity("")


def test_resolve_identity_defaults_to_primary_group() -> None:
    nobody = pwd.getpwnam("nobody")
    identity = resolve_identity("nobody")
    assert (identity.uid, identity.gid, identity.user) == (nobody.pw_uid, nobody.pw_gid, "nobody")


def test_no_user_configured_is_a_noop() -> None:
    assert drop_privileges(None) is False
    assert drop_privileges("") is False
    assert os.getresuid()[0] == os.getuid()


def test_root_target_is_not_a_drop() -> None:
    euid = os.geteuid()
    assert drop_privileges("root") is False
    assert os.geteuid() == euid
