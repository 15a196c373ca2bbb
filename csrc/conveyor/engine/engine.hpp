// The progress engine: the only code that talks to MPI.
//
// Its owner's calls drive MPI (the Python façade's sends, waits and serves),
// and a background thread of its own takes over while the owner is away
// (see class Engine). Idle waiting spins briefly, then yields, then sleeps
// with a growing interval (backoff.hpp).
//
// Wire protocol on the engine's communicator (a duplicate the messenger
// makes for the engine alone, so that nothing else sends on it):
//   kTagFrame: one frame (wire.hpp), received with a matched probe.
//   kTagData:  the out-of-band buffers announced by the frame, in order, each
//              cut into pieces of at most `piece_bytes` (MPI counts are int).
// MPI's non-overtaking rule per (source, tag) lets the receiver post the data
// receives in the order it reads frames; per-source delivery queues then keep
// messages in the order they were sent even when a large one is still arriving.
// That order is only sound if every announcement it trusts was made by the
// sender's engine: the frames whose effect goes beyond themselves (those that
// announce data, and credits) carry a stamp the receiver checks (stamp.cpp).
//
// With a relay table (EngineOptions::next_hop), small messages travel
// aggregated through other ranks, and order per pair is kept across the two
// paths by fences (relay.cpp).
//
// One object or concept a file: engine.cpp (posting, receiving, progress,
// the owner's wait), batching.cpp, relay.cpp, flow_control.cpp,
// quiescence.cpp, stamp.cpp, background.cpp (the background thread),
// buffer.hpp (receive buffers and their cache), backoff.hpp (idle waiting).
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "conveyor/common/errors.hpp"
#include "conveyor/common/keep_alive.hpp"
#include "conveyor/engine/buffer.hpp"
#include "conveyor/wire/wire.hpp"

