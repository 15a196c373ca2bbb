// The dispatcher of PyEngine::serve(): it takes each message ready, out of a
// batch or a frame of its own, and delivers it, to a receiver's handler in
// the common cases and to the façade's Dispatch for the rest (see the class
// comment in engine.hpp). Its own translation unit: engine.hpp is what the
// send paths (sender.cpp, requests.cpp) include, and this is called only
// through serve() and wait().

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bindings/engine/engine.hpp"

namespace conveyor {

namespace {

// The exception being raised, taken with its traceback (which, before
// Python 3.12, is not attached to it until it is caught in Python).
py::object caught() {
    py::error_already_set error;
    py::object exc = error.value();
    if (error.trace() && PyException_SetTraceback(exc.ptr(), error.trace().ptr()) < 0)
        throw py::error_already_set();
    return exc;
}

bool awaitable(PyObject* result) {
    auto async = Py_TYPE(result)->tp_as_async;
    return async && async->am_await;
}

// What per-item delivery splits: arrays and lists or tuples, not the
// characters of a str nor the bytes of a byte string.
bool has_items(PyObject* payload) {
    return PySequence_Check(payload) && !PyUnicode_Check(payload) && !PyBytes_Check(payload) &&
           !PyByteArray_Check(payload) && !PyMemoryView_Check(payload);
}

}  // namespace

// What serve() needs from the façade: its Dispatch object (_dispatch.py),
// passed on each call so that the engine holds no reference back to the
// Messenger. Its named attributes are read when a delivery first needs
// them: `receivers` ({tag: (handler, per_item)}), `message_type` (the
// Message class), `requests` (whose answer(kind, source, ref, payload,
// error) takes every answer that hand_reply does not, and whose `waiters`
// are the open requests), `aggregate`, and the methods fallback(item),
// returned(msg, result), failed(msg, exc), finish_request(msg, result,
// exc) and slow_handler(tag, source, seconds).
class PyEngine::Hooks {
  public:
    explicit Hooks(py::handle dispatch) : dispatch_(dispatch) {}
    py::handle dispatch() const { return dispatch_; }
    PyObject* receivers() {
        if (!receivers_) {
            receivers_ = attribute(dispatch_names().receivers);
            if (!PyDict_Check(receivers_.ptr()))
                throw UsageError("Dispatch.receivers must be a dict");
        }
        return receivers_.ptr();
    }
    PyTypeObject* message_type() {
        if (!message_type_) {
            message_type_ = attribute(dispatch_names().message_type);
            if (!py_message::is_message_type(message_type_))
                throw UsageError("Dispatch.message_type must be a subclass of MessageBase");
        }
        return reinterpret_cast<PyTypeObject*>(message_type_.ptr());
    }
    bool aggregate() {
        if (aggregate_ < 0) aggregate_ = attribute(dispatch_names().aggregate).ptr() == Py_True;
        return aggregate_ == 1;
    }
    py::object requests() { return attribute(dispatch_names().requests); }
    // Calls the Dispatch's method `name` with `args`.
    template <typename... Args>
    void call(PyObject* name, const Args&... args) {
        call_method(dispatch_, name, args...);
    }

  private:
    py::object attribute(PyObject* name) const {
        auto value = py::reinterpret_steal<py::object>(PyObject_GetAttr(dispatch_.ptr(), name));
        if (!value) throw py::error_already_set();
        return value;
    }

