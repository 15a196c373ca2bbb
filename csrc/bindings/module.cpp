// conveyor._core: the one native boundary of the package.
//
// Python calls a small set of entry points: Engine (send, serve, the
// quiescence wave, stats), SenderBase (the per-message send path),
// MessageBase (a delivered message's fields), the frame codec for tests, and
// route() for batches. The two per-message types are plain C types (see
// message/message.hpp and engine/sender.cpp); everything else is bound with pybind11. Every
// C++ exception is mapped to a Python one in one place (errors.cpp);
// blocking waits release the GIL.
//
// One register_* function an area, each in a folder of its own, and one
// submodule an area with its mirror stub (pycore/conveyor/_core/<area>.pyi),
// named as the C++ rooms under csrc/conveyor are: the façade reads
// core.engine.Engine, core.message.KIND_SEND, core.chunks.align...
#include <pybind11/pybind11.h>

#include "bindings/errors.hpp"
#include "bindings/message/codec.hpp"

namespace py = pybind11;

namespace conveyor {

void register_engine(py::module_& m);
void register_message(py::module_& m);
void register_sender(py::module_& m);
void register_requests(py::module_& m);
void register_codec(py::module_& m);
void register_routing(py::module_& m);
void register_chunks(py::module_& m);
void register_testing(py::module_& m);

}  // namespace conveyor

using namespace conveyor;

namespace {

// A submodule that `import conveyor._core.<name>` finds too (pybind11 leaves
// it out of sys.modules), as its stub in _core/<name>.pyi promises and as
// mypy's stubtest imports it.
py::module_ submodule(py::module_& core, const char* name, const char* doc) {
    py::module_ sub = core.def_submodule(name, doc);
    py::module_::import("sys").attr("modules")[sub.attr("__name__")] = sub;
    return sub;
}

}  // namespace

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

    // A delivered message and the frame kinds it may carry (the codec's).
    py::module_ message = submodule(m, "message", "Delivered messages and frame kinds.");
    register_message(message);
    register_codec(message);
    // The progress engine and the per-message send path into it.
    py::module_ engine = submodule(m, "engine", "The progress engine and its send path.");
    register_engine(engine);
    register_sender(engine);
    register_requests(engine);
    py::module_ routing = submodule(m, "routing", "Grouping rows by destination rank.");
    register_routing(routing);
    py::module_ chunks = submodule(m, "chunks", "Chunk alignment and the chunk table.");
    register_chunks(chunks);
    py::module_ testing = submodule(m, "testing", "Frame encoding hooks for tests.");
    register_testing(testing);
}
