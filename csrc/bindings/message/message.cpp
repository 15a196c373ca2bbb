#include "bindings/message/message.hpp"

#include <structmember.h>

#include <cstddef>
#include <utility>

#include "bindings/heap_type.hpp"
#include "bindings/message/codec.hpp"

namespace conveyor::py_message {

namespace {

struct MessageObject {
    PyObject_HEAD PyObject* tag;
    PyObject* payload;
    PyObject* source;
    PyObject* reply_to;  // null for a request whose Address was not read yet
    PyObject* messenger;
    std::uint64_t reply_ref;
    char is_request;
    char replied;
    char deferred;
    char cancelled;
};

PyTypeObject* message_type = nullptr;

int traverse(PyObject* self, visitproc visit, void* arg) {
    auto m = reinterpret_cast<MessageObject*>(self);
    Py_VISIT(m->tag);
    Py_VISIT(m->payload);
    Py_VISIT(m->source);
    Py_VISIT(m->reply_to);
    Py_VISIT(m->messenger);
#if PY_VERSION_HEX >= 0x03090000
    Py_VISIT(Py_TYPE(self));  // instances of heap types own a reference to their type
#endif
    return 0;
}

int clear(PyObject* self) {
    auto m = reinterpret_cast<MessageObject*>(self);
    Py_CLEAR(m->tag);
    Py_CLEAR(m->payload);
    Py_CLEAR(m->source);
    Py_CLEAR(m->reply_to);
    Py_CLEAR(m->messenger);
    return 0;
}

void set_fields(MessageObject* m, PyObject* messenger, PyObject* tag, PyObject* payload,
                PyObject* source, PyObject* reply_to) {
    Py_INCREF(tag);
    Py_INCREF(payload);
    Py_INCREF(source);
    Py_XINCREF(reply_to);
    Py_INCREF(messenger);
    m->tag = tag;
    m->payload = payload;
    m->source = source;
    m->reply_to = reply_to;
    m->messenger = messenger;
}

PyObject* new_message(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    static const char* names[] = {"dispatch", "tag", "payload", "source", "reply_to", nullptr};
    PyObject *messenger, *tag, *payload, *source, *reply_to;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO:Message", const_cast<char**>(names),
                                     &messenger, &tag, &payload, &source, &reply_to))
        return nullptr;
    PyObject* self = type->tp_alloc(type, 0);
    if (!self) return nullptr;
    set_fields(reinterpret_cast<MessageObject*>(self), messenger, tag, payload, source, reply_to);
    reinterpret_cast<MessageObject*>(self)->is_request = reply_to != Py_None;
    return self;
}

