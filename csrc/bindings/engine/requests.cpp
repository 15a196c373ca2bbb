// conveyor._core.engine.RequestsBase: the native half of the façade's
// Requests (the requests a rank sent and waits for): their table
// ({ref: waiter}), their numbering, the posting of each, and
// Messenger.request's common case, a request to a tag requested before,
// from its checks to its Future. In Python, that path cost a request
// 970 ns, more than its round trip's engine and MPI time together.
#include <pybind11/pybind11.h>
#include <structmember.h>

#include <limits>
#include <string_view>

#include "bindings/engine/engine.hpp"
#include "bindings/errors.hpp"
#include "bindings/heap_type.hpp"

namespace conveyor {

namespace {

struct RequestsObject {
    PyObject_HEAD PyObject* waiters;  // {ref: Future or Stream}, the open requests
    unsigned long long next_ref;      // the number of the next request
    PyObject* user_tags;              // set: the tags Messenger.request checked before
    PyObject* engine;                 // the PyEngine (a pybind11 object), kept alive
    PyEngine* native;                 // ... and its C++ side
    PyObject* transport;              // the façade's Transport
    PyObject* future_type;            // conveyor.Future
    char plain;                       // whether the transport's post is Transport.post
    char aggregate;
};

// Interned once, under the GIL; never freed.
struct Names {
    PyObject* sent = PyUnicode_InternFromString("_sent");
    PyObject* post = PyUnicode_InternFromString("post");
    PyObject* relieve = PyUnicode_InternFromString("relieve");
    PyObject* monotonic = py::object(py::module_::import("time").attr("monotonic")).release().ptr();
};
const Names& names() {
    static const Names n;
    return n;
}

// Records `waiter` as request `ref` to `tag` on `dest` and sends the
// request: what Transport.post does (the engine's send, then back-pressure
// if `dest` is congested) when the transport is plain, else its own post.
// A request that does not leave is not recorded.
void post(RequestsObject* r, int dest, unsigned long long ref, PyObject* tag, PyObject* payload,
          PyObject* waiter) {
    if (!r->waiters || !r->transport) throw UsageError("RequestsBase.__init__ was not called");
    const auto& n = names();
    // (tag, time.monotonic()): what a state dump shows of an open request.
    auto now = py::reinterpret_steal<py::object>(PyObject_CallNoArgs(n.monotonic));
    if (!now) throw py::error_already_set();
    auto sent = py::reinterpret_steal<py::object>(PyTuple_Pack(2, tag, now.ptr()));
    if (!sent || PyObject_SetAttr(waiter, n.sent, sent.ptr()) < 0) throw py::error_already_set();
    auto key = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(ref));
    if (!key) throw py::error_already_set();
    py::object waiters = py::reinterpret_borrow<py::object>(r->waiters);  // may be replaced
    if (!PyDict_CheckExact(waiters.ptr())) throw UsageError("Requests.waiters must be a dict");
    if (PyDict_SetItem(waiters.ptr(), key.ptr(), waiter) < 0) throw py::error_already_set();
    try {
        auto rank = py::int_(dest);
        if (!r->plain) {
            py::handle(r->transport)
                .attr(n.post)(rank, static_cast<int>(FrameKind::Request), key, py::handle(tag),
                              py::handle(payload));
            return;
        }
        Py_ssize_t size = 0;
        const char* utf8 = PyUnicode_AsUTF8AndSize(tag, &size);
        if (!utf8) throw py::error_already_set();
        if (r->native->send(dest, static_cast<int>(FrameKind::Request), ref,
                            std::string_view(utf8, static_cast<std::size_t>(size)), payload,
                            r->aggregate != 0))
            py::handle(r->transport).attr(n.relieve)(rank);
    } catch (...) {
        // The error in flight is a C++ exception (pybind11 holds a Python
        // one in it): the indicator is clear, and a failed deletion's is
        // dropped so that the request's own error is what the caller gets.
        if (PyDict_DelItem(waiters.ptr(), key.ptr()) < 0) PyErr_Clear();
        throw;
    }
}

// _post(dest, ref, tag, payload, waiter): see post().
PyObject* post_method(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return guarded([&]() -> PyObject* {
        if (nargs != 5)
            throw py::type_error("_post() takes 5 arguments (dest, ref, tag, payload, waiter)");
        long dest = PyLong_AsLong(args[0]);
        if (dest == -1 && PyErr_Occurred()) throw py::error_already_set();
        unsigned long long ref = PyLong_AsUnsignedLongLong(args[1]);
        if (ref == static_cast<unsigned long long>(-1) && PyErr_Occurred())
            throw py::error_already_set();
        if (!PyUnicode_Check(args[2])) throw py::type_error("a tag must be a str");
        if (dest < 0 || dest > std::numeric_limits<int>::max())
            throw py::value_error("_post(): dest must be a rank");
        post(reinterpret_cast<RequestsObject*>(self), static_cast<int>(dest), ref, args[2], args[3],
             args[4]);
        Py_RETURN_NONE;
    });
}

// try_request(dest, tag, payload) -> Future or None: Messenger.request's common
// case, an int rank and a tag of user_tags, on a plain transport; None
// otherwise (the façade's own path then checks and sends it).
PyObject* try_request(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return guarded([&]() -> PyObject* {
        auto r = reinterpret_cast<RequestsObject*>(self);
        if (nargs != 3)
            throw py::type_error("try_request() takes 3 arguments (dest, tag, payload)");
        PyObject *dest = args[0], *tag = args[1];
        int rank;
        if (!r->plain || !exact_rank(dest, r->native->engine().size(), rank) ||
            !PyUnicode_CheckExact(tag))
            Py_RETURN_NONE;
        int known = PySet_Contains(r->user_tags, tag);
        if (known < 0) throw py::error_already_set();
        if (!known) Py_RETURN_NONE;
        // The number is taken before the Future is made: the garbage
        // collector may run there, and a finaliser open a request of its own.
        unsigned long long ref = r->next_ref++;
        auto number = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(ref));
        if (!number) throw py::error_already_set();
        PyObject* argv[] = {self, dest, number.ptr()};
        auto future = py::reinterpret_steal<py::object>(
            PyObject_Vectorcall(r->future_type, argv, 3, nullptr));
        if (!future) throw py::error_already_set();
        post(r, rank, ref, tag, args[2], future.ptr());
        return future.release().ptr();
    });
}

