#include "bindings/engine/engine.hpp"

#include <pybind11/stl.h>  // EngineOptions.next_hop: a list of ranks

namespace conveyor {

namespace {

// Engine.serve(timeout, uncongested, dispatch, answered=False) -> int: see
// PyEngine::serve. Every wait of the façade comes here, once per message
// or more: a vectorcall method, without pybind11's argument dispatch.
PyObject* engine_serve(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return guarded([&]() -> PyObject* {
        if (nargs < 3 || nargs > 4)
            throw py::type_error(
                "serve() takes 3 or 4 arguments (timeout, uncongested, dispatch, answered)");
        auto& engine = engine_of(self);
        double timeout = PyFloat_AsDouble(args[0]);
        if (timeout == -1.0 && PyErr_Occurred()) throw py::error_already_set();
        long uncongested = PyLong_AsLong(args[1]);
        if (uncongested == -1 && PyErr_Occurred()) throw py::error_already_set();
        if (uncongested < -1 || uncongested > std::numeric_limits<int>::max())
            throw py::value_error("serve(): uncongested must be a rank, or -1");
        int answered = nargs == 4 ? PyObject_IsTrue(args[3]) : 0;
        if (answered < 0) throw py::error_already_set();
        return PyLong_FromSize_t(
            engine.serve(timeout, static_cast<int>(uncongested), args[2], answered != 0));
    });
}

PyMethodDef engine_serve_method = {
    "serve", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(engine_serve)),
    METH_FASTCALL,
    "serve($self, timeout, uncongested, dispatch, answered=False, /)\n--\n\n"
    "Flush, receive, wait up to ``timeout`` s if nothing is ready, then\n"
    "dispatch what is; return how many messages were dispatched.\n"};

// Engine.wait(waiter, timeout, slice, dispatch, check) -> bool: see
// PyEngine::wait. On every request's path, as serve() is.
PyObject* engine_wait(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return guarded([&]() -> PyObject* {
        if (nargs != 5)
            throw py::type_error(
                "wait() takes 5 arguments (waiter, timeout, slice, dispatch, check)");
        auto& engine = engine_of(self);
        double timeout = PyFloat_AsDouble(args[1]);
        if (timeout == -1.0 && PyErr_Occurred()) throw py::error_already_set();
        double slice = PyFloat_AsDouble(args[2]);
        if (slice == -1.0 && PyErr_Occurred()) throw py::error_already_set();
        if (!(slice > 0)) throw py::value_error("wait(): slice must be a number of seconds > 0");
        if (args[4] != Py_None && !PyCallable_Check(args[4]))
            throw py::type_error("wait(): check must be callable or None");
        return py::bool_(engine.wait(args[0], timeout, slice, args[3], args[4])).release().ptr();
    });
}

PyMethodDef engine_wait_method = {
    "wait", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(engine_wait)), METH_FASTCALL,
    "wait($self, waiter, timeout, slice, dispatch, check, /)\n--\n\n"
    "Serve until ``waiter._ready()``; return False if ``timeout`` s passed first.\n"};

}  // namespace

PyEngine& engine_of(PyObject* self) {
    static const py::detail::type_info* record = py::detail::get_type_info(typeid(PyEngine));
    if (record && Py_TYPE(self) == record->type) {
        auto made = reinterpret_cast<py::detail::instance*>(self)->get_value_and_holder(record);
        if (made.holder_constructed()) return *made.value_ptr<PyEngine>();
    }
    return py::handle(self).cast<PyEngine&>();
}

void add_method(py::handle engine_class, PyMethodDef& method) {
    auto type = reinterpret_cast<PyTypeObject*>(engine_class.ptr());
    auto descriptor = py::reinterpret_steal<py::object>(PyDescr_NewMethod(type, &method));
    if (!descriptor ||
        PyObject_SetAttrString(engine_class.ptr(), method.ml_name, descriptor.ptr()) < 0)
        throw py::error_already_set();
}