PyMemberDef members[] = {
    {"tag", T_OBJECT, offsetof(MessageObject, tag), READONLY,
     "The tag (receiver name) it was sent to."},
    {"payload", T_OBJECT, offsetof(MessageObject, payload), READONLY, "The decoded payload."},
    {"source", T_OBJECT, offsetof(MessageObject, source), READONLY, "The rank that sent it."},
    {"_dispatch", T_OBJECT, offsetof(MessageObject, messenger), READONLY, nullptr},
    {"_replied", T_BOOL, offsetof(MessageObject, replied), 0, nullptr},
    {"_deferred", T_BOOL, offsetof(MessageObject, deferred), 0, nullptr},
    {"_cancelled", T_BOOL, offsetof(MessageObject, cancelled), 0, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

PyObject* get_reply_to(PyObject* self, void*) {
    auto m = reinterpret_cast<MessageObject*>(self);
    if (!m->reply_to) {
        if (!m->is_request) Py_RETURN_NONE;
        try {
            m->reply_to =
                py_codec::make_address(m->source, m->tag, py::int_(m->reply_ref)).release().ptr();
        } catch (py::error_already_set& e) {
            e.restore();
            return nullptr;
        }
    }
    Py_INCREF(m->reply_to);
    return m->reply_to;
}

PyGetSetDef getset[] = {
    {"reply_to", get_reply_to, nullptr,
     "For a request, the Address that answers it; None for a plain send.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot slots[] = {
    {Py_tp_doc, const_cast<char*>("The fields of a delivered message (see conveyor.Message).")},
    {Py_tp_new, reinterpret_cast<void*>(new_message)},
    {Py_tp_dealloc, reinterpret_cast<void*>(gc_dealloc<clear>)},
    {Py_tp_traverse, reinterpret_cast<void*>(traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(clear)},
    {Py_tp_members, members},
    {Py_tp_getset, getset},
    {0, nullptr},
};

PyType_Spec spec = {
    "conveyor._core.message.MessageBase",
    sizeof(MessageObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    slots,
};

// A delivered message that nothing kept, emptied, for the next delivery:
// allocating one and freeing it through its Python subclass's dealloc cost
// a tenth of the receiver's time at millions of messages per second.
// Only touched with the GIL held.
PyObject* spare = nullptr;

PyObject* allocate(PyTypeObject* type) {
    if (spare && Py_TYPE(spare) == type) return std::exchange(spare, nullptr);
    PyObject* self = type->tp_alloc(type, 0);
    if (!self) throw py::error_already_set();
    return self;
}

// Whether `self` may be emptied and used again: no one else holds it, not
// even weakly, and its class adds no state (a __dict__) or finalizer.
bool reusable(PyObject* self) {
    if (Py_REFCNT(self) != 1 || spare) return false;
    PyTypeObject* type = Py_TYPE(self);
    if (type->tp_dictoffset != 0 || type->tp_finalize || type->tp_del) return false;
    if (type->tp_weaklistoffset > 0 &&
        *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(self) + type->tp_weaklistoffset))
        return false;
    return true;
}

}  // namespace

py::object make(PyTypeObject* type, py::handle messenger, py::handle tag, py::handle payload,
                py::handle source, py::handle reply_to) {
    PyObject* self = allocate(type);
    set_fields(reinterpret_cast<MessageObject*>(self), messenger.ptr(), tag.ptr(), payload.ptr(),
               source.ptr(), reply_to.ptr());
    return py::reinterpret_steal<py::object>(self);
}

void recycle(py::object&& message) {
    if (!reusable(message.ptr())) return;
    auto m = reinterpret_cast<MessageObject*>(message.ptr());
    // Emptied before its fields are let go: dropping the payload may run
    // Python code that receives (and takes the spare) in turn.
    PyObject* held[] = {m->tag, m->payload, m->source, m->reply_to, m->messenger};
    m->tag = m->payload = m->source = m->reply_to = m->messenger = nullptr;
    m->reply_ref = 0;
    m->is_request = m->replied = m->deferred = m->cancelled = 0;
    spare = message.release().ptr();
    for (PyObject* field : held) Py_XDECREF(field);
}

py::object make_request(PyTypeObject* type, py::handle messenger, py::handle tag,
                        py::handle payload, py::handle source, std::uint64_t ref) {
    PyObject* self = allocate(type);
    auto m = reinterpret_cast<MessageObject*>(self);
    set_fields(m, messenger.ptr(), tag.ptr(), payload.ptr(), source.ptr(), nullptr);
    m->reply_ref = ref;
    m->is_request = 1;
    return py::reinterpret_steal<py::object>(self);
}

namespace {
MessageObject* fields(py::handle message) {
    return reinterpret_cast<MessageObject*>(message.ptr());
}
}  // namespace

bool replied(py::handle message) { return fields(message)->replied; }
bool deferred(py::handle message) { return fields(message)->deferred; }
bool cancelled(py::handle message) { return fields(message)->cancelled; }
void set_replied(py::handle message) { fields(message)->replied = 1; }

bool is_message_type(py::handle type) {
    return PyType_Check(type.ptr()) &&
           PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(type.ptr()), message_type);
}

}  // namespace conveyor::py_message

namespace conveyor {

namespace py = pybind11;

// Creates the type and adds it to `module` as MessageBase.
void register_message(py::module_& module) {
    PyObject* type = PyType_FromSpec(&py_message::spec);
    if (!type) throw py::error_already_set();
    py_message::message_type =
        reinterpret_cast<PyTypeObject*>(type);  // kept for the module's lifetime
    module.add_object("MessageBase", py::reinterpret_borrow<py::object>(type));
}

}  // namespace conveyor
