"""Bad arguments to the public API: does each give a clear error, and lose nothing?

Run it as a program (it starts its own jobs)::

    python bench/api_inputs.py [--mpiexec PATH] [--timeout 20] [--json FILE] [--markdown FILE]

Every probe calls one public function or method with one bad argument, on
rank 0 of a 2-rank job whose rank 1 serves. Each outcome is one of:

clear
    an exception of a documented kind (TypeError, ValueError, LookupError,
    OverflowError or a conveyor error) whose message is not a dump of the
    native binding's signatures nor a Python internal's (``'NoneType'
    object``, ``has no attribute``);
unclear
    any other exception;
accepted
    no exception: the bad argument was taken silently;
crash
    the job died (a signal, an abort, or an exit without the probe's
    report);
hang
    the probe took longer than ``--timeout`` seconds.

Collective calls (`DistArray.from_npy`, `Messenger.wait_quiet` ...) are
probed only with arguments refused before anything collective: called on
one rank alone they would wait for the others, as MPI's own collectives do.
After each probe that did not crash or hang, rank 0 checks that the
messenger still answers a request from rank 1 (``lost`` counts those that
did not). A job that crashed or hung is ended and a new one goes on with
the next probe, so one bad probe cannot hide the others. The table goes to
standard output (``--markdown`` writes it, ``--json`` every probe's
outcome), and the exit status is 1 if any probe was unclear, accepted,
crashed, hung or lost the messenger.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

CLEAR_TYPES = ("TypeError", "ValueError", "LookupError", "KeyError", "IndexError", "OverflowError")
UNCLEAR_TEXT = ("incompatible function arguments", "'NoneType' object", "has no attribute")


def probes():
    """(area, what, call): each call takes the messenger and a 1-row DistArray."""
    import numpy as np

    import conveyor as cv

    def result(timeout):
        return lambda m, x: m.request(1, "echo", 1).result(timeout=timeout)

    return [
        ("Messenger", "comm='world'", lambda m, x: cv.Messenger("world")),
        ("Messenger", "serve='process'", lambda m, x: cv.Messenger(serve="process")),
        ("Messenger", "zero_copy_threshold=-1", lambda m, x: cv.Messenger(zero_copy_threshold=-1)),
        (
            "Messenger",
            "zero_copy_threshold='big'",
            lambda m, x: cv.Messenger(zero_copy_threshold="big"),
        ),
        ("send", "rank -1", lambda m, x: m.send(-1, "echo", 1)),
        ("send", "rank = size", lambda m, x: m.send(2, "echo", 1)),
        ("send", "rank '1'", lambda m, x: m.send("1", "echo", 1)),
        ("send", "rank 1.5", lambda m, x: m.send(1.5, "echo", 1)),
        ("send", "rank 2**70", lambda m, x: m.send(2**70, "echo", 1)),
        ("send", "tag ''", lambda m, x: m.send(1, "", 1)),
        ("send", "tag 5", lambda m, x: m.send(1, 5, 1)),
        ("send", "tag None", lambda m, x: m.send(1, None, 1)),
        ("send", "reserved tag", lambda m, x: m.send(1, "conveyor.chunk.task", {})),
        ("send", "object() without pickle", lambda m, x: m.send(1, "echo", object())),
        ("send", "Address ref=-1", lambda m, x: m.send(cv.Address(1, "echo", ref=-1), 1)),
        ("send", "Address ref=2**64", lambda m, x: m.send(cv.Address(1, "echo", ref=2**64), 1)),
        ("send", "Address rank 'x'", lambda m, x: m.send(cv.Address("x", "echo"), 1)),
        ("request", "timeout=-1", lambda m, x: m.request(1, "echo", 1, timeout=-1)),
        ("request", "rank -3", lambda m, x: m.request(-3, "echo", 1)),
        ("Future.result", "timeout=nan", result(math.nan)),
        ("Future.result", "timeout=-1", result(-1)),
        ("Future.result", "timeout='1'", result("1")),
        ("Future.result", "timeout=inf+1j", result(1j)),
        (
            "Future",
            "add_done_callback(5)",
            lambda m, x: m.request(1, "echo", 1).add_done_callback(5),
        ),
        (
            "request_stream",
            "timeout=nan",
            lambda m, x: m.request_stream(1, "echo", 1, timeout=math.nan),
        ),
        ("on", "tag 5", lambda m, x: m.on(5)),
        ("on", "handler 5", lambda m, x: m.on("h")(5)),
        ("on", "reserved tag", lambda m, x: m.on("conveyor.x")(print)),
        ("on", "tag taken", lambda m, x: m.on("echo")(print)),
        ("sender", "rank 9", lambda m, x: m.sender(9, "echo")),
        ("sender", "tag b'x'", lambda m, x: m.sender(1, b"x")),
        ("fetch", "rank 9", lambda m, x: m.fetch(9, "item")),
        ("fetch", "name 5", lambda m, x: m.fetch(1, 5)),
        ("fetch", "missing item", lambda m, x: m.fetch(1, "nothing here").result(timeout=10)),
        ("order", "not a Transfer", lambda m, x: m.order(1, "copy it")),
        ("Copy", "name None", lambda m, x: cv.Copy(None, 0)),
        ("Copy", "dest -1", lambda m, x: cv.Copy("item", -1)),
        ("store.put", "name 5", lambda m, x: m.store.put(5, np.zeros(2))),
        ("store.put", "name ''", lambda m, x: m.store.put("", np.zeros(2))),
        ("table", "name 5", lambda m, x: m.table(5)),
        ("table", "reserved name", lambda m, x: m.table("conveyor.chunks")),
        ("table.put", "key [1]", lambda m, x: m.table("t").put([1], 1)),
        ("table.get", "key object()", lambda m, x: m.table("t").get(object())),
        ("progress", "nan", lambda m, x: m.progress(math.nan)),
        ("progress", "-1", lambda m, x: m.progress(-1)),
        ("progress", "'1'", lambda m, x: m.progress("1")),
        ("wait_quiet", "timeout=nan", lambda m, x: m.wait_quiet(timeout=math.nan)),
        ("wait_quiet", "timeout=-1", lambda m, x: m.wait_quiet(timeout=-1)),
        ("bcast", "root 5", lambda m, x: m.bcast(1, root=5)),
        ("gather", "root -1", lambda m, x: m.gather(1, root=-1)),
        ("allreduce", "op 'sum'", lambda m, x: m.allreduce(1, op="sum")),
        ("barrier", "timeout=nan", lambda m, x: m.barrier(timeout=math.nan)),
        ("array", "3-D", lambda m, x: m.array(np.zeros((2, 2, 2)))),
        ("array", "object dtype", lambda m, x: m.array(np.array([object()]))),
        ("array", "chunks=-1", lambda m, x: m.array(np.zeros(4), chunks=-1)),
        ("array", "chunks=[1, 2] for 4 rows", lambda m, x: m.array(np.zeros(4), chunks=[1, 2])),
        ("array", "ranks=[5]", lambda m, x: m.array(np.zeros(4), chunks=1, ranks=[5])),
        ("array", "chunks=2.5", lambda m, x: m.array(np.zeros(4), chunks=2.5)),
        ("dcall", "no DistArray", lambda m, x: cv.dcall(np.add, 1, 2)),
        ("dcall", "f not callable", lambda m, x: cv.dcall(5, x).collect()),
        ("dmap", "no DistArray", lambda m, x: cv.dmap(np.add, [1], 2)),
        ("dreduce", "a list", lambda m, x: cv.dreduce(np.add, [1, 2])),
        ("DistArray[]", "x[100]", lambda m, x: x[100]),
        ("DistArray[]", "x['a']", lambda m, x: x["a"]),
        ("DistArray[]", "x[1.5]", lambda m, x: x[1.5]),
        ("DistArray[]", "x[[0, 100]]", lambda m, x: x[[0, 100]]),
        ("DistArray[]", "mask of wrong length", lambda m, x: x[np.ones(3, bool)]),
        ("DistArray", "x + shorter", lambda m, x: x + np.ones(3)),
        ("DistArray", "reshape(3)", lambda m, x: x.reshape(3)),
        ("DistArray", "sum(axis=2)", lambda m, x: x.sum(axis=2)),
        ("DistArray", "astype('no such')", lambda m, x: x.astype("no such dtype")),
        ("DistArray", "bool(x)", lambda m, x: bool(x)),
        ("DistArray", "rebalance(0)", lambda m, x: x.rebalance(0)),
        ("DistArray", "argmax(axis=1) of 1-D", lambda m, x: x.argmax(axis=1)),
        ("executor", "submit(5)", lambda m, x: m.executor().submit(5)),
        (
            "executor",
            "map(chunksize=0)",
            lambda m, x: list(m.executor().map(abs, [1], chunksize=0)),
        ),
        ("spawn", "rank 9", lambda m, x: m.spawn(9, dict)),
        ("spawn", "cls 5", lambda m, x: m.spawn(1, 5).result(timeout=10)),
        ("lookup", "name 5", lambda m, x: m.lookup(5)),
        ("lookup", "unknown name", lambda m, x: m.lookup("nobody").result(timeout=10)),
        ("Receiver", "register('x')", lambda m, x: m.register("x")),
        ("dump_state", "file 5", lambda m, x: m.dump_state(file=5)),
    ]


def classify(exc):
    import conveyor as cv

    if (
        isinstance(exc, cv.ConveyorError)
        or type(exc).__name__ in CLEAR_TYPES
        or isinstance(exc, (TypeError, ValueError, LookupError, OverflowError))
    ):
        text = str(exc)
        if text and not any(bad in text for bad in UNCLEAR_TEXT):
            return "clear"
    return "unclear"


def rank_side(start, log):
    """Run probes from `start` on rank 0 (rank 1 serves), appending one JSON line each to `log`."""
    import numpy as np

    import conveyor as cv

    with cv.Messenger() as m:
        m.on("echo")(lambda msg: msg.payload)
        stop = []
        m.on("stop")(lambda msg: stop.append(1))
        if m.rank == 0:
            x = m.array(np.arange(4.0), chunks=2)
            table = probes()
            with open(log, "a") as out:
                for index in range(start, len(table)):
                    area, what, call = table[index]
                    out.write(json.dumps({"index": index, "started": True}) + "\n")
                    out.flush()
                    try:
                        call(m, x)
                        outcome, text = "accepted", ""
                    except BaseException as exc:  # noqa: BLE001 - the outcome is what is measured
                        outcome, text = classify(exc), f"{type(exc).__name__}: {exc}"[:300]
                    try:
                        lost = m.request(1, "echo", index).result(timeout=10) != index
                    except Exception:
                        lost = True
                    record = {"index": index, "area": area, "what": what, "outcome": outcome}
                    record.update(error=text, lost=lost)
                    out.write(json.dumps(record) + "\n")
                    out.flush()
            m.send(1, "stop", None)
        else:
            while not stop:
                m.progress(0.01)
        m.wait_quiet()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mpiexec", default=None)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a probe may take")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--rank-side", nargs=2, metavar=("START", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_side:
        rank_side(int(args.rank_side[0]), args.rank_side[1])
        return 0

    from conveyor.cli.launch import find_mpiexec, kill_group, start_in_group

    mpiexec = args.mpiexec or find_mpiexec()
    total = len(probes())
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        log, output = os.path.join(scratch, "probes.jsonl"), os.path.join(scratch, "output")
        start = 0
        while start < total:
            cmd = [mpiexec, "-n", "2", sys.executable, __file__, "--rank-side", str(start), log]
            with open(output, "w") as out:
                job = start_in_group(cmd, stdout=out, stderr=subprocess.STDOUT)
                status = watch(job, log, args.timeout)
                kill_group(job)
            lines = read_log(log)
            for line in lines:
                if "outcome" in line:
                    results[line["index"]] = line
            last = max((line["index"] for line in lines if line.get("started")), default=-1)
            if last >= start and last not in results:  # the job ended inside this probe
                area, what, _ = probes()[last]
                results[last] = {
                    "index": last,
                    "area": area,
                    "what": what,
                    "outcome": status,
                    "error": open(output).read()[-300:],
                    "lost": True,
                }
            elif last < start:  # the job ended before any probe: nothing to go on with
                sys.exit(f"api_inputs: the job ended ({status}) before probe {start}")
            start = last + 1
    ordered = [results[i] for i in sorted(results)]
    table = report(ordered)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(ordered, f, indent=1)
    bad = [r for r in ordered if r["outcome"] != "clear" or r["lost"]]
    for r in bad:
        print(
            f"  {r['area']} {r['what']}: {r['outcome']}{' (lost)' if r['lost'] else ''} {r['error']}"
        )
    return 1 if bad else 0


def read_log(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def watch(job, log, timeout):
    """Wait for `job`; "crash" if it ends, "hang" if one probe runs `timeout` s."""
    seen, since = None, time.monotonic()
    while job.poll() is None:
        time.sleep(0.2)
        lines = read_log(log)
        newest = lines[-1] if lines else None
        if newest != seen:
            seen, since = newest, time.monotonic()
        elif time.monotonic() - since > timeout:  # a probe, or the job's end, hangs
            return "hang"
    return "crash"


def report(rows):
    kinds = ["clear", "unclear", "accepted", "crash", "hang"]
    lines = [
        "| area | tried | clear error | unclear | accepted | crash | hang | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    areas = list(dict.fromkeys(r["area"] for r in rows))
    for area in areas + ["all"]:
        mine = [r for r in rows if area in ("all", r["area"])]
        counts = [sum(r["outcome"] == k for r in mine) for k in kinds]
        lost = sum(r["lost"] for r in mine)
        name = "**all**" if area == "all" else f"`{area}`"
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(map(str, counts)) + f" | {lost} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
