// conveyor._core.engine.SenderBase: the per-message send path of conveyor.Sender.
// A plain C type with a vectorcall method, like MessageBase: pybind11's
// argument dispatch would cost as much as the whole native send.
#include <pybind11/pybind11.h>

#include <cstring>
#include <limits>
#include <string>

#include "bindings/engine/engine.hpp"
#include "bindings/errors.hpp"

namespace conveyor {

namespace {

struct SenderObject {
    PyObject_HEAD PyObject* engine;  // the PyEngine (a pybind11 object), kept alive
    PyEngine* native;                // ... and its C++ side
    PyObject* tag;                   // str
    PyObject* relieve;               // relieve(rank): the façade's back-pressure wait
    std::string* tag_utf8;
    char aggregate;
};

// Runs `body`, turning any C++ exception into the Python one (nullptr return).
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

int rank_of(PyObject* dest) {
    auto index = py::reinterpret_steal<py::object>(PyNumber_Index(dest));
    if (!index) {
        PyErr_Clear();
        throw py::type_error(std::string("a destination rank must be an int, not ") +
                             Py_TYPE(dest)->tp_name);
    }
    int overflow = 0;
    long rank = PyLong_AsLongAndOverflow(index.ptr(), &overflow);
    if (overflow || rank < std::numeric_limits<int>::min() ||
        rank > std::numeric_limits<int>::max())
        rank = -1;  // out of range either way: the engine says so
    return static_cast<int>(rank);
}

PyObject* send(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&]() -> PyObject* {
        auto s = reinterpret_cast<SenderObject*>(self);
        PyObject* dest = nargs > 0 ? args[0] : nullptr;
        PyObject* payload = nargs > 1 ? args[1] : Py_None;
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        if (nargs > 2) throw py::type_error("send() takes at most 2 arguments (dest, payload)");
        for (Py_ssize_t i = 0; i < nkw; ++i) {
            PyObject* value = args[nargs + i];
            const char* name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, i));
            if (!name) throw py::error_already_set();
            if (std::strcmp(name, "dest") == 0 && !dest) {
                dest = value;
            } else if (std::strcmp(name, "payload") == 0 && nargs < 2) {
                payload = value;
            } else {
                throw py::type_error(
                    std::string("send() got an unexpected or repeated argument '") + name + "'");
            }
        }
        if (!dest) throw py::type_error("send() missing required argument 'dest'");
        int rank = rank_of(dest);
        if (s->native->send(rank, static_cast<int>(FrameKind::Send), 0, *s->tag_utf8, payload,
                            s->aggregate != 0)) {
            auto r = py::int_(rank);
            auto relieved =
                py::reinterpret_steal<py::object>(PyObject_CallOneArg(s->relieve, r.ptr()));
            if (!relieved) throw py::error_already_set();
        }
        Py_RETURN_NONE;
    });
}

PyObject* new_sender(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    static const char* names[] = {"engine", "tag", "aggregate", "relieve", nullptr};
    PyObject *engine, *tag, *relieve;
    int aggregate = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OUpO:SenderBase", const_cast<char**>(names),
                                     &engine, &tag, &aggregate, &relieve))
        return nullptr;
    return guarded([&]() -> PyObject* {
        PyEngine* native = py::handle(engine).cast<PyEngine*>();
        Py_ssize_t n = 0;
        const char* utf8 = PyUnicode_AsUTF8AndSize(tag, &n);
        if (!utf8) throw py::error_already_set();
        PyObject* self = type->tp_alloc(type, 0);
        if (!self) return nullptr;
        auto s = reinterpret_cast<SenderObject*>(self);
        Py_INCREF(engine);
        Py_INCREF(tag);
        Py_INCREF(relieve);
        s->engine = engine;
        s->native = native;
        s->tag = tag;
        s->relieve = relieve;
        s->tag_utf8 = new std::string(utf8, static_cast<std::size_t>(n));
        s->aggregate = static_cast<char>(aggregate);
        return self;
    });
}

int traverse(PyObject* self, visitproc visit, void* arg) {
    auto s = reinterpret_cast<SenderObject*>(self);
    Py_VISIT(s->engine);
    Py_VISIT(s->tag);
    Py_VISIT(s->relieve);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

int clear(PyObject* self) {
    auto s = reinterpret_cast<SenderObject*>(self);
    Py_CLEAR(s->engine);
    Py_CLEAR(s->tag);
    Py_CLEAR(s->relieve);
    return 0;
}

void dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    clear(self);
    delete reinterpret_cast<SenderObject*>(self)->tag_utf8;
    type->tp_free(self);
    Py_DECREF(type);
}

PyObject* get_tag(PyObject* self, void*) {
    PyObject* tag = reinterpret_cast<SenderObject*>(self)->tag;
    Py_INCREF(tag);
    return tag;
}

PyObject* get_aggregate(PyObject* self, void*) {
    return PyBool_FromLong(reinterpret_cast<SenderObject*>(self)->aggregate);
}

PyMethodDef methods[] = {
    {"send", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(send)),
     METH_FASTCALL | METH_KEYWORDS,
     "send($self, dest, payload=None)\n--\n\n"
     "Send ``payload`` to this sender's tag on rank ``dest``, without waiting.\n\n"
     "If ``dest`` has not consumed what this rank sent it before (a whole\n"
     "window, ``CONVEYOR_WINDOW_BYTES``), wait, handling incoming messages,\n"
     "until it has: back-pressure. Inside a handler the send never waits.\n\n"
     "Parameters\n"
     "----------\n"
     "dest : int\n"
     "    The destination rank.\n"
     "payload : object, optional\n"
     "    The value to send; it must be carriageable.\n\n"
     "Raises\n"
     "------\n"
     "conveyor.CarriageError\n"
     "    If ``payload`` cannot travel.\n"
     "ValueError\n"
     "    If ``dest`` is not a rank of the job.\n"},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef getset[] = {
    {"tag", get_tag, nullptr, "The tag this sender sends to.", nullptr},
    {"aggregate", get_aggregate, nullptr, "Whether small messages are packed into batches.",
     nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot slots[] = {
    {Py_tp_doc, const_cast<char*>("The native send path of conveyor.Sender.")},
    {Py_tp_new, reinterpret_cast<void*>(new_sender)},
    {Py_tp_dealloc, reinterpret_cast<void*>(dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(clear)},
    {Py_tp_methods, methods},
    {Py_tp_getset, getset},
    {0, nullptr},
};

PyType_Spec spec = {
    "conveyor._core.engine.SenderBase",
    sizeof(SenderObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    slots,
};

}  // namespace

void register_sender(py::module_& module) {
    PyObject* type = PyType_FromSpec(&spec);
    if (!type) throw py::error_already_set();
    module.add_object("SenderBase", py::reinterpret_steal<py::object>(type));
}

}  // namespace conveyor
