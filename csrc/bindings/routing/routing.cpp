// conveyor._core.routing.route: the grouping of rows behind Sender.send_many.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "conveyor/common/errors.hpp"
#include "conveyor/routing/route.hpp"

namespace py = pybind11;

namespace conveyor {

namespace {

// Groups `items` rows by `dests` (any integer dtype) for nranks ranks:
// returns (rows, offsets), rows being `items` itself when all go to one rank.
py::tuple route(py::array dests, py::array items, int nranks) {
    if (nranks < 1) throw UsageError("nranks must be at least 1");
    if (dests.ndim() != 1 || (dests.dtype().kind() != 'i' && dests.dtype().kind() != 'u'))
        throw UsageError("destinations must be a 1-D integer array");
    if (items.ndim() < 1 || items.shape(0) != dests.shape(0))
        throw UsageError("items must have one row per destination (" +
                         std::to_string(dests.shape(0)) + " destinations)");
    auto numpy = py::module_::import("numpy");
    dests = numpy.attr("ascontiguousarray")(dests);
    items = numpy.attr("ascontiguousarray")(items);
    std::vector<py::ssize_t> shape(items.shape(), items.shape() + items.ndim());
    py::array out(items.dtype(), shape);
    py::array_t<std::uint64_t> offsets(nranks + 1);
    std::size_t n = static_cast<std::size_t>(dests.shape(0));
    std::size_t row_bytes = n ? static_cast<std::size_t>(items.nbytes()) / n : 0;
    auto rows = static_cast<const std::uint8_t*>(items.data());
    auto grouped = static_cast<std::uint8_t*>(out.mutable_data());
    auto counts = offsets.mutable_data();
    int only = -1;
    auto run = [&](auto* typed) {
        py::gil_scoped_release nogil;
        only = route_rows(typed, n, rows, row_bytes, nranks, grouped, counts);
    };
    const void* d = dests.data();
    bool is_signed = dests.dtype().kind() == 'i';
    switch (dests.itemsize()) {
        case 1:
            is_signed ? run(static_cast<const std::int8_t*>(d))
                      : run(static_cast<const std::uint8_t*>(d));
            break;
        case 2:
            is_signed ? run(static_cast<const std::int16_t*>(d))
                      : run(static_cast<const std::uint16_t*>(d));
            break;
        case 4:
            is_signed ? run(static_cast<const std::int32_t*>(d))
                      : run(static_cast<const std::uint32_t*>(d));
            break;
        case 8:
            is_signed ? run(static_cast<const std::int64_t*>(d))
                      : run(static_cast<const std::uint64_t*>(d));
            break;
        default: throw UsageError("unsupported destination dtype");
    }
    return py::make_tuple(only >= 0 ? items : out, offsets);
}

}  // namespace

void register_routing(py::module_& m) {
    m.def("route", &route, py::arg("dests"), py::arg("items"), py::arg("nranks"));
}

}  // namespace conveyor
