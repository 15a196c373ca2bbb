// The one table from C++ exceptions to the façade's Python exceptions
// (errors.cpp): each error type of the core (common/errors.hpp,
// UnknownChunk) and of the bindings maps to one Python exception there.
#pragma once

#include <pybind11/pybind11.h>

#include <exception>
#include <stdexcept>

namespace conveyor {

namespace py = pybind11;

// A call on a closed Messenger: becomes cv.ConveyorError.
class Closed : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// The façade's exception classes, handed over once by configure().
void set_error_types(py::object conveyor, py::object carriage, py::object frame,
                     py::object too_large, py::object mpi);

// Sets the Python exception that the C++ exception `p` maps to; an exception
// not in the table propagates (pybind11's own translation takes it).
void translate_exceptions(std::exception_ptr p);

// Runs `body`, the body of a C function called without pybind11's dispatch
// (a vectorcall method), turning any C++ exception into the Python one, as
// pybind11 would: then it returns nullptr.
template <class Body>
PyObject* guarded(Body&& body) {
    try {
        return body();
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (py::builtin_exception& e) {
        e.set_error();
    } catch (...) {
        try {
            translate_exceptions(std::current_exception());
        } catch (const std::exception& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        }
    }
    return nullptr;
}

}  // namespace conveyor
