"""Messenger(trace=...): per-rank Chrome traces, ``conveyor trace merge`` and ``plot``.

Each rank sends COUNT messages to every rank (itself included), one
request to the next rank, and a send_many of ROWS rows to every rank; the
files are then read here, outside MPI: every send has its delivery and its
handler span, and the merged trace follows the Chrome trace format's
rules. No assertion depends on timing.
"""

import json
import os
import signal
import sys

import numpy as np
import pytest

import conveyor as cv
from conveyor._trace import TracedTransport
from conveyor._transport import Transport

from conftest import run_command

COUNT = 7
ROWS = 5


def case_a_traced_run(directory):
    pattern = os.path.join(directory, "run.%r.json")
    with cv.Messenger(trace=pattern) as m:
        got = []
        m.on("k")(lambda msg: got.append(msg.payload))
        m.on("rows")(lambda msg: got.append(len(msg.payload)))
        m.on("echo")(lambda msg: msg.payload)
        for dest in range(m.size):
            for i in range(COUNT):
                m.send(dest, "k", np.arange(i + 1))
        assert m.request((m.rank + 1) % m.size, "echo", m.rank).result(timeout=30) == m.rank
        dests = np.repeat(np.arange(m.size), ROWS)
        m.sender("rows").send_many(dests, np.arange(dests.size, dtype=np.uint64))
        m.wait_quiet()
        assert len(got) == COUNT * m.size + m.size


def check_chrome_format(document):
    # The rules of the Chrome trace event format that viewers rely on.
    assert isinstance(document["traceEvents"], list)
    for e in document["traceEvents"]:
        assert e["ph"] in ("X", "M", "s", "f"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)), e
        if e["ph"] == "X":
            assert e["dur"] >= 0 and isinstance(e["name"], str), e
        if e["ph"] in ("s", "f"):
            assert "id" in e, e


def events(document, ph, cat=None, name=None):
    return [
        e
        for e in document["traceEvents"]
        if e["ph"] == ph
        and (cat is None or e.get("cat") == cat)
        and (name is None or e.get("name") == name)
    ]


@pytest.mark.parametrize("n", [2, 3])
def test_a_merged_trace_has_every_send_its_delivery_and_its_handler(mpirun, tmp_path, n):
    mpirun(n, case_a_traced_run, str(tmp_path))
    files = sorted(str(p) for p in tmp_path.glob("run.*.json"))
    assert len(files) == n
    for rank, path in enumerate(files):
        with open(path) as f:
            document = json.load(f)
        check_chrome_format(document)
        assert {e["pid"] for e in document["traceEvents"]} == {rank}
        assert document["otherData"]["conveyor"]["dropped"] == 0

    merged_path = tmp_path / "all.json"
    proc = run_command(
        [sys.executable, "-m", "conveyor", "trace", "merge", *files, "-o", str(merged_path)]
    )
    assert proc.returncode == 0, proc.stderr
    with open(merged_path) as f:
        merged = json.load(f)
    check_chrome_format(merged)
    assert {e["pid"] for e in merged["traceEvents"]} == set(range(n))

    sends = events(merged, "X", "send", "k")
    handlers = events(merged, "X", "handler", "k")
    assert len(sends) == len(handlers) == COUNT * n * n
    assert sorted(e["args"]["bytes"] for e in sends) == sorted(e["args"]["bytes"] for e in handlers)
    for rank in range(n):  # each rank got COUNT from every rank
        sources = [e["args"]["source"] for e in handlers if e["pid"] == rank]
        assert sorted(sources) == sorted(list(range(n)) * COUNT)
    # send_many: one message per destination, one handler span each.
    assert len(events(merged, "X", "send", "rows")) == n * n
    assert len(events(merged, "X", "handler", "rows")) == n * n
    # The request, its handler and its reply; the requester's wait.
    assert len(events(merged, "X", "handler", "echo")) == n
    replies = [e for e in events(merged, "X", "delivery") if e["args"]["kind"] == "reply"]
    assert len(replies) == n
    assert len(events(merged, "X", "wait", "result")) == n
    assert len(events(merged, "X", "wait", "wait_quiet")) == 2 * n  # the program's, close()'s
    assert {e["pid"] for e in events(merged, "X", "quiescence", "wave")} == set(range(n))
    # Every message became an arrow: a flow start on its sender, an end on its receiver.
    starts, ends = events(merged, "s"), events(merged, "f")
    assert len(starts) == len(ends) == len(events(merged, "X", "send"))
    flows = {e["id"]: e for e in starts}
    for end in ends:
        start = flows.pop(end["id"])
        assert start["name"] == end["name"]
    k_flows = [e for e in starts if e["name"] == "k"]
    assert len(k_flows) == COUNT * n * n

    png = tmp_path / "all.png"
    proc = run_command([sys.executable, "-m", "conveyor", "trace", "plot", *files, "-o", str(png)])
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def traced_sends_to_self(tmp_path, count):
    """The trace of a one-rank messenger that sent itself `count` messages."""
    with cv.Messenger(trace=str(tmp_path / "self.%r.json")) as m:
        m.on("k")(lambda msg: None)
        for _ in range(count):
            m.send(0, "k")
        m.wait_quiet()
    with open(tmp_path / "self.0.json") as f:
        return json.load(f)


