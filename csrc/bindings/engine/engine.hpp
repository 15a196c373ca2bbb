// conveyor._core.engine.Engine: the progress engine as the façade drives it, with
// the dispatcher of serve().
#pragma once

#include <pybind11/pybind11.h>

#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "bindings/engine/trace.hpp"
#include "bindings/errors.hpp"
#include "bindings/message/codec.hpp"
#include "bindings/message/message.hpp"
#include "conveyor/engine/backoff.hpp"
#include "conveyor/engine/engine.hpp"

namespace conveyor {

namespace py = pybind11;

// MPI_Comm is an int in MPICH's ABI and a pointer in Open MPI's (a template,
// so that only the branch for this MPI's handle type is compiled).
template <class Handle = MPI_Comm>
Handle comm_from_handle(std::intptr_t handle) {
    if constexpr (std::is_pointer_v<Handle>) {
        return reinterpret_cast<Handle>(handle);
    } else {
        return static_cast<Handle>(handle);
    }
}

// The common case of a destination rank, which the native fast paths take:
// an exact int in [0, size). False for anything else (an int subclass, a
// numpy integer, a rank out of range), which the façade's general path then
// converts, checks and reports.
inline bool exact_rank(PyObject* dest, int size, int& rank) {
    if (!PyLong_CheckExact(dest)) return false;
    int overflow = 0;
    long value = PyLong_AsLongAndOverflow(dest, &overflow);  // cannot fail on an exact int
    if (overflow || value < 0 || value >= size) return false;
    rank = static_cast<int>(value);
    return true;
}

// Adds `method`, a vectorcall method of PyEngine, to the Engine class (its
// type object): the entry points called once per message or more skip
// pybind11's argument dispatch, which costs more than sending an 8-byte
// message (measured: 180 ns of Engine.send's 290).
void add_method(py::handle engine_class, PyMethodDef& method);

// The names of what the dispatcher calls and reads on the façade, interned once (a
// str made per call would cost as much as the lookup).
struct DispatchNames {
    PyObject* fallback = PyUnicode_InternFromString("fallback");
    PyObject* returned = PyUnicode_InternFromString("returned");
    PyObject* failed = PyUnicode_InternFromString("failed");
    PyObject* finish_request = PyUnicode_InternFromString("finish_request");
    PyObject* answer = PyUnicode_InternFromString("answer");
    PyObject* receivers = PyUnicode_InternFromString("receivers");
    PyObject* message_type = PyUnicode_InternFromString("message_type");
    PyObject* aggregate = PyUnicode_InternFromString("aggregate");
    PyObject* requests = PyUnicode_InternFromString("requests");
    PyObject* slow_handler = PyUnicode_InternFromString("slow_handler");
    PyObject* waiters = PyUnicode_InternFromString("waiters");
    // A waiter's (a Future's or Stream's): see PyEngine::wait and hand_reply.
    PyObject* ready = PyUnicode_InternFromString("_ready");
    PyObject* answer_waiter = PyUnicode_InternFromString("_answer");
};
inline const DispatchNames& dispatch_names() {
    static const DispatchNames names;  // first made under the GIL, never freed
    return names;
}

// self.name(*args), without making a bound method.
template <typename... Args>
void call_method(py::handle self, PyObject* name, const Args&... args) {
    PyObject* argv[] = {self.ptr(), py::handle(args).ptr()...};
    auto result = py::reinterpret_steal<py::object>(
        PyObject_VectorcallMethod(name, argv, sizeof(argv) / sizeof(argv[0]), nullptr));
    if (!result) throw py::error_already_set();
}

// The engine as the façade drives it. Besides sending, one entry point,
// serve(), waits and dispatches. The common cases are dispatched here, in
// C++: plain sends and requests to a registered receiver (one handler call
// each, and the request's reply sent). Answers to this rank's requests go to
// the façade's Requests.answer; the rest (unknown tags, errors, rejected
// frames, and requests whose handler raised, deferred or went async) to its
// Dispatch.
class PyEngine {
  public:
    PyEngine(std::intptr_t comm, std::size_t zero_copy_threshold, bool allow_pickle,
             const EngineOptions& options)
        : engine_(comm_from_handle(comm), options),
          finished_from_(static_cast<std::size_t>(engine_.size()), 0) {
        codec_.zero_copy_threshold = zero_copy_threshold;
        codec_.allow_pickle = allow_pickle;
    }

