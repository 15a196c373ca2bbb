// conveyor._core.message.MessageBase: the fields of a delivered message.
//
// One is handed to a handler for every message, so it is a plain C type
// rather than a pybind11 class: creating a pybind11 instance and reading its
// attributes cost several times more, which shows at millions of messages
// per second; and one that no handler kept is reused (recycle()). The
// façade's Message subclasses it and adds methods.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace conveyor::py_message {

namespace py = pybind11;

// A new instance of `type` (MessageBase or a subclass) with these fields.
py::object make(PyTypeObject* type, py::handle messenger, py::handle tag, py::handle payload,
                py::handle source, py::handle reply_to);

// A request: its reply_to, Address(source, tag, ref), is made only if read
// (the native dispatcher answers most requests without it).
py::object make_request(PyTypeObject* type, py::handle messenger, py::handle tag,
                        py::handle payload, py::handle source, std::uint64_t ref);

// Done with `message`, whose handler returned: if nothing else holds it,
// it is emptied and the next make() or make_request() of its type reuses it.
void recycle(py::object&& message);

// The flags a handler sets through Message.reply() / defer(), and a cancel.
bool replied(py::handle message);
bool deferred(py::handle message);
bool cancelled(py::handle message);
void set_replied(py::handle message);

// Whether `type` is MessageBase or a subclass (what make() may create).
bool is_message_type(py::handle type);

}  // namespace conveyor::py_message
