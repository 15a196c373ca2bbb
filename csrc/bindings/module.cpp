// conveyor._core: the one native boundary of the package.
//
// Python calls a small set of entry points: Engine (send, poll, the
// quiescence wave, stats), the frame codec for tests, and route() for
// batches. Every C++ exception is mapped to a Python one in one place
// (translate_exceptions); blocking waits release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <type_traits>

#include "bindings/codec.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/route.hpp"

namespace py = pybind11;
using namespace conveyor;

namespace {

// The façade's exception classes, handed over once by configure().
struct ErrorTypes {
    py::object carriage, frame, too_large, mpi;
};
ErrorTypes& errors() {
    static ErrorTypes* e = new ErrorTypes();  // leaked: outlives the interpreter safely
    return *e;
}

void translate_exceptions(std::exception_ptr p) {
    try {
        if (p) std::rethrow_exception(p);
    } catch (const py_codec::CarriageError& e) {
        PyErr_SetString(errors().carriage.ptr(), e.what());
    } catch (const DecodeError& e) {
        PyErr_SetString(errors().frame.ptr(), e.what());
    } catch (const FrameTooLarge& e) {
        PyErr_SetString(errors().too_large.ptr(), e.what());
    } catch (const MPIError& e) {
        PyErr_SetString(errors().mpi.ptr(), e.what());
    } catch (const UsageError& e) {
        PyErr_SetString(PyExc_ValueError, e.what());
    }
}

// MPI_Comm is an int in MPICH's ABI and a pointer in Open MPI's (a template,
// so that only the branch for this MPI's handle type is compiled).
template <class Handle = MPI_Comm>
Handle comm_from_handle(std::intptr_t handle) {
    if constexpr (std::is_pointer_v<Handle>) {
        return reinterpret_cast<Handle>(handle);
    } else {
        return static_cast<Handle>(handle);
    }
}

// Releases Python objects that MPI was reading from, possibly from a GIL-free wait.
KeepAlive hold(py::object obj) {
    return KeepAlive(new py::object(std::move(obj)), [](void* p) {
        py::gil_scoped_acquire gil;
        delete static_cast<py::object*>(p);
    });
}

FrameKind frame_kind(int kind) {
    if (!valid_kind(static_cast<std::uint8_t>(kind)))
        throw UsageError("unknown frame kind " + std::to_string(kind));
    return static_cast<FrameKind>(kind);
}

// A delivered message as the façade consumes it:
// (kind, source, ref, tag, payload, error). kind 0 is a rejected frame;
// error is None, or why the frame or its payload could not be read.
py::tuple delivery(const Incoming& in, bool allow_pickle) {
    if (!in.malformed.empty())
        return py::make_tuple(0, in.source, 0, "", py::none(), in.malformed);
    const auto& h = in.header;
    py::object payload = py::none();
    py::object error = py::none();
    try {
        payload = py_codec::decode_body(in.frame.data() + h.body_offset,
                                        in.frame.size() - h.body_offset, in.oob, allow_pickle);
    } catch (const DecodeError& e) {
        error = py::str(e.what());
    }
    py::object tag = py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(h.tag.data(), h.tag.size(), "replace"));
    return py::make_tuple(static_cast<int>(h.kind), in.source, h.ref, tag, payload, error);
}

class PyEngine {
  public:
    PyEngine(std::intptr_t comm, std::size_t zero_copy_threshold, bool allow_pickle,
             const EngineOptions& options)
        : engine_(comm_from_handle(comm), options) {
        codec_.zero_copy_threshold = zero_copy_threshold;
        codec_.allow_pickle = allow_pickle;
    }

    void send(int dest, int kind, std::uint64_t ref, const std::string& tag, py::handle payload) {
        auto encoded = py_codec::encode_frame(frame_kind(kind), ref, tag, payload, codec_);
        KeepAlive keep;
        if (!encoded.oob.empty()) keep = hold(std::move(encoded.keep));
        engine_.post(dest, std::move(encoded.frame), encoded.oob, std::move(keep));
    }

    void post_raw(int dest, py::bytes frame) {
        std::string s = frame;
        engine_.post(dest, std::vector<std::uint8_t>(s.begin(), s.end()), {}, nullptr);
    }