namespace conveyor {

using Clock = std::chrono::steady_clock;

constexpr int kTagFrame = 1;
constexpr int kTagData = 2;

struct OutOfBand {
    const void* data;
    std::size_t size;
};

// One received message, delivered whole and in order.
struct Incoming {
    int source = -1;
    FrameHeader header;
    std::vector<std::uint8_t> frame;
    std::vector<std::shared_ptr<Buffer>> oob;
    std::string malformed;  // non-empty: the frame was rejected, and why
    int pending = 0;        // data receives still outstanding
    // Bytes of genuine data received into nothing: the announced buffers
    // could not be allocated (Engine::drain). Credited as if consumed.
    std::size_t drained = 0;
    // Whom taking it credits, for how many frame bytes (flow control): its
    // source, for its frame; for relayed messages, the rank that relayed
    // them here, for their share of its frame. -1: nobody.
    int credit_to = -1;
    std::size_t credit_frames = 0;
};

// A genuine fence (relay.cpp): it holds its stream, and is not delivered.
inline bool is_fence(const Incoming& in) {
    return in.header.kind == FrameKind::Fence && in.malformed.empty();
}

struct EngineOptions {
    std::size_t max_frame_bytes = std::size_t(1) << 30;
    std::size_t piece_bytes = std::size_t(1) << 30;
    double spin_seconds = 50e-6;    // busy-poll this long after the last activity
    double yield_seconds = 200e-6;  // then sched_yield until this long
    double max_sleep_seconds = 500e-6;
    // Aggregation: frames of at most batch_bytes / 4 without out-of-band
    // data are packed, per destination, into Batch frames of up to
    // batch_bytes (0: never aggregate).
    std::size_t batch_bytes = std::size_t(32) << 10;
    // A buffered batch older than this is sent by the background thread even
    // if the program does not call the engine.
    double flush_delay_seconds = 100e-6;
    // While the owner stays away and nothing is in flight, the background
    // thread's sleeps grow from a millisecond to this long.
    double background_max_sleep_seconds = 32e-3;
    // Flow control: at most this many bytes of frames (small messages) in
    // flight to one rank before it reports them consumed (0: unbounded)...
    std::size_t window_bytes = std::size_t(8) << 20;
    // ... and this many bytes of out-of-band data (large arrays), a window
    // of its own so that large messages keep a pipeline several deep.
    std::size_t data_window_bytes = std::size_t(256) << 20;
    // All destinations together, at most this many bytes of frames and of
    // out-of-band data in flight, beyond which each destination may have
    // one frame in flight (0: no pool, the windows alone): what a rank has
    // in flight does not grow with the number of ranks (flow_control.cpp).
    std::size_t window_pool_bytes = std::size_t(64) << 20;
    std::size_t data_window_pool_bytes = std::size_t(1) << 30;
    // Run the background thread (needs MPI_THREAD_MULTIPLE; see Engine).
    bool background = true;
    // Relaying: empty, every message goes straight to its destination; else
    // one rank per rank of the communicator, the next hop of aggregated
    // messages to it (itself: straight there). Every route must reach its
    // destination; the façade builds them (conveyor/_relay.py).
    std::vector<int> next_hop;
    // A relay credits what it passed on only while the frames it holds for
    // want of credit (its own and relayed, all destinations) stay within
    // this many bytes: back-pressure reaches the origin, and a relay's
    // memory is bounded (0: unbounded).
    std::size_t relay_pool_bytes = std::size_t(16) << 20;
    // The batch buffers of all destinations together stay within this many
    // bytes: past it, every batch filling is sent and every idle buffer
    // freed, so that aggregation memory does not grow with the number of
    // ranks (0: unbounded; at least batch_bytes).
    std::size_t batch_pool_bytes = std::size_t(32) << 20;
};

struct EngineStats {
    std::uint64_t messages_sent = 0;     // logical messages posted
    std::uint64_t messages_handled = 0;  // logical messages the caller finished with
    // What termination detection counts: frames, not the messages in them,
    // so that what a forged or corrupt batch announces cannot unbalance it.
    std::uint64_t frames_posted = 0;        // posted frames (a batch when opened)
    std::uint64_t frames_finished = 0;      // received frames whose messages are all handled
    std::uint64_t messages_aggregated = 0;  // of messages_sent, those packed into batches
    std::uint64_t frames_sent = 0;          // MPI messages carrying frames (a batch is one)
    std::uint64_t frames_received = 0;
    std::uint64_t frames_malformed = 0;
    // Stamped frames (data announcements, credits) whose stamp is not the
    // one their sender's engine would have made: forged, dropped.
    std::uint64_t frames_forged = 0;
    std::uint64_t batches_sent = 0;
    std::uint64_t batches_received = 0;
    // The most batches filling at once: this rank's aggregation memory is at
    // most that many times batch_bytes.
    std::uint64_t batches_open_peak = 0;
    // The most bytes of batch buffers held at once, all destinations (at
    // most batch_pool_bytes), and how often reaching it sent every batch.
    std::uint64_t batch_bytes_peak = 0;
    std::uint64_t batch_pool_flushes = 0;
    std::uint64_t messages_relayed = 0;          // messages this rank passed on to their next hop
    std::uint64_t fences_sent = 0;               // Fence frames and fence entries (relay.cpp)
    std::uint64_t bytes_framed = 0;              // bytes copied into frames
    std::uint64_t bytes_zero_copy_sent = 0;      // sent straight from user memory
    std::uint64_t bytes_zero_copy_received = 0;  // received straight into delivered memory
    std::uint64_t credits_sent = 0;              // flow-control frames
    std::uint64_t credits_received = 0;
    std::uint64_t sends_held = 0;  // frames that waited for the receiver's credit
    // The most bytes in flight at once, all destinations, and the times a
    // destination's frames waited for the pool (window_pool_bytes).
    std::uint64_t in_flight_frame_bytes_peak = 0;
    std::uint64_t in_flight_data_bytes_peak = 0;
    std::uint64_t window_pool_waits = 0;
    std::uint64_t waits_slept = 0;         // times an idle wait went to sleep
    std::uint64_t background_flushes = 0;  // batches the background thread sent
    std::uint64_t background_rounds = 0;   // times the background thread woke and looked
};

// What one destination has waiting and in flight, and what this rank owes
// it: the send windows of a state dump (Engine::describe).
struct RouteState {
    int rank = -1;
    std::size_t batch_bytes = 0;            // of the batch being filled for it
    std::size_t held = 0;                   // frames waiting for its credit
    std::size_t in_flight_frame_bytes = 0;  // posted, not credited yet
    std::size_t in_flight_data_bytes = 0;   // the same for out-of-band bytes
    bool asked = false;                     // credit was asked of it, none came yet
    std::size_t consumed_frame_bytes = 0;   // of its frames consumed here, not credited
    std::size_t consumed_data_bytes = 0;
    bool owes = false;  // it asked this rank for credit
};

// The engine at one moment, for a state dump: its counters, the depth of its
// queues, and the routes that are not idle (one per rank would not read at
// thousands of ranks).
struct EngineState {
    EngineStats stats;
    std::size_t pending_sends = 0;     // MPI sends not complete
    std::size_t pending_receives = 0;  // MPI receives not complete
    std::size_t arriving = 0;          // messages whose data still arrives
    std::size_t ready = 0;             // messages ready for dispatch
    bool wave_active = false;
    std::vector<RouteState> routes;
};

// A mutex that tells its holder whether a thread is blocked waiting for it,
// so that a holder who only polls can step aside (see Engine::wait).
// try_lock() does not count as waiting.
class YieldingMutex {
  public:
    void lock() {
        if (mutex_.try_lock()) return;
        waiting_.fetch_add(1, std::memory_order_relaxed);
        mutex_.lock();
        waiting_.fetch_sub(1, std::memory_order_relaxed);
    }
    bool try_lock() { return mutex_.try_lock(); }
    void unlock() { mutex_.unlock(); }
    bool wanted() const { return waiting_.load(std::memory_order_relaxed) != 0; }

