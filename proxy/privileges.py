"""Dropping root after the listening sockets are bound and the private keys are read.

The daemon may be started as root (outside systemd, or with ``User=`` unset) so it
can bind port 443 and read ``/etc/tls13-proxy/*.key`` (0640 root:tls13-proxy).  Once
that is done nothing needs root any more, so we switch to an unprivileged user for
good: supplementary groups first, then the group, then the user (the order matters:
after setuid we could no longer change groups), and finally we prove we cannot
get root back.
"""

from __future__ import annotations

import grp
import importlib
import logging
import os
import pwd
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


# Modules that libraries import lazily, on first use, rather than at import time.  After the
# switch the new user may be unable to read the Python installation (a pyenv under /root,
# a checkout in a home directory) and a file replaced by an upgrade would not match the
# running code, so they are loaded while we still can.
LAZY_IMPORTS = (
    # cryptography's generate()/from_public_bytes() import the OpenSSL backend on first call.
    "cryptography.hazmat.backends.openssl.backend",
    # Host names are IDNA-encoded by getaddrinfo wrappers (trio, socket) on first resolution;
    # decoding an A-label needs punycode as well.
    "encodings.idna",
    "encodings.punycode",
)


class PrivilegeError(Exception):
    """The configured user/group cannot be used, or the switch did not stick."""


@dataclass(frozen=True)
class Identity:
    """The account to run as, resolved from names or numeric ids."""

    user: str
    uid: int
    gid: int
    home: str


def _lookup_user(user: str) -> pwd.struct_passwd:
    try:
        if user.isdigit():
            return pwd.getpwuid(int(user))
        return pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"user {user!r} does not exist (create it, e.g. with "
            f"'useradd --system --no-create-home tls13-proxy', or fix the 'user' setting)"
        ) from None


def _lookup_group(group: str) -> int:
    try:
        if group.isdigit():
            return grp.getgrgid(int(group)).gr_gid
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise PrivilegeError(f"group {group!r} does not exist (fix the 'group' setting)") from None


def resolve_identity(user: str, group: str | None = None) -> Identity:
    """Look the account up without changing anything (used by ``tls13-proxy check`` too).

    ``group`` defaults to the user's primary group.  Raises :class:`PrivilegeError`
    with a message that says what to fix.
    """
    if not user:
        raise PrivilegeError("the 'user' setting is empty")
    entry = _lookup_user(user)
    gid = entry.pw_gid if group is None else _lookup_group(group)
    return Identity(user=entry.pw_name, uid=entry.pw_uid, gid=gid, home=entry.pw_dir)


def drop_privileges(user: str | None, group: str | None = None) -> bool:
    """Become ``user`` (and ``group``) for the rest of the process's life.

    Returns True when identities were switched, False when there was nothing to do:
    no user configured, or we are not root (e.g. systemd already started us as
    ``User=tls13-proxy`` with CAP_NET_BIND_SERVICE, or a developer's shell).
    Raises :class:`PrivilegeError` when the account is unknown or the switch fails;
    the caller must treat that as fatal rather than keep serving as root.
    """
    if not user:
        return False
    if os.geteuid() != 0:
        log.debug("not running as root; keeping uid %d (user %r not applied)", os.geteuid(), user)
        return False
    identity = resolve_identity(user, group)
    if identity.uid == 0:
        log.warning("configured user %r is root; not dropping privileges", user)
        return False
    preload_lazy_imports()
    for path in unreadable_code_paths(identity, None, explicit_group=group is not None):
        log.warning(
            "user %s cannot read %s; modules imported after the privilege drop will fail "
            "(install tls13-proxy where that user can read it, e.g. /opt/tls13-proxy)",
            identity.user,
            path,
        )
    _switch_to(identity, explicit_group=group is not None)
    _verify_cannot_regain_root(identity)
    _adjust_environment(identity)
    log.info(
        "dropped privileges to user %s (uid %d, gid %d)", identity.user, identity.uid, identity.gid
    )
    return True


def preload_lazy_imports() -> None:
    """Import :data:`LAZY_IMPORTS` now, while the installation is surely readable."""
    for name in LAZY_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional backend missing is not our problem here
            log.debug("could not preload %s: %s", name, exc)


def _groups_of(identity: Identity, explicit_group: bool) -> set[int]:
    if explicit_group:
        return {identity.gid}
    return set(os.getgrouplist(identity.user, identity.gid))


def _may_access(path: Path, identity: Identity, groups: set[int], need: int) -> bool:
    """Whether ``identity`` has the permission bits ``need`` (as for "other") on ``path``."""
    try:
        info = path.stat()
    except OSError:
        return True  # vanished or unreachable even for us: nothing useful to report
    if info.st_uid == identity.uid:
        bits = (info.st_mode >> 6) & 0o7
    elif info.st_gid in groups:
        bits = (info.st_mode >> 3) & 0o7
    else:
        bits = info.st_mode & 0o7
    return bits & need == need


def unreadable_code_paths(
    identity: Identity, roots: Iterable[Path] | None = None, *, explicit_group: bool = False
) -> list[str]:
    """Directories holding our code or the standard library that ``identity`` cannot read.

    Only mode bits are considered (no ACLs); that is enough to catch the common cases of
    an interpreter or virtualenv under /root or a private home directory.
    """
    groups = _groups_of(identity, explicit_group)
    if roots is None:
        roots = (Path(sys.prefix), Path(os.__file__).parent, Path(__file__).resolve().parent.parent)
    problems: list[str] = []
    for root in sorted(set(roots)):
        for directory in (*reversed(root.parents), root):
            need = stat.S_IXOTH | (stat.S_IROTH if directory == root else 0)
            if stat.S_ISDIR(_mode(directory)) and not _may_access(
                directory, identity, groups, need
            ):
                problems.append(str(directory))
                break
    return sorted(set(problems))


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode
    except OSError:
        return 0


def _switch_to(identity: Identity, *, explicit_group: bool) -> None:
    try:
        if explicit_group:
            # An explicit group replaces the account's memberships entirely.
            os.setgroups([identity.gid])
        else:
            os.initgroups(identity.user, identity.gid)
        # Real, effective and saved ids all change, so no saved-set id can restore root.
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise PrivilegeError(f"could not switch to user {identity.user!r}: {exc}") from exc


def _verify_cannot_regain_root(identity: Identity) -> None:
    """Fail loudly if any id is still privileged or setuid(0) still works."""
    if os.getresuid() != (identity.uid,) * 3 or os.getresgid() != (identity.gid,) * 3:
        raise PrivilegeError(
            f"privilege drop incomplete: uids {os.getresuid()}, gids {os.getresgid()}"
        )
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("privilege drop failed: setuid(0) succeeded afterwards")
    if 0 in os.getgroups() and identity.gid != 0:
        raise PrivilegeError("privilege drop incomplete: still a member of group 0")


def _adjust_environment(identity: Identity) -> None:
    """Keep HOME/USER/LOGNAME consistent with the new identity (libraries consult them)."""
    os.environ["HOME"] = identity.home
    os.environ["USER"] = identity.user
    os.environ["LOGNAME"] = identity.user


def current_user() -> str:
    """The effective user's name (or uid if it has no passwd entry), for logs and tests."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
