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

// Calls f with the destinations as a typed pointer (any integer dtype).
template <class F>
void with_typed(const py::array& dests, F&& f) {
    const void* d = dests.data();
    bool is_signed = dests.dtype().kind() == 'i';
    switch (dests.itemsize()) {
        case 1:
            return is_signed ? f(static_cast<const std::int8_t*>(d))
                             : f(static_cast<const std::uint8_t*>(d));
        case 2:
            return is_signed ? f(static_cast<const std::int16_t*>(d))
                             : f(static_cast<const std::uint16_t*>(d));
        case 4:
            return is_signed ? f(static_cast<const std::int32_t*>(d))
                             : f(static_cast<const std::uint32_t*>(d));
        case 8:
            return is_signed ? f(static_cast<const std::int64_t*>(d))
                             : f(static_cast<const std::uint64_t*>(d));
        default: throw UsageError("unsupported destination dtype");
    }
}

// numpy's ascontiguousarray, called only for an array that needs it: the
// call costs a fifth of routing a small batch.
py::array c_contiguous(py::array a) {
    if (a.flags() & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) return a;
    return py::module_::import("numpy").attr("ascontiguousarray")(a);
}

// Groups `items` rows by `dests` for nranks ranks: returns (rows, offsets,
// only), rows being `items` itself, and only its rank, when all go to one
// (only is -1 otherwise).
py::tuple route(py::array dests, py::array items, int nranks) {
    if (nranks < 1) throw UsageError("nranks must be at least 1");
    if (dests.ndim() != 1 || (dests.dtype().kind() != 'i' && dests.dtype().kind() != 'u'))
        throw UsageError("destinations must be a 1-D integer array");
    if (items.ndim() < 1 || items.shape(0) != dests.shape(0))
        throw UsageError("items must have one row per destination (" +
                         std::to_string(dests.shape(0)) + " destinations)");
    dests = c_contiguous(dests);
    items = c_contiguous(items);
    py::array_t<std::uint64_t> offsets(nranks + 1);
    std::size_t n = static_cast<std::size_t>(dests.shape(0));
    int only = -1;
    with_typed(dests, [&](auto* typed) {
        py::gil_scoped_release nogil;
        only = count_rows(typed, n, nranks, offsets.mutable_data());
    });
    if (only >= 0) return py::make_tuple(items, offsets, only);
    std::vector<py::ssize_t> shape(items.shape(), items.shape() + items.ndim());
    py::array out(items.dtype(), shape);
    std::size_t row_bytes = n ? static_cast<std::size_t>(items.nbytes()) / n : 0;
    auto rows = static_cast<const std::uint8_t*>(items.data());
    auto grouped = static_cast<std::uint8_t*>(out.mutable_data());
    with_typed(dests, [&](auto* typed) {
        py::gil_scoped_release nogil;
        group_rows(typed, n, rows, row_bytes, offsets.data(), nranks, grouped);
    });
    return py::make_tuple(out, offsets, -1);
}

}  // namespace

void register_routing(py::module_& m) {
    m.def("route", &route, py::arg("dests"), py::arg("items"), py::arg("nranks"));
}

}  // namespace conveyor