  private:
    std::mutex mutex_;
    std::atomic<int> waiting_{0};
};

// The progress engine. All of its methods may be called from one thread (the
// owner's), or from several threads that take turns (a messenger served by
// a thread of its own): each call takes the engine's lock. A background thread of the engine's own
// sends batches that waited longer than flush_delay_seconds, receives while the owner stays away,
// and, when asked to (serve_in_background), signals a file descriptor. It needs
// MPI_THREAD_MULTIPLE, since the owner may call MPI itself meanwhile; without it there is no
// background thread and only the owner's calls make progress.
//
// The background never queues for the engine's lock: it decides from atomics
// whether there is anything to do and then only tries the lock, since an
// owner holding it is making progress itself. Were it to block on the lock,
// every unlock by an owner in a tight request/reply loop would become a
// futex wake and a context switch on the owner's critical path. It sleeps on
// a lock and condition variable of its own for the same reason.
class Engine {
  public:
    // Outstanding send requests beyond which a sender is congested even with
    // credit left: MPI_Testsome scans them all on every round of progress.
    static constexpr std::size_t kMaxPendingSends = 4096;
    // How long a waiting owner leaves the lock to a thread that asked for it.
    static constexpr double kHandOverSeconds = 50e-6;
    // Iterations of a spinning wait per reading of the clock (wait()): some
    // 2 µs of polls, which a timeout or the end of the spin may overrun.
    static constexpr int kPollsPerClock = 8;

    // Uses `comm` without owning it; the caller frees it after close().
    Engine(MPI_Comm comm, EngineOptions options);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    int rank() const { return rank_; }
    int size() const { return size_; }
    const EngineOptions& options() const { return options_; }
    EngineStats stats() const;
    // Fills `out` if the engine's lock comes within `patience` seconds (it
    // only tries it, so that a caller that interrupted a holder, such as a
    // signal handler, never deadlocks); returns whether it did.
    bool describe(EngineState& out, double patience) const;
    bool has_background_thread() const { return background_.joinable(); }

