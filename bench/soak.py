"""A bounded soak of the daemon: thousands of connections with injected faults, every byte
checked, the daemon's RSS sampled (issue 10; not run in CI).

    python3 bench/soak.py --minutes 3            # default 5 minutes, 24 concurrent clients

It starts ``python3 -m proxy`` with a generated certificate, two in-process backends (an
echo server and one that resets its connections half-way) and a mix of client behaviours:

* ``echo``: a random-size request echoed back and compared byte for byte, closed cleanly;
* ``client_reset``: RST mid-transfer; ``client_truncate``: TCP FIN without close_notify;
* ``handshake_reset``: half a ClientHello, then RST; ``garbage``: random bytes, no TLS;
* ``backend_reset``: the backend resets after a partial answer — the client must see an
  abrupt end, never a clean close_notify (that would be a truncation passed off as whole).

The summary gives RSS at start (after a warm-up), middle and end, connections, bytes
verified and faults injected, and the daemon's own counts from /metrics. Exit status 1 when a
byte differed, a fault was passed on as a clean end, an echo failed, or RSS kept growing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_certs import write_material  # noqa: E402
from bench_procstat import process_tree, rss_bytes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "echo": 80,
    "client_reset": 4,
    "client_truncate": 4,
    "handshake_reset": 4,
    "garbage": 4,
    "backend_reset": 4,
}
MAX_REQUEST = 256 * 1024
RSS_SLACK = 8 << 20  # allowed growth beyond 25% of the warm RSS (allocator noise)
IO_TIMEOUT = 30.0
LOOPBACK = "127.0.0.1"


@dataclass
class Tally:
    """Everything the soak counts; one instance shared by all client tasks."""

    connections: int = 0
    bytes_verified: int = 0
    mismatches: int = 0
    violations: int = 0  # a fault that reached the client as a clean end
    failures: Counter[str] = field(default_factory=Counter)  # echo connections that failed
    faults: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, int]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * 128
    return (block * (size // len(block) + 1))[:size]


# -- backends (trio, in this process) --------------------------------------------------------


async def echo_backend(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass


async def resetting_backend(stream: trio.SocketStream) -> None:
    """Answer part of the first chunk, then reset: the proxy must pass on an abrupt end."""
    try:
        data = await stream.receive_some(65536)
        await stream.send_all(b"partial:" + data[:100])
        await trio.sleep(0.05)
    except trio.BrokenResourceError:
        pass
    finally:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(stream)


# -- the daemon ----------------------------------------------------------------------------


def write_config(directory: Path, port: int, metrics_port: int, echo: int, reset: int) -> Path:
    material = write_material(directory)
    text = f"""
[global]
state_dir = "{directory / "state"}"
log_level = "warning"
access_log = false

[metrics]
listen = "127.0.0.1:{metrics_port}"

[limits]
max_connections = 2000
max_connections_per_client = 0
handshake_timeout = "5s"
idle_timeout = "30s"
drain_timeout = "2s"

[tls]
alpn = ["http/1.1"]

[certificates.main]
chain = "{material.chain}"
key = "{material.key}"

[listeners.main]
addresses = ["127.0.0.1:{port}"]

[routes.reset]
server_names = ["reset.test"]
pool = "reset"

[routes.echo]
default = true
pool = "echo"

[backends.echo]
servers = ["127.0.0.1:{echo}"]
health = {{ enabled = false }}

