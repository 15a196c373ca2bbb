// conveyor._core: the one native boundary of the package.
//
// Python calls a small set of entry points: Engine (send, serve, the
// quiescence wave, stats), SenderBase (the per-message send path),
// MessageBase (a delivered message's fields), the frame codec for tests, and
// route() for batches. The two per-message types are plain C types (see
// message.hpp and sender.cpp); everything else is bound with pybind11. Every
// C++ exception is mapped to a Python one in one place (errors.cpp);
// blocking waits release the GIL.
//
// One register_* function an area, each in a file of its own, all adding
// flat names to this one module (no submodules: the façade imports them
// as core.Engine, core.route, core.KIND_SEND...).
#include <pybind11/pybind11.h>

#include "bindings/codec.hpp"
#include "bindings/errors.hpp"

namespace py = pybind11;

namespace conveyor {

void register_engine(py::module_& m);
void register_message(py::module_& m);
void register_sender(py::module_& m);
void register_codec(py::module_& m);
void register_routing(py::module_& m);
void register_chunks(py::module_& m);
void register_testing(py::module_& m);

}  // namespace conveyor

using namespace conveyor;

PYBIND11_MODULE(_core, m) {
    m.doc() = "The native core of conveyor (internal: use the conveyor package).";
    py::register_exception_translator(translate_exceptions);

    m.def(
        "configure",
        [](py::object address_type, py::object item_base, py::dict registry, py::object pickle,
           py::object conveyor_error, py::object carriage_error, py::object frame_error,
           py::object too_large_error, py::object mpi_error) {
            py_codec::configure(address_type, item_base, registry, pickle);
            set_error_types(conveyor_error, carriage_error, frame_error, too_large_error,
                            mpi_error);
        },
        py::kw_only(), py::arg("address_type"), py::arg("item_base"), py::arg("registry"),
        py::arg("pickle"), py::arg("conveyor_error"), py::arg("carriage_error"),
        py::arg("frame_error"), py::arg("too_large_error"), py::arg("mpi_error"),
        "Hand the façade's carrier and exception types to the native core (once, at import).");

    register_engine(m);
    register_message(m);
    register_sender(m);
    register_codec(m);
    register_routing(m);
    register_chunks(m);
    register_testing(m);
}
