"""Markdown rendering of a benchmark run: medians, spread, target CPU per unit, ratios."""

from __future__ import annotations

import math
import os
import statistics
from typing import TYPE_CHECKING

from bench_procstat import CLOCK_TICKS

if TYPE_CHECKING:  # run.py imports us; only the type names are needed here
    from run import Plan, RoundResult, TargetResult

# metric key, title, rate unit, CPU unit label, factor from CPU seconds per unit to that label
METRICS = (
    ("full_hs", "Full handshakes (+1 GET each)", "conn/s", "CPU ms/handshake", 1e3),
    ("resumed_hs", "Resumed handshakes (+1 GET each)", "conn/s", "CPU ms/handshake", 1e3),
    ("keepalive", "Keep-alive requests", "req/s", "CPU µs/request", 1e6),
    ("download", "Bulk download", "MB/s", "CPU ms/MB", 1e3),
    ("upload", "Bulk upload", "MB/s", "CPU ms/MB", 1e3),
)


SATURATED = 0.9  # target busy (CPU s per wall s) from which one worker is the bottleneck
OTHER_WORK = 0.3  # cores of work outside the run from which a scaling figure is noise


def median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def spread(values: list[float]) -> float:
    """(max - min) / median across rounds: the run-to-run noise of one figure."""
    mid = median(values)
    return (max(values) - min(values)) / mid if values and mid else float("nan")


def fmt(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:,.{digits}f}"


def pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{value * 100:.0f}%"


def rates(rounds: list[RoundResult]) -> list[float]:
    return [r.value for r in rounds]


def cpus(rounds: list[RoundResult]) -> list[float]:
    return [r.cpu_per_unit for r in rounds]


def busy(rounds: list[RoundResult]) -> float:
    """Target CPU seconds per wall second (1.0 = one core fully used): shows whether the
    target or the load generator was the bottleneck."""
    return median([r.value * r.cpu_per_unit for r in rounds])


def load_busy(rounds: list[RoundResult]) -> float:
    """How busy the load generators' core was (any process), when it was watched."""
    return median([float(r.extra.get("load_core_busy", float("nan"))) for r in rounds])


def check(metric: str, rounds: list[RoundResult]) -> str:
    """What the client saw, proving the kind of work measured."""
    if metric in ("full_hs", "resumed_hs"):
        full = sum(int(r.extra["full"]) for r in rounds)
        resumed = sum(int(r.extra["resumed"]) for r in rounds)
        answered = median([float(r.extra["bytes_per_connection"]) for r in rounds])
        return f"{full} full, {resumed} resumed, {answered:.0f} B response each"
    if metric == "keepalive":
        errors = sum(int(r.extra["errors"]) for r in rounds)
        p50 = median([float(r.extra["p50_ms"]) for r in rounds])
        p99 = median([float(r.extra["p99_ms"]) for r in rounds])
        return f"p50 {fmt(p50, 2)} ms, p99 {fmt(p99, 2)} ms, {errors} errors"
    return f"{len(rounds)} transfers verified"


def header(plan: Plan, notes: dict[str, str], command: str, elapsed: float) -> list[str]:
    plan_line = (
        "Plan: the scaling section alone (--only scaling)."
        if plan.only_scaling
        else "Plan: the memory section alone (--only memory), held connections "
        f"{', '.join(str(n) for n in plan.hold_levels)}."
        if plan.only_memory
        else f"Plan: {plan.rounds} rounds × {plan.duration} s per load run; s_time × "
        f"{plan.s_time_processes} processes; wrk 1 thread × {plan.wrk_connections} "
        f"connections; bulk {plan.bulk_bytes // (1 << 20)} MiB; held connections "
        f"{', '.join(str(n) for n in plan.hold_levels)}; scaling: see its section."
    )
    lines = [
        "# tls13-proxy benchmark results",
        "",
        f"Command: `{command}` — {notes['date']}, commit {notes['commit']}, "
        f"took {elapsed / 60:.1f} min.",
        "",
        plan_line,
        "",
        "Machine:",
    ]
    lines += [f"- {key}: {value}" for key, value in notes.items() if key not in ("date", "commit")]
    lines += [f"- note: {note}" for note in plan.notes]
    lines += [
        "",
        "Every target proxies to the same plain HTTP/1.1 backend (bench/backend.py, 64-byte "
        "response), serves the same ECDSA P-256 chain, TLS 1.3 only; s_time and curl offer "
        "only TLS_AES_128_GCM_SHA256, wrk offers OpenSSL's defaults. \"CPU\" is the target's own "
        "utime+stime (all its processes) divided by the work done: the load generators "
        "saturate first on 2 cores, so CPU per unit is the fairer comparison. Spread = "
        "(max−min)/median over rounds. Target busy = the target's CPU seconds per wall "
        "second (100% = its one pinned core); load core busy = how busy the load generators' "
        "core was (with anything, including other work on the machine): target well below "
        "100% with the load core near 100% means the clients limited the rate. MB = 10^6 "
        f"bytes. CPU times are /proc clock ticks (1/{CLOCK_TICKS} s), hence large transfers.",
        "",
    ]
    return lines


