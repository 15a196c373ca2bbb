// The exception types of the native core, shared by every room and free of
// MPI, so that the pure kernels (wire, routing, chunks) throw them without
// depending on the engine. bindings/errors.cpp maps each one to the
// façade's Python exception, in one table.
#pragma once

#include <stdexcept>

namespace conveyor {

// An MPI call failed: carries MPI's own error string.
class MPIError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// A message larger than the frame limit, or another bad argument from the caller.
class UsageError : public std::invalid_argument {
  public:
    using std::invalid_argument::invalid_argument;
};

// A frame over the frame limit: large data belongs in out-of-band buffers.
class FrameTooLarge : public UsageError {
  public:
    using UsageError::UsageError;
};

// A malformed or truncated frame (see wire.hpp): counted and dropped, never a crash.
class DecodeError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

}  // namespace conveyor
