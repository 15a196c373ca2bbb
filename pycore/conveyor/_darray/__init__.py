"""Distributed arrays: DistArray, dcall, dmap, dreduce and the driver.

One module a concept, each depending only on those listed before it:

- ``chunked``: `Chunked`, what every distributed array is (its chunk
  references, what is known of them, waiting for and gathering them), and
  making one (scatter, from_local);
- ``calls``: the tasks behind dcall, dmap and dreduce (alignment with R's
  recycling);
- ``elementwise``: numpy's broadcasting, for the operators and ufuncs;
- ``indexing``: ``x[key]`` as numpy indexes, the selections run on the owners;
- ``reductions``: sum, var, argmin, cumsum, ... along each axis;
- ``layout``: astype, reshape, transpose, concatenate, stack, nonzero;
- ``matmul``: ``x @ y``, per chunk or as map-reduce;
- ``functions``: numpy's functions on DistArrays (``__array_function__``);
- ``io``: saving to and loading from .npy directories and HDF5, each rank
  its own chunks;
- ``array``: `DistArray`, the public class, and dcall, dmap, dreduce;
- ``driver``: the driver model (`Driver`, `DriverScope`).
"""

from .array import DistArray, dcall, dmap, dreduce
from .chunked import scatter
from .driver import Driver, DriverScope

__all__ = ["DistArray", "Driver", "DriverScope", "dcall", "dmap", "dreduce", "scatter"]