def test_merging_a_merged_trace_gives_the_same_flows(tmp_path):
    from conveyor._trace import merge

    once = merge([traced_sends_to_self(tmp_path, 3)])
    twice = merge([once])
    assert len(events(twice, "s")) == len(events(once, "s")) == 3
    assert twice["otherData"] == once["otherData"]


def test_an_untraced_messenger_runs_the_plain_transport():
    # Tracing off changes no code path: no tracing transport, no engine log.
    with cv.Messenger() as m:
        assert type(m._transport) is Transport
        assert m._transport.tracer is None
        assert m._transport.engine.trace_size == 0
    with cv.Messenger(trace=os.devnull) as m:
        assert type(m._transport) is TracedTransport


def test_a_trace_in_a_missing_directory_is_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        cv.Messenger(trace=str(tmp_path / "no" / "run.%r.json"))


def test_sigusr1_writes_the_trace_so_far(tmp_path):
    path = tmp_path / "run.0.json"
    with cv.Messenger(trace=str(tmp_path / "run.%r.json")) as m:
        m.on("k")(lambda msg: None)
        m.send(0, "k", b"x")
        m.progress(0.0)
        os.kill(os.getpid(), signal.SIGUSR1)
        with open(path) as f:
            so_far = json.load(f)
        assert len(events(so_far, "X", "handler", "k")) == 1
        m.send(0, "k", b"y")
        m.wait_quiet()
    with open(path) as f:
        assert len(events(json.load(f), "X", "handler", "k")) == 2


def test_a_full_trace_counts_what_it_dropped(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CONVEYOR_TRACE_EVENTS", "4")
    document = traced_sends_to_self(tmp_path, 10)
    assert len(events(document, "X", "send")) + len(events(document, "X", "handler")) == 4
    assert document["otherData"]["conveyor"]["dropped"] == 16
    assert any("the trace was full" in r.getMessage() for r in caplog.records)


def test_trace_commands_refuse_what_is_not_a_trace(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": []}')
    for command in ("merge", "plot"):
        proc = run_command(
            [
                sys.executable,
                "-m",
                "conveyor",
                "trace",
                command,
                str(bad),
                "-o",
                str(tmp_path / "o"),
            ]
        )
        assert proc.returncode == 1
        assert "not a trace" in proc.stderr
    proc = run_command([sys.executable, "-m", "conveyor", "trace", "merge", str(bad)])
    assert proc.returncode == 2 and "-o" in proc.stderr
