"""Benchmark tls13-proxy against reference TLS 1.3 terminators, in one invocation.

    python3 bench/run.py [--rounds N] [--duration S] [--targets ours,sslproxy,hitch] [--quick]
    python3 bench/run.py --only scaling     # the 1 → 2 worker section alone (~1 min)
    python3 bench/run.py --only memory --targets ours --hold 1000,10000   # memory alone

Every target sits in front of the same plain HTTP/1.1 backend (bench/backend.py) with the
same ECDSA P-256 certificate, TLS 1.3 only.  For each target the harness measures, over
several rounds, full and resumed handshakes/s (openssl s_time; each connection is a
handshake plus one GET, and s_time's per-connection marks prove full vs resumed),
keep-alive requests/s with p50/p99 latency (wrk), bulk download/upload MB/s (curl),
RSS growth per idle established connection (held from separate processes), and 1 → 2
worker scaling (under bench/hsload.py, a generator cheap enough to leave the target the
CPU a second worker needs).  Because the load generators saturate first on a 2-core machine, it also
charges each target its own CPU time (utime+stime of its process tree) per handshake,
request and MB; those figures are the fairer comparison.  Medians, spread across rounds
((max-min)/median) and ratios against each reference are printed as Markdown.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bench_certs
import bench_load as loadgen
import bench_procstat as procstat
from backend import SMALL_BODY
from bench_report import render_markdown
from bench_targets import (
    REPO_DIR,
    TARGETS,
    Material,
    Running,
    Target,
    nofile_hard_limit,
    start_backend,
)

DEFAULT_TARGETS = ("ours", "sslproxy", "hitch")


@dataclass
class Plan:
    """How much of everything to do (``--quick`` shrinks it)."""

    rounds: int = 3
    duration: int = 3
    s_time_processes: int = 4  # several in flight: one s_time waits on every round trip
    wrk_connections: int = 32
    # Large enough that a target spends hundreds of clock ticks (10 ms each) per transfer.
    bulk_bytes: int = 256 * 1024 * 1024
    hold_levels: tuple[int, ...] = (1000, 10000)
    scaling_rounds: int = 4
    scaling_duration: float = 2.5
    # Enough handshakes in flight to keep two workers busy through every round trip.
    scaling_concurrency: int = 32
    target_cpus: str | None = "0"
    load_cpus: str | None = "1"
    only_scaling: bool = False
    only_memory: bool = False
    # Priority of target, generator and backend in the scaling section (None: unchanged).
    scaling_nice: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RoundResult:
    """One round of one metric: the rate, the target's CPU per unit, and verification."""

    value: float
    cpu_per_unit: float  # target CPU seconds per handshake / request / MB
    units: float
    extra: dict[str, float | int | str] = field(default_factory=dict)


