// conveyor._core.align and conveyor._core.ChunkTable: the distributed-data kernels.
#pragma once

#include <pybind11/pybind11.h>

namespace conveyor {

// Adds align(), ChunkTable and the CHUNK_* state constants to `m`.
void bind_chunks(pybind11::module_& m);

}  // namespace conveyor
