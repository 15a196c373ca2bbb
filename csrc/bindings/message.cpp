#include "bindings/message.hpp"

#include <structmember.h>

#include <cstddef>

namespace conveyor::py_message {

namespace {

struct MessageObject {
    PyObject_HEAD
    PyObject* tag;
    PyObject* payload;
    PyObject* source;
    PyObject* reply_to;
    PyObject* messenger;
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

void dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    clear(self);
    type->tp_free(self);
    Py_DECREF(type);
}

void set_fields(MessageObject* m, PyObject* messenger, PyObject* tag, PyObject* payload,
                PyObject* source, PyObject* reply_to) {
    Py_INCREF(tag);
    Py_INCREF(payload);
    Py_INCREF(source);
    Py_INCREF(reply_to);
    Py_INCREF(messenger);
    m->tag = tag;
    m->payload = payload;
    m->source = source;
    m->reply_to = reply_to;
    m->messenger = messenger;
}

PyObject* new_message(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    static const char* names[] = {"messenger", "tag", "payload", "source", "reply_to", nullptr};
    PyObject *messenger, *tag, *payload, *source, *reply_to;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO:Message", const_cast<char**>(names),
                                     &messenger, &tag, &payload, &source, &reply_to))
        return nullptr;
    PyObject* self = type->tp_alloc(type, 0);
    if (!self) return nullptr;
    set_fields(reinterpret_cast<MessageObject*>(self), messenger, tag, payload, source, reply_to);
    return self;
}

PyMemberDef members[] = {
    {"tag", T_OBJECT, offsetof(MessageObject, tag), READONLY,
     "The tag (receiver name) it was sent to."},
    {"payload", T_OBJECT, offsetof(MessageObject, payload), READONLY, "The decoded payload."},
    {"source", T_OBJECT, offsetof(MessageObject, source), READONLY, "The rank that sent it."},
    {"reply_to", T_OBJECT, offsetof(MessageObject, reply_to), READONLY,
     "For a request, the Address that answers it; None for a plain send."},
    {"_messenger", T_OBJECT, offsetof(MessageObject, messenger), READONLY, nullptr},
    {"_replied", T_BOOL, offsetof(MessageObject, replied), 0, nullptr},
    {"_deferred", T_BOOL, offsetof(MessageObject, deferred), 0, nullptr},
    {"_cancelled", T_BOOL, offsetof(MessageObject, cancelled), 0, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot slots[] = {
    {Py_tp_doc, const_cast<char*>("The fields of a delivered message (see conveyor.Message).")},
    {Py_tp_new, reinterpret_cast<void*>(new_message)},
    {Py_tp_dealloc, reinterpret_cast<void*>(dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(clear)},
    {Py_tp_members, members},
    {0, nullptr},
};

PyType_Spec spec = {
    "conveyor._core.MessageBase",
    sizeof(MessageObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    slots,
};

}  // namespace

void add_type(py::module_& module) {
    PyObject* type = PyType_FromSpec(&spec);
    if (!type) throw py::error_already_set();
    message_type = reinterpret_cast<PyTypeObject*>(type);  // kept for the module's lifetime
    module.add_object("MessageBase", py::reinterpret_borrow<py::object>(type));
}

py::object make(PyTypeObject* type, py::handle messenger, py::handle tag, py::handle payload,
                py::handle source, py::handle reply_to) {
    PyObject* self = type->tp_alloc(type, 0);
    if (!self) throw py::error_already_set();
    set_fields(reinterpret_cast<MessageObject*>(self), messenger.ptr(), tag.ptr(), payload.ptr(),
               source.ptr(), reply_to.ptr());
    return py::reinterpret_steal<py::object>(self);
}

bool is_message_type(py::handle type) {
    return PyType_Check(type.ptr()) &&
           PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(type.ptr()), message_type);
}

}  // namespace conveyor::py_message
