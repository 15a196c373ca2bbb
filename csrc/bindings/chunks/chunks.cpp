// conveyor._core.chunks.align and .ChunkTable: the distributed-data
// kernels. Chunk values are numpy arrays held without a copy: the table keeps the
// array object alive, and value() hands out read-only views of its memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "bindings/message/codec.hpp"
#include "conveyor/chunks/align.hpp"
#include "conveyor/chunks/chunks.hpp"

namespace py = pybind11;

namespace conveyor {

namespace {

// The rows as numbers that fit an int64 array, whatever integer dtype they came in.
std::vector<std::uint64_t> chunk_sizes(py::handle sizes) {
    py::array a = py::module_::import("numpy").attr("asarray")(sizes);
    if (a.ndim() != 1) throw UsageError("chunk sizes must be a 1-D sequence of integers");
    std::vector<std::uint64_t> out(static_cast<std::size_t>(a.size()));
    if (out.empty()) return out;  // [] arrives as float64
    char kind = a.dtype().kind();
    if (kind == 'u') {
        auto u = py::array_t<std::uint64_t, py::array::forcecast>::ensure(a).unchecked<1>();
        for (std::size_t i = 0; i < out.size(); ++i) out[i] = u(static_cast<py::ssize_t>(i));
    } else if (kind == 'i') {
        auto s = py::array_t<std::int64_t, py::array::forcecast>::ensure(a).unchecked<1>();
        for (std::size_t i = 0; i < out.size(); ++i) {
            auto v = s(static_cast<py::ssize_t>(i));
            if (v < 0)
                throw UsageError("chunk size " + std::to_string(v) + " at index " +
                                 std::to_string(i) + " is negative");
            out[i] = static_cast<std::uint64_t>(v);
        }
    } else {
        throw py::type_error("chunk sizes must be integers, not dtype " +
                             py::str(a.dtype()).cast<std::string>());
    }
    for (std::size_t i = 0; i < out.size(); ++i)
        if (out[i] > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
            throw UsageError("chunk size " + std::to_string(out[i]) + " at index " +
                             std::to_string(i) + " is larger than 2**63 - 1");
    return out;
}

py::array_t<std::int64_t> align_rows(py::handle sizes, std::int64_t begin, std::int64_t end) {
    if (begin < 0 || end < 0)
        throw UsageError("target rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                         ") must not be negative");
    auto pieces = align(chunk_sizes(sizes), static_cast<std::uint64_t>(begin),
                        static_cast<std::uint64_t>(end));
    py::array_t<std::int64_t> out({static_cast<py::ssize_t>(pieces.size()), py::ssize_t(3)});
    auto rows = out.mutable_unchecked<2>();
    for (std::size_t i = 0; i < pieces.size(); ++i) {
        auto r = static_cast<py::ssize_t>(i);
        rows(r, 0) = static_cast<std::int64_t>(pieces[i].chunk);
        rows(r, 1) = static_cast<std::int64_t>(pieces[i].start);
        rows(r, 2) = static_cast<std::int64_t>(pieces[i].stop);
    }
    return out;
}

// The array's memory, kept alive by the array itself. A non-contiguous
// array is copied once, since a chunk is read as one block of rows. Object
// and structured dtypes are refused: the table keeps dtype.str, which
// rebuilds neither.
ChunkValue array_value(py::handle obj) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string("a chunk value must be a numpy array, not ") +
                             Py_TYPE(obj.ptr())->tp_name);
    auto array = py::reinterpret_borrow<py::array>(obj);
    py::dtype dtype = array.dtype();
    if (dtype.attr("hasobject").cast<bool>() || !dtype.attr("fields").is_none())
        throw py::type_error("a chunk value needs a plain dtype, not " +
                             py::str(dtype).cast<std::string>());
    if (!(array.flags() & py::array::c_style))
        array = py::module_::import("numpy").attr("ascontiguousarray")(array);
    ChunkValue v;
    v.data = array.data();
    v.size = static_cast<std::size_t>(array.nbytes());
    v.dtype = dtype.attr("str").cast<std::string>();
    v.shape.assign(array.shape(), array.shape() + array.ndim());
    v.keep = py_codec::keep_alive(std::move(array));
    return v;
}

py::array array_view(const ChunkValue& v) {
    std::vector<py::ssize_t> shape(v.shape.begin(), v.shape.end());
    py::capsule base(new KeepAlive(v.keep), [](void* p) { delete static_cast<KeepAlive*>(p); });
    py::array view(py::dtype(v.dtype), shape, {}, v.data, base);
    // Other views of the value may be anywhere, on this rank and others.
    view.attr("flags").attr("writeable") = false;
    return view;
}

// (freed, home, weight): what the façade does next (see Released).
py::tuple released(const Released& r) { return py::make_tuple(r.freed, r.home, r.weight); }

}  // namespace

