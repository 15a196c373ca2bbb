// The progress engine: the only code that talks to MPI.
//
// It is single-threaded by design: whoever calls progress() or wait() drives
// MPI (the Python façade does so whenever the user sends, waits, or serves).
// Idle waiting spins briefly, then yields, then sleeps with a growing interval,
// so a rank waiting for messages does not keep a core busy when ranks
// outnumber cores.
//
// Wire protocol on the engine's communicator (a duplicate owned by the user):
//   kTagFrame: one frame (wire.hpp), received with a matched probe.
//   kTagData:  the out-of-band buffers announced by the frame, in order, each
//              cut into pieces of at most `piece_bytes` (MPI counts are int).
// MPI's non-overtaking rule per (source, tag) lets the receiver post the data
// receives in the order it reads frames; per-source delivery queues then keep
// messages in the order they were sent even when a large one is still arriving.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "conveyor/wire.hpp"

namespace conveyor {

constexpr int kTagFrame = 1;
constexpr int kTagData = 2;

// An MPI call failed: carries MPI's own error string.
class MPIError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// A message larger than the frame limit, or another bad argument from the caller.
class UsageError : public std::invalid_argument {
  public:
    using std::invalid_argument::invalid_argument;
};

// A frame over the frame limit: large data belongs in out-of-band buffers.
class FrameTooLarge : public UsageError {
  public:
    using UsageError::UsageError;
};

// Uninitialised, 64-byte aligned memory that MPI writes a received buffer into.
// Ownership passes to whoever delivers it (a numpy array in the bindings).
//
// Large buffers come from a bounded cache of freed ones of the same size:
// fresh memory of that size must be faulted in page by page while MPI copies
// into it, which costs ten times the copy itself from ~64 MiB up.
class Buffer {
  public:
    explicit Buffer(std::size_t size);
    ~Buffer();
    // The most bytes of freed buffers kept for reuse (process-wide; 0 disables).
    static void set_cache_limit(std::size_t bytes);
    static std::size_t cached_bytes();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    std::uint8_t* data() const { return data_; }
    std::size_t size() const { return size_; }

  private:
    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

struct OutOfBand {
    const void* data;
    std::size_t size;
};

// Keeps the sender's memory alive until MPI no longer needs it.
using KeepAlive = std::shared_ptr<void>;

// One received message, delivered whole and in order.
struct Incoming {
    int source = -1;
    FrameHeader header;
    std::vector<std::uint8_t> frame;
    std::vector<std::shared_ptr<Buffer>> oob;
    std::string malformed;  // non-empty: the frame was rejected, and why
    int pending = 0;        // data receives still outstanding
};

struct EngineOptions {
    std::size_t max_frame_bytes = std::size_t(1) << 30;
    std::size_t piece_bytes = std::size_t(1) << 30;
    double spin_seconds = 50e-6;   // busy-poll this long after the last activity
    double yield_seconds = 200e-6; // then sched_yield until this long
    double max_sleep_seconds = 500e-6;
};

struct EngineStats {
    std::uint64_t messages_sent = 0;     // logical messages posted
    std::uint64_t messages_handled = 0;  // logical messages the caller finished with
    std::uint64_t frames_sent = 0;
    std::uint64_t frames_received = 0;
    std::uint64_t frames_malformed = 0;
    std::uint64_t bytes_framed = 0;           // bytes copied into frames
    std::uint64_t bytes_zero_copy_sent = 0;   // sent straight from user memory
    std::uint64_t bytes_zero_copy_received = 0;  // received straight into delivered memory
    std::uint64_t waits_slept = 0;            // times an idle wait went to sleep
};

class Engine {
  public:
    // Uses `comm` without owning it; the caller frees it after close().
    Engine(MPI_Comm comm, EngineOptions options);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    int rank() const { return rank_; }
    int size() const { return size_; }
    const EngineOptions& options() const { return options_; }
    const EngineStats& stats() const { return stats_; }

    // Send a frame and its out-of-band buffers to `dest`. `keep` is released
    // once MPI is done with `frame`'s out-of-band memory. `messages` is how many
    // logical messages the frame carries (termination detection counts them).
    void post(int dest, std::vector<std::uint8_t> frame, const std::vector<OutOfBand>& oob,
              KeepAlive keep, std::uint64_t messages = 1);

    // One non-blocking round: receive arrived frames, start their data
    // receives, complete finished requests. Returns whether anything happened.
    bool progress();

    // Drive progress until a message is ready, the quiescence wave completes,
    // or `timeout` seconds pass (negative: no limit). Returns whether woken by
    // an event rather than the timeout.
    bool wait(double timeout);

    bool has_ready() const { return !ready_.empty(); }
    // The next complete message in arrival order (per-source order kept).
    std::unique_ptr<Incoming> pop();

    void mark_handled(std::uint64_t messages = 1) { stats_.messages_handled += messages; }

    // Termination detection: a non-blocking sum of (sent, handled) over all
    // ranks, so that a rank waiting for it keeps serving messages.
    void start_wave();
    bool wave_active() const { return wave_active_; }
    bool wave_done();
    std::uint64_t wave_sent() const { return wave_out_[0]; }
    std::uint64_t wave_handled() const { return wave_out_[1]; }

    // Complete every outstanding send (used when closing). Returns false on timeout.
    bool flush_sends(double timeout);
    std::size_t pending_sends() const { return send_reqs_.size(); }
    std::size_t pending_receives() const { return recv_reqs_.size(); }

    [[noreturn]] void abort(int code);

  private:
    struct Outgoing {
        std::vector<std::uint8_t> frame;
        KeepAlive keep;
    };
    void receive_frame(MPI_Message message, const MPI_Status& status);
    void enqueue(std::unique_ptr<Incoming> in);
    void release_in_order(int source);
    bool complete_sends();
    bool complete_receives();

    MPI_Comm comm_;
    EngineOptions options_;
    EngineStats stats_;
    int rank_ = 0, size_ = 1;

    std::vector<MPI_Request> send_reqs_;
    std::vector<std::shared_ptr<Outgoing>> send_owners_;
    std::vector<MPI_Request> recv_reqs_;
    std::vector<Incoming*> recv_owners_;
    std::vector<int> done_indices_;  // scratch for Testsome

    std::vector<std::deque<std::unique_ptr<Incoming>>> by_source_;
    std::deque<std::unique_ptr<Incoming>> ready_;

    bool wave_active_ = false;
    bool wave_completed_ = false;
    MPI_Request wave_req_ = MPI_REQUEST_NULL;
    std::uint64_t wave_in_[2] = {0, 0};
    std::uint64_t wave_out_[2] = {0, 0};
};

// Runs an MPI call and throws MPIError with MPI's message when it fails.
void check_mpi(int code, const char* what);

}  // namespace conveyor
