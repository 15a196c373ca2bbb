"""A calibrated model of an all-to-all of small messages, from 2 to 16,384 ranks.

Run it (it starts its own small MPI jobs; ``mpiexec`` beside this Python)::

    python bench/scale_model.py [--items 1000000] [--check 4,16,32,64]
        [--check-items 100000] [--measured FILE.json ...] [--json FILE]
        [--plot FILE.png]

1. **Calibration** (2 and 3 ranks, a few seconds): the costs below are
   measured on this machine, none is typed in.

   ``t_send``
       seconds of one ``Sender.send`` of an 8-byte int into a batch (the
       sender's loop alone on its core, the receiver asleep);
   ``t_deliver``
       seconds to hand one such message to its handler and run it (the
       receiver's ``wait_quiet`` over messages that all arrived while it
       slept; the handler is bench/relay.py's, two numpy updates);
   ``t_frame``
       seconds per MPI message, sender and receiver together: the extra
       time when the same messages go in batches of 256 bytes;
   ``t_byte``
       seconds per byte framed, sender and receiver: the extra time of
       504-byte payloads over 8-byte ones, less their extra frames;
   ``t_forward``
       seconds of a relay's CPU per message it passes on (3 ranks,
       ``grid2d``: rank 1's messages to rank 2 go through rank 0, whose
       owner sleeps while its engine forwards);
   ``entry_bytes``, ``relay_entry_bytes``
       bytes one message takes in a batch, direct and relayed
       (``bytes_framed`` over messages);
   ``tau_alone``, ``tau_shared``
       the *flush quantum*: seconds of a sender's work (its thread's CPU
       time) between two background flushes of a batch; ranks in pairs
       send to each other in batches of 8 MiB that never fill, so that
       every batch leaves by ``CONVEYOR_FLUSH_DELAY_US``: ``tau_alone``
       with a core per rank (2 ranks), ``tau_shared`` with two ranks per
       core (4 ranks on 2 cores);
   ``sharing``
       the 4-rank pairs' exchange (default batches) again: its wall time
       over the model's (CPU work times ranks per core). What ranks that
       share cores pay beyond their work: context switches, idle waits
       that spin before they sleep, termination waves that need every
       rank scheduled.

2. **The model**, for P ranks, N messages of 8 bytes per rank, to ranks
   drawn uniformly, under a routing mode. From the mode's next-hop table
   (``conveyor._relay.next_hops``, the engine's own): ``k`` next hops per
   rank (batches open at once), and the fraction ``f2`` of (origin,
   destination) pairs that take two hops. Per rank:

   - messages posted to MPI batches: ``M = N (1 + f2)`` (relayed messages
     are appended again at the relay), ``m = M / k`` per next hop;
     bytes framed ``M e`` (``e``: ``entry_bytes`` direct, else
     ``relay_entry_bytes``);
   - hops per message ``1 + f2``; peak batch memory ``k B`` (B =
     ``CONVEYOR_BATCH_BYTES``);
   - **fill**: a batch leaves when full (``c = B / e`` messages), when the
     sender waits, or when the background thread finds it older than the
     flush delay. The background acts once per flush quantum ``tau`` of the
     rank's work, so the rank's traffic leaves in ``R = 1 + W / tau``
     rounds, ``W = N t_send + N f2 t_forward`` (the work that feeds the
     batches; the 1 is the flush when the sender waits at the end). Per
     round a next hop gets ``q = m / R`` messages, which leave as its full
     batches and one partial: ``max(1, q / c + 1/2)`` on average (rounds
     vary in size by more than a batch); so per rank
     ``MPI messages = k min(m, R max(1, q / c + 1/2))`` (a batch never
     holds less than one message). Full batches (``q >= c``) give the floor
     ``M e / B``: relaying nearly doubles ``M`` but writes each message in
     short form (``e`` 19 bytes against 41 for bench/relay.py's), so that
     ``grid2d``'s floor is some 0.8 times ``direct``'s; it saves most where
     direct's batches leave nearly empty (``q`` small: many ranks, short
     quantum).
   - **time**: a rank's CPU work ``W_total = N (t_send + t_deliver) +
     N f2 t_forward + F t_frame + M e t_byte`` (F: its MPI messages), and
     the wall time ``W_total`` with a core per rank, else ``W_total (P /
     cores) sharing`` (the cores do all the ranks' work in turn).

3. **Check**: the model against real runs of ``bench/relay.py`` (started
   at each of ``--check`` rank counts with ``--check-items``, or read from
   ``--measured`` files it wrote with ``--json``), with this machine's
   cores and ``tau_shared`` where ranks outnumber cores; errors in percent.

4. **Predictions** for P = 64 ... 16,384 with a core per rank
   (``tau_alone``, as on a cluster), ``--items`` per rank, every mode
   (``host``: hosts of ``--host-ranks`` ranks). ``--plot`` draws them with
   the measured points (matplotlib, if installed).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("direct", "host", "grid2d")
BATCH_BYTES = 32 << 10  # CONVEYOR_BATCH_BYTES's default
HEADER_BYTES = 24  # a batch frame's header (csrc/conveyor/wire/wire.hpp kBareHeaderBytes)


# ---------------------------------------------------------------- calibration (MPI side)


def _quiet_wall(m):
    start = time.perf_counter()
    m.wait_quiet()
    return time.perf_counter() - start


def _one_way(env, items, payload, nap):
    """Rank 0 sends `items` messages to rank 1; rank 0 gathers both ranks' figures.

    With `nap`, rank 1 sleeps that long (everything arrives meanwhile: its
    background thread receives) and then handles them: each side's cost
    alone. Without, rank 1 handles as they come (a core each) and the
    figure is the exchange's wall time. Returns, per rank: the send loop's
    seconds, the handling seconds (`nap`) or the exchange's, and the counters.
    """
    import numpy as np
    from mpi4py import MPI

    import conveyor as cv

    os.environ.update(env)
    comm = MPI.COMM_WORLD
    with cv.Messenger() as m:
        count = [0]
        received = np.zeros((m.size, 2), dtype=np.int64)

        @m.on("item")
        def item(msg):  # bench/relay.py's handler
            count[0] += 1
            received[msg.source, 0] += 1
            received[msg.source, 1] += msg.payload if payload is None else 1

        m.barrier()
        start = time.perf_counter()
        send_seconds = 0.0
        if m.rank == 0:
            send = m.sender("item").send
            for i in range(items):
                send(1, payload if payload is not None else i)
            send_seconds = time.perf_counter() - start
            m.flush()
        elif m.rank == 1 and nap:
            time.sleep(nap)
        quiet = _quiet_wall(m)
        handled = quiet if nap else time.perf_counter() - start
        assert m.rank != 1 or count[0] == items
        return comm.gather((send_seconds, handled, m.stats()), root=0)


def _handle_items(m):
    """Register bench/relay.py's handler of "item" on `m`: the work per message the model calibrates."""
    import numpy as np

    received = np.zeros((m.size, 2), dtype=np.int64)

    @m.on("item")
    def item(msg):
        received[msg.source, 0] += 1
        received[msg.source, 1] += msg.payload


