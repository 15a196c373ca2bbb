"""Runs one test case on every rank: ``mpi_entry.py FILE FUNCTION [ARG ...]``.

A case is a module-level function of a test file; it fails by raising. A
failure on any rank prints its traceback and aborts the whole job, so the
other ranks never hang waiting for it.
"""

import importlib.util
import sys
import traceback


def main():
    path, name, *args = sys.argv[1:]
    spec = importlib.util.spec_from_file_location("conveyor_test_case", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        getattr(module, name)(*args)
    except BaseException:
        from mpi4py import MPI

        print(f"[rank {MPI.COMM_WORLD.Get_rank()}] case {name} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        if MPI.COMM_WORLD.Get_size() > 1:
            MPI.COMM_WORLD.Abort(1)
        sys.exit(1)


if __name__ == "__main__":
    main()
