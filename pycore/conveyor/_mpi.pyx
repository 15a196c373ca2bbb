# cython: language_level=3
"""The bridge to mpi4py: the raw MPI handle behind an ``mpi4py.MPI.Comm``.

Importing this module imports ``mpi4py.MPI``, which initialises MPI and loads
the MPI library that ``conveyor._core`` is then linked against at run time.
"""

from mpi4py cimport MPI
from mpi4py.libmpi cimport MPI_Comm
from libc.stdint cimport intptr_t


def comm_handle(MPI.Comm comm not None):
    """Return the MPI_Comm of `comm` as an integer for the native core."""
    return <intptr_t>comm.ob_mpi
