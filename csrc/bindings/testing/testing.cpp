// Test hooks: the frame codec without an engine or MPI, so that tests can
// encode frames, decode them and corrupt them byte by byte.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bindings/message/codec.hpp"
#include "conveyor/engine/buffer.hpp"
#include "conveyor/wire/wire.hpp"

namespace conveyor {

namespace {

py::tuple encode_frame(int kind, std::uint64_t ref, const std::string& tag, py::handle payload,
                       std::size_t zero_copy_threshold, bool allow_pickle) {
    py_codec::EncodeOptions options{zero_copy_threshold, allow_pickle};
    py_codec::Encoded encoded;
    py_codec::encode_frame(encoded, frame_kind(kind), ref, tag, payload, options);
    py::list oob;
    for (const auto& b : encoded.oob)
        oob.append(py::bytes(static_cast<const char*>(b.data), b.size));
    const auto& frame = encoded.frame.bytes;
    return py::make_tuple(py::bytes(reinterpret_cast<const char*>(frame.data()), frame.size()),
                          oob);
}

py::tuple decode_frame(py::bytes frame, const std::vector<py::bytes>& oob, bool allow_pickle) {
    std::string raw = frame;
    std::vector<std::uint8_t> bytes(raw.begin(), raw.end());
    auto header = read_header(bytes.data(), bytes.size());
    if (header.oob.size() != oob.size())
        throw DecodeError("frame announces " + std::to_string(header.oob.size()) +
                          " out-of-band buffers, " + std::to_string(oob.size()) + " given");
    std::vector<std::shared_ptr<Buffer>> buffers;
    for (std::size_t i = 0; i < oob.size(); ++i) {
        std::string b = oob[i];
        if (b.size() != header.oob[i])
            throw DecodeError("out-of-band buffer " + std::to_string(i) + " has the wrong size");
        auto buf = std::make_shared<Buffer>(b.size(), header.oob_offsets[i]);
        std::memcpy(buf->data(), b.data(), b.size());
        buffers.push_back(buf);
    }
    auto payload = py_codec::decode_body(bytes.data() + header.body_offset,
                                         bytes.size() - header.body_offset, buffers, allow_pickle);
    return py::make_tuple(static_cast<int>(header.kind), header.ref, decode_tag(header.tag),
                          payload);
}

}  // namespace

void register_testing(py::module_& m) {
    m.def("encode_frame", &encode_frame, py::arg("kind"), py::arg("ref"), py::arg("tag"),
          py::arg("payload"), py::arg("zero_copy_threshold"), py::arg("allow_pickle"));
    m.def("decode_frame", &decode_frame, py::arg("frame"), py::arg("oob"), py::arg("allow_pickle"));
}

}  // namespace conveyor