    py::object poll(double timeout) {
        if (!engine_.has_ready()) engine_.progress();
        if (!engine_.has_ready() && timeout != 0) {
            py::gil_scoped_release nogil;
            engine_.wait(timeout);
        }
        return pop_ready();
    }

    // The next message already received, without another round of MPI progress.
    py::object pop_ready() {
        auto in = engine_.pop();
        if (!in) return py::none();
        return delivery(*in, codec_.allow_pickle);
    }

    py::object wave_done() {
        if (!engine_.wave_done()) return py::none();
        return py::make_tuple(engine_.wave_sent(), engine_.wave_handled());
    }

    bool flush_sends(double timeout) {
        py::gil_scoped_release nogil;
        return engine_.flush_sends(timeout);
    }

    py::dict stats() const {
        const auto& s = engine_.stats();
        py::dict d;
        d["messages_sent"] = s.messages_sent;
        d["messages_handled"] = s.messages_handled;
        d["frames_sent"] = s.frames_sent;
        d["frames_received"] = s.frames_received;
        d["frames_malformed"] = s.frames_malformed;
        d["bytes_framed"] = s.bytes_framed;
        d["bytes_zero_copy_sent"] = s.bytes_zero_copy_sent;
        d["bytes_zero_copy_received"] = s.bytes_zero_copy_received;
        d["waits_slept"] = s.waits_slept;
        d["pending_sends"] = engine_.pending_sends();
        d["pending_receives"] = engine_.pending_receives();
        d["buffer_cache_bytes"] = Buffer::cached_bytes();
        return d;
    }

    Engine& engine() { return engine_; }
    const py_codec::EncodeOptions& codec() const { return codec_; }

  private:
    Engine engine_;
    py_codec::EncodeOptions codec_;
};

py::tuple encode_frame(int kind, std::uint64_t ref, const std::string& tag, py::handle payload,
                       std::size_t zero_copy_threshold, bool allow_pickle) {
    py_codec::EncodeOptions options{zero_copy_threshold, allow_pickle};
    auto encoded = py_codec::encode_frame(frame_kind(kind), ref, tag, payload, options);
    py::list oob;
    for (const auto& b : encoded.oob)
        oob.append(py::bytes(static_cast<const char*>(b.data), b.size));
    return py::make_tuple(
        py::bytes(reinterpret_cast<const char*>(encoded.frame.data()), encoded.frame.size()), oob);
}

py::tuple decode_frame(py::bytes frame, const std::vector<py::bytes>& oob, bool allow_pickle) {
    Incoming in;
    std::string raw = frame;
    in.frame.assign(raw.begin(), raw.end());
    in.header = read_header(in.frame.data(), in.frame.size());
    if (in.header.oob.size() != oob.size())
        throw DecodeError("frame announces " + std::to_string(in.header.oob.size()) +
                          " out-of-band buffers, " + std::to_string(oob.size()) + " given");
    for (std::size_t i = 0; i < oob.size(); ++i) {
        std::string b = oob[i];
        if (b.size() != in.header.oob[i])
            throw DecodeError("out-of-band buffer " + std::to_string(i) + " has the wrong size");
        auto buf = std::make_shared<Buffer>(b.size());
        std::memcpy(buf->data(), b.data(), b.size());
        in.oob.push_back(buf);
    }
    auto t = delivery(in, allow_pickle);
    if (!t[5].is_none()) throw DecodeError(t[5].cast<std::string>());
    return py::make_tuple(t[0], t[2], t[3], t[4]);
}

