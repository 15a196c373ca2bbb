// What the C types of the bindings (MessageBase, SenderBase, TagSenders,
// RequestsBase), heap types whose objects the garbage collector tracks,
// share.
#pragma once

#include <Python.h>

namespace conveyor {

// Their tp_dealloc: untracks the object, drops its references with `Clear`
// (its tp_clear), runs `Release` on what tp_clear must leave to a live
// object (none if null), frees it, and drops its reference to its type.
template <int (*Clear)(PyObject*), void (*Release)(PyObject*) = nullptr>
void gc_dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Clear(self);
    if constexpr (Release != nullptr) Release(self);
    type->tp_free(self);
    Py_DECREF(type);
}

}  // namespace conveyor
