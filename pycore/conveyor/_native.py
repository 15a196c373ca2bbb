"""Loads the native core and hands it the façade's types (once, at import)."""

import pickle

# mpi4py.MPI first: it initialises MPI and loads the MPI library mpi4py
# chose, which the extensions then use (they carry no run path of their own:
# the dynamic linker finds libmpi already loaded, by its soname).
import mpi4py.MPI  # noqa: F401  (import order matters; isort keeps it first)

from . import _core, _mpi
from ._carriage import Address, CarriageableItem, _registry
from ._errors import CarriageError, ConveyorError, FrameError, MessageTooLargeError, MPIError

_core.configure(
    address_type=Address,
    item_base=CarriageableItem,
    registry=_registry,
    pickle=pickle,
    conveyor_error=ConveyorError,
    carriage_error=CarriageError,
    frame_error=FrameError,
    too_large_error=MessageTooLargeError,
    mpi_error=MPIError,
)

comm_handle = _mpi.comm_handle
core = _core
