"""The machine a benchmark runs on: its CPU, and how busy other work kept it around each run.

The launcher (`launch`) reads the machine before and after each mpiexec
job; nothing here imports MPI. A run is judged by the CPUs that *other*
work kept busy, never by the load average:

- before: the CPUs busy over `SAMPLE_SECONDS` just before mpiexec starts,
  from the idle time in ``/proc/stat``. Nothing of the benchmark runs then
  (the previous run's ranks have exited), so all of it is other work;
- during: the CPUs busy over the whole run, less the run's own CPU time
  (``getrusage`` of the launcher's children: mpiexec and its ranks, waited
  for when the job ends).

The 1-minute load average is recorded and printed, but it cannot judge a
run: it is a decaying average over about a minute, so before a run it
still holds most of the previous run's two ranks (``--runs N``), and after
it holds this run's own two ranks, which on a two-core machine is the
whole machine. The idle time of /proc/stat over a second is an instant
measure of what runs now, and the run's own CPU time can be taken out of
it. The rule is `is_busy`.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Sequence
from typing import Any

RANKS = 2  # the benchmark's ranks: each keeps a CPU busy while it runs
SAMPLE_SECONDS = 1.0  # the window read before each run
# Other work may take this many CPUs beyond those the ranks leave free before
# a run counts as taken on a busy machine: on 2 CPUs, the ranks keep at least
# 90 % of both. An idle machine's background stays well below (0.01-0.03
# CPUs on the 2-core VM of the README's figures).
TOLERANCE_CPUS = 0.2

Load = dict[str, Any]


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name from `cpuinfo`, else what `platform.processor` says."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, in clock ticks; None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: busy is all but idle and
    # iowait (steal counts as busy: the hypervisor gave that time to others).
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_cpus(
    before: tuple[int, int] | None, after: tuple[int, int] | None, cpus: int
) -> float | None:
    """CPUs the machine kept busy between two `machine_ticks` readings (None if unknown)."""
    if before is None or after is None:
        return None
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * cpus if total > 0 else 0.0


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have ended (their own children included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_count() -> int:
    """The CPUs this machine has (1 if unknown)."""
    return os.cpu_count() or 1


def limit(cpus: int, ranks: int = RANKS) -> float:
    """The CPUs other work may keep busy before a run counts as taken on a busy machine.

    The CPUs the ranks leave over (``cpus - ranks``; none on 2 CPUs) plus
    `TOLERANCE_CPUS`.
    """
    return max(0, cpus - ranks) + TOLERANCE_CPUS


def is_busy(others_before: float | None, others_during: float | None, cpus: int) -> bool | None:
    """Whether a run was taken on a busy machine; None if neither reading is known.

    Parameters
    ----------
    others_before : float or None
        CPUs other work kept busy in the `SAMPLE_SECONDS` before the run.
    others_during : float or None
        CPUs other work kept busy during the run (the machine's less the run's own).
    cpus : int
        The machine's CPUs.

    Returns
    -------
    bool or None
        True if either reading is above `limit`: the benchmark's ranks
        then had fewer CPUs than they need, or shared them.
    """
    known = [value for value in (others_before, others_during) if value is not None]
    if not known:
        return None
    return max(known) > limit(cpus)


class Watch:
    """The readings around one run: `start` just before mpiexec, `stop` once it ended."""

    def __init__(self, sample_seconds: float | None = None) -> None:
        self.cpus = cpu_count()
        self.sample_seconds = SAMPLE_SECONDS if sample_seconds is None else sample_seconds

    def start(self) -> None:
        """Read what other work keeps busy now (takes `sample_seconds`); the run starts next."""
        first = machine_ticks()
        time.sleep(self.sample_seconds)
        self.ticks = machine_ticks()
        self.others_before = busy_cpus(first, self.ticks, self.cpus)
        self.loadavg_before = list(os.getloadavg())
        self.own_before = children_cpu_seconds()
        self.started = time.perf_counter()

    def stop(self) -> Load:
        """Return the run's load record (see `record`); call once the job has ended."""
        seconds = time.perf_counter() - self.started
        during = busy_cpus(self.ticks, machine_ticks(), self.cpus)
        own = (children_cpu_seconds() - self.own_before) / seconds if seconds > 0 else 0.0
        others = None if during is None else max(0.0, during - own)
        return record(
            self.cpus,
            self.loadavg_before,
            list(os.getloadavg()),
            self.others_before,
            others,
            own,
            self.sample_seconds,
        )


