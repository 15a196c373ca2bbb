"""Loads the native core and hands it the façade's types (once, at import)."""

import pickle

# Importing the bridge imports mpi4py.MPI first: MPI is initialised and the
# MPI library mpi4py chose is loaded, so _core links against that same one.
from . import (
    _core,
    _mpi,  # noqa: F401  (import order matters)
)
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