def _relayed(items, nap):
    """3 ranks, grid2d: rank 1 sends to rank 2 through rank 0; rank 0's CPU seconds.

    Rank 0's owner sleeps for `nap` seconds: its engine's background thread
    forwards. Returns (rank 0's process CPU seconds, its counters), and the
    same with no traffic (the background's own cost), gathered on rank 0.
    """

    import conveyor as cv

    os.environ["CONVEYOR_ROUTE"] = "grid2d"
    out = []
    for n in (0, items):
        with cv.Messenger() as m:
            _handle_items(m)
            m.barrier()
            cpu = time.process_time()
            if m.rank == 1:
                send = m.sender("item").send
                for i in range(n):
                    send(2, i)
                m.flush()
            if m.rank == 0:
                time.sleep(nap)
            cpu = time.process_time() - cpu
            m.wait_quiet()
            out.append((cpu, m.stats()))
    return out


def _pairs(items, batch_bytes):
    """Every rank sends `items` messages to its partner (rank ^ 1), which handles them.

    Returns, gathered on rank 0, per rank: its send loop's CPU seconds (its
    thread's: what it got of a core, shared or not), the background flushes
    meanwhile, the exchange's wall seconds, and its counters.
    """
    from mpi4py import MPI

    import conveyor as cv

    os.environ["CONVEYOR_BATCH_BYTES"] = str(batch_bytes)
    os.environ["CONVEYOR_WINDOW_BYTES"] = "0" if batch_bytes > BATCH_BYTES else str(8 << 20)
    comm = MPI.COMM_WORLD
    with cv.Messenger() as m:
        _handle_items(m)
        m.barrier()
        before = m.stats()["background_flushes"]
        send = m.sender("item").send
        partner = m.rank ^ 1
        wall = time.perf_counter()
        start = time.thread_time()
        for i in range(items):
            send(partner, i)
        seconds = time.thread_time() - start
        flushes = m.stats()["background_flushes"] - before
        m.wait_quiet()
        wall = comm.allreduce(time.perf_counter() - wall, op=MPI.MAX)
        return comm.gather((seconds, flushes, wall, m.stats()), root=0)