    py::handle dispatch_;
    py::object receivers_, message_type_;
    int aggregate_ = -1;
};

// One message ready for dispatch; kind 0 is a rejected frame and error
// is None or why the frame or its payload could not be read. `entry`:
// it came out of a batch, a frame that finishes once all of it is read.
struct PyEngine::Delivery {
    int kind = 0;
    int source = -1;
    std::uint64_t ref = 0;
    bool entry = false;
    std::uint64_t bytes = 0;  // the frame and its out-of-band data, for a trace
    py::object tag, payload, error;
};

// Counts a message as handled when its dispatch ends, however it ends,
// and its frame as finished: a frame of its own then, and a batch once
// it is read to its end (next()), which must wait for this entry's
// dispatch (a nested serve may read the batch on meanwhile). By source,
// only whole frames are counted: an entry's hold and release cancel out,
// and the batch's end counts it (this also keeps a vector's update off
// the path of every aggregated message: 5% of their rate).
struct PyEngine::Handled {
    Handled(PyEngine& e, bool entry, int source) : engine(e), source(entry ? -1 : source) {
        if (entry) engine.count_finished(-1, 0, -1);
    }
    ~Handled() { engine.count_finished(1, 1, source); }
    PyEngine& engine;
    int source;
};

struct PyEngine::Handling {
    explicit Handling(int& depth) : depth(depth) { ++depth; }
    ~Handling() { --depth; }
    int& depth;
};

std::size_t PyEngine::serve(double timeout, int uncongested, py::handle dispatch, bool answered) {
    check_open();
    Hooks h(dispatch);
    auto start = Clock::now();
    engine_.flush();
    if (!has_pending()) engine_.progress();
    if (!has_pending() && timeout != 0) {
        py::gil_scoped_release nogil;
        engine_.wait(timeout, uncongested);
    }
    std::size_t dispatched = 0;
    Delivery d;
    if (trace_) trace_cursor_ = TraceLog::ticks();  // where this serve's first span starts
    while (next(d)) {
        dispatch_one(d, h);
        ++dispatched;
        if (answered && (is_answer(static_cast<FrameKind>(d.kind)) ||
                         (timeout >= 0 && seconds_since(start) >= timeout)))
            break;
    }
    report_handled();
    // What the handlers sent leaves now, not when the caller waits next.
    if (dispatched != 0) engine_.flush();
    return dispatched;
}

bool PyEngine::wait(py::handle waiter, double timeout, double slice, py::handle dispatch,
                    py::handle check) {
    const bool limited = timeout >= 0 && !std::isinf(timeout);
    auto start = Clock::now();
    // Its caller found the waiter not ready: it is asked after each serve().
    for (bool served = false;; served = true) {
        if (served) {
            // Answered in the serve() just made, the waiter is ready (both a
            // Future and a Stream are, once given a final answer). answered_
            // was cleared before that serve(), so it names an object alive
            // since then: this one, if equal.
            if (answered_ == waiter.ptr()) return true;
            PyObject* argv[] = {waiter.ptr()};
            auto ready = py::reinterpret_steal<py::object>(
                PyObject_VectorcallMethod(dispatch_names().ready, argv, 1, nullptr));
            if (!ready) throw py::error_already_set();
            int is_ready = PyObject_IsTrue(ready.ptr());
            if (is_ready < 0) throw py::error_already_set();
            if (is_ready) return true;
        }
        if (PyErr_CheckSignals() < 0) throw py::error_already_set();
        if (!check.is_none() &&
            !py::reinterpret_steal<py::object>(PyObject_CallNoArgs(check.ptr())))
            throw py::error_already_set();
        double wait = slice;
        if (limited) {
            double left = timeout - seconds_since(start);
            if (left <= 0) return false;
            wait = std::min(wait, left);
        }
        answered_ = nullptr;
        serve(wait, -1, dispatch, true);
    }
}

// The next message: the next entry of the batch being read, or the next
// frame the engine has ready. Handlers may call serve() again (a nested
// wait), which simply continues from here.
bool PyEngine::next(Delivery& d) {
    d.entry = false;
    for (;;) {
        if (batch_) {
            if (batch_reader_.left() != 0) {
                auto batch = batch_;  // kept alive while decoding, which may run Python
                const std::uint8_t* frame = nullptr;
                std::size_t size = 0;
                try {
                    batch_reader_.next(frame, size);
                } catch (const DecodeError& e) {
                    // Nothing after a broken entry can be found: the batch
                    // ends here, whatever number of entries it announced.
                    batch_.reset();
                    count_finished(1, 0, batch->source);
                    entries_malformed_ += 1;
                    reject(d, batch->source, e.what());
                    d.entry = true;
                    return true;
                }
                read_entry(d, batch->source, frame, size);
                d.entry = true;
                return true;
            }
            auto batch = std::move(batch_);
            count_finished(1, 0, batch->source);
            if (auto extra = batch_reader_.trailing()) {
                // Bytes after the announced entries: reported once, as a
                // rejection that is not a message of its own.
                count_finished(0, -1, batch->source);
                entries_malformed_ += 1;
                reject(d, batch->source,
                       "corrupt batch: " + std::to_string(extra) + " bytes after its last entry");
                d.entry = true;
                return true;
            }
        }
        std::shared_ptr<Incoming> in = engine_.pop();
        if (!in) return false;
        if (!in->malformed.empty()) {
            reject(d, in->source, in->malformed);
            return true;
        }
        const auto& h = in->header;
        if (h.kind == FrameKind::Batch) {
            batch_reader_ = BatchReader(in->frame.data() + h.body_offset,
                                        in->frame.size() - h.body_offset, h.ref);
            batch_ = std::move(in);
            continue;
        }
        read_message(d, in->source, h, in->frame.data(), in->frame.size(), in->oob);
        return true;
    }
}

void PyEngine::read_entry(Delivery& d, int source, const std::uint8_t* frame, std::size_t size) {
    FrameHeader h;
    try {
        h = read_header(frame, size);
    } catch (const DecodeError& e) {
        entries_malformed_ += 1;
        return reject(d, source, e.what());
    }
    if (!valid_message_kind(h.kind)) {
        entries_malformed_ += 1;
        return reject(d, source, "a batch entry must be a message");
    }
    if (!h.oob.empty()) {
        // A message whose data cannot come (a batch has none out of band):
        // one with a payload that cannot be read, so that a request is
        // answered with the error and an answer fails its request.
        header_fields(d, source, h);
        d.payload = py::none();
        d.error = py::str("a batch entry cannot carry out-of-band data");
        return;
    }
    read_message(d, source, h, frame, size, {});
}

void PyEngine::header_fields(Delivery& d, int source, const FrameHeader& h) {
    d.bytes = 0;
    d.kind = static_cast<int>(h.kind);
    d.source = source;
    d.ref = h.ref;
    d.tag = tag_object(h.tag);
}

void PyEngine::read_message(Delivery& d, int source, const FrameHeader& h,
                            const std::uint8_t* frame, std::size_t size,
                            const std::vector<std::shared_ptr<Buffer>>& oob) {
    header_fields(d, source, h);
    d.bytes = size;
    for (const auto& b : oob) d.bytes += b->size();
    d.error = py::none();
    try {
        d.payload = py_codec::decode_body(frame + h.body_offset, size - h.body_offset, oob,
                                          codec_.allow_pickle);
    } catch (const DecodeError& e) {
        d.payload = py::none();
        d.error = py::str(e.what());
    }
}

void PyEngine::reject(Delivery& d, int source, const std::string& why) {
    d.kind = 0;
    d.bytes = 0;
    d.source = source;
    d.ref = 0;
    d.tag = py::str("");
    d.payload = py::none();
    d.error = py::str(why);
}

// Tags repeat: keep their str objects (whose hashes Python caches).
py::object PyEngine::tag_object(const std::string& tag) {
    auto it = tags_.find(tag);
    if (it != tags_.end()) return it->second;
    py::object s = decode_tag(tag);
    if (tags_.size() < kMaxCachedTags) tags_.emplace(tag, s);
    return s;
}

// Delivers one message, recorded as a span if traced (however its
// dispatch ends: a handler that raised through is a span too). The
// span starts where the previous one of this serve() ended (or where
// serve() started dispatching): one clock read per message.
void PyEngine::dispatch_one(Delivery& d, Hooks& h) {
    if (!trace_) return deliver_one(d, h);
    struct Span {
        PyEngine& e;
        const Delivery& d;
        std::uint64_t start;
        ~Span() { e.trace_cursor_ = e.trace_->dispatched(d.kind, d.source, d.tag, d.bytes, start); }
    } span{*this, d, trace_cursor_};
    deliver_one(d, h);
}

// Every message is counted as handled here, once, when its dispatch
// ends, whichever way it went (termination detection depends on it): no
// path of the façade counts for itself.
void PyEngine::deliver_one(Delivery& d, Hooks& h) {
    Handled handled(*this, d.entry, d.source);
    Handling handling(handling_);
    const auto& names = dispatch_names();
    auto kind = static_cast<FrameKind>(d.kind);
    if (is_answer(kind)) {
        if (kind == FrameKind::Reply && d.error.is_none() && hand_reply(d, h)) return;
        // Every other answer, readable or not, goes to the requests it answers.
        py::object source = py::int_(d.source), ref = py::int_(d.ref), k = py::int_(d.kind);
        return call_method(h.requests(), names.answer, k, source, ref, d.payload, d.error);
    }
    if ((kind == FrameKind::Send || kind == FrameKind::Request) && d.error.is_none()) {
        PyObject* entry = PyDict_GetItemWithError(h.receivers(), d.tag.ptr());
        if (!entry && PyErr_Occurred()) throw py::error_already_set();
        if (entry) return timed(h, d, [&] { run_handler(d, h, entry); });
    }
    h.call(names.fallback, py::make_tuple(d.kind, d.source, d.ref, d.tag, d.payload, d.error));
}

// A readable final answer whose request is open, the common case: its
// waiter (in the Requests' `waiters`, {ref: waiter}) is taken and gets
// it, `waiter._answer(payload, True)`, as Requests.answer would do; one
// Python call less per request. False if it is not there: then
// Requests.answer counts the answer as late.
bool PyEngine::hand_reply(const Delivery& d, Hooks& h) {
    const auto& names = dispatch_names();
    auto waiters =
        py::reinterpret_steal<py::object>(PyObject_GetAttr(h.requests().ptr(), names.waiters));
    if (!waiters) throw py::error_already_set();
    if (!PyDict_CheckExact(waiters.ptr())) throw UsageError("Requests.waiters must be a dict");
    py::object ref = py::int_(d.ref);
    PyObject* found = PyDict_GetItemWithError(waiters.ptr(), ref.ptr());
    if (!found) {
        if (PyErr_Occurred()) throw py::error_already_set();
        return false;
    }
    auto waiter = py::reinterpret_borrow<py::object>(found);
    if (PyDict_DelItem(waiters.ptr(), ref.ptr()) < 0) throw py::error_already_set();
    call_method(waiter, names.answer_waiter, d.payload, py::handle(Py_True));
    answered_ = waiter.ptr();
    return true;
}

// Runs `run`, a message's handler: the one place handlers are timed. If
// CONVEYOR_SLOW_HANDLER_S is unset this costs one comparison; else two
// reads of a coarse clock, the handler listed in timed_now() while it
// runs, and a call of Dispatch.slow_handler(tag, source, seconds) when
// it took at least that long (not if it raised through: a
// KeyboardInterrupt is on its way).
template <class Run>
void PyEngine::timed(Hooks& h, const Delivery& d, Run&& run) {
    if (!(slow_handler_seconds < std::numeric_limits<double>::infinity())) return run();
    double start = coarse_seconds();
    {
        timing_.push_back({d.tag, d.source, start});
        struct Unlist {
            std::vector<Timing>& timing;
            ~Unlist() { timing.pop_back(); }
        } unlist{timing_};
        run();
    }
    double seconds = coarse_seconds() - start;
    if (seconds >= slow_handler_seconds)
        h.call(dispatch_names().slow_handler, d.tag, py::int_(d.source), py::float_(seconds));
}

// Delivers a send or request to its receiver's `entry`, (handler, per_item).
void PyEngine::run_handler(Delivery& d, Hooks& h, PyObject* entry) {
    py::handle handler = PyTuple_GET_ITEM(entry, 0);
    if (static_cast<FrameKind>(d.kind) == FrameKind::Request) return run_request(d, h, handler);
    py::object source = py::int_(d.source);
    Py_ssize_t n = -1;
    if (PyTuple_GET_ITEM(entry, 1) == Py_True && has_items(d.payload.ptr())) {
        n = PySequence_Size(d.payload.ptr());
        if (n < 0) PyErr_Clear();  // a 0-d array has no items: delivered whole
    }
    if (n < 0) return deliver(h, handler, d.tag, d.payload, source);
    // Per-item delivery: one call per row of the batch.
    py::object items = d.payload;
    for (Py_ssize_t i = 0; i < n; ++i) {
        auto item = py::reinterpret_steal<py::object>(PySequence_GetItem(items.ptr(), i));
        if (!item) throw py::error_already_set();
        deliver(h, handler, d.tag, item, source);
    }
}

// Runs a request's handler and sends its return value as the reply.
// Whatever is unusual (it raised, replied or deferred itself, was
// cancelled, returned a coroutine, or its value cannot travel) the
// façade's finish_request settles, as its Python dispatcher would.
void PyEngine::run_request(Delivery& d, Hooks& h, py::handle handler) {
    const auto& names = dispatch_names();
    py::object source = py::int_(d.source);
    py::object msg =
        py_message::make_request(h.message_type(), h.dispatch(), d.tag, d.payload, source, d.ref);
    // Where a cancel arriving while the handler runs finds the request
    // (a forged copy of a request that runs is not listed twice).
    bool listed = !find_answering(d.source, d.ref);
    if (listed) answering_.push_back({d.source, d.ref, msg});
    struct Unlist {
        std::vector<Answering>& answering;
        bool listed;
        ~Unlist() {
            if (listed) answering.pop_back();
        }
    } unlist{answering_, listed};
    auto result = py::reinterpret_steal<py::object>(PyObject_CallOneArg(handler.ptr(), msg.ptr()));
    if (!result) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
        h.call(names.finish_request, msg, py::none(), caught());
        return;
    }
    bool plain = !py_message::replied(msg) && !py_message::deferred(msg) &&
                 !py_message::cancelled(msg) && !awaitable(result.ptr());
    if (plain) {
        try {
            // Congestion is ignored: a handler's sends queue, never wait.
            send(d.source, static_cast<int>(FrameKind::Reply), d.ref, "", result, h.aggregate());
            py_message::set_replied(msg);
            return;
        } catch (const Closed&) {
            throw;
        } catch (const std::exception&) {
            // It cannot travel: the façade's reply raises the same error
            // again, with its type, and answers with it.
            PyErr_Clear();
        }
    }
    h.call(names.finish_request, msg, result, py::none());
}

// Calls a receiver. An Exception from it is reported through `failed`
// and dispatch goes on; anything else (KeyboardInterrupt) propagates.
void PyEngine::deliver(Hooks& h, py::handle handler, py::handle tag, py::handle payload,
                       py::handle source) {
    const auto& names = dispatch_names();
    py::object msg =
        py_message::make(h.message_type(), h.dispatch(), tag, payload, source, Py_None);
    auto result = py::reinterpret_steal<py::object>(PyObject_CallOneArg(handler.ptr(), msg.ptr()));
    if (!result) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
        h.call(names.failed, msg, caught());
        return;
    }
    if (!result.is_none()) h.call(names.returned, msg, result);
    py_message::recycle(std::move(msg));
}

}  // namespace conveyor
