// The per-message send path: Engine.send, every frame the façade sends
// itself (requests, its services' messages); conveyor._core.engine.SenderBase,
// the path of conveyor.Sender; and TagSenders, which takes Messenger.send's
// common case to the Sender cached for its tag. Vectorcall methods of plain C
// types, like MessageBase, or of the pybind11 Engine: pybind11's argument
// dispatch would cost as much as the whole native send.
#include <pybind11/pybind11.h>

#include <cstring>
#include <limits>
#include <string>
#include <string_view>

#include "bindings/engine/engine.hpp"
#include "bindings/errors.hpp"
#include "bindings/heap_type.hpp"

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

// Engine.send(dest, kind, ref, tag, payload, aggregate) -> bool: encodes
// `payload` in a frame of `kind` to `tag` and sends it to `dest`; returns
// whether `dest` is congested (the caller should slow down).
PyObject* engine_send(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return guarded([&]() -> PyObject* {
        if (nargs != 6)
            throw py::type_error(
                "send() takes 6 arguments (dest, kind, ref, tag, payload, aggregate)");
        auto& engine = engine_of(self);
        int rank = rank_of(args[0]);
        long kind = PyLong_AsLong(args[1]);
        if (kind == -1 && PyErr_Occurred()) throw py::error_already_set();
        unsigned long long ref = PyLong_AsUnsignedLongLong(args[2]);
        if (ref == static_cast<unsigned long long>(-1) && PyErr_Occurred())
            throw py::error_already_set();
        if (!PyUnicode_Check(args[3])) throw py::type_error("a tag must be a str");
        Py_ssize_t n = 0;
        const char* tag = PyUnicode_AsUTF8AndSize(args[3], &n);
        if (!tag) throw py::error_already_set();
        int aggregate = PyObject_IsTrue(args[5]);
        if (aggregate < 0) throw py::error_already_set();
        bool congested =
            engine.send(rank, static_cast<int>(kind), ref,
                        std::string_view(tag, static_cast<std::size_t>(n)), args[4], aggregate);
        return PyBool_FromLong(congested);
    });
}

PyMethodDef engine_send_method = {
    "send", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(engine_send)), METH_FASTCALL,
    "send($self, dest, kind, ref, tag, payload, aggregate, /)\n--\n\n"
    "Encode ``payload`` in a frame of ``kind`` to ``tag`` and send it to rank\n"
    "``dest`` (into its batch with ``aggregate``, if small); return whether\n"
    "``dest`` is congested.\n"};