py::tuple route(py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> dests,
                py::array items, int nranks) {
    if (nranks < 1) throw UsageError("nranks must be at least 1");
    if (dests.ndim() != 1) throw UsageError("destinations must be a 1-D integer array");
    if (items.ndim() < 1 || items.shape(0) != dests.shape(0))
        throw UsageError("items must have one row per destination (" +
                         std::to_string(dests.shape(0)) + " destinations)");
    items = py::module_::import("numpy").attr("ascontiguousarray")(items);
    std::vector<py::ssize_t> shape(items.shape(), items.shape() + items.ndim());
    py::array out(items.dtype(), shape);
    py::array_t<std::uint64_t> offsets(nranks + 1);
    std::size_t n = static_cast<std::size_t>(dests.shape(0));
    std::size_t row_bytes = n ? static_cast<std::size_t>(items.nbytes()) / n : 0;
    {
        py::gil_scoped_release nogil;
        route_rows(dests.data(), n, static_cast<const std::uint8_t*>(items.data()), row_bytes,
                   nranks, static_cast<std::uint8_t*>(out.mutable_data()),
                   offsets.mutable_data());
    }
    return py::make_tuple(out, offsets);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "The native core of conveyor (internal: use the conveyor package).";
    py::register_exception_translator(translate_exceptions);

    m.def(
        "configure",
        [](py::object address_type, py::object item_base, py::dict registry, py::object pickle,
           py::object carriage_error, py::object frame_error, py::object too_large_error,
           py::object mpi_error) {
            py_codec::configure(address_type, item_base, registry, pickle);
            errors() = {carriage_error, frame_error, too_large_error, mpi_error};
        },
        "Hand the façade's carrier and exception types to the native core (once, at import).");

    py::class_<EngineOptions>(m, "EngineOptions")
        .def(py::init<>())
        .def_readwrite("max_frame_bytes", &EngineOptions::max_frame_bytes)
        .def_readwrite("piece_bytes", &EngineOptions::piece_bytes)
        .def_readwrite("spin_seconds", &EngineOptions::spin_seconds)
        .def_readwrite("yield_seconds", &EngineOptions::yield_seconds)
        .def_readwrite("max_sleep_seconds", &EngineOptions::max_sleep_seconds);

    py::class_<PyEngine>(m, "Engine")
        .def(py::init<std::intptr_t, std::size_t, bool, const EngineOptions&>(), py::arg("comm"),
             py::arg("zero_copy_threshold"), py::arg("allow_pickle"), py::arg("options"))
        .def_property_readonly("rank", [](PyEngine& e) { return e.engine().rank(); })
        .def_property_readonly("size", [](PyEngine& e) { return e.engine().size(); })
        .def("send", &PyEngine::send, py::arg("dest"), py::arg("kind"), py::arg("ref"),
             py::arg("tag"), py::arg("payload"))
        .def("post_raw", &PyEngine::post_raw, py::arg("dest"), py::arg("frame"))
        .def("poll", &PyEngine::poll, py::arg("timeout"))
        .def("pop_ready", &PyEngine::pop_ready)
        .def("mark_handled", [](PyEngine& e, std::uint64_t n) { e.engine().mark_handled(n); },
             py::arg("messages") = 1)
        .def("start_wave", [](PyEngine& e) { e.engine().start_wave(); })
        .def_property_readonly("wave_active", [](PyEngine& e) { return e.engine().wave_active(); })
        .def("wave_done", &PyEngine::wave_done)
        .def("flush_sends", &PyEngine::flush_sends, py::arg("timeout"))
        .def("stats", &PyEngine::stats)
        .def("abort", [](PyEngine& e, int code) { e.engine().abort(code); });

    m.def("set_buffer_cache_limit", &Buffer::set_cache_limit, py::arg("bytes"),
          "Keep at most this many bytes of freed large receive buffers for reuse.");
    m.def("encode_frame", &encode_frame, py::arg("kind"), py::arg("ref"), py::arg("tag"),
          py::arg("payload"), py::arg("zero_copy_threshold"), py::arg("allow_pickle"));
    m.def("decode_frame", &decode_frame, py::arg("frame"), py::arg("oob"), py::arg("allow_pickle"));
    m.def("route", &route, py::arg("dests"), py::arg("items"), py::arg("nranks"));

    m.attr("KIND_SEND") = static_cast<int>(FrameKind::Send);
    m.attr("KIND_REQUEST") = static_cast<int>(FrameKind::Request);
    m.attr("KIND_REPLY") = static_cast<int>(FrameKind::Reply);
    m.attr("KIND_ERROR") = static_cast<int>(FrameKind::Error);
}
