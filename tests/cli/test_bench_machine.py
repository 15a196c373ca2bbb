"""``conveyor bench``'s machine: its CPU, and when a run counts as taken on a busy machine.

Everything here works on given readings: the real machine's load never
decides a test, and nothing is timed.
"""

import itertools
from types import SimpleNamespace

import pytest

from conveyor._bench import machine


@pytest.mark.parametrize(
    "before, during, cpus, busy",
    [
        (0.02, 0.05, 2, False),  # an idle machine's background
        (0.2, 0.2, 2, False),  # at the limit, not above it
        (0.3, 0.0, 2, True),  # busy in the second before the run
        (0.0, 0.9, 2, True),  # busy during it
        (None, 0.05, 2, False),  # no /proc/stat before: judged on what is known
        (0.5, None, 2, True),
        (None, None, 2, None),  # nothing known: not judged
        (1.9, 2.1, 4, False),  # 4 CPUs: 2 are left over from the 2 ranks
        (2.3, 0.0, 4, True),
        (0.3, 0.1, 1, True),  # fewer CPUs than ranks: no other work is left room
    ],
)
def test_a_run_is_busy_when_other_work_takes_more_than_the_ranks_leave(before, during, cpus, busy):
    assert machine.is_busy(before, during, cpus) is busy


def test_the_limit_is_the_cpus_the_ranks_leave_plus_a_tolerance():
    assert machine.limit(2) == pytest.approx(machine.TOLERANCE_CPUS)
    assert machine.limit(8) == pytest.approx(6 + machine.TOLERANCE_CPUS)
    assert machine.limit(1) == pytest.approx(machine.TOLERANCE_CPUS)


def test_busy_cpus_come_from_the_ticks_between_two_readings():
    # 300 of 400 ticks busy on 2 CPUs: 1.5 CPUs.
    assert machine.busy_cpus((1000, 5000), (1300, 5400), 2) == pytest.approx(1.5)
    assert machine.busy_cpus((1000, 5000), (1000, 5000), 2) == 0.0  # no tick between
    assert machine.busy_cpus(None, (1000, 5000), 2) is None


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
    )
    assert machine.cpu_model(str(cpuinfo)) == "AMD EPYC 7B13"
    # Without one (another OS), platform's name of the processor, never empty.
    assert machine.cpu_model(str(tmp_path / "missing"))


def readings(monkeypatch, ticks, children, clock, cpus=2):
    """Make `machine.Watch` read the given values in turn, and not wait."""
    ticks, children, clock = iter(ticks), iter(children), iter(clock)
    loadavg = iter([(1.9, 1.0, 0.5), (2.0, 1.2, 0.6)])
    monkeypatch.setattr(machine, "machine_ticks", lambda: next(ticks))
    monkeypatch.setattr(machine, "children_cpu_seconds", lambda: next(children))
    monkeypatch.setattr(machine, "cpu_count", lambda: cpus)
    monkeypatch.setattr(machine, "os", SimpleNamespace(getloadavg=lambda: next(loadavg)))
    fake_time = SimpleNamespace(sleep=lambda seconds: None, perf_counter=lambda: next(clock))
    monkeypatch.setattr(machine, "time", fake_time)


def test_a_watch_takes_the_runs_own_cpu_out_of_the_machines(monkeypatch):
    # Before: 10 of 200 ticks busy (0.1 CPUs). During 10 s: 1800 of 2000
    # ticks busy (1.8 CPUs), of which the run's own ranks took 16 s (1.6).
    readings(
        monkeypatch,
        ticks=[(0, 0), (10, 200), (1810, 2200)],
        children=[4.0, 20.0],
        clock=[100.0, 110.0],
    )
    watch = machine.Watch()
    watch.start()
    load = watch.stop()
    assert load["others_before"] == pytest.approx(0.1)
    assert load["own_during"] == pytest.approx(1.6)
    assert load["others_during"] == pytest.approx(0.2)
    assert load["loadavg_before"] == [1.9, 1.0, 0.5]
    assert load["loadavg_after"] == [2.0, 1.2, 0.6]
    assert load["cpus"] == 2 and load["ranks"] == machine.RANKS
    assert load["limit"] == pytest.approx(machine.TOLERANCE_CPUS)
    assert load["busy"] is False
    line = machine.describe(load)
    assert "other work kept 0.10 CPUs busy" in line and "0.20 during it" in line
    assert "1-minute load average 1.90 before, 2.00 after" in line


def test_a_watch_finds_other_work_that_took_cpu_from_the_ranks(monkeypatch):
    # During 10 s the machine was all busy (2 CPUs) but the ranks had 1.2.
    readings(
        monkeypatch,
        ticks=[(0, 0), (0, 200), (2000, 2200)],
        children=[0.0, 12.0],
        clock=[0.0, 10.0],
    )
    watch = machine.Watch()
    watch.start()
    load = watch.stop()
    assert load["others_before"] == 0.0
    assert load["others_during"] == pytest.approx(0.8)
    assert load["busy"] is True


def load_record(before, during):
    """A run's load on 2 CPUs: other work `before` and `during` it, load average 0.3 → 1.9."""
    return machine.record(2, [0.3, 0.2, 0.1], [1.9, 0.6, 0.2], before, during, 1.9)


def test_combined_runs_name_the_busy_ones_in_a_warning():
    loads = [load_record(0.02, 0.05), load_record(0.01, 0.85), load_record(0.6, 0.1)]
    combined = machine.combine(loads)
    assert combined["busy_runs"] == [2, 3]
    assert combined["others_before_max"] == pytest.approx(0.6)
    assert combined["others_during_max"] == pytest.approx(0.85)
    assert (combined["loadavg_1min_min"], combined["loadavg_1min_max"]) == (0.3, 1.9)
    assert combined["warning"] == (
        "WARNING: busy machine in runs 2, 3 of 3: other work kept up to 0.85 CPUs busy, "
        "more than the 0.20 allowed beside the benchmark's 2 ranks on 2 CPUs; these "
        "figures are not a quiet machine's"
    )
    assert machine.markdown_warning(combined["warning"]).startswith(
        "**WARNING: busy machine in runs 2, 3 of 3**: other work kept up to 0.85 CPUs busy"
    )
    line = machine.summary_line(combined)
    assert "at most 0.60 CPUs busy before a run and 0.85 during one" in line
    assert "1-minute load average 0.30–1.90" in line


def test_quiet_runs_have_no_warning():
    combined = machine.combine([load_record(0.02, 0.05), load_record(0.0, 0.1)])
    assert combined["busy_runs"] == [] and combined["warning"] is None
    (one,) = [load_record(0.9, None)]
    assert machine.combine([one])["warning"].startswith("WARNING: busy machine: other work")


def test_loadavg_is_recorded_but_does_not_judge():
    # A 1-minute load of 3.5 on 2 CPUs (the previous run's ranks, say) with
    # nothing else running is not a busy machine.
    load = machine.record(2, [3.5, 3, 3], [3.9, 3, 3], 0.01, 0.02, 1.98)
    assert load["busy"] is False


def test_a_clock_that_does_not_move_gives_no_own_rate(monkeypatch):
    readings(
        monkeypatch,
        ticks=[(0, 0), (0, 200), (0, 200)],
        children=[0.0, 0.0],
        clock=itertools.repeat(5.0),
    )
    watch = machine.Watch()
    watch.start()
    load = watch.stop()
    assert load["own_during"] == 0.0 and load["others_during"] == 0.0
