"""cv.ProgressBar: the chunk tasks of DistArray work, done / total, drawn by tqdm.

Rank 0 drives a dmap over CHUNKS chunks placed on every rank; each rank's
bar (all_ranks=True, each in a file of its own) counts the tasks its rank
ran, and they add up to at least the dmap's.
"""

import io
import os

import numpy as np
import pytest

import conveyor as cv

from _helpers import nothing_left, run_case, world

CHUNKS = 8


def case_progress_counts_every_chunk_task(directory):
    with cv.Messenger() as m:
        path = os.path.join(directory, f"bar.{m.rank}.txt")
        with open(path, "w") as out:
            with cv.ProgressBar(file=out, all_ranks=True, mininterval=0) as bar:
                with m.driver() as d:
                    if d is not None:
                        x = m.array(np.arange(40.0), chunks=CHUNKS)
                        y = cv.dmap(np.sqrt, x)
                        assert np.array_equal(y.collect(), np.sqrt(np.arange(40.0)))
                        del x, y
                m.wait_quiet()
        assert bar.done == bar.total, (m.rank, bar.done, bar.total)
        totals = world().allgather(bar.total)
        assert sum(totals) >= CHUNKS, totals
        with open(path) as f:
            drawn = f.read()
        assert f"rank {m.rank} chunks" in drawn
        assert f"{bar.total}/{bar.total}" in drawn, drawn
        # Outside its block a bar counts nothing.
        with m.driver() as d:
            if d is not None:
                cv.dmap(np.sqrt, m.array(np.arange(8.0), chunks=2)).collect()
        m.wait_quiet()
        assert bar.total == totals[m.rank]
        nothing_left(m)


def test_progress_counts_every_chunk_task(mpirun, tmp_path, nranks):
    run_case(mpirun, nranks, case_progress_counts_every_chunk_task, str(tmp_path))


def test_rank_0_draws_by_default():
    out = io.StringIO()
    with cv.Messenger() as m, cv.ProgressBar(file=out, mininterval=0) as bar:
        cv.dmap(np.negative, m.array(np.arange(6), chunks=3)).collect()
    assert bar.total == bar.done >= 3
    assert f"{bar.total}/{bar.total}" in out.getvalue()


def test_without_tqdm_the_bar_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=r"conveyor-mpi\[progress\]"):
        cv.ProgressBar()
