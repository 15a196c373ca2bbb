// conveyor._core.engine.Engine: the progress engine as the façade drives it.
// Its dispatcher, serve() and what it calls per message, is in dispatcher.cpp.
#pragma once

#include <pybind11/pybind11.h>

#include <time.h>

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
    // `dispatch` is the façade's Dispatch (see Hooks in dispatcher.cpp).
    // With `answered`, the caller waits for an answer: dispatching stops
    // after the first answer, and starts no further message once `timeout`
    // has passed, so that a wait lasts its timeout plus one handler at most.
    // Returns how many messages were dispatched.
    std::size_t serve(double timeout, int uncongested, py::handle dispatch, bool answered);

    // Serves (as serve() with `answered`) until `waiter._ready()` is true,
    // which it asks after each serve(): the caller found it not ready (one
    // Python call less a request); returns false if `timeout` seconds
    // (negative or infinite: no limit) passed first. Each native wait
    // lasts at most `slice` seconds, so that a signal (Ctrl-C) is handled
    // between two, and `check()` called, if not None (the façade's check
    // that the messenger is open, when it does more than check_open()).
    // Every blocking wait for an answer loops here, in C++: the same loop
    // in Python cost a request with a timeout 0.8 us (its clock readings,
    // checks and calls).
    bool wait(py::handle waiter, double timeout, double slice, py::handle dispatch,
              py::handle check);

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
        d["background_rounds"] = s.background_rounds;
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

  private:  // The dispatcher, defined in dispatcher.cpp: serve() and wait() above,
    // and what they call for each message.
    class Hooks;      // what serve() needs from the façade
    struct Delivery;  // one message ready for dispatch
    struct Handled;   // counts a message as handled when its dispatch ends
    struct Handling;  // counts the handlers that run now
    bool next(Delivery& d);
    void read_entry(Delivery& d, int source, const std::uint8_t* frame, std::size_t size);
    void header_fields(Delivery& d, int source, const FrameHeader& h);
    void read_message(Delivery& d, int source, const FrameHeader& h, const std::uint8_t* frame,
                      std::size_t size, const std::vector<std::shared_ptr<Buffer>>& oob);
    void reject(Delivery& d, int source, const std::string& why);
    py::object tag_object(const std::string& tag);
    void dispatch_one(Delivery& d, Hooks& h);
    void deliver_one(Delivery& d, Hooks& h);
    bool hand_reply(const Delivery& d, Hooks& h);
    template <class Run>
    void timed(Hooks& h, const Delivery& d, Run&& run);
    void run_handler(Delivery& d, Hooks& h, PyObject* entry);
    void run_request(Delivery& d, Hooks& h, py::handle handler);
    void deliver(Hooks& h, py::handle handler, py::handle tag, py::handle payload,
                 py::handle source);

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
    void check_open() const {
        if (closed_) throw Closed("this Messenger is closed");
    }

    bool has_pending() const { return batch_ || engine_.has_ready(); }

    static std::uint64_t oob_bytes(const std::vector<OutOfBand>& oob) {
        std::uint64_t bytes = 0;
        for (const auto& o : oob) bytes += o.size;
        return bytes;
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
    std::uint64_t trace_cursor_ = 0;  // where the next dispatch's span starts
    // The waiter hand_reply last gave its final answer: wait() compares its
    // own with it, by identity only (it is never dereferenced), to skip a
    // call of _ready(), a Python call on every request's path.
    const PyObject* answered_ = nullptr;
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

// The PyEngine of `self`, the Engine instance such a method is called on.
// pybind11's cast finds the C++ type's record by its name (a hash and a
// strcmp) on every call; an exact Engine is read through the record
// looked up once. Anything else (a subclass, an Engine whose __init__ has
// not run) goes through the cast, as before.
PyEngine& engine_of(PyObject* self);

}  // namespace conveyor