def targets_table(results: list[TargetResult]) -> list[str]:
    lines = [
        "## Targets",
        "",
        "| target | what | processes | negotiated | resumption probe | status |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        status = "ok" if not result.error else result.error.splitlines()[0]
        negotiated = ", ".join(result.tls.values()) or "–"
        lines.append(
            f"| {result.name} | {result.description} | {result.processes or '–'} | "
            f"{negotiated} | {result.resumption_probe or '–'} | {status} |"
        )
    for result in results:
        details = (result.error or "").splitlines()[1:13]
        if details:
            lines += ["", f"{result.name}, last output:", "", "```", *details, "```"]
    return lines + [""]


def metrics_table(results: list[TargetResult]) -> list[str]:
    lines = [
        "## Throughput and CPU per unit (medians)",
        "",
        "| metric | target | rate | spread | target CPU | target busy | load core busy | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, title, unit, cpu_label, factor in METRICS:
        for result in results:
            rounds = result.metrics.get(key, [])
            if not rounds:
                why = "; ".join(result.failures.get(key, [])) or result.error or "not measured"
                lines.append(f"| {title} | {result.name} | – | – | – | – | {why.splitlines()[0]} |")
                continue
            cpu = median(cpus(rounds)) * factor
            lines.append(
                f"| {title} | {result.name} | {fmt(median(rates(rounds)))} {unit} | "
                f"{pct(spread(rates(rounds)))} | {fmt(cpu, 2)} {cpu_label[4:]} | "
                f"{pct(busy(rounds))} | {pct(load_busy(rounds))} | {check(key, rounds)} |"
            )
    return lines + [""]


def memory_table(results: list[TargetResult]) -> list[str]:
    lines = [
        "## Memory per idle established connection",
        "",
        "Each held connection completed a handshake and one keep-alive request, then idles "
        "(so the target also holds its backend connection). RSS summed over the target's "
        "processes, growth from before the first connection.",
        "",
        "| target | held (ok/asked) | RSS growth | per connection | notes |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        if not result.memory:
            lines.append(
                f"| {result.name} | – | – | – | {result.error or 'not measured'} |".replace(
                    "\n", " "
                )
            )
        for row in result.memory:
            growth = (int(row["rss"]) - int(row["rss_base"])) / (1 << 20)
            notes = []
            if int(row["failed"]) or int(row["unfinished"]):
                notes.append(
                    f"{row['failed']} failed, {row['unfinished']} unfinished {row['errors']}"
                )
            if row["alive"] != "True":
                notes.append("target died")
            lines.append(
                f"| {result.name} | {row['established']}/{row['level']} | "
                f"{growth:,.1f} MiB | {float(row['per_connection']) / 1024:,.1f} KiB | "
                f"{'; '.join(notes)} |"
            )
    return lines + [""]


def extra_median(rounds: list[RoundResult], key: str) -> float:
    return median([float(r.extra.get(key, float("nan"))) for r in rounds])


def ceiling_rate(rounds: list[RoundResult], workers: int, cores: int) -> float:
    """The highest rate these per-handshake costs allow on this machine: the target's
    workers cannot use more than ``workers`` cores, and target + generator + backend
    together cannot use more than all of them."""
    target = median(cpus(rounds))
    everything = target + extra_median(rounds, "generator_cpu_per_hs")
    everything += extra_median(rounds, "backend_cpu_per_hs")
    return min(min(workers, cores) / target, cores / everything)


def limited_by(rounds: list[RoundResult], workers: int, cores: int) -> str:
    """Who set the rate: the target (its workers' cores full), the whole machine (all
    cores busy, shared with the generator, backend and other work), or neither."""
    target = extra_median(rounds, "target_cores")
    machine = extra_median(rounds, "machine_cores")
    ours = sum(
        extra_median(rounds, key) for key in ("target_cores", "generator_cores", "backend_cores")
    )
    if target >= SATURATED * min(workers, cores):
        return "target"
    if machine >= SATURATED * cores:
        if machine - ours >= OTHER_WORK:
            return f"machine: other work took {fmt(machine - ours, 1)} cores (noise)"
        return "machine: all cores busy (target + generator + backend)"
    return "neither: latency / too few connections"


def scaling_table(results: list[TargetResult], plan: Plan, cores: int) -> list[str]:
    lines = [
        "## Scaling 1 → 2 workers (full handshakes + 1 GET, bench/hsload.py, unpinned)",
        "",
        f"Load: bench/hsload.py, {plan.scaling_concurrency} connections in flight, origin "
        "bench/light_backend.py, "
        f"{plan.scaling_duration:g} s per round, {plan.scaling_rounds} rounds, 1- and "
        "2-worker instances measured alternately; medians. Ceiling × = the ratio of the "
        "highest rates the measured CPU costs allow on this machine (1 worker: one core; "
        "2 workers: whatever the generator and backend leave of all cores).",
        "",
        "| target | 1 worker | 2 workers | × | spread (1 / 2) | ceiling × | processes |",
        "|---|---|---|---|---|---|---|",
    ]
    details = [
        "",
        "Where the CPU went (per handshake, and in cores over the same seconds; other = "
        "work on the machine outside this run):",
        "",
        "| target | workers | hs/s | target CPU ms/hs | generator CPU ms/hs (÷ target) "
        "| backend CPU ms/hs | cores: target + generator + backend + other = machine "
        "| limited by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        one, two = result.scaling.get("w1", []), result.scaling.get("w2", [])
        if not one or not two:
            why = (
                "; ".join(
                    result.failures.get("scaling_w1", []) + result.failures.get("scaling_w2", [])
                )
                or result.error
                or "–"
            )
            lines.append(f"| {result.name} | – | – | – | {why.splitlines()[0]} | – | – |")
            continue
        r1, r2 = median(rates(one)), median(rates(two))
        processes = f"{one[-1].extra.get('processes', '?')} → {two[-1].extra.get('processes', '?')}"
        ceiling = ceiling_rate(two, 2, cores) / ceiling_rate(one, 1, cores)
        lines.append(
            f"| {result.name} | {fmt(r1)}/s | {fmt(r2)}/s | {fmt(r2 / r1, 2)} | "
            f"{pct(spread(rates(one)))} / {pct(spread(rates(two)))} | {fmt(ceiling, 2)} | "
            f"{processes} |"
        )
        for workers, rounds in ((1, one), (2, two)):
            target_ms = median(cpus(rounds)) * 1e3
            generator_ms = extra_median(rounds, "generator_cpu_per_hs") * 1e3
            used = [
                extra_median(rounds, key)
                for key in ("target_cores", "generator_cores", "backend_cores")
            ]
            machine = extra_median(rounds, "machine_cores")
            other = machine - sum(used)
            details.append(
                f"| {result.name} | {workers} | {fmt(median(rates(rounds)))} | "
                f"{fmt(target_ms, 2)} | {fmt(generator_ms, 3)} ({pct(generator_ms / target_ms)}) | "
                f"{fmt(extra_median(rounds, 'backend_cpu_per_hs') * 1e3, 3)} | "
                f"{' + '.join(fmt(x, 2) for x in used)} + {fmt(other, 2)} = {fmt(machine, 2)} | "
                f"{limited_by(rounds, workers, cores)} |"
            )
    return (
        lines
        + details
        + [
            "",
            f"The machine has {cores} CPUs shared by target, generator and backend, so a "
            "second worker can at best take what the other two leave; the ceiling column "
            "says how much that is. Cores are CPU seconds per wall second (/proc/PID/stat "
            "for each process tree, /proc/stat for the machine).",
            "",
        ]
    )


def ratio_table(results: list[TargetResult]) -> list[str]:
    """The subject (first target) against each reference: rate ratio and CPU ratio."""
    if len(results) < 2:
        return []
    subject, references = results[0], results[1:]
    lines = [
        f"## Ratios: {subject.name} ÷ each reference",
        "",
        "Rate ratio > 1: the subject is faster. CPU ratio < 1: the subject spends less "
        "CPU per unit.",
        "",
        "| metric | "
        + " | ".join(f"rate vs {r.name} | CPU vs {r.name}" for r in references)
        + " |",
        "|---|" + "---|---|" * len(references),
    ]
    for key, title, _unit, _cpu, _factor in METRICS:
        cells = []
        for reference in references:
            ours, theirs = subject.metrics.get(key, []), reference.metrics.get(key, [])
            if ours and theirs:
                cells.append(fmt(median(rates(ours)) / median(rates(theirs)), 2))
                cells.append(fmt(median(cpus(ours)) / median(cpus(theirs)), 2))
            else:
                cells += ["–", "–"]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    memory = []
    for reference in references:
        ours_mem, theirs_mem = subject.memory[-1:], reference.memory[-1:]
        if ours_mem and theirs_mem and float(theirs_mem[0]["per_connection"]) > 0:
            ratio = float(ours_mem[0]["per_connection"]) / float(theirs_mem[0]["per_connection"])
            memory.append(f"{fmt(ratio, 2)} × {reference.name}")
    if memory:
        lines += [
            "",
            f"Memory per held connection (largest level): {subject.name} = "
            + ", ".join(memory)
            + ".",
        ]
    return lines + [""]


def failures_section(results: list[TargetResult]) -> list[str]:
    lines = []
    for result in results:
        for metric, whys in result.failures.items():
            for why in dict.fromkeys(whys):
                lines.append(f"- {result.name} / {metric}: {why.splitlines()[0][:200]}")
    return (["## Problems seen during the run", "", *lines, ""]) if lines else []


def render_markdown(
    results: list[TargetResult], plan: Plan, notes: dict[str, str], command: str, elapsed: float
) -> str:
    lines = header(plan, notes, command, elapsed)
    lines += targets_table(results)
    if plan.only_memory:
        lines += memory_table(results)
    elif not plan.only_scaling:
        lines += metrics_table(results)
        lines += ratio_table(results)
        lines += memory_table(results)
    if not plan.only_memory:
        lines += scaling_table(results, plan, os.cpu_count() or 1)
    lines += failures_section(results)
    return "\n".join(lines)
