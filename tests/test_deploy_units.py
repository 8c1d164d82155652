"""The systemd units in deploy/: systemd accepts them, they say what the docs promise, and the
hardening they ask for (MemoryDenyWriteExecute) is compatible with Python and our crypto."""

from __future__ import annotations

import configparser
import ctypes
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
INSTALLED_BINARY = "/opt/tls13-proxy/bin/tls13-proxy"
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def read_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (units may repeat keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (DEPLOY / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{name}: assignment outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def staged_units(tmp_path: Path) -> list[Path]:
    """The units copied to ``tmp_path`` with ExecStart's binary pointed at a real stub.

    ``systemd-analyze verify`` insists every Exec*= binary exists; the installed path
    (/opt/tls13-proxy/bin/tls13-proxy) does not on a build machine.
    """
    stub = tmp_path / "bin" / "tls13-proxy"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    staged = []
    for name in ("tls13-proxy.service", "tls13-proxy.socket"):
        text = (DEPLOY / name).read_text().replace(INSTALLED_BINARY, str(stub))
        (tmp_path / name).write_text(text)
        staged.append(tmp_path / name)
    return staged


def analyze_verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_analyze
def test_systemd_analyze_verify_accepts_units_without_a_word(tmp_path: Path) -> None:
    result = analyze_verify(staged_units(tmp_path))
    # verify exits 0 even for "Failed to parse ..., ignoring": any output is a finding.
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@needs_analyze
def test_verify_check_does_catch_mistakes(tmp_path: Path) -> None:
    service, socket_unit = staged_units(tmp_path)
    service.write_text(service.read_text().replace("Type=notify", "Type=notifyy"))
    result = analyze_verify([service, socket_unit])
    assert "Failed to parse service type" in result.stderr


@needs_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    service, _ = staged_units(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_service_contract() -> None:
    unit = read_unit("tls13-proxy.service")
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Sockets"] == ["tls13-proxy.socket"]
    assert service["ExecStartPre"] == [
        f"{INSTALLED_BINARY} check --config /etc/tls13-proxy/tls13-proxy.toml"
    ]
    assert service["ExecStart"] == [
        f"{INSTALLED_BINARY} run --config /etc/tls13-proxy/tls13-proxy.toml"
    ]
    # Validate before signalling, so a bad edit never reaches the running daemon.
    assert service["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert "check --config" in service["ExecReload"][0]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["User"] == ["tls13-proxy"] and service["StateDirectory"] == ["tls13-proxy"]
    assert service["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert service["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["ReadOnlyPaths"] == ["/etc/tls13-proxy"]
    for flag in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "RestrictRealtime",
    ):
        assert service[flag] == ["yes"], flag
    assert service["ProtectSystem"] == ["strict"]
    assert service["SystemCallArchitectures"] == ["native"]


def test_file_limit_covers_default_connection_limit() -> None:
    service = read_unit("tls13-proxy.service")["Service"]
    from proxy.settings import LimitSettings

    per_worker = LimitSettings().max_connections
    assert int(service["LimitNOFILE"][0]) >= 2 * per_worker + 1024


def test_socket_contract() -> None:
    unit = read_unit("tls13-proxy.socket")
    assert unit["Socket"]["ListenStream"] == ["443"]
    assert unit["Socket"]["FileDescriptorName"] == ["https"]
    assert unit["Install"]["WantedBy"] == ["sockets.target"]
    # Restarting the service must not close port 443 (zero-downtime upgrades): the socket
    # must not be PartOf= / BindsTo= the service.
    assert "PartOf" not in unit["Unit"] and "BindsTo" not in unit["Unit"]
    service = read_unit("tls13-proxy.service")
    assert "tls13-proxy.socket" in service["Unit"]["Requires"]
    assert "tls13-proxy.socket" in service["Install"]["Also"]


def test_sysusers_and_tmpfiles_entries() -> None:
    sysusers = [
        line.split()
        for line in (DEPLOY / "tls13-proxy.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert sysusers[0][:3] == ["u", "tls13-proxy", "-"]
    tmpfiles = (DEPLOY / "tls13-proxy.tmpfiles").read_text()
    assert "d /etc/tls13-proxy 0750 root tls13-proxy -" in tmpfiles


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="needs systemd-sysusers")
def test_sysusers_file_is_valid(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).write_text("")
    result = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(DEPLOY / "tls13-proxy.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(
        r"^tls13-proxy:x:\d+:\d+:.*:/var/lib/tls13-proxy:/usr/sbin/nologin$", passwd, re.M
    )
    assert "tls13-proxy" in (root / "etc" / "group").read_text()


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="needs systemd-tmpfiles")
def test_tmpfiles_entry_creates_the_config_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\ntls13-proxy:x:990:\n")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    result = subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={root}", str(DEPLOY / "tls13-proxy.tmpfiles")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    created = root / "etc" / "tls13-proxy"
    assert created.is_dir() and (created.stat().st_mode & 0o777) == 0o750


# --- MemoryDenyWriteExecute=yes: does Python + cryptography + trio cope? -----------------

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

MDWE_CHILD = textwrap.dedent(
    """
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        sys.exit(77)
    # Prove the policy is active: a writable+executable mapping must now be refused.
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        sys.exit("MDWE not enforced")
    sys.path.insert(0, sys.argv[1])
    import trio
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    a, b = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    assert a.exchange(b.public_key()) == b.exchange(a.public_key())
    p1, p2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    assert p1.exchange(ec.ECDH(), p2.public_key()) == p2.exchange(ec.ECDH(), p1.public_key())
    try:
        from cryptography.hazmat.primitives.asymmetric import mlkem
        dk = mlkem.MLKEM768PrivateKey.generate()
        shared, ct = dk.public_key().encapsulate()
        assert dk.decapsulate(ct) == shared
    except ImportError:
        pass
    for aead in (AESGCM(bytes(16)), ChaCha20Poly1305(bytes(32))):
        assert aead.decrypt(bytes(12), aead.encrypt(bytes(12), b"x", b"ad"), b"ad") == b"x"
    HKDF(hashes.SHA384(), 48, None, b"").derive(b"secret")
    key = ec.generate_private_key(ec.SECP384R1())
    key.public_key().verify(key.sign(b"m", ec.ECDSA(hashes.SHA384())), b"m", ec.ECDSA(hashes.SHA384()))
    rsa_key = rsa.generate_private_key(65537, 2048)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    rsa_key.public_key().verify(rsa_key.sign(b"m", pss, hashes.SHA256()), b"m", pss, hashes.SHA256())
    ed = ed25519.Ed25519PrivateKey.generate()
    ed.public_key().verify(ed.sign(b"m"), b"m")
    async def echo():
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            async def serve(stream):
                await stream.send_all(await stream.receive_some(10))
            nursery.start_soon(trio.serve_listeners, serve, listeners)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"ping")
            assert await client.receive_some(10) == b"ping"
            nursery.cancel_scope.cancel()
    trio.run(echo)
    import proxy.accesslog, proxy.privileges, proxy.proxyprotocol, proxy.systemd
    print("ok")
    """
)


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_GET_MDWE (66) answers on kernels that know the feature (Linux >= 6.3).
    return bool(libc.prctl(66, 0, 0, 0, 0) >= 0)


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel lacks PR_SET_MDWE (Linux < 6.3)")
def test_python_and_crypto_work_under_memory_deny_write_execute(tmp_path: Path) -> None:
    script = tmp_path / "mdwe_child.py"
    script.write_text(MDWE_CHILD)
    result = subprocess.run(
        [sys.executable, str(script), str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"


def test_units_parse_as_ini() -> None:
    # A cheap structural guard that also runs where systemd is absent.
    for name in ("tls13-proxy.service", "tls13-proxy.socket"):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string((DEPLOY / name).read_text())
        assert "Unit" in parser and "Install" in parser


def test_install_guide_refers_to_files_that_exist() -> None:
    guide = (REPO / "docs" / "install.md").read_text()
    mentioned = set(
        re.findall(
            r"\b((?:deploy|config|docs)/[\w./-]+\.(?:service|socket|sysusers|tmpfiles|toml|md))",
            guide,
        )
    )
    assert {"deploy/tls13-proxy.service", "deploy/tls13-proxy.socket"} <= mentioned
    missing = sorted(path for path in mentioned if not (REPO / path).exists())
    assert not missing, missing


def test_install_guide_matches_the_units() -> None:
    guide = (REPO / "docs" / "install.md").read_text()
    service = read_unit("tls13-proxy.service")["Service"]
    for command in (*service["ExecStartPre"], *service["ExecStart"]):
        binary, _, arguments = command.partition(" ")
        assert binary == INSTALLED_BINARY and f"{binary} {arguments}".split()[1] in ("check", "run")
    assert INSTALLED_BINARY.rsplit("/bin/", 1)[0] in guide  # the venv the guide creates
    assert (
        f'addresses = ["systemd:{read_unit("tls13-proxy.socket")["Socket"]["FileDescriptorName"][0]}"]'
        in guide
    )
    assert f"`WatchdogSec={service['WatchdogSec'][0]}` in the unit" in guide