void register_chunks(py::module_& m) {
    m.def("align", &align_rows, py::arg("sizes"), py::arg("begin"), py::arg("end"));

    m.attr("CHUNK_PENDING") = static_cast<int>(ChunkState::Pending);
    m.attr("CHUNK_RESOLVED") = static_cast<int>(ChunkState::Resolved);
    m.attr("CHUNK_ERROR") = static_cast<int>(ChunkState::Error);

    py::class_<ChunkTable>(m, "ChunkTable")
        .def(py::init<int>(), py::arg("rank"))
        .def_readonly_static("MINT_WEIGHT", &ChunkTable::kMintWeight)
        .def_readonly_static("LEND_CAP", &ChunkTable::kLendCap)
        .def_readonly_static("REFILL_BELOW", &ChunkTable::kRefillBelow)
        .def_property_readonly("rank", &ChunkTable::rank)
        .def("new_id", &ChunkTable::new_id)
        .def_static("creator_of", &ChunkTable::creator_of, py::arg("id"))
        .def("create", &ChunkTable::create, py::arg("id"), py::arg("lent_weight") = 0)
        .def(
            "resolve",
            [](ChunkTable& t, ChunkId id, py::handle array) {
                return t.resolve(id, array_value(array));
            },
            py::arg("id"), py::arg("array"))
        .def(
            "fail", [](ChunkTable& t, ChunkId id, py::bytes error) { return t.fail(id, error); },
            py::arg("id"), py::arg("error"))
        .def(
            "state", [](const ChunkTable& t, ChunkId id) { return static_cast<int>(t.state(id)); },
            py::arg("id"))
        .def(
            "value", [](const ChunkTable& t, ChunkId id) { return array_view(t.value(id)); },
            py::arg("id"))
        .def(
            "replace",
            [](ChunkTable& t, ChunkId id, py::handle array) { t.replace(id, array_value(array)); },
            py::arg("id"), py::arg("array"))
        .def(
            "error", [](const ChunkTable& t, ChunkId id) { return py::bytes(t.error(id)); },
            py::arg("id"))
        .def("add_waiter", &ChunkTable::add_waiter, py::arg("id"), py::arg("token"))
        .def("hold", &ChunkTable::hold, py::arg("id"))
        .def("hold_owned", &ChunkTable::hold_owned, py::arg("id"))
        .def(
            "release", [](ChunkTable& t, ChunkId id) { return released(t.release(id)); },
            py::arg("id"))
        .def(
            "lend",
            [](ChunkTable& t, ChunkId id) {
                auto l = t.lend(id);
                return py::make_tuple(l.weight, l.home, l.refill);
            },
            py::arg("id"))
        .def(
            "adopt",
            [](ChunkTable& t, ChunkId id, int owner, int home, std::uint64_t weight) {
                return released(t.adopt(id, owner, home, weight));
            },
            py::arg("id"), py::arg("owner"), py::arg("home"), py::arg("weight"))
        .def(
            "give_back",
            [](ChunkTable& t, ChunkId id, std::uint64_t weight) {
                return released(t.give_back(id, weight));
            },
            py::arg("id"), py::arg("weight"))
        .def("stats",
             [](const ChunkTable& t) {
                 auto s = t.stats();
                 py::dict d;
                 d["chunks"] = s.chunks;
                 d["bytes"] = s.bytes;
                 d["pending"] = s.pending;
                 d["failed"] = s.failed;
                 d["placeholders"] = s.placeholders;
                 d["foreign"] = s.foreign;
                 return d;
             })
        .def("__contains__", &ChunkTable::contains, py::arg("id"))
        .def("__len__", &ChunkTable::size);
}

}  // namespace conveyor