def record(
    cpus: int,
    loadavg_before: Sequence[float],
    loadavg_after: Sequence[float],
    others_before: float | None,
    others_during: float | None,
    own_during: float,
    sample_seconds: float = SAMPLE_SECONDS,
) -> Load:
    """A run's ``meta["load"]``: the readings, the `limit` and the verdict ``busy``."""
    return {
        "cpus": cpus,
        "ranks": RANKS,
        "loadavg_before": list(loadavg_before),
        "loadavg_after": list(loadavg_after),
        "sample_seconds": sample_seconds,
        "others_before": others_before,
        "others_during": others_during,
        "own_during": own_during,
        "limit": limit(cpus),
        "busy": is_busy(others_before, others_during, cpus),
    }


def _cpus(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def describe(load: Load) -> str:
    """One run's load as the line printed under its table."""
    before, after = load["loadavg_before"][0], load["loadavg_after"][0]
    return (
        f"machine load ({load['cpus']} CPUs): other work kept {_cpus(load['others_before'])} "
        f"CPUs busy in the {load['sample_seconds']:g} s before the run and "
        f"{_cpus(load['others_during'])} during it (limit {load['limit']:.2f}); "
        f"1-minute load average {before:.2f} before, {after:.2f} after "
        f"(the run's own {load['ranks']} ranks included)"
    )


def combine(loads: Sequence[Load]) -> Load:
    """The load of several runs (`record` each) for the summary's ``meta["load"]``.

    The highest readings of other work, the range of the 1-minute load
    averages, the runs taken on a busy machine (numbered from 1) and the
    `warning` for them (None if there are none).
    """

    def highest(field: str) -> float | None:
        known = [load[field] for load in loads if load[field] is not None]
        return max(known) if known else None

    averages = [
        value for load in loads for value in (load["loadavg_before"][0], load["loadavg_after"][0])
    ]
    combined = {
        "cpus": loads[0]["cpus"],
        "ranks": loads[0]["ranks"],
        "limit": loads[0]["limit"],
        "others_before_max": highest("others_before"),
        "others_during_max": highest("others_during"),
        "loadavg_1min_min": min(averages),
        "loadavg_1min_max": max(averages),
        "busy_runs": [number for number, load in enumerate(loads, 1) if load["busy"]],
        "runs": len(loads),
    }
    combined["warning"] = warning(combined)
    return combined


def warning(combined: Load) -> str | None:
    """The WARNING line for the runs of `combine` taken on a busy machine; None if none was."""
    busy = combined["busy_runs"]
    if not busy:
        return None
    runs = combined["runs"]
    where = (
        "" if runs == 1 else f" in run{'s' * (len(busy) > 1)} {', '.join(map(str, busy))} of {runs}"
    )
    others = max(
        value
        for value in (combined["others_before_max"], combined["others_during_max"])
        if value is not None
    )
    return (
        f"WARNING: busy machine{where}: other work kept up to {others:.2f} CPUs busy, more than "
        f"the {combined['limit']:.2f} allowed beside the benchmark's {combined['ranks']} ranks "
        f"on {combined['cpus']} CPUs; these figures are not a quiet machine's"
    )


def _loadavg_range(combined: Load) -> str:
    low, high = combined["loadavg_1min_min"], combined["loadavg_1min_max"]
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f}"


def summary_line(combined: Load) -> str:
    """The load of several runs as one line: the highest readings of other work."""
    return (
        f"machine load over {combined['runs']} runs ({combined['cpus']} CPUs): other work kept "
        f"at most {_cpus(combined['others_before_max'])} CPUs busy before a run and "
        f"{_cpus(combined['others_during_max'])} during one (limit {combined['limit']:.2f}); "
        f"1-minute load average {_loadavg_range(combined)}"
    )


def markdown_sentence(combined: Load) -> str:
    """The load of the runs of `combine` as a sentence of the Markdown table's caption."""
    before, during = ("the run", "it") if combined["runs"] == 1 else ("a run", "one")
    return (
        f"Other work kept at most {_cpus(combined['others_before_max'])} CPUs busy before "
        f"{before} and {_cpus(combined['others_during_max'])} during {during} (busy above "
        f"{combined['limit']:.2f}); 1-minute load average {_loadavg_range(combined)}, the "
        "benchmark's own ranks included."
    )


def markdown_warning(warning: str) -> str:
    """`warning` (a ``WARNING: ...`` line) with its head in bold, for Markdown."""
    head, _, rest = warning.partition(": ")  # "WARNING", "busy machine ...: other work ..."
    what, _, why = rest.partition(": ")
    return f"**{head}: {what}**: {why}"
