// Keeps someone else's memory alive while C++ code reads it (MPI sending
// from a user's array, a chunk table holding a value): whoever owns it
// decides how it is released (a Python object needs the GIL).
#pragma once

#include <memory>

namespace conveyor {

using KeepAlive = std::shared_ptr<void>;

}  // namespace conveyor
