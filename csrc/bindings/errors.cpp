#include "bindings/errors.hpp"

#include "bindings/message/codec.hpp"
#include "conveyor/chunks/chunks.hpp"
#include "conveyor/common/errors.hpp"

namespace conveyor {

namespace {

struct ErrorTypes {
    py::object conveyor, carriage, frame, too_large, mpi;
};

ErrorTypes& errors() {
    static ErrorTypes* e = new ErrorTypes();  // leaked: outlives the interpreter safely
    return *e;
}

}  // namespace

void set_error_types(py::object conveyor, py::object carriage, py::object frame,
                     py::object too_large, py::object mpi) {
    errors() = {conveyor, carriage, frame, too_large, mpi};
}

void translate_exceptions(std::exception_ptr p) {
    try {
        if (p) std::rethrow_exception(p);
    } catch (const Closed& e) {
        PyErr_SetString(errors().conveyor.ptr(), e.what());
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
    } catch (const UnknownChunk& e) {
        PyErr_SetString(PyExc_KeyError, e.what());
    }
}

}  // namespace conveyor