    // Encodes and sends (into the destination's batch when `aggregate` and
    // small). Returns whether `dest` is congested: the caller should slow down.
    bool send(int dest, int kind, std::uint64_t ref, std::string_view tag, py::handle payload,
              bool aggregate) {
        check_open();
        Scratch scratch(*this);
        auto& encoded = scratch.encoded;
        try {
            py_codec::encode_frame(encoded, frame_kind(kind), ref, tag, payload, codec_);
            const auto& frame = encoded.frame.bytes;
            if (trace_) trace_->sent(kind, dest, tag, frame.size() + oob_bytes(encoded.oob));
            if (aggregate && encoded.oob.empty()) {
                auto posted = engine_.post_aggregated(dest, frame.data(), frame.size());
                if (posted != Engine::Posted::TooLarge) return posted == Engine::Posted::Congested;
            }
            KeepAlive keep;
            if (encoded.keep) keep = py_codec::keep_alive(std::move(encoded.keep));
            return engine_.post(dest, std::move(encoded.frame.bytes), encoded.oob, std::move(keep));
        } catch (...) {
            // A message that does not leave takes nothing with it.
            py_codec::unsent(encoded);
            throw;
        }
    }

    // Records every send and dispatched message from now on, up to
    // `capacity` entries (a traced Messenger); untraced, the paths above
    // pay one test of a null pointer.
    void start_trace(std::size_t capacity) { trace_ = std::make_unique<TraceLog>(capacity); }
    // Entries [start, start + count) of the trace (see TraceLog::read); an
    // empty list if not tracing.
    py::list read_trace(std::size_t start, std::size_t count) const {
        return trace_ ? trace_->read(start, count) : py::list();
    }
    std::size_t trace_size() const { return trace_ ? trace_->size() : 0; }
    std::uint64_t trace_dropped() const { return trace_ ? trace_->dropped() : 0; }

    void post_raw(int dest, py::bytes frame) {
        std::string s = frame;
        engine_.post(dest, std::vector<std::uint8_t>(s.begin(), s.end()), {}, nullptr);
    }