void register_engine(py::module_& m) {
    py::class_<EngineOptions>(m, "EngineOptions")
        .def(py::init<>())
        .def_readwrite("max_frame_bytes", &EngineOptions::max_frame_bytes)
        .def_readwrite("piece_bytes", &EngineOptions::piece_bytes)
        .def_readwrite("spin_seconds", &EngineOptions::spin_seconds)
        .def_readwrite("yield_seconds", &EngineOptions::yield_seconds)
        .def_readwrite("max_sleep_seconds", &EngineOptions::max_sleep_seconds)
        .def_readwrite("batch_bytes", &EngineOptions::batch_bytes)
        .def_readwrite("flush_delay_seconds", &EngineOptions::flush_delay_seconds)
        .def_readwrite("background_max_sleep_seconds", &EngineOptions::background_max_sleep_seconds)
        .def_readwrite("window_bytes", &EngineOptions::window_bytes)
        .def_readwrite("data_window_bytes", &EngineOptions::data_window_bytes)
        .def_readwrite("window_pool_bytes", &EngineOptions::window_pool_bytes)
        .def_readwrite("data_window_pool_bytes", &EngineOptions::data_window_pool_bytes)
        .def_readwrite("background", &EngineOptions::background)
        .def_readwrite("next_hop", &EngineOptions::next_hop)
        .def_readwrite("relay_pool_bytes", &EngineOptions::relay_pool_bytes)
        .def_readwrite("batch_pool_bytes", &EngineOptions::batch_pool_bytes);

    py::class_<PyEngine>(m, "Engine")
        .def(py::init<std::intptr_t, std::size_t, bool, const EngineOptions&>(), py::arg("comm"),
             py::arg("zero_copy_threshold"), py::arg("allow_pickle"), py::arg("options"))
        .def_property_readonly("rank", [](PyEngine& e) { return e.engine().rank(); })
        .def_property_readonly("size", [](PyEngine& e) { return e.engine().size(); })
        .def("start_trace", &PyEngine::start_trace, py::arg("capacity"))
        .def("read_trace", &PyEngine::read_trace, py::arg("start"), py::arg("count"))
        .def_property_readonly("trace_size", &PyEngine::trace_size)
        .def_property_readonly("trace_dropped", &PyEngine::trace_dropped)
        .def("post_raw", &PyEngine::post_raw, py::arg("dest"), py::arg("frame"))
        .def("answering", &PyEngine::answering, py::arg("source"), py::arg("ref"))
        .def_property_readonly("answering_count", &PyEngine::answering_count)
        .def("answering_now", &PyEngine::answering_now)
        .def("timed_now", &PyEngine::timed_now)
        .def_readwrite("slow_handler_seconds", &PyEngine::slow_handler_seconds)
        .def("describe", &PyEngine::describe, py::arg("patience"))
        .def("flush", [](PyEngine& e) { e.engine().flush(); })
        .def(
            "congested", [](PyEngine& e, int dest) { return e.engine().congested(dest); },
            py::arg("dest"))
        .def_property_readonly("handling", &PyEngine::handling)
        .def_property_readonly("background",
                               [](PyEngine& e) { return e.engine().has_background_thread(); })
        .def("mark_handled", &PyEngine::mark_handled, py::arg("messages") = 1,
             py::arg("source") = -1)
        .def("defer_handled", &PyEngine::defer_handled, py::arg("source") = -1)
        .def("frames_without", &PyEngine::frames_without, py::arg("excluded"))
        .def(
            "abandon", [](PyEngine& e, int rank) { e.engine().abandon(rank); }, py::arg("rank"))
        .def("start_wave", &PyEngine::start_wave)
        .def_property_readonly("wave_active", [](PyEngine& e) { return e.engine().wave_active(); })
        .def("wave_done", &PyEngine::wave_done)
        .def("flush_sends", &PyEngine::flush_sends, py::arg("timeout"))
        .def(
            "serve_in_background", [](PyEngine& e, int fd) { e.engine().serve_in_background(fd); },
            py::arg("fd"))
        .def("close", &PyEngine::close)
        .def("stats", &PyEngine::stats)
        .def("abort", [](PyEngine& e, int code) { e.engine().abort(code); });

    add_method(m.attr("Engine"), engine_serve_method);
    add_method(m.attr("Engine"), engine_wait_method);

    m.def("set_buffer_cache_limit", &Buffer::set_cache_limit, py::arg("bytes"),
          "Keep at most this many bytes of freed large receive buffers for reuse.");
}

}  // namespace conveyor