@dataclass
class TargetResult:
    name: str
    description: str
    error: str | None = None
    tls: dict[str, str] = field(default_factory=dict)
    resumption_probe: str = ""
    metrics: dict[str, list[RoundResult]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    memory: list[dict[str, float | int | str]] = field(default_factory=list)
    scaling: dict[str, list[RoundResult]] = field(default_factory=dict)
    processes: int = 0

    def fail(self, metric: str, why: str) -> None:
        self.failures.setdefault(metric, []).append(why)


def measure(
    running: Running,
    action: Callable[[], tuple[float, float, dict[str, float | int | str]]],
    load_cpu: int | None,
) -> RoundResult:
    """Run ``action`` (returns rate, units of work, extras) and charge the target's CPU.

    With ``load_cpu`` set, also record how busy the load generators' core was: near 100%
    there means the clients, not the target, limited the rate.
    """
    load_before = procstat.core_times(load_cpu) if load_cpu is not None else None
    before = procstat.sample(running.proc.pid)
    value, units, extra = action()
    after = procstat.sample(running.proc.pid)
    if load_before is not None and load_cpu is not None:
        extra["load_core_busy"] = procstat.core_busy(load_before, procstat.core_times(load_cpu))
    cpu = after.cpu - before.cpu
    return RoundResult(value, cpu / units if units else float("nan"), units, extra)


def s_time_extra(got: loadgen.STimeResult) -> dict[str, float | int | str]:
    return {
        "full": got.full,
        "resumed": got.resumed,
        "bytes_per_connection": got.bytes_read / got.connections if got.connections else 0,
        "failures": "; ".join(got.failures),
    }


def check_responses(result: TargetResult, metric: str, outcome: RoundResult) -> None:
    """Each s_time connection must have read a whole response (head + 64-byte body)."""
    if float(outcome.extra["bytes_per_connection"]) < len(SMALL_BODY):
        result.fail(
            metric,
            f"only {outcome.extra['bytes_per_connection']:.0f} response bytes per connection: "
            "requests were not answered",
        )


class TargetBench:
    """Runs every measurement against one target."""

    def __init__(
        self,
        target: Target,
        plan: Plan,
        material: Material,
        workdir: Path,
        backend_port: int,
        upload_file: Path,
    ) -> None:
        self.target = target
        self.plan = plan
        self.material = material
        self.workdir = workdir / target.name
        self.backend_port = backend_port
        self.upload_file = upload_file
        self.result = TargetResult(target.name, target.description)
        # A single pinned load core can be watched; a CPU list or no pinning cannot.
        cpus = plan.load_cpus
        self.load_cpu = int(cpus) if cpus is not None and cpus.isdigit() else None

    def start(
        self, workers: int, cpus: str | None, main: bool = False, backend_port: int | None = None
    ) -> Running | None:
        """Start one instance (in front of ``backend_port``, by default the shared backend);
        on failure record why (for the ``main`` one, the whole target)."""
        reason = self.target.available()
        if reason:
            self.result.error = f"not run: {reason}"
            return None
        log(f"[{self.target.name}] starting ({workers} worker(s), cpus {cpus or 'any'})")
        try:
            return self.target.start(
                self.material, self.workdir, backend_port or self.backend_port, workers, cpus
            )
        except RuntimeError as error:
            if main:
                self.result.error = f"failed to start: {error}"
            else:
                self.result.fail(f"scaling_w{workers}", f"failed to start: {error}")
            return None

    def alive(self, running: Running) -> bool:
        if running.proc.poll() is None:
            return True
        if not self.result.error:
            self.result.error = (
                f"exited with status {running.proc.returncode} during the run: "
                f"{running.log_tail(1)}\n{running.log_tail()}"
            )
        return False

    def probe(self, running: Running) -> None:
        self.result.tls = loadgen.probe_tls(running.port)
        self.result.processes = procstat.sample(running.proc.pid).processes
        try:
            first, second = loadgen.probe_resumption(running.port)
            self.result.resumption_probe = (
                f"python ssl: 1st resumed={first}, 2nd (offering ticket) resumed={second}"
            )
        except OSError as error:
            self.result.resumption_probe = f"python ssl probe failed: {error}"
        # Warm-up: first connections pay for imports, caches and lazy initialisation.
        loadgen.run_s_time(running.port, False, 1, 1, self.plan.load_cpus)

    def guarded(self, what: str, step: Callable[[Running], None], running: Running) -> None:
        """Run a step whose client-side failure should be recorded, not end the whole run."""
        try:
            step(running)
        except (OSError, subprocess.SubprocessError, ValueError) as error:
            self.result.fail(what, f"load generator error: {type(error).__name__}: {error}")

    def steps(self) -> list[tuple[str, Callable[[Running], RoundResult | None]]]:
        return [
            ("full_hs", self.full_handshakes),
            ("resumed_hs", self.resumed_handshakes),
            ("keepalive", self.keepalive),
            ("download", self.download),
            ("upload", self.upload),
        ]

    def measure_step(
        self, running: Running, metric: str, step: Callable[[Running], RoundResult | None]
    ) -> None:
        if not self.alive(running):
            return
        try:
            outcome = step(running)
        except (OSError, subprocess.SubprocessError, ValueError) as error:
            # A client that crashed or hung must not lose the other targets' figures.
            self.result.fail(metric, f"load generator error: {type(error).__name__}: {error}")
            return
        if outcome is not None:
            self.result.metrics.setdefault(metric, []).append(outcome)

    def full_handshakes(self, running: Running) -> RoundResult | None:
        return self.new_connections(
            running, self.plan.load_cpus, self.plan.s_time_processes, "full_hs"
        )

    def new_connections(
        self, running: Running, cpus: str | None, processes: int, metric: str
    ) -> RoundResult | None:
        def action() -> tuple[float, float, dict[str, float | int | str]]:
            got = loadgen.run_s_time(running.port, False, self.plan.duration, processes, cpus)
            return got.per_second, got.connections, s_time_extra(got)

        outcome = measure(running, action, self.load_cpu if cpus is not None else None)
        if not outcome.units:
            self.result.fail(metric, f"no connection completed: {outcome.extra['failures']}")
            return None
        if outcome.extra["resumed"]:  # -new must never resume: the figure would be wrong
            self.result.fail(metric, f"{outcome.extra['resumed']} of -new connections resumed")
        check_responses(self.result, metric, outcome)
        return outcome

    def resumed_handshakes(self, running: Running) -> RoundResult | None:
        def action() -> tuple[float, float, dict[str, float | int | str]]:
            got = loadgen.run_s_time(
                running.port,
                True,
                self.plan.duration,
                self.plan.s_time_processes,
                self.plan.load_cpus,
            )
            return (
                got.resumed / got.seconds if got.seconds else 0.0,
                got.connections,
                s_time_extra(got),
            )

        outcome = measure(running, action, self.load_cpu)
        if not outcome.units:
            self.result.fail("resumed_hs", f"no connection completed: {outcome.extra['failures']}")
            return None
        if not outcome.extra["resumed"]:
            self.result.fail("resumed_hs", f"no resumption: 0 of {outcome.units:.0f} reused")
            return None
        check_responses(self.result, "resumed_hs", outcome)
        return outcome

    def keepalive(self, running: Running) -> RoundResult | None:
        def action() -> tuple[float, float, dict[str, float | int | str]]:
            got = loadgen.run_wrk(
                running.port, self.plan.duration, self.plan.wrk_connections, self.plan.load_cpus
            )
            return (
                got.requests_per_second,
                got.requests,
                {
                    "p50_ms": got.p50_ms,
                    "p99_ms": got.p99_ms,
                    "errors": got.errors,
                    "tail": got.raw_tail,
                },
            )

        outcome = measure(running, action, self.load_cpu)
        if not outcome.units:
            self.result.fail("keepalive", f"wrk completed no request: {outcome.extra['tail']}")
            return None
        if outcome.extra["errors"]:
            self.result.fail("keepalive", f"wrk reported {outcome.extra['errors']} errors")
        return outcome

    def bulk(
        self, running: Running, metric: str, transfer: Callable[[], loadgen.BulkResult]
    ) -> RoundResult | None:
        def action() -> tuple[float, float, dict[str, float | int | str]]:
            got = transfer()
            return (
                got.mb_per_second,
                got.transferred / 1e6 if got.ok else 0.0,
                {"detail": got.detail},
            )

        outcome = measure(running, action, self.load_cpu)
        if not outcome.units:
            self.result.fail(metric, f"transfer failed: {outcome.extra['detail']}")
            return None
        return outcome

    def download(self, running: Running) -> RoundResult | None:
        return self.bulk(
            running,
            "download",
            lambda: loadgen.curl_download(running.port, self.plan.bulk_bytes, self.plan.load_cpus),
        )

    def upload(self, running: Running) -> RoundResult | None:
        return self.bulk(
            running,
            "upload",
            lambda: loadgen.curl_upload(running.port, self.upload_file, self.plan.load_cpus),
        )

    def hold_connections(self, running: Running) -> None:
        """RSS growth of the target's processes per idle established TLS connection."""
        if not self.alive(running) or not self.plan.hold_levels:
            return
        time.sleep(0.5)
        base = procstat.sample(running.proc.pid).rss
        holder = loadgen.HeldConnections(running.port, self.plan.load_cpus)
        try:
            for level in self.plan.hold_levels:
                wanted = level - holder.established - holder.failed - holder.unfinished
                log(f"[{self.target.name}] holding {level} connections")
                holder.add(wanted, timeout=max(60.0, wanted / 40))
                time.sleep(1.0)  # let the target finish settling the last connections
                rss = procstat.sample(running.proc.pid).rss
                self.result.memory.append(
                    {
                        "level": level,
                        "established": holder.established,
                        "failed": holder.failed,
                        "unfinished": holder.unfinished,
                        "rss_base": base,
                        "rss": rss,
                        "per_connection": (rss - base) / holder.established
                        if holder.established
                        else float("nan"),
                        "errors": "; ".join(f"{n}× {e}" for e, n in holder.errors.items()),
                        "alive": str(running.proc.poll() is None),
                    }
                )
                if not self.alive(running):
                    return
        finally:
            holder.close()

    def scaling_round(self, running: Running, workers: int, backend_pid: int) -> None:
        """Full handshakes/s of one unpinned instance under bench/hsload.py, with every
        process's share of the 2 cores, so the report can say who limited the rate."""
        metric = f"scaling_w{workers}"
        if running.proc.poll() is not None:
            self.result.fail(metric, f"exited: {running.log_tail(1)}")
            return
        samples: list[tuple[float, float, float, tuple[float, float]]] = []

        def sample() -> None:
            samples.append(
                (
                    time.monotonic(),
                    procstat.sample(running.proc.pid).cpu,
                    procstat.cpu_seconds([backend_pid]),
                    procstat.core_times(None),
                )
            )

        got = loadgen.run_hsload(
            running.port,
            self.plan.scaling_duration,
            self.plan.scaling_concurrency,
            sample,
            self.plan.scaling_nice,
        )
        if not got.handshakes:
            self.result.fail(metric, f"no handshake completed: {got.failures}")
            return
        (start, target0, backend0, machine0), (end, target1, backend1, machine1) = samples
        wall = end - start
        target_cpu = target1 - target0
        failures = "; ".join(f"{n}× {why}" for why, n in got.failures.items())
        if failures:
            self.result.fail(metric, f"hsload failures: {failures}")
        outcome = RoundResult(
            got.per_second,
            target_cpu / got.handshakes,
            got.handshakes,
            {
                "responses": got.responses,
                "failures": failures,
                "generator_cpu_per_hs": got.cpu_seconds / got.handshakes,
                "generator_system_per_hs": got.system_seconds / got.handshakes,
                "backend_cpu_per_hs": (backend1 - backend0) / got.handshakes,
                # CPUs' worth of work over the same window, by whom.
                "target_cores": target_cpu / wall,
                "generator_cores": got.cpu_seconds / wall,
                "backend_cores": (backend1 - backend0) / wall,
                "machine_cores": procstat.busy_cores(machine0, machine1),
                # Proof that the instance really ran the workers it was asked for.
                "processes": procstat.sample(running.proc.pid).processes,
            },
        )
        self.result.scaling.setdefault(f"w{workers}", []).append(outcome)


def run_benches(benches: list[TargetBench], plan: Plan, workdir: Path) -> None:
    """Interleave the targets inside every round so that background noise on the machine
    (other work on the shared cores) lands on all of them alike.  Idle targets cost nothing,
    so all run at once, each on its own port."""
    if plan.only_scaling:
        run_scaling(benches, plan, workdir)
        return
    running: dict[str, Running] = {}
    try:
        for bench in benches:
            instance = bench.start(workers=1, cpus=plan.target_cpus, main=True)
            if instance is not None:
                running[bench.target.name] = instance
                bench.guarded("probe", bench.probe, instance)
        active = [bench for bench in benches if bench.target.name in running]
        rounds = 0 if plan.only_memory else plan.rounds  # memory alone: no load rounds
        for number in range(1, rounds + 1):
            log(f"round {number}/{plan.rounds}")
            for metric, _ in active[0].steps() if active else []:
                for bench in active:
                    step = dict(bench.steps())[metric]
                    bench.measure_step(running[bench.target.name], metric, step)
        for bench in active:
            bench.guarded("memory", bench.hold_connections, running[bench.target.name])
            stop(running.pop(bench.target.name))
    finally:
        for instance in running.values():
            stop(instance)
    if not plan.only_memory:
        run_scaling([bench for bench in benches if not bench.result.error], plan, workdir)


def run_scaling(benches: list[TargetBench], plan: Plan, workdir: Path) -> None:
    """1 and 2 worker instances of every target side by side, measured alternately.

    Nothing is pinned: target, generator and backend share both cores as the scheduler
    sees fit, and the report shows each one's share.  The instances proxy to
    bench/light_backend.py (one fixed response per connection on a bare epoll loop),
    which leaves more of the machine to the target than the full-featured backend."""
    backend, backend_port = start_backend(workdir, None, "light_backend.py")
    instances: list[tuple[TargetBench, int, Running]] = []
    try:
        if plan.scaling_nice is not None:
            procstat.set_nice([backend.pid], plan.scaling_nice)
        for bench in benches:
            for workers in (1, 2):
                instance = bench.start(workers=workers, cpus=None, backend_port=backend_port)
                if instance is not None:
                    if plan.scaling_nice is not None:
                        procstat.set_nice(
                            procstat.process_tree(instance.proc.pid), plan.scaling_nice
                        )
                    try:  # warm-up: imports, caches, every worker's first handshakes
                        loadgen.run_hsload(instance.port, 0.5, 4 * workers)
                    except ValueError as error:
                        bench.result.fail(f"scaling_w{workers}", f"warm-up: {error}")
                    instances.append((bench, workers, instance))
        for number in range(1, plan.scaling_rounds + 1):
            log(f"scaling round {number}/{plan.scaling_rounds}")
            # Every other round in reverse order (ABBA): a drift in the machine's other
            # load then weighs on 1 and 2 workers alike.
            order = instances if number % 2 else instances[::-1]
            for bench, workers, instance in order:
                step = functools.partial(
                    bench.scaling_round, workers=workers, backend_pid=backend.pid
                )
                bench.guarded(f"scaling_w{workers}", step, instance)
    finally:
        for _bench, _workers, instance in instances:
            stop(instance)
        backend.terminate()
        backend.wait(10)


def stop(instance: Running) -> None:
    log(f"[{instance.name}] stopping ({instance.workers} worker(s))")
    instance.stop()


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def build_plan(args: argparse.Namespace) -> Plan:
    plan = Plan()
    if args.quick:
        plan = Plan(
            rounds=2,
            duration=1,
            bulk_bytes=48 * 1024 * 1024,
            hold_levels=(100, 1000),
            scaling_rounds=2,
            scaling_duration=2.0,
        )
    if args.rounds is not None:
        plan.rounds = args.rounds
    if args.duration is not None:
        plan.duration = args.duration
    plan.only_scaling = args.only == "scaling"
    plan.only_memory = args.only == "memory"
    if args.scaling_rounds is not None:
        plan.scaling_rounds = args.scaling_rounds
    if args.scaling_concurrency is not None:
        plan.scaling_concurrency = args.scaling_concurrency
    if args.scaling_nice is not None:
        plan.scaling_nice = args.scaling_nice
        plan.notes.append(
            f"scaling section at nice {args.scaling_nice} (target, generator and backend): "
            "other work on the machine yields to it"
        )
    if args.hold is not None:
        plan.hold_levels = tuple(int(n) for n in args.hold.split(",") if n)
    if (os.cpu_count() or 1) < 2 or args.no_pin:
        plan.target_cpus = plan.load_cpus = None
        plan.notes.append("no CPU pinning (fewer than 2 CPUs or --no-pin)")
    # Each proxied connection holds two descriptors (client + backend) in the target.
    fd_cap = (nofile_hard_limit() - 256) // 2
    if any(level > fd_cap for level in plan.hold_levels):
        plan.hold_levels = tuple(min(level, fd_cap) for level in plan.hold_levels)
        plan.notes.append(
            f"held connections capped at {fd_cap}: RLIMIT_NOFILE hard limit is "
            f"{nofile_hard_limit()} here and each proxied connection needs 2 descriptors"
        )
    return plan


def machine_notes(plan: Plan, load_at_start: tuple[float, float, float]) -> dict[str, str]:
    def version(command: list[str]) -> str:
        if shutil.which(command[0]) is None:
            return "not installed"
        done = subprocess.run(command, capture_output=True, timeout=10, check=False)
        text = (done.stdout or done.stderr).decode(errors="replace").strip()
        return text.splitlines()[0] if text else "?"

    cpu = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            cwd=Path(__file__).parent,
            check=False,
        )
        .stdout.decode()
        .strip()
    )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "?",
        "cpu": f"{cpu}, {os.cpu_count()} CPUs",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": version(["openssl", "version"]),
        "hitch": version(["/usr/sbin/hitch", "--version"]),
        "wrk": version(["wrk", "-v"]),
        "curl": version(["curl", "--version"]),
        "load average (1/5/15 min), start → end": (
            f"{' '.join(f'{x:.2f}' for x in load_at_start)} → "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (anything above ~1 at the start "
            "is other work sharing these cores: expect noise)"
        ),
        "pinning": (
            f"target on CPU {plan.target_cpus}, load generators and backend on CPU {plan.load_cpus}"
            " (the scaling section: none)"
            if plan.target_cpus and not plan.only_scaling
            else "none"
        ),
    }


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, cwd=REPO_DIR, check=True, timeout=60)
    return done.stdout.decode().strip()


