// The codec's setup: the façade's types it needs (configure), what it
// hands the engine (keep_alive), and the frame kinds for Python. The
// encoder and the decoder are in encoder.cpp and decoder.cpp.
#include "bindings/message/codec.hpp"

#include "bindings/message/payload.hpp"

namespace conveyor::py_codec {

KeepAlive keep_alive(py::object obj) {
    return KeepAlive(new py::object(std::move(obj)), [](void* p) {
        py::gil_scoped_acquire gil;
        delete static_cast<py::object*>(p);
    });
}

py::object make_address(py::handle rank, py::handle name, py::handle ref) {
    return types().address(rank, name, ref);
}

void configure(py::object address_type, py::object item_base, py::dict item_registry,
               py::object pickle_module) {
    auto& t = types();
    t.address = std::move(address_type);
    t.item_base = std::move(item_base);
    t.registry = std::move(item_registry);
    t.pickle = std::move(pickle_module);
    auto np = py::module_::import("numpy");
    t.np_generic = np.attr("generic");
    t.np_dtype = np.attr("dtype");
    t.np_descr_to_dtype = py::module_::import("numpy.lib.format").attr("descr_to_dtype");
    t.np_asarray = np.attr("asarray");
    t.np_ascontiguousarray = np.attr("ascontiguousarray");
    t.int_from_bytes = py::module_::import("builtins").attr("int").attr("from_bytes");
}

}  // namespace conveyor::py_codec

namespace conveyor {

void register_codec(py::module_& m) {
    // The frame kinds the façade passes to Engine.send and encode_frame.
    m.attr("KIND_SEND") = static_cast<int>(FrameKind::Send);
    m.attr("KIND_REQUEST") = static_cast<int>(FrameKind::Request);
    m.attr("KIND_REPLY") = static_cast<int>(FrameKind::Reply);
    m.attr("KIND_ERROR") = static_cast<int>(FrameKind::Error);
    m.attr("KIND_ANSWER") = static_cast<int>(FrameKind::Answer);
    // What the frames of this build carry, for tests that write frames by hand.
    m.attr("FRAME_VERSION") = static_cast<int>(kFrameVersion);
}

}  // namespace conveyor