    // Send a frame and its out-of-band buffers to `dest`. `keep` is released
    // once MPI is done with `frame`'s out-of-band memory. `messages` is how many
    // logical messages the frame carries (termination detection counts them).
    // Returns whether `dest` is congested now (see congested()).
    bool post(int dest, std::vector<std::uint8_t> frame, const std::vector<OutOfBand>& oob,
              KeepAlive keep);
    // Copies a small frame without out-of-band data into `dest`'s batch,
    // which is sent when full, flushed, or older than flush_delay_seconds.
    // Refuses, doing nothing, a frame too large to aggregate (then post() it).
    // Order per destination is kept across both calls.
    enum class Posted { TooLarge, Accepted, Congested };
    Posted post_aggregated(int dest, const std::uint8_t* frame, std::size_t size);

    // Send every buffered batch now (the sender is about to wait, or asked).
    void flush();
    // Whether frames to `dest` wait for its credit: the caller should slow down.
    bool congested(int dest) const;

    // One non-blocking round: receive arrived frames, start their data
    // receives, complete finished requests. Returns whether anything happened.
    bool progress();

    // Flush, then drive progress until a message is ready, the quiescence
    // wave completes, or `timeout` seconds pass (negative: no limit). Returns
    // whether woken by an event rather than the timeout. With `uncongested`
    // >= 0, also woken once that rank is no longer congested.
    bool wait(double timeout, int uncongested = -1);

    bool has_ready() const;
    // The next complete message in arrival order (per-source order kept).
    std::unique_ptr<Incoming> pop();

    // Adds to the finished frames and the handled messages. Negative counts
    // hold a frame back while one of its messages runs or is deferred (see
    // the bindings' dispatcher and the façade's async handlers).
    void mark_finished(std::int64_t frames, std::int64_t messages);

    // Termination detection: a non-blocking sum of (frames posted, frames
    // finished) over all ranks, so that a rank waiting for it keeps serving messages.
    void start_wave();
    bool wave_active() const;
    bool wave_done();
    std::uint64_t wave_posted() const { return wave_out_[0]; }
    std::uint64_t wave_finished() const { return wave_out_[1]; }
    // Frames posted to `dest` so far (of stats().frames_posted): a fault-tolerant
    // messenger leaves a failed rank's out of its own termination detection.
    std::uint64_t frames_posted_to(int dest) const;
    // A rank declared failed by a fault-tolerant messenger: the frames held
    // for it are dropped, and what it never credits returns to the pool.
    void abandon(int dest);

    // Complete every outstanding send (used when closing). Returns false on timeout.
    bool flush_sends(double timeout);
    std::size_t pending_sends() const;
    std::size_t pending_receives() const;

    // Let the background thread receive messages too, and write 8 bytes to
    // `fd` (an eventfd or pipe) whenever a message or a completed wave waits
    // for the owner; -1 stops. The owner then drains with pop()/wave_done().
    void serve_in_background(int fd);
    // Stop the background thread (before the communicator is freed).
    void stop_background();

    [[noreturn]] void abort(int code);