int init(PyObject* self, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"engine", "transport", "future_type", "plain", nullptr};
    PyObject *engine, *transport, *future_type;
    int plain = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOp:RequestsBase",
                                     const_cast<char**>(keywords), &engine, &transport,
                                     &future_type, &plain))
        return -1;
    PyObject* result = guarded([&]() -> PyObject* {
        auto r = reinterpret_cast<RequestsObject*>(self);
        PyEngine* native = py::handle(engine).cast<PyEngine*>();
        int aggregate = PyObject_IsTrue(py::handle(transport).attr("aggregate").ptr());
        if (aggregate < 0) throw py::error_already_set();
        py::dict waiters;
        py::set user_tags;
        Py_XSETREF(r->waiters, waiters.release().ptr());
        Py_XSETREF(r->user_tags, user_tags.release().ptr());
        Py_INCREF(engine);
        Py_XSETREF(r->engine, engine);
        Py_INCREF(transport);
        Py_XSETREF(r->transport, transport);
        Py_INCREF(future_type);
        Py_XSETREF(r->future_type, future_type);
        r->native = native;
        r->next_ref = 1;
        r->plain = static_cast<char>(plain);
        r->aggregate = static_cast<char>(aggregate);
        Py_RETURN_NONE;
    });
    if (!result) return -1;
    Py_DECREF(result);
    return 0;
}

int traverse(PyObject* self, visitproc visit, void* arg) {
    auto r = reinterpret_cast<RequestsObject*>(self);
    Py_VISIT(r->waiters);
    Py_VISIT(r->user_tags);
    Py_VISIT(r->engine);
    Py_VISIT(r->transport);
    Py_VISIT(r->future_type);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

int clear(PyObject* self) {
    auto r = reinterpret_cast<RequestsObject*>(self);
    Py_CLEAR(r->waiters);
    Py_CLEAR(r->user_tags);
    Py_CLEAR(r->engine);
    Py_CLEAR(r->transport);
    Py_CLEAR(r->future_type);
    r->native = nullptr;
    r->plain = 0;  // try_request() sends nothing through a cleared object
    return 0;
}

PyMethodDef methods[] = {
    {"try_request", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(try_request)),
     METH_FASTCALL,
     "try_request($self, dest, tag, payload, /)\n--\n\n"
     "Messenger.request's common case: if ``dest`` is an int of a rank, ``tag``\n"
     "a str in ``user_tags`` and the transport plain, send the request and\n"
     "return its Future; else do nothing and return None.\n"},
    {"_post", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(post_method)),
     METH_FASTCALL,
     "_post($self, dest, ref, tag, payload, waiter, /)\n--\n\n"
     "Record ``waiter`` as open request ``ref`` and send the request (through\n"
     "the transport's post); if it does not leave, forget it and raise.\n"},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef members[] = {
    {"waiters", T_OBJECT_EX, offsetof(RequestsObject, waiters), 0,
     "``{ref: Future or Stream}`` of the open requests (a dict)."},
    {"user_tags", T_OBJECT_EX, offsetof(RequestsObject, user_tags), READONLY,
     "The user tags requested before (a set the façade fills): `try_request` takes them."},
    {"_next_ref", T_ULONGLONG, offsetof(RequestsObject, next_ref), 0,
     "The number of the next request."},
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot slots[] = {
    {Py_tp_doc, const_cast<char*>("The native half of the façade's Requests.")},
    {Py_tp_new, reinterpret_cast<void*>(PyType_GenericNew)},
    {Py_tp_init, reinterpret_cast<void*>(init)},
    {Py_tp_dealloc, reinterpret_cast<void*>(gc_dealloc<clear>)},
    {Py_tp_traverse, reinterpret_cast<void*>(traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(clear)},
    {Py_tp_methods, methods},
    {Py_tp_members, members},
    {0, nullptr},
};

PyType_Spec spec = {
    "conveyor._core.engine.RequestsBase",
    sizeof(RequestsObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    slots,
};

}  // namespace

void register_requests(py::module_& module) {
    PyObject* type = PyType_FromSpec(&spec);
    if (!type) throw py::error_already_set();
    module.add_object("RequestsBase", py::reinterpret_steal<py::object>(type));
}

}  // namespace conveyor