// Sends `payload` to `s`'s tag on `rank`, then, if `rank` is congested,
// waits in the façade's relieve(rank).
void send_to(SenderObject* s, int rank, PyObject* payload) {
    if (s->native->send(rank, static_cast<int>(FrameKind::Send), 0, *s->tag_utf8, payload,
                        s->aggregate != 0)) {
        auto r = py::int_(rank);
        auto relieved = py::reinterpret_steal<py::object>(PyObject_CallOneArg(s->relieve, r.ptr()));
        if (!relieved) throw py::error_already_set();
    }
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
        send_to(s, rank_of(dest), payload);
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

// The tag's bytes, which the send path reads until the object is freed
// (tp_clear may run on an object that is still sent through).
void release_tag(PyObject* self) { delete reinterpret_cast<SenderObject*>(self)->tag_utf8; }

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
    {Py_tp_dealloc, reinterpret_cast<void*>(gc_dealloc<clear, release_tag>)},
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

PyTypeObject* sender_type = nullptr;

// TagSenders: the Messenger's {tag: Sender} (a dict it fills), its size,
// and the sentinel of a payload not given.
struct TagSendersObject {
    PyObject_HEAD PyObject* senders;
    PyObject* missing;
    int size;
};

// send(dest, tag, payload, final) -> bool: sends and returns True if dest is
// an int of a rank, tag a str whose Sender is cached and final True;
// otherwise does nothing and returns False (the façade's own path then
// sends it, or says what is wrong).
PyObject* send_cached(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return guarded([&]() -> PyObject* {
        auto t = reinterpret_cast<TagSendersObject*>(self);
        if (nargs != 4)
            throw py::type_error("send() takes 4 arguments (dest, tag, payload, final)");
        PyObject *dest = args[0], *tag = args[1], *payload = args[2];
        int rank;
        if (args[3] != Py_True || !exact_rank(dest, t->size, rank) || !PyUnicode_CheckExact(tag))
            Py_RETURN_FALSE;
        PyObject* sender = PyDict_GetItemWithError(t->senders, tag);
        if (!sender) {
            if (PyErr_Occurred()) throw py::error_already_set();
            Py_RETURN_FALSE;
        }
        if (!PyObject_TypeCheck(sender, sender_type)) Py_RETURN_FALSE;
        py::object held = py::reinterpret_borrow<py::object>(sender);  // the dict may change
        send_to(reinterpret_cast<SenderObject*>(sender), rank,
                payload == t->missing ? Py_None : payload);
        Py_RETURN_TRUE;
    });
}

PyObject* new_tag_senders(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    static const char* names[] = {"senders", "size", "missing", nullptr};
    PyObject *senders, *missing;
    int size = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!iO:TagSenders", const_cast<char**>(names),
                                     &PyDict_Type, &senders, &size, &missing))
        return nullptr;
    PyObject* self = type->tp_alloc(type, 0);
    if (!self) return nullptr;
    auto t = reinterpret_cast<TagSendersObject*>(self);
    Py_INCREF(senders);
    Py_INCREF(missing);
    t->senders = senders;
    t->missing = missing;
    t->size = size;
    return self;
}

int traverse_tag_senders(PyObject* self, visitproc visit, void* arg) {
    auto t = reinterpret_cast<TagSendersObject*>(self);
    Py_VISIT(t->senders);
    Py_VISIT(t->missing);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

int clear_tag_senders(PyObject* self) {
    auto t = reinterpret_cast<TagSendersObject*>(self);
    Py_CLEAR(t->senders);
    Py_CLEAR(t->missing);
    return 0;
}

PyMethodDef tag_senders_methods[] = {
    {"send", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(send_cached)),
     METH_FASTCALL,
     "send($self, dest, tag, payload, final, /)\n--\n\n"
     "Send through the Sender cached for ``tag`` and return True, if ``dest``\n"
     "is an int of a rank, ``tag`` a str with a cached Sender and ``final``\n"
     "True; else do nothing and return False.\n"},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot tag_senders_slots[] = {
    {Py_tp_doc, const_cast<char*>("Messenger.send's common case, by the Sender of its tag.")},
    {Py_tp_new, reinterpret_cast<void*>(new_tag_senders)},
    {Py_tp_dealloc, reinterpret_cast<void*>(gc_dealloc<clear_tag_senders>)},
    {Py_tp_traverse, reinterpret_cast<void*>(traverse_tag_senders)},
    {Py_tp_clear, reinterpret_cast<void*>(clear_tag_senders)},
    {Py_tp_methods, tag_senders_methods},
    {0, nullptr},
};

PyType_Spec tag_senders_spec = {
    "conveyor._core.engine.TagSenders",      sizeof(TagSendersObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, tag_senders_slots,
};

}  // namespace

void register_sender(py::module_& module) {
    add_method(module.attr("Engine"), engine_send_method);  // the class register_engine() made
    PyObject* type = PyType_FromSpec(&spec);
    if (!type) throw py::error_already_set();
    sender_type = reinterpret_cast<PyTypeObject*>(type);  // kept for the module's lifetime
    module.add_object("SenderBase", py::reinterpret_borrow<py::object>(type));
    PyObject* tag_senders = PyType_FromSpec(&tag_senders_spec);
    if (!tag_senders) throw py::error_already_set();
    module.add_object("TagSenders", py::reinterpret_steal<py::object>(tag_senders));
}

}  // namespace conveyor