  private:
    // Bytes as flow control counts them, each kind against its own window.
    struct FlowBytes {
        std::size_t frames = 0;
        std::size_t data = 0;
    };
    struct Outgoing {
        std::vector<std::uint8_t> frame;
        std::vector<OutOfBand> oob;
        KeepAlive keep;
        FlowBytes bytes;
        std::size_t stamp_at = 0;  // where isend() writes the stamp; 0: none
    };
    using Guard = std::lock_guard<YieldingMutex>;
    // What this rank has in flight to one destination, and has consumed from it.
    struct Route {
        Writer batch;  // a Batch frame being filled; empty when none
        std::uint64_t batch_messages = 0;
        Clock::time_point batch_started;
        std::deque<std::shared_ptr<Outgoing>> held;  // waiting for credit, in order
        FlowBytes in_flight;                 // posted to MPI, not credited by the receiver yet
        bool asked = false;                  // we asked it for credit and none came yet
        bool pooled = false;                 // its frames wait for the pool (in pool_waiting_)
        FlowBytes consumed;                  // of its messages we popped, not credited yet
        bool owes = false;                   // it asked us for credit
        std::size_t relay_owed = 0;          // frame bytes it relayed through us, not credited yet
        std::uint64_t stamped_sent = 0;      // stamped frames sent to it
        std::uint64_t stamped_received = 0;  // its stamped frames received, not forged
        std::uint64_t frames_posted = 0;     // of stats_.frames_posted, those to it
        // Relaying (relay.cpp), the two paths' counts. As a destination:
        std::uint64_t direct_posted = 0;   // frames post()ed to it
        std::uint64_t relayed_posted = 0;  // messages sent to it through relays
        std::uint64_t fenced = 0;          // relayed_posted when the last Fence went
        std::uint64_t marked = 0;          // direct_posted when the last fence entry went
        // As a source: what was released for dispatch of each path.
        std::uint64_t direct_released = 0;
        std::uint64_t relayed_released = 0;
    };

    bool relaying() const { return !options_.next_hop.empty(); }
    int hop(int dest) const { return relaying() ? options_.next_hop[dest] : dest; }
    bool congested_locked(int dest) const {
        return !routes_[dest].held.empty() || !routes_[hop(dest)].held.empty() ||
               send_reqs_.size() >= kMaxPendingSends;
    }
    bool aggregates(std::size_t frame_bytes) const {
        return options_.batch_bytes != 0 && frame_bytes + 4 <= options_.batch_bytes / 4;
    }

    static void check_dest(int dest, int size) {
        if (dest < 0 || dest >= size)
            // The same words as the façade's check_rank (pycore/conveyor/_checks.py).
            throw UsageError("destination rank " + std::to_string(dest) + " is out of range 0.." +
                             std::to_string(size - 1) +
                             (size == 1 ? ": this job has 1 rank; start several with 'conveyor "
                                          "run -n 4 script.py' or 'mpiexec -n 4 python script.py'"
                                        : ""));
    }
    // engine.cpp
    EngineStats stats_locked() const;
    bool progress_locked();
    bool progress_after_nap();
    void isend(int dest, std::shared_ptr<Outgoing> out);
    void receive_frame(MPI_Message message, const MPI_Status& status);
    void drain(Incoming& in);
    bool complete_drains();
    void enqueue(std::unique_ptr<Incoming> in);
    void release_in_order(int source);
    bool complete_sends();
    bool complete_receives();
    void bury(std::shared_ptr<Outgoing> out);
    // batching.cpp
    void batch_room(int dest, std::size_t bytes);
    void reclaim_batches();
    void seal_batch(int dest);
    void flush_locked();
    std::size_t flush_stale_batches();
    // relay.cpp
    void check_next_hops() const;
    void relay(int dest, const std::uint8_t* frame, std::size_t size);
    void append_relayed(const RelayEntry& entry);
    void fence_direct(int dest);
    bool stamped(Incoming& in, const char* what);
    void receive_relayed(std::unique_ptr<Incoming> in);
    void consumed_relayed(int source, std::size_t bytes);
    void repay_relays();
    void receive_fence(std::unique_ptr<Incoming> in);
    // flow_control.cpp
    void queue(int dest, std::shared_ptr<Outgoing> out);
    void release(int dest);
    bool overflows_pool(const Route& route, const Outgoing& next) const;
    void release_pooled();
    void send_credit(int dest, FlowBytes consumed);
    void consumed(int source, FlowBytes bytes);
    void credit(int source);
    bool receive_credit(const Incoming& in);
    // stamp.cpp
    void make_stamp_keys();
    std::uint64_t stamp(int source, int dest, std::uint64_t n) const;
    void stamp_outgoing(int dest, Outgoing& out);
    bool genuine(int source, std::uint64_t stamp);
    // background.cpp
    void background_loop();
    void background_rounds();
    void signal_owner();
    void wake_background();