def worker(kind, items, out):
    """The MPI side of one calibration job: writes what rank 0 gathered to `out`."""
    from mpi4py import MPI

    result = None
    if kind == "one_way":
        result = {}
        nap = 0.3 + items * 2e-6
        phases = (
            ("alone", {}, None, True),
            ("both", {}, None, False),
            # 8 times the frames: batches of 4 KiB (smaller ones pile up
            # sends in flight, which each progress round scans: not the
            # per-frame cost of an all-to-all's few KiB batches).
            ("small_batches", {"CONVEYOR_BATCH_BYTES": "4096"}, None, False),
            # 13 times the bytes (504-byte payloads) in as many frames
            # (batches 13 times larger).
            ("big_payload", {"CONVEYOR_BATCH_BYTES": str(13 * BATCH_BYTES)}, b"x" * 504, False),
        )
        # Each phase three times, interleaved: calibrate() takes the median.
        for name, env, payload, asleep in phases * 3:
            os.environ.pop("CONVEYOR_BATCH_BYTES", None)
            got = _one_way(env, items, payload, nap if asleep else None)
            if got is not None:
                result.setdefault(name, []).append(got)
    elif kind == "relayed":
        result = _relayed(items, nap=0.3 + items * 3e-6)
    elif kind == "pairs":
        # Batches of 8 MiB that never fill (every one leaves by the flush
        # delay: the quantum), then the default ones (the wall time).
        result = {"quantum": _pairs(items, 8 << 20), "exchange": _pairs(items, BATCH_BYTES)}
    if MPI.COMM_WORLD.Get_rank() == 0:
        Path(out).write_text(json.dumps(result))


# ---------------------------------------------------------------- calibration (driver)


def mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else on PATH."""
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if not found:
        sys.exit("scale_model: no mpiexec found (install the mpich wheel)")
    return found


def run_job(ranks, args, timeout=600):
    """Run ``mpiexec -n ranks python <args>``; raise with its output if it fails."""
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _job(ranks, kind, items):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        run_job(ranks, [__file__, "--worker", kind, "--items", items, "--out", out])
        return json.loads(out.read_text())


def calibrate(items):
    """Measure the model's constants with small jobs (2, 3 and 4 ranks); returns a dict."""
    one = _job(2, "one_way", items)
    # Each side alone: the send loop (rank 0) and the handling (rank 1).
    t_send = statistics.median(r[0][0] for r in one["alone"]) / items
    t_deliver = statistics.median(r[1][1] for r in one["alone"]) / items

    # Both at once, a core each: the exchange's wall time (rank 1's), and
    # what more frames or more bytes add to it (the median run of each).
    def median_run(name):
        return sorted(one[name], key=lambda r: r[1][1])[len(one[name]) // 2]

    both, small, big = median_run("both"), median_run("small_batches"), median_run("big_payload")
    wall, base = both[1][1], both[0][2]
    extra_frames = small[0][2]["frames_sent"] - base["frames_sent"]
    t_frame = max(0.0, (small[1][1] - wall) / max(1, extra_frames))
    extra_bytes = big[0][2]["bytes_framed"] - base["bytes_framed"]
    extra_big_frames = big[0][2]["frames_sent"] - base["frames_sent"]
    t_byte = max(0.0, (big[1][1] - wall - extra_big_frames * t_frame) / max(1, extra_bytes))
    entry_bytes = (base["bytes_framed"] - base["frames_sent"] * HEADER_BYTES) / base[
        "messages_sent"
    ]

    relay = _job(3, "relayed", items)
    (idle_cpu, _), (busy_cpu, busy) = relay
    forwarded = max(1, busy["messages_relayed"])
    t_forward = max(0.0, (busy_cpu - idle_cpu) / forwarded)
    relay_entry_bytes = (busy["bytes_framed"] - busy["frames_sent"] * HEADER_BYTES) / forwarded

    def pairs(ranks):
        got = _job(ranks, "pairs", items)
        # The quantum: the send loop's CPU seconds over the rounds that
        # flushed (and the flush when it waits), averaged over the ranks.
        tau = sum(s / (f + 1) for s, f, _, _ in got["quantum"]) / ranks
        # The wall time of the exchange over what the model makes of it
        # (CPU work, the cores shared): what sharing costs beyond the work.
        wall = got["exchange"][0][2]
        work = max(
            items * (t_send + t_deliver) + st["frames_sent"] * t_frame + st["bytes_framed"] * t_byte
            for _, _, _, st in got["exchange"]
        )
        return tau, wall / (work * max(1.0, ranks / (os.cpu_count() or 1)))

    tau_alone, _ = pairs(2)
    tau_shared, sharing = pairs(4)
    return {
        "items": items,
        "t_send": t_send,
        "t_deliver": t_deliver,
        "t_frame": t_frame,
        "t_byte": t_byte,
        "t_forward": t_forward,
        "entry_bytes": entry_bytes,
        "relay_entry_bytes": relay_entry_bytes,
        "tau_alone": tau_alone,
        "tau_shared": tau_shared,
        "sharing": sharing,
        "cores": os.cpu_count() or 1,
    }


# ---------------------------------------------------------------- the model


def hop_table(mode, ranks, host_ranks):
    """(k, f2): next hops per rank (batches open) and the share of pairs that take two hops.

    From the engine's own tables (conveyor._relay.next_hops), averaged over
    a few ranks (the first, the middle, the last: the grid's short row).
    """
    from conveyor._relay import next_hops

    size = host_ranks if mode == "host" else ranks
    groups = [list(range(lo, min(lo + size, ranks))) for lo in range(0, ranks, size)]
    samples = sorted({0, ranks // 2, ranks - 1})
    k = f2 = 0.0
    for rank in samples:
        hops = next_hops(mode, rank, groups) or list(range(ranks))
        k += len(set(hops))
        f2 += sum(h != d for d, h in enumerate(hops)) / ranks
    return k / len(samples), f2 / len(samples)


def predict(constants, mode, ranks, items, cores, tau, host_ranks, batch_bytes=BATCH_BYTES):
    """The model's figures for one mode at `ranks` ranks (see the module's docstring)."""
    c = constants
    k, f2 = hop_table(mode, ranks, host_ranks)
    entry = c["entry_bytes"] if mode == "direct" else c["relay_entry_bytes"]
    capacity = max(1.0, (batch_bytes - HEADER_BYTES) / entry)
    appended = items * (1 + f2)  # M: messages put in batches, relays included
    per_hop = appended / k  # m
    work = items * c["t_send"] + items * f2 * c["t_forward"]  # W: what feeds the batches
    rounds = 1 + work / tau  # R: background flushes, and the last one when the sender waits
    per_round = per_hop / rounds  # q
    # A round leaves its full batches and one partial: q / c + 1/2 on
    # average (rounds vary in size by more than a batch), at least one.
    frames = k * min(per_hop, rounds * max(1.0, per_round / capacity + 0.5))
    framed = appended * entry + frames * HEADER_BYTES
    cpu = (
        items * (c["t_send"] + c["t_deliver"])
        + items * f2 * c["t_forward"]
        + frames * c["t_frame"]
        + framed * c["t_byte"]
    )
    return {
        "mode": mode,
        "ranks": ranks,
        "items_per_rank": items,
        "next_hops": k,
        "hops": 1 + f2,
        "mpi_messages": frames,
        "mpi_messages_per_flush": k,
        "messages_per_mpi_message": appended / frames,
        "fill": min(1.0, per_round / capacity),
        "bytes": framed,
        "batch_memory_bytes": k * batch_bytes,
        "seconds": cpu * (max(1.0, ranks / cores) * constants["sharing"] if ranks > cores else 1),
    }


def tau_for(constants, ranks, cores):
    """The flush quantum of `ranks` ranks on `cores` cores: shared once ranks outnumber cores."""
    return constants["tau_alone"] if ranks <= cores else constants["tau_shared"]


# ---------------------------------------------------------------- check and predictions


def measure(ranks, items):
    """Run bench/relay.py on `ranks` ranks; its --json rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "relay.json"
        run_job(ranks, [HERE / "relay.py", "--items", items, "--json", out], timeout=900)
        return json.loads(out.read_text())


def measured_point(row):
    """bench/relay.py's row as the model's figures (per rank means)."""
    ranks = row["ranks"]
    totals = row.get("totals", {})
    point = {
        "mode": row["mode"],
        "ranks": ranks,
        "items_per_rank": row["items_per_rank"],
        "mpi_messages": row["mpi_messages_mean"],
        "batch_memory_bytes": row["batches_open_peak_max"] * BATCH_BYTES,
        "seconds": row["seconds"],
    }
    if totals:
        point["bytes"] = totals["bytes_framed"] / ranks
        appended = totals["messages_sent"] + totals["messages_relayed"]
        point["messages_per_mpi_message"] = appended / max(1, totals["frames_sent"])
        point["background_flushes"] = totals["background_flushes"] / ranks
    if "frames_sent_sending" in totals:
        # Of its MPI messages, those that left before the rank waited, and
        # its send loop's CPU seconds (t_send at this many ranks).
        point["mpi_messages_while_sending"] = totals["frames_sent_sending"] / ranks
        point["send_cpu_seconds"] = totals["send_cpu_seconds"] / ranks
    return point


CHECKED = ("mpi_messages", "bytes", "batch_memory_bytes", "seconds")


def check(constants, rows, cores, host_ranks):
    """Each measured row beside the model's prediction, and the errors in percent."""
    out = []
    for row in rows:
        real = measured_point(row)
        ranks = real["ranks"]
        model = predict(
            constants,
            real["mode"],
            ranks,
            real["items_per_rank"],
            cores,
            tau_for(constants, ranks, cores),
            host_ranks=ranks,  # one machine: one host (bench/relay.py sets no CONVEYOR_HOSTS)
        )
        errors = {
            key: 100 * (model[key] - real[key]) / real[key]
            for key in CHECKED
            if key in real and real[key]
        }
        out.append({"measured": real, "model": model, "error_percent": errors})
    return out


def predictions(constants, items, ranks_list, host_ranks):
    """The model for every mode at each rank count, a core per rank (as on a cluster)."""
    return [
        predict(
            constants, mode, p, items, cores=p, tau=constants["tau_alone"], host_ranks=host_ranks
        )
        for p in ranks_list
        for mode in MODES
    ]


def mib(n):
    return n / (1 << 20)


def print_report(document):
    c = document["constants"]
    print("measured constants (this machine):")
    print(
        f"  t_send {c['t_send'] * 1e9:.0f} ns  t_deliver {c['t_deliver'] * 1e9:.0f} ns  "
        f"t_forward {c['t_forward'] * 1e9:.0f} ns  t_frame {c['t_frame'] * 1e6:.2f} us  "
        f"t_byte {c['t_byte'] * 1e9:.2f} ns"
    )
    print(
        f"  entry {c['entry_bytes']:.1f} B, relayed {c['relay_entry_bytes']:.1f} B  "
        f"flush quantum: {c['tau_alone'] * 1e3:.2f} ms a core per rank, "
        f"{c['tau_shared'] * 1e3:.2f} ms two ranks per core"
    )
    if document["check"]:
        print("\nmodel vs bench/relay.py (per rank; error = model/measured - 1):")
        print(
            f"{'ranks':>5} {'mode':7} {'MPI msgs':>17} {'err':>5} {'msgs/batch':>15} "
            f"{'MiB sent':>13} {'err':>5} {'seconds':>13} {'err':>5}"
        )
        for entry in document["check"]:
            r, m, e = entry["measured"], entry["model"], entry["error_percent"]
            print(
                f"{r['ranks']:5} {r['mode']:7} {r['mpi_messages']:8.0f} {m['mpi_messages']:8.0f} "
                f"{e.get('mpi_messages', 0):+4.0f}% "
                f"{r.get('messages_per_mpi_message', 0):7.0f} {m['messages_per_mpi_message']:7.0f} "
                f"{mib(r.get('bytes', 0)):6.2f} {mib(m['bytes']):6.2f} {e.get('bytes', 0):+4.0f}% "
                f"{r['seconds']:6.2f} {m['seconds']:6.2f} {e.get('seconds', 0):+4.0f}%"
            )
    print(
        f"\npredictions, a core per rank, {document['items']:,} 8-byte messages per rank "
        f"(host: hosts of {document['host_ranks']} ranks):"
    )
    print(
        f"{'ranks':>6} {'mode':7} {'MPI msgs':>9} {'msgs/batch':>10} {'MiB sent':>9} "
        f"{'hops':>5} {'batch MiB':>9} {'seconds':>8}"
    )
    for p in document["predictions"]:
        print(
            f"{p['ranks']:6} {p['mode']:7} {p['mpi_messages']:9.0f} "
            f"{p['messages_per_mpi_message']:10.1f} {mib(p['bytes']):9.1f} {p['hops']:5.2f} "
            f"{mib(p['batch_memory_bytes']):9.2f} {p['seconds']:8.2f}"
        )


def plot(document, path):
    """Draw the predictions (lines) with the measured points (markers) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("mpi_messages", "MPI messages per rank"),
        ("batch_memory_bytes", "batch memory per rank (MiB)"),
        ("seconds", "seconds"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    colors = dict(zip(MODES, ("tab:blue", "tab:orange", "tab:green")))
    for ax, (key, label) in zip(axes, panels):
        scale = 1 / (1 << 20) if key.endswith("bytes") else 1
        for mode in MODES:
            pts = [p for p in document["predictions"] if p["mode"] == mode]
            ax.plot(
                [p["ranks"] for p in pts],
                [p[key] * scale for p in pts],
                color=colors[mode],
                label=f"{mode} (model, a core per rank)",
            )
            checked = [e for e in document["check"] if e["measured"]["mode"] == mode]
            if checked:
                ax.plot(
                    [e["measured"]["ranks"] for e in checked],
                    [e["measured"][key] * scale for e in checked],
                    "o",
                    color=colors[mode],
                    label=f"{mode} (measured, {document['cores']} cores)",
                )
                ax.plot(
                    [e["model"]["ranks"] for e in checked],
                    [e["model"][key] * scale for e in checked],
                    "x",
                    color=colors[mode],
                    label=f"{mode} (model, {document['cores']} cores)",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("ranks")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"all-to-all of {document['items']:,} 8-byte messages per rank "
        f"(measured: {document['check_items']:,})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="per rank, predictions")
    parser.add_argument(
        "--ranks",
        default="64,128,256,512,1024,2048,4096,8192,16384",
        help="rank counts to predict",
    )
    parser.add_argument(
        "--check", default="4,16,32,64", help="rank counts to run bench/relay.py at"
    )
    parser.add_argument("--check-items", type=int, default=100_000)
    parser.add_argument(
        "--measured", nargs="*", default=[], help="bench/relay.py --json files (instead of --check)"
    )
    parser.add_argument("--calibration-items", type=int, default=200_000)
    parser.add_argument("--constants", help="a --json file of an earlier run: reuse its constants")
    parser.add_argument("--host-ranks", type=int, default=64, help="ranks per host (host mode)")
    parser.add_argument("--json", help="write the constants, the check and the predictions here")
    parser.add_argument("--plot", help="draw the predictions and the measured points (PNG)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.items, args.out)

    if args.constants:
        constants = json.loads(Path(args.constants).read_text())["constants"]
    else:
        constants = calibrate(args.calibration_items)
    cores = constants["cores"]
    rows = []
    for path in args.measured:
        rows += json.loads(Path(path).read_text())
    if not args.measured and args.check:
        for ranks in (int(r) for r in args.check.split(",")):
            rows += measure(ranks, args.check_items)
    document = {
        "items": args.items,
        "check_items": rows[0]["items_per_rank"] if rows else args.check_items,
        "host_ranks": args.host_ranks,
        "cores": cores,
        "constants": constants,
        "check": check(constants, rows, cores, args.host_ranks),
        "predictions": predictions(
            constants, args.items, [int(r) for r in args.ranks.split(",")], args.host_ranks
        ),
    }
    print_report(document)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=1))
    if args.plot:
        try:
            plot(document, args.plot)
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 1
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
