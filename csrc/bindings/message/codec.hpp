// The payload codec: Python values <-> frame bodies plus out-of-band buffers.
//
// This is the CarriageableItem machinery of the native core. Built-in carriers
// cover None, bool, int (any size), float, complex, str, bytes, bytearray,
// memoryview, numpy arrays and scalars, Address, and lists/tuples/dicts of
// these; user types implement the CarriageableItem protocol. Pickle is used
// only when the caller opts in.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "conveyor/engine/engine.hpp"
#include "conveyor/wire/wire.hpp"

namespace conveyor::py_codec {

namespace py = pybind11;

// Thrown when a value cannot be carried: becomes cv.CarriageError (a TypeError).
class CarriageError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct EncodeOptions {
    std::size_t zero_copy_threshold = 16384;
    bool allow_pickle = false;
};

// An encoded message: the frame, and the memory that travels out of band.
// Reusable: encoding into the same one again keeps its frame's capacity.
struct Encoded {
    Writer frame;
    std::vector<OutOfBand> oob;
    py::object keep;  // a list of the Python objects `oob` points into (null if none)
    // The CarriageableItems dumped into the frame, with the buffer each
    // wrote: what unsent() tells if the message does not leave.
    std::vector<std::pair<py::object, py::object>> dumped;
};

void encode_frame(Encoded& out, FrameKind kind, std::uint64_t ref, std::string_view tag,
                  py::handle payload, const EncodeOptions& options);

// The message `out` holds will not be sent (it failed to encode, or to be
// posted): calls unsent(buffer) on each item dumped into it, last first, so
// that an item can undo what its dump took (a chunk reference's weight).
// An unsent() that raises is reported as unraisable: the caller is already
// raising the error that stopped the message.
void unsent(Encoded& out);

// Decodes the body of a frame whose header was read. Each out-of-band buffer
// must be used exactly once. Throws DecodeError on anything malformed.
py::object decode_body(const std::uint8_t* body, std::size_t size,
                       const std::vector<std::shared_ptr<Buffer>>& oob, bool allow_pickle);

// Owns `obj` for C++ code that may drop it without the GIL (MPI reading
// from it in a GIL-free wait, a chunk's last reference): takes the GIL then.
KeepAlive keep_alive(py::object obj);

// A conveyor.Address (the façade's type).
py::object make_address(py::handle rank, py::handle name, py::handle ref);

// The Python types the codec needs from the façade, set once at import.
void configure(py::object address_type, py::object item_base, py::dict item_registry,
               py::object pickle_module);

}  // namespace conveyor::py_codec

namespace conveyor {

namespace py = pybind11;

// A frame kind from Python (Engine.send, encode_frame): refuses unknown ones.
inline FrameKind frame_kind(int kind) {
    if (!valid_kind(static_cast<std::uint8_t>(kind)))
        throw UsageError("unknown frame kind " + std::to_string(kind));
    return static_cast<FrameKind>(kind);
}

// A tag off the wire as a str (bytes that are not UTF-8 are replaced, not fatal).
py::object decode_tag(const std::string& tag);

}  // namespace conveyor