    // True where the keep-alives of finished sends must not be released,
    // since they may hold Python objects that this thread may not touch
    // now: on the engine's background thread, and in wait() and
    // flush_sends(), which the bindings call without the interpreter lock
    // (releasing one there, under the engine's lock, would deadlock with a
    // second Python thread that holds the interpreter lock and wants the
    // engine's). They wait in graveyard_ for the next call that may.
    static inline thread_local bool defer_releases = false;
    struct DeferReleases {
        bool before = defer_releases;
        DeferReleases() { defer_releases = true; }
        ~DeferReleases() { defer_releases = before; }
    };

    MPI_Comm comm_;
    EngineOptions options_;
    EngineStats stats_;
    int rank_ = 0, size_ = 1;
    // Guards everything below against the background thread.
    mutable YieldingMutex lock_;

    std::vector<Route> routes_;
    std::size_t held_bytes_ = 0;             // frame bytes waiting for credit, all routes
    FlowBytes in_flight_;                    // and in flight, all routes
    std::vector<int> pool_waiting_;          // routes whose frames wait for the pool, in order
    std::size_t batch_buffer_bytes_ = 0;     // capacity of every route's batch buffer
    std::vector<int> relays_owed_;           // sources whose relay_owed is not 0 (relay.cpp)
    Writer relay_scratch_;                   // a message in short form, on its way into a batch
    std::vector<std::uint64_t> stamp_keys_;  // each rank's, drawn at random (stamp.cpp)
    std::vector<MPI_Request> send_reqs_;
    std::vector<std::shared_ptr<Outgoing>> send_owners_;
    // Sends completed where their keep-alives could not be released (see
    // defer_releases): the next progress round that may releases them.
    std::vector<std::shared_ptr<Outgoing>> graveyard_;
    std::vector<MPI_Request> recv_reqs_;
    std::vector<Incoming*> recv_owners_;
    std::vector<MPI_Request> drain_reqs_;  // receives into nothing (drain)
    std::vector<int> done_indices_;        // scratch for Testsome

    std::vector<std::deque<std::unique_ptr<Incoming>>> by_source_;
    // Per source, its relayed messages (batches of them) and fence entries
    // not released yet, in order (relay.cpp).
    std::vector<std::deque<std::unique_ptr<Incoming>>> relayed_;
    std::deque<std::unique_ptr<Incoming>> ready_;

    bool wave_active_ = false;
    bool wave_completed_ = false;
    MPI_Request wave_req_ = MPI_REQUEST_NULL;
    std::uint64_t wave_in_[2] = {0, 0};
    std::uint64_t wave_out_[2] = {0, 0};

    std::thread background_;
    // Set by the owner's calls, cleared by each background round: whether
    // the owner called in since (relaxed: a hint, never a guard of data).
    std::atomic<bool> owner_active_{false};
    std::atomic<bool> owner_waiting_{false};    // the owner is in wait(), driving MPI
    std::atomic<std::size_t> open_batches_{0};  // routes with a batch filling
    std::atomic<int> notify_fd_{-1};
    // The owner has not drained since the background signalled notify_fd_.
    std::atomic<bool> owner_signalled_{false};
    std::string background_failure_;
    // The background's own sleep: the owner wakes it without the engine's lock.
    std::mutex sleep_lock_;
    std::condition_variable sleep_wake_;
    std::atomic<bool> background_stop_{false};
    std::atomic<bool> background_parked_{false};  // asleep until the owner stops waiting
    std::atomic<bool> background_dozing_{false};  // in a long sleep: a new batch wakes it
    // Counted outside the engine's lock, which most rounds never take.
    std::atomic<std::uint64_t> background_rounds_{0};
};

// Runs an MPI call and throws MPIError with MPI's message when it fails.
void check_mpi(int code, const char* what);

}  // namespace conveyor