[backends.reset]
servers = ["127.0.0.1:{reset}"]
retries = 0
health = {{ enabled = false }}
"""
    path = directory / "soak.toml"
    path.write_text(text)
    return path


def start_daemon(config: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    for name in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC", "SSLKEYLOGFILE"):
        env.pop(name, None)
    log = open(config.parent / "proxy.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the proxy exited with {process.returncode}; see {log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the proxy did not open its port")


def scrape(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def daemon_counts(exposition: str) -> dict[str, float]:
    """connections_closed by end and limit hits by limit, from /metrics."""
    counts: dict[str, float] = {}
    for line in exposition.splitlines():
        for prefix, label in (
            ("tls13proxy_connections_closed_total{", 'end="'),
            ("tls13proxy_limit_hits_total{", 'limit="'),
        ):
            if line.startswith(prefix) and label in line:
                name = line.split(label, 1)[1].split('"', 1)[0]
                key = f"{prefix.split('_total')[0][11:]}[{name}]"
                counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


# -- clients -------------------------------------------------------------------------------


def client_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # reset.test is served the localhost certificate
    return context


def client_hello(context: ssl.SSLContext) -> bytes:
    """A real first flight, made in memory, for the raw fault scenarios."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def rst(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Soak:
    def __init__(self, port: int, context: ssl.SSLContext, tally: Tally) -> None:
        self.port, self.context, self.tally = port, context, tally
        self.hello = client_hello(context)
        self.rng = random.Random(1)
        self.names = list(SCENARIOS)
        self.weights = [SCENARIOS[n] for n in self.names]

    async def tls(
        self, name: str = "localhost"
    ) -> tuple[trio.SSLStream[trio.SocketStream], trio.SocketStream]:
        tcp = await trio.open_tcp_stream("127.0.0.1", self.port)
        stream = trio.SSLStream(tcp, self.context, server_hostname=name)
        await stream.do_handshake()
        return stream, tcp

    async def worker(self, deadline: float) -> None:
        while trio.current_time() < deadline:
            scenario = self.rng.choices(self.names, self.weights)[0]
            self.tally.connections += 1
            if scenario != "echo":
                self.tally.faults[scenario] += 1
            try:
                with trio.fail_after(IO_TIMEOUT):
                    await getattr(self, scenario)()
            except (trio.TooSlowError, OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
                if scenario == "echo":
                    self.tally.failures[type(exc).__name__] += 1

    async def echo(self) -> None:
        size = self.rng.randrange(0, MAX_REQUEST)
        data = payload(size, self.tally.connections)
        stream, _ = await self.tls()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, data)
            received = bytearray()
            while len(received) < size:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
        if received == data:
            self.tally.bytes_verified += 2 * size
        else:
            self.tally.mismatches += 1
        await stream.aclose()

    async def client_reset(self) -> None:
        stream, tcp = await self.tls()
        await stream.send_all(payload(self.rng.randrange(1, 65536), 7))
        rst(tcp)
        await trio.aclose_forcefully(tcp)

    async def client_truncate(self) -> None:
        stream, tcp = await self.tls()
        await stream.send_all(payload(self.rng.randrange(1, 65536), 8))
        await tcp.send_eof()  # TCP FIN, no close_notify
        try:
            while await stream.receive_some(65536):
                pass
        finally:
            await trio.aclose_forcefully(tcp)

    async def handshake_reset(self) -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", self.port)
        await tcp.send_all(self.hello[: len(self.hello) // 2])
        rst(tcp)
        await trio.aclose_forcefully(tcp)

    async def garbage(self) -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with tcp:
            await tcp.send_all(self.rng.randbytes(self.rng.randrange(1, 4096)))
            while await tcp.receive_some(65536):
                pass

    async def backend_reset(self) -> None:
        stream, tcp = await self.tls("reset.test")
        await stream.send_all(b"request that will be cut")
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, ssl.SSLError):
            return  # an abrupt end, as it must be
        finally:
            await trio.aclose_forcefully(tcp)
        self.tally.violations += 1  # close_notify after a backend reset


async def sample_rss(pid: int, tally: Tally, deadline: float) -> None:
    started = trio.current_time()
    while trio.current_time() < deadline:
        tally.rss.append((trio.current_time() - started, rss_bytes(process_tree(pid))))
        await trio.sleep(2)


async def run(args: argparse.Namespace, directory: Path) -> tuple[Tally, str, int]:
    tally = Tally()
    async with trio.open_nursery() as backends:
        echo = (await backends.start(partial(trio.serve_tcp, echo_backend, 0, host=LOOPBACK)))[0]
        reset = (
            await backends.start(partial(trio.serve_tcp, resetting_backend, 0, host=LOOPBACK))
        )[0]
        port, metrics_port = free_port(), free_port()
        config = write_config(
            directory, port, metrics_port, echo.socket.getsockname()[1],
            reset.socket.getsockname()[1],
        )  # fmt: skip
        daemon = await trio.to_thread.run_sync(start_daemon, config, port)
        try:
            soak = Soak(port, client_context(directory / "ca.pem"), tally)
            deadline = trio.current_time() + args.minutes * 60
            async with trio.open_nursery() as clients:
                clients.start_soon(sample_rss, daemon.pid, tally, deadline)
                for _ in range(args.concurrency):
                    clients.start_soon(soak.worker, deadline)
            exposition = await trio.to_thread.run_sync(scrape, metrics_port)
        finally:
            daemon.send_signal(signal.SIGTERM)
            status = await trio.to_thread.run_sync(daemon.wait, 30)
        backends.cancel_scope.cancel()
    return tally, exposition, status


def rss_at(samples: list[tuple[float, int]], fraction: float) -> int:
    return samples[min(len(samples) - 1, int(len(samples) * fraction))][1]


def report(tally: Tally, exposition: str, status: int, minutes: float) -> bool:
    """Print the summary; True when the soak passed."""
    start, mid, end = (rss_at(tally.rss, f) for f in (0.1, 0.5, 0.999))
    peak = max(rss for _, rss in tally.rss)
    flat = end <= start * 1.25 + RSS_SLACK
    mib = 1 << 20
    print(f"soak: {minutes:g} min, {tally.connections} connections, exit status {status}")
    print(
        f"RSS (MiB): start {start / mib:.1f}  mid {mid / mib:.1f}  end {end / mib:.1f}  "
        f"peak {peak / mib:.1f}  -> {'flat' if flat else 'GROWING'}"
    )
    print(f"bytes verified: {tally.bytes_verified} ({tally.bytes_verified / mib:.1f} MiB)")
    print(f"mismatches: {tally.mismatches}  faults passed on as clean ends: {tally.violations}")
    print(f"faults injected: {sum(tally.faults.values())} {dict(sorted(tally.faults.items()))}")
    print(f"echo connections that failed: {dict(tally.failures)}")
    for key, value in sorted(daemon_counts(exposition).items()):
        print(f"  daemon {key}: {value:g}")
    return flat and not tally.mismatches and not tally.violations and not tally.failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="soak duration (default 5)")
    parser.add_argument("--concurrency", type=int, default=24, help="client tasks (default 24)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tls13-soak-") as tmp:
        tally, exposition, status = trio.run(run, args, Path(tmp))
    return 0 if report(tally, exposition, status, args.minutes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
