// The payload format that encoder.cpp writes and decoder.cpp reads: the
// mark before each value and each run of bytes, the limits both sides
// check, and what both need of Python (the façade's types, set once by
// configure() in codec.cpp). Internal to the codec: codec.hpp is its API.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace conveyor::py_codec {

namespace py = pybind11;

// One byte before every value says what follows.
enum Type : std::uint8_t {
    T_NONE = 0,
    T_FALSE,
    T_TRUE,
    T_INT,
    T_BIGINT,
    T_FLOAT,
    T_COMPLEX,
    T_STR,
    T_BYTES,
    T_BYTEARRAY,
    T_MEMORYVIEW,
    T_LIST,
    T_TUPLE,
    T_DICT,
    T_NDARRAY,
    T_NPSCALAR,
    T_ADDRESS,
    T_ITEM,
    T_PICKLE,
};

// Where a run of bytes lives: inside the frame, or in an out-of-band buffer.
enum Storage : std::uint8_t { S_INLINE = 0, S_OUT_OF_BAND = 1 };

constexpr int kMaxDepth = 200;
constexpr char kNativeOrder = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '<' : '>';
constexpr std::uint32_t kMaxDims = 64;  // numpy's NPY_MAXDIMS

struct Types {
    py::object address;
    py::object item_base;
    py::dict registry;
    py::object pickle;
    py::object np_generic;
    py::object np_dtype;
    py::object np_descr_to_dtype;
    py::object np_asarray;
    py::object np_ascontiguousarray;
    py::object int_from_bytes;
};

// One instance for the codec's translation units (an inline function's
// static is one object across them), inline so that the decoder's
// lookups of it per array cost no call.
inline Types& types() {
    // Leaked on purpose: Python objects must not be released after the
    // interpreter is gone, which a static destructor would do.
    static Types* t = new Types();
    return *t;
}

inline std::string type_name(py::handle obj) {
    return py::str(py::type::handle_of(obj).attr("__qualname__")).cast<std::string>();
}

// Numeric, bool, datetime and fixed-size byte/str/record dtypes: their
// elements are plain bytes. Anything holding Python objects is refused,
// both when sending and when reading a dtype off the wire, and so are
// elements of no bytes (a record without fields, 'V0'): their arrays carry
// no data, so a 60-byte frame could announce 2**62 of them.
inline bool carriable_dtype(const py::dtype& dt) {
    constexpr char kItemRefcount = 0x01;  // NPY_ITEM_REFCOUNT: holds objects, records included
    if (dt.flags() & kItemRefcount || dt.itemsize() == 0) return false;
    switch (dt.kind()) {
        case 'b':
        case 'i':
        case 'u':
        case 'f':
        case 'c':
        case 'm':
        case 'M':
        case 'S':
        case 'U':
        case 'V': return true;
        default: return false;
    }
}

}  // namespace conveyor::py_codec