def select_ours_code(revision: str | None, workdir: Path) -> str:
    """Point the ``ours`` target at the code to measure; describe it for the report."""
    if revision is None:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "proxy", "tls13").splitlines()
        edits = f" plus {len(dirty)} uncommitted change(s) in proxy/ tls13/" if dirty else ""
        return f"working tree at {head}{edits}"
    commit = git("rev-parse", "--short", f"{revision}^{{commit}}")
    source = workdir / "ours-src"
    source.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit], capture_output=True, cwd=REPO_DIR, check=True, timeout=60
    )
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    TARGETS["ours"].source_dir = source
    return f"commit {commit} (git archive, working tree not used)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds per metric (default 3; quick 2)")
    parser.add_argument("--duration", type=int, help="seconds per load run (default 3; quick 1)")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, first = the subject of the ratios (known: {', '.join(TARGETS)})",
    )
    parser.add_argument("--quick", action="store_true", help="short run (< 2 minutes)")
    parser.add_argument(
        "--only",
        choices=["scaling", "memory"],
        help="run one section alone: scaling = 1 vs 2 workers under bench/hsload.py (~1 min); "
        "memory = RSS per idle held connection (--hold levels)",
    )
    parser.add_argument("--scaling-rounds", type=int, help="rounds of the scaling section")
    parser.add_argument(
        "--scaling-concurrency", type=int, help="hsload connections in flight (default 32)"
    )
    parser.add_argument(
        "--scaling-nice",
        type=int,
        metavar="N",
        help="run target, generator and backend of the scaling section at nice N (e.g. -10, "
        "needs root) so that other work on a shared machine yields to them",
    )
    parser.add_argument("--hold", help="held-connection levels, e.g. 1000,10000")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument(
        "--ours-commit",
        metavar="REV",
        help="measure our proxy as committed at REV (git archive into the run's temporary "
        "directory) instead of the working tree, which may hold unfinished edits",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).parent / "out",
        help="where the JSON and Markdown of this run go",
    )
    parser.add_argument(
        "--results", type=Path, help="also write the Markdown report here (e.g. bench/RESULTS.md)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.targets.split(",") if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = build_plan(args)
    names = [name for name in args.targets.split(",") if name]
    command = "python3 bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    load_at_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="tls13-bench-"))
    backend = None
    results: list[TargetResult] = []
    try:
        material = bench_certs.write_material(workdir)
        ours_code = select_ours_code(args.ours_commit, workdir)
        upload_file = workdir / "upload.bin"
        with open(upload_file, "wb") as out:
            out.truncate(plan.bulk_bytes)  # sparse file: reading it costs no disk I/O
        backend, backend_port = start_backend(workdir, plan.load_cpus)
        benches = [
            TargetBench(TARGETS[name], plan, material, workdir, backend_port, upload_file)
            for name in names
        ]
        run_benches(benches, plan, workdir)
        results = [bench.result for bench in benches]
        for result in results:
            if result.error:
                log(f"[{result.name}] {result.error.splitlines()[0]}")
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    notes = machine_notes(plan, load_at_start)
    notes["our code"] = ours_code
    markdown = render_markdown(results, plan, notes, command, elapsed)
    print(markdown)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out_dir / f"run-{stamp}.md").write_text(markdown)
    (args.out_dir / f"run-{stamp}.json").write_text(
        json.dumps(
            {
                "command": command,
                "machine": notes,
                "plan": asdict(plan),
                "elapsed": elapsed,
                "results": [asdict(result) for result in results],
            },
            indent=1,
            default=str,
        )
    )
    if args.results:
        args.results.write_text(markdown)
    return 0 if any(not result.error for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