    // Flushes batches, receives, waits up to `timeout` seconds (negative: no
    // limit) if nothing is ready, then dispatches everything ready. With
    // `uncongested` >= 0 the wait also ends once that rank takes sends again.
    // `dispatch` is the façade's Dispatch (see Hooks). With `answered`, the
    // caller waits for an answer: dispatching stops after the first answer,
    // and starts no further message once `timeout` has passed, so that a
    // wait lasts its timeout plus one handler at most. Returns how many
    // messages were dispatched.
    std::size_t serve(double timeout, int uncongested, py::handle dispatch, bool answered) {
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

    // Serves (as serve() with `answered`) until `waiter._ready()` is true;
    // returns false if `timeout` seconds (negative or infinite: no limit)
    // passed first. Each native wait lasts at most `slice` seconds, so that
    // a signal (Ctrl-C) is handled between two, and `check()` called, if
    // not None (the façade's check that the messenger is open, when it
    // does more than check_open()). Every blocking wait for an answer loops
    // here, in C++: the same loop in Python cost a request with a timeout
    // 0.8 us (its clock readings, checks and calls).
    bool wait(py::handle waiter, double timeout, double slice, py::handle dispatch,
              py::handle check) {
        const bool limited = timeout >= 0 && !std::isinf(timeout);
        auto start = Clock::now();
        for (;;) {
            PyObject* argv[] = {waiter.ptr()};
            auto ready = py::reinterpret_steal<py::object>(
                PyObject_VectorcallMethod(dispatch_names().ready, argv, 1, nullptr));
            if (!ready) throw py::error_already_set();
            int is_ready = PyObject_IsTrue(ready.ptr());
            if (is_ready < 0) throw py::error_already_set();
            if (is_ready) return true;
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
            serve(wait, -1, dispatch, true);
        }
    }

    // The request from `source` numbered `ref` whose handler runs now (its
    // Message), or None: where a cancel finds it.
    py::object answering(int source, std::uint64_t ref) const {
        const Answering* a = find_answering(source, ref);
        return a ? a->message : py::none();
    }
    std::size_t answering_count() const { return answering_.size(); }
    // The Messages of the requests whose handlers run now, outermost first
    // (nested waits run one inside another): what a state dump lists.
    py::list answering_now() const {
        py::list running;
        for (const auto& a : answering_) running.append(a.message);
        return running;
    }

    // Handlers whose dispatch lasts at least this long are reported to the
    // façade's Dispatch.slow_handler (infinity: never, and no clock is read).
    double slow_handler_seconds = std::numeric_limits<double>::infinity();

    // Counted here and reported to the engine once per serve() (its counters
    // are behind a lock), and always before a termination-detection wave.
    // A deferred message's frame counts as finished once the message is.
    // `source` is the rank the message came from (-1: not said).
    void mark_handled(std::int64_t messages, int source) {
        count_finished(messages, messages, source);
    }
    // The message being dispatched is not finished when its dispatch ends
    // (an async handler's task runs on): mark_handled() it when it is.
    void defer_handled(int source) { count_finished(-1, -1, source); }

    // (frames posted, frames finished) as a termination-detection wave
    // counts them, less the frames posted to `excluded` ranks and those
    // finished that came from them: a fault-tolerant messenger's detection
    // among the ranks that are left (pycore/conveyor/_failures.py).
    py::tuple frames_without(const py::sequence& excluded) {
        report_handled();
        const auto s = engine_.stats();
        std::uint64_t posted = s.frames_posted, finished = s.frames_finished;
        for (auto item : excluded) {
            int rank = item.cast<int>();
            posted -= engine_.frames_posted_to(rank);  // checks the rank
            finished -= static_cast<std::uint64_t>(finished_from_[static_cast<std::size_t>(rank)]);
        }
        return py::make_tuple(posted, finished);
    }

    void start_wave() {
        report_handled();
        engine_.start_wave();
    }

    py::object wave_done() {
        if (!engine_.wave_done()) return py::none();
        return py::make_tuple(engine_.wave_posted(), engine_.wave_finished());
    }

    bool flush_sends(double timeout) {
        py::gil_scoped_release nogil;
        return engine_.flush_sends(timeout);
    }

    void close() {
        closed_ = true;
        py::gil_scoped_release nogil;
        engine_.stop_background();
    }

    py::dict stats() const {
        const auto s = engine_.stats();
        py::dict d;
        d["messages_sent"] = s.messages_sent;
        d["messages_handled"] = s.messages_handled + unreported_messages_;
        d["frames_posted"] = s.frames_posted;
        d["frames_finished"] = s.frames_finished + unreported_frames_;
        d["messages_aggregated"] = s.messages_aggregated;
        d["frames_sent"] = s.frames_sent;
        d["frames_received"] = s.frames_received;
        d["frames_malformed"] = s.frames_malformed + entries_malformed_;
        d["frames_forged"] = s.frames_forged;
        d["batches_sent"] = s.batches_sent;
        d["batches_received"] = s.batches_received;
        d["batches_open_peak"] = s.batches_open_peak;
        d["batch_bytes_peak"] = s.batch_bytes_peak;
        d["batch_pool_flushes"] = s.batch_pool_flushes;
        d["messages_relayed"] = s.messages_relayed;
        d["fences_sent"] = s.fences_sent;
        d["bytes_framed"] = s.bytes_framed;
        d["bytes_zero_copy_sent"] = s.bytes_zero_copy_sent;
        d["bytes_zero_copy_received"] = s.bytes_zero_copy_received;
        d["credits_sent"] = s.credits_sent;
        d["credits_received"] = s.credits_received;
        d["sends_held"] = s.sends_held;
        d["in_flight_frame_bytes_peak"] = s.in_flight_frame_bytes_peak;
        d["in_flight_data_bytes_peak"] = s.in_flight_data_bytes_peak;
        d["window_pool_waits"] = s.window_pool_waits;
        d["waits_slept"] = s.waits_slept;
        d["background_flushes"] = s.background_flushes;
        d["pending_sends"] = engine_.pending_sends();
        d["pending_receives"] = engine_.pending_receives();
        d["buffer_cache_bytes"] = Buffer::cached_bytes();
        return d;
    }

    // The engine's state for a state dump, or None if its lock did not come
    // within `patience` seconds (see Engine::describe). The GIL is released
    // while it waits for the lock: its holder may be a thread that needs it.
    py::object describe(double patience) const {
        EngineState state;
        bool got;
        {
            py::gil_scoped_release nogil;
            got = engine_.describe(state, patience);
        }
        if (!got) return py::none();
        py::dict d;
        d["pending_sends"] = state.pending_sends;
        d["pending_receives"] = state.pending_receives;
        d["arriving"] = state.arriving;
        d["ready"] = state.ready + (batch_ ? batch_reader_.left() : 0);
        d["wave_active"] = state.wave_active;
        d["messages_sent"] = state.stats.messages_sent;
        d["messages_handled"] = state.stats.messages_handled + unreported_messages_;
        d["frames_posted"] = state.stats.frames_posted;
        d["frames_finished"] = state.stats.frames_finished + unreported_frames_;
        d["sends_held"] = state.stats.sends_held;
        d["window_bytes"] = engine_.options().window_bytes;
        d["data_window_bytes"] = engine_.options().data_window_bytes;
        py::list routes;
        for (const auto& r : state.routes) {
            py::dict route;
            route["rank"] = r.rank;
            route["batch_bytes"] = r.batch_bytes;
            route["held"] = r.held;
            route["in_flight_frame_bytes"] = r.in_flight_frame_bytes;
            route["in_flight_data_bytes"] = r.in_flight_data_bytes;
            route["asked"] = r.asked;
            route["consumed_frame_bytes"] = r.consumed_frame_bytes;
            route["consumed_data_bytes"] = r.consumed_data_bytes;
            route["owes"] = r.owes;
            routes.append(route);
        }
        d["routes"] = routes;
        return d;
    }

    // The handlers that run now (timed ones only: see timed()), outermost
    // first, as (tag, source, started, seconds so far): what tells a
    // handler that has not returned (a watch thread reads it under the GIL).
    py::list timed_now() const {
        py::list running;
        double now = coarse_seconds();
        for (const auto& t : timing_)
            running.append(py::make_tuple(t.tag, t.source, t.start, now - t.start));
        return running;
    }

    int handling() const { return handling_; }
    Engine& engine() { return engine_; }

  private:
    // What serve() needs from the façade: its Dispatch object (_dispatch.py),
    // passed on each call so that the engine holds no reference back to the
    // Messenger. Its named attributes are read when a delivery first needs
    // them: `receivers` ({tag: (handler, per_item)}), `message_type` (the
    // Message class), `requests` (whose answer(kind, source, ref, payload,
    // error) takes every answer that hand_reply does not, and whose `waiters`
    // are the open requests), `aggregate`, and the methods fallback(item),
    // returned(msg, result), failed(msg, exc), finish_request(msg, result,
    // exc) and slow_handler(tag, source, seconds).
    class Hooks {
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
    struct Delivery {
        int kind = 0;
        int source = -1;
        std::uint64_t ref = 0;
        bool entry = false;
        std::uint64_t bytes = 0;  // the frame and its out-of-band data, for a trace
        py::object tag, payload, error;
    };

    // Encoding buffers reused across sends; a stack, since encoding a
    // CarriageableItem runs Python code that may send in turn.
    struct Scratch {
        explicit Scratch(PyEngine& e) : owner(e), encoded(e.lease()) {}
        ~Scratch() {
            // The items go now, not at the next message, and while the slot
            // is still leased: dropping one may run Python code that sends.
            encoded.dumped.clear();
            owner.scratch_depth_ -= 1;
        }
        PyEngine& owner;
        py_codec::Encoded& encoded;
    };
    py_codec::Encoded& lease() {
        if (scratch_depth_ == scratch_.size()) scratch_.emplace_back();
        return scratch_[scratch_depth_++];
    }

    // Counts a message as handled when its dispatch ends, however it ends,
    // and its frame as finished: a frame of its own then, and a batch once
    // it is read to its end (next()), which must wait for this entry's
    // dispatch (a nested serve may read the batch on meanwhile). By source,
    // only whole frames are counted: an entry's hold and release cancel out,
    // and the batch's end counts it (this also keeps a vector's update off
    // the path of every aggregated message: 5% of their rate).
    struct Handled {
        Handled(PyEngine& e, bool entry, int source) : engine(e), source(entry ? -1 : source) {
            if (entry) engine.count_finished(-1, 0, -1);
        }
        ~Handled() { engine.count_finished(1, 1, source); }
        PyEngine& engine;
        int source;
    };

    // Frames are also counted by the rank they came from (`source`; -1:
    // not said), for frames_without().
    void count_finished(std::int64_t frames, std::int64_t messages, int source) {
        unreported_frames_ += frames;
        unreported_messages_ += messages;
        if (source >= 0 && static_cast<std::size_t>(source) < finished_from_.size())
            finished_from_[static_cast<std::size_t>(source)] += frames;
    }
    void report_handled() {
        if (unreported_frames_ == 0 && unreported_messages_ == 0) return;
        engine_.mark_finished(unreported_frames_, unreported_messages_);
        unreported_frames_ = unreported_messages_ = 0;
    }
    struct Handling {
        explicit Handling(int& depth) : depth(depth) { ++depth; }
        ~Handling() { --depth; }
        int& depth;
    };

    void check_open() const {
        if (closed_) throw Closed("this Messenger is closed");
    }

    bool has_pending() const { return batch_ || engine_.has_ready(); }

    // The next message: the next entry of the batch being read, or the next
    // frame the engine has ready. Handlers may call serve() again (a nested
    // wait), which simply continues from here.
    bool next(Delivery& d) {
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
                    reject(
                        d, batch->source,
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

    void read_entry(Delivery& d, int source, const std::uint8_t* frame, std::size_t size) {
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

    void header_fields(Delivery& d, int source, const FrameHeader& h) {
        d.bytes = 0;
        d.kind = static_cast<int>(h.kind);
        d.source = source;
        d.ref = h.ref;
        d.tag = tag_object(h.tag);
    }

    void read_message(Delivery& d, int source, const FrameHeader& h, const std::uint8_t* frame,
                      std::size_t size, const std::vector<std::shared_ptr<Buffer>>& oob) {
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

    void reject(Delivery& d, int source, const std::string& why) {
        d.kind = 0;
        d.bytes = 0;
        d.source = source;
        d.ref = 0;
        d.tag = py::str("");
        d.payload = py::none();
        d.error = py::str(why);
    }

    // Tags repeat: keep their str objects (whose hashes Python caches).
    py::object tag_object(const std::string& tag) {
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
    void dispatch_one(Delivery& d, Hooks& h) {
        if (!trace_) return deliver_one(d, h);
        struct Span {
            PyEngine& e;
            const Delivery& d;
            std::uint64_t start;
            ~Span() {
                e.trace_cursor_ = e.trace_->dispatched(d.kind, d.source, d.tag, d.bytes, start);
            }
        } span{*this, d, trace_cursor_};
        deliver_one(d, h);
    }

    static std::uint64_t oob_bytes(const std::vector<OutOfBand>& oob) {
        std::uint64_t bytes = 0;
        for (const auto& o : oob) bytes += o.size;
        return bytes;
    }

    // Every message is counted as handled here, once, when its dispatch
    // ends, whichever way it went (termination detection depends on it): no
    // path of the façade counts for itself.
    void deliver_one(Delivery& d, Hooks& h) {
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
    bool hand_reply(const Delivery& d, Hooks& h) {
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
        return true;
    }

    // Runs `run`, a message's handler: the one place handlers are timed. If
    // CONVEYOR_SLOW_HANDLER_S is unset this costs one comparison; else two
    // reads of a coarse clock, the handler listed in timed_now() while it
    // runs, and a call of Dispatch.slow_handler(tag, source, seconds) when
    // it took at least that long (not if it raised through: a
    // KeyboardInterrupt is on its way).
    template <class Run>
    void timed(Hooks& h, const Delivery& d, Run&& run) {
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

    // Seconds on a monotonic clock of a few milliseconds' resolution, enough
    // for a slow handler's threshold: Linux reads it in a few nanoseconds,
    // against some 25 for steady_clock, twice per message (measured: 20% of
    // the rate of 8-byte messages with steady_clock).
    static double coarse_seconds() {
#ifdef CLOCK_MONOTONIC_COARSE
        timespec now;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
        return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
#else
        return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
#endif
    }

    // Delivers a send or request to its receiver's `entry`, (handler, per_item).
    void run_handler(Delivery& d, Hooks& h, PyObject* entry) {
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
    void run_request(Delivery& d, Hooks& h, py::handle handler) {
        const auto& names = dispatch_names();
        py::object source = py::int_(d.source);
        py::object msg = py_message::make_request(h.message_type(), h.dispatch(), d.tag, d.payload,
                                                  source, d.ref);
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
        auto result =
            py::reinterpret_steal<py::object>(PyObject_CallOneArg(handler.ptr(), msg.ptr()));
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
                send(d.source, static_cast<int>(FrameKind::Reply), d.ref, "", result,
                     h.aggregate());
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

    // The exception being raised, taken with its traceback (which, before
    // Python 3.12, is not attached to it until it is caught in Python).
    static py::object caught() {
        py::error_already_set error;
        py::object exc = error.value();
        if (error.trace() && PyException_SetTraceback(exc.ptr(), error.trace().ptr()) < 0)
            throw py::error_already_set();
        return exc;
    }

    static bool awaitable(PyObject* result) {
        auto async = Py_TYPE(result)->tp_as_async;
        return async && async->am_await;
    }

    // What per-item delivery splits: arrays and lists or tuples, not the
    // characters of a str nor the bytes of a byte string.
    static bool has_items(PyObject* payload) {
        return PySequence_Check(payload) && !PyUnicode_Check(payload) && !PyBytes_Check(payload) &&
               !PyByteArray_Check(payload) && !PyMemoryView_Check(payload);
    }

    // Calls a receiver. An Exception from it is reported through `failed`
    // and dispatch goes on; anything else (KeyboardInterrupt) propagates.
    void deliver(Hooks& h, py::handle handler, py::handle tag, py::handle payload,
                 py::handle source) {
        const auto& names = dispatch_names();
        py::object msg =
            py_message::make(h.message_type(), h.dispatch(), tag, payload, source, Py_None);
        auto result =
            py::reinterpret_steal<py::object>(PyObject_CallOneArg(handler.ptr(), msg.ptr()));
        if (!result) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
            h.call(names.failed, msg, caught());
            return;
        }
        if (!result.is_none()) h.call(names.returned, msg, result);
        py_message::recycle(std::move(msg));
    }

    static constexpr std::size_t kMaxCachedTags = 4096;

    Engine engine_;
    py_codec::EncodeOptions codec_;
    bool closed_ = false;
    int handling_ = 0;  // handlers running (nested waits make this > 1)
    std::deque<py_codec::Encoded> scratch_;
    std::size_t scratch_depth_ = 0;
    std::shared_ptr<Incoming> batch_;  // the batch being read, if any
    BatchReader batch_reader_{nullptr, 0, 0};
    std::unordered_map<std::string, py::object> tags_;
    std::uint64_t trace_cursor_ = 0;       // where the next dispatch's span starts
    std::unique_ptr<TraceLog> trace_;      // null unless traced
    std::uint64_t entries_malformed_ = 0;  // rejected batch entries (whole frames: the engine's)
    std::int64_t unreported_frames_ = 0, unreported_messages_ = 0;
    std::vector<std::int64_t> finished_from_;  // frames finished, by the rank they came from
    // The requests whose handler runs now: see answering(). A stack, since a
    // handler dispatched by a wait inside another handler ends first; and a
    // vector, since a request's entry was a map node allocated and freed on
    // every request's path.
    struct Answering {
        int source;
        std::uint64_t ref;
        py::object message;
    };
    std::vector<Answering> answering_;
    struct Timing {
        py::object tag;
        int source;
        double start;
    };
    std::vector<Timing> timing_;  // see timed_now()

    const Answering* find_answering(int source, std::uint64_t ref) const {
        for (const auto& a : answering_)
            if (a.source == source && a.ref == ref) return &a;
        return nullptr;
    }
};

}  // namespace conveyor
