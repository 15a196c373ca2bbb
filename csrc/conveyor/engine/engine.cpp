// The engine's core: posting frames, receiving them and their out-of-band
// data in order, completing requests, and the owner's idle wait.
#include "conveyor/engine/engine.hpp"

#include <sched.h>

#include <algorithm>
#include <limits>
#include <new>
#include <string>

#include "conveyor/engine/backoff.hpp"

namespace conveyor {

namespace {

// MPI_Testsome sets the requests it completed to MPI_REQUEST_NULL: hand
// their owners to `finished` and keep the rest in order.
template <class Owner, class Finished>
void drop_completed(std::vector<MPI_Request>& reqs, std::vector<Owner>& owners,
                    Finished&& finished) {
    std::size_t w = 0;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
        if (reqs[i] == MPI_REQUEST_NULL) {
            finished(std::move(owners[i]));
            continue;
        }
        reqs[w] = reqs[i];
        owners[w] = std::move(owners[i]);
        ++w;
    }
    reqs.resize(w);
    owners.resize(w);
}

}  // namespace

void check_mpi(int code, const char* what) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
    throw MPIError(std::string(what) + " failed: " + std::string(text, len));
}

Engine::Engine(MPI_Comm comm, EngineOptions options) : comm_(comm), options_(options) {
    if (options_.piece_bytes == 0 ||
        options_.piece_bytes > std::size_t(std::numeric_limits<int>::max()))
        throw UsageError("piece_bytes must be in 1 .. INT_MAX");
    if (options_.batch_bytes > std::size_t(std::numeric_limits<int>::max()))
        throw UsageError("batch_bytes must be at most INT_MAX");
    // Errors come back as codes (check_mpi) rather than abort the job: a
    // drain's truncation is expected.
    check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    check_next_hops();
    by_source_.resize(size_);
    relayed_.resize(size_);
    routes_.resize(size_);
    make_stamp_keys();
    int provided = MPI_THREAD_SINGLE;
    check_mpi(MPI_Query_thread(&provided), "MPI_Query_thread");
    if (options_.background && provided == MPI_THREAD_MULTIPLE)
        background_ = std::thread([this] { background_loop(); });
}

Engine::~Engine() {
    stop_background();
    // Requests still pending here belong to a job that is being torn down
    // (an error path); MPI_Finalize or MPI_Abort reclaims them. Freeing a
    // pending receive would let MPI write into released memory, so leave them.
    if (wave_req_ != MPI_REQUEST_NULL) MPI_Request_free(&wave_req_);
}

EngineStats Engine::stats() const {
    Guard guard(lock_);
    return stats_locked();
}

EngineStats Engine::stats_locked() const {
    EngineStats s = stats_;
    s.background_rounds = background_rounds_.load(std::memory_order_relaxed);
    return s;
}

bool Engine::describe(EngineState& out, double patience) const {
    std::unique_lock<YieldingMutex> guard(lock_, std::defer_lock);
    auto deadline = Clock::now() + std::chrono::duration<double>(patience);
    while (!guard.try_lock()) {
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    out.stats = stats_locked();
    out.pending_sends = send_reqs_.size();
    out.pending_receives = recv_reqs_.size() + drain_reqs_.size();
    out.ready = ready_.size();
    out.arriving = 0;
    for (const auto& queue : by_source_) out.arriving += queue.size();
    out.wave_active = wave_active_;
    out.routes.clear();
    for (int rank = 0; rank < size_; ++rank) {
        const Route& r = routes_[rank];
        RouteState state;
        state.rank = rank;
        state.batch_bytes = r.batch.size();
        state.held = r.held.size();
        state.in_flight_frame_bytes = r.in_flight.frames;
        state.in_flight_data_bytes = r.in_flight.data;
        state.asked = r.asked;
        state.consumed_frame_bytes = r.consumed.frames;
        state.consumed_data_bytes = r.consumed.data;
        state.owes = r.owes;
        bool idle = state.batch_bytes == 0 && state.held == 0 && state.in_flight_frame_bytes == 0 &&
                    state.in_flight_data_bytes == 0 && !state.asked &&
                    state.consumed_frame_bytes == 0 && state.consumed_data_bytes == 0 &&
                    !state.owes;
        if (!idle) out.routes.push_back(state);
    }
    return true;
}

std::size_t Engine::pending_sends() const {
    Guard guard(lock_);
    return send_reqs_.size();
}

std::size_t Engine::pending_receives() const {
    Guard guard(lock_);
    return recv_reqs_.size() + drain_reqs_.size();
}

bool Engine::post(int dest, std::vector<std::uint8_t> frame, const std::vector<OutOfBand>& oob,
                  KeepAlive keep) {
    check_dest(dest, size_);
    if (frame.size() > options_.max_frame_bytes)
        throw FrameTooLarge("message frame of " + std::to_string(frame.size()) +
                            " bytes exceeds the limit of " +
                            std::to_string(options_.max_frame_bytes) +
                            " bytes (CONVEYOR_MAX_FRAME_BYTES); send large data as numpy arrays, "
                            "which travel out of band");
    auto out = std::make_shared<Outgoing>();
    out->bytes.frames = frame.size();
    for (const auto& b : oob) out->bytes.data += b.size;
    if (!oob.empty()) {
        out->stamp_at = stamp_offset(frame.data(), oob.size());
        // The offsets before the stamp: where the receiver places each buffer.
        std::uint8_t* offsets = frame.data() + out->stamp_at - oob.size();
        for (std::size_t i = 0; i < oob.size(); ++i)
            offsets[i] = static_cast<std::uint8_t>(reinterpret_cast<std::uintptr_t>(oob[i].data) %
                                                   kLineBytes);
    }
    out->frame = std::move(frame);
    out->oob = oob;
    out->keep = std::move(keep);
    Guard guard(lock_);
    owner_active_.store(true, std::memory_order_relaxed);
    stats_.messages_sent += 1;
    stats_.frames_posted += 1;
    routes_[dest].frames_posted += 1;
    // The batch holding this rank's earlier small messages to `dest` goes
    // first: that keeps them in order, or, relayed, spares a wait for them.
    if (routes_[hop(dest)].batch.size() != 0) seal_batch(hop(dest));
    if (relaying()) fence_direct(dest);
    routes_[dest].direct_posted += 1;
    queue(dest, std::move(out));
    return congested_locked(dest);
}

void Engine::isend(int dest, std::shared_ptr<Outgoing> out) {
    stamp_outgoing(dest, *out);  // here: stamps are numbered in the order frames leave
    MPI_Request req;
    check_mpi(MPI_Isend(out->frame.data(), static_cast<int>(out->frame.size()), MPI_BYTE, dest,
                        kTagFrame, comm_, &req),
              "MPI_Isend");
    send_reqs_.push_back(req);
    send_owners_.push_back(out);
    stats_.frames_sent += 1;
    stats_.bytes_framed += out->frame.size();
    for (const auto& b : out->oob) {
        auto p = static_cast<const std::uint8_t*>(b.data);
        for (std::size_t off = 0; off < b.size; off += options_.piece_bytes) {
            int n = static_cast<int>(std::min(options_.piece_bytes, b.size - off));
            check_mpi(MPI_Isend(p + off, n, MPI_BYTE, dest, kTagData, comm_, &req), "MPI_Isend");
            send_reqs_.push_back(req);
            send_owners_.push_back(out);
        }
        stats_.bytes_zero_copy_sent += b.size;
    }
}

void Engine::receive_frame(MPI_Message message, const MPI_Status& status) {
    int count = 0;
    check_mpi(MPI_Get_count(&status, MPI_BYTE, &count), "MPI_Get_count");
    auto in = std::make_unique<Incoming>();
    in->source = status.MPI_SOURCE;
    in->credit_to = in->source;
    in->credit_frames = static_cast<std::size_t>(count);
    in->frame.resize(static_cast<std::size_t>(count));
    MPI_Status st;
    check_mpi(MPI_Mrecv(in->frame.data(), count, MPI_BYTE, &message, &st), "MPI_Mrecv");
    stats_.frames_received += 1;
    try {
        in->header = read_header(in->frame.data(), in->frame.size());
    } catch (const DecodeError& e) {
        // A frame whose header cannot be read announces nothing we can trust,
        // so it is delivered as a rejection, in order, for the caller to count.
        in->malformed = e.what();
        stats_.frames_malformed += 1;
        enqueue(std::move(in));
        return;
    }
    if (in->header.kind == FrameKind::Credit) {
        if (receive_credit(*in)) {
            stats_.frames_received -= 1;  // a control frame: counted on its own
            return;
        }
        // A forged one is a frame like any other: delivered as a rejection,
        // so that termination detection counts it finished (post_raw, say,
        // counted it posted) and flow control credits its bytes.
        in->malformed = "a credit that rank " + std::to_string(in->source) +
                        "'s engine did not send (a forged frame)";
        enqueue(std::move(in));
        return;
    }
    if (in->header.kind == FrameKind::Relayed) return receive_relayed(std::move(in));
    if (in->header.kind == FrameKind::Fence) return receive_fence(std::move(in));
    if (!in->header.oob.empty() && !genuine(in->source, in->header.stamp)) {
        // Counted as forged: nothing is posted for data its sender never sends.
        in->malformed = "it announces out-of-band data that rank " + std::to_string(in->source) +
                        "'s engine did not send (a forged frame)";
        enqueue(std::move(in));
        return;
    }
    if (in->header.kind == FrameKind::Batch) stats_.batches_received += 1;
    // Every buffer first, before any receive is posted: a size this process
    // cannot allocate (a forged or corrupt header) rejects the frame alone,
    // rather than failing the engine (or its background thread) for good.
    in->oob.reserve(in->header.oob.size());
    std::uint64_t size = 0;
    try {
        for (std::size_t i = 0; i < in->header.oob.size(); ++i) {
            size = in->header.oob[i];  // named in the error if it cannot be had
            in->oob.push_back(std::make_shared<Buffer>(size, in->header.oob_offsets[i]));
        }
    } catch (const std::bad_alloc&) {
        in->oob.clear();
        drain(*in);
        in->malformed = "cannot allocate the out-of-band buffer of " + std::to_string(size) +
                        " bytes it announces";
        stats_.frames_malformed += 1;
        enqueue(std::move(in));
        return;
    }
    for (const auto& buf : in->oob) {
        const std::size_t n = buf->size();
        for (std::size_t off = 0; off < n; off += options_.piece_bytes) {
            int len = static_cast<int>(std::min<std::size_t>(options_.piece_bytes, n - off));
            MPI_Request req;
            check_mpi(
                MPI_Irecv(buf->data() + off, len, MPI_BYTE, in->source, kTagData, comm_, &req),
                "MPI_Irecv");
            recv_reqs_.push_back(req);
            recv_owners_.push_back(in.get());
            in->pending += 1;
        }
        stats_.bytes_zero_copy_received += n;
    }
    enqueue(std::move(in));
}

void Engine::enqueue(std::unique_ptr<Incoming> in) {
    int source = in->source;
    auto& queue = by_source_[source];
    if (queue.empty() && in->pending == 0 && !is_fence(*in)) {
        routes_[source].direct_released += 1;
        ready_.push_back(std::move(in));
    } else {
        queue.push_back(std::move(in));
        release_in_order(source);
    }
}

// Releases what may be dispatched of `source`'s frames, in the order it sent
// them: its direct frames once their data is in, and its relayed messages;
// a fence in either stream holds it until the other caught up (relay.cpp).
void Engine::release_in_order(int source) {
    auto& queue = by_source_[source];
    auto& route = routes_[source];
    for (bool moved = true; moved;) {
        moved = false;
        while (!queue.empty() && queue.front()->pending == 0) {
            auto& front = queue.front();
            if (is_fence(*front)) {
                if (route.relayed_released < front->header.ref) break;
            } else {
                route.direct_released += 1;
                ready_.push_back(std::move(front));
                moved = true;
            }
            queue.pop_front();
        }
        auto& relayed = relayed_[source];
        while (!relayed.empty()) {
            auto& front = relayed.front();
            if (is_fence(*front)) {
                if (route.direct_released < front->header.ref) break;
            } else {
                route.relayed_released += front->header.ref;  // its messages
                ready_.push_back(std::move(front));
                moved = true;
            }
            relayed.pop_front();
        }
    }
}

void Engine::bury(std::shared_ptr<Outgoing> out) {
    if (defer_releases && out.use_count() == 1 && out->keep) graveyard_.push_back(std::move(out));
}

bool Engine::complete_sends() {
    if (send_reqs_.empty()) return false;
    int n = static_cast<int>(send_reqs_.size());
    done_indices_.resize(send_reqs_.size());
    int outcount = 0;
    check_mpi(
        MPI_Testsome(n, send_reqs_.data(), &outcount, done_indices_.data(), MPI_STATUSES_IGNORE),
        "MPI_Testsome");
    if (outcount <= 0) return false;
    drop_completed(send_reqs_, send_owners_, [this](auto out) { bury(std::move(out)); });
    return true;
}

// A genuine frame whose buffers cannot be allocated: its sender sends the
// data all the same, which would otherwise be taken, in MPI's order, for
// the next frame's. Each piece is received into nothing (a count of 0),
// which MPI completes with a truncation error, and credited as consumed.
void Engine::drain(Incoming& in) {
    for (auto n : in.header.oob) {
        for (std::size_t off = 0; off < n; off += options_.piece_bytes) {
            MPI_Request req;
            check_mpi(MPI_Irecv(nullptr, 0, MPI_BYTE, in.source, kTagData, comm_, &req),
                      "MPI_Irecv");
            drain_reqs_.push_back(req);
        }
        in.drained += n;
    }
}

bool Engine::complete_drains() {
    if (drain_reqs_.empty()) return false;
    std::vector<MPI_Status> statuses(drain_reqs_.size());
    done_indices_.resize(drain_reqs_.size());
    int outcount = 0;
    int code = MPI_Testsome(static_cast<int>(drain_reqs_.size()), drain_reqs_.data(), &outcount,
                            done_indices_.data(), statuses.data());
    if (code != MPI_ERR_IN_STATUS) check_mpi(code, "MPI_Testsome");
    if (outcount <= 0) return false;
    for (int k = 0; code == MPI_ERR_IN_STATUS && k < outcount; ++k) {
        int error = statuses[k].MPI_ERROR, error_class = MPI_SUCCESS;
        if (error != MPI_SUCCESS) MPI_Error_class(error, &error_class);
        if (error_class != MPI_SUCCESS && error_class != MPI_ERR_TRUNCATE)
            check_mpi(error, "draining data that could not be received");
    }
    drain_reqs_.erase(std::remove(drain_reqs_.begin(), drain_reqs_.end(), MPI_REQUEST_NULL),
                      drain_reqs_.end());
    return true;
}

bool Engine::complete_receives() {
    if (recv_reqs_.empty()) return false;
    int n = static_cast<int>(recv_reqs_.size());
    done_indices_.resize(recv_reqs_.size());
    int outcount = 0;
    check_mpi(
        MPI_Testsome(n, recv_reqs_.data(), &outcount, done_indices_.data(), MPI_STATUSES_IGNORE),
        "MPI_Testsome");
    if (outcount <= 0) return false;
    std::vector<int> sources;
    for (int k = 0; k < outcount; ++k) {
        Incoming* in = recv_owners_[done_indices_[k]];
        if (--in->pending == 0) sources.push_back(in->source);
    }
    drop_completed(recv_reqs_, recv_owners_, [](Incoming*) {});
    for (int s : sources) release_in_order(s);
    return true;
}

bool Engine::progress() {
    Guard guard(lock_);
    return progress_locked();
}

// After a sleep, MPICH's first probe only makes progress on what arrived
// meanwhile; the second one sees it. Without it, each wake-up would cost one
// more nap (the owner's wait) or one more round (the background thread).
bool Engine::progress_after_nap() { return progress_locked() || progress_locked(); }

bool Engine::progress_locked() {
    if (!defer_releases) {
        graveyard_.clear();
        if (!background_failure_.empty())
            throw MPIError("the background progress thread failed: " + background_failure_);
    }
    bool active = false;
    for (;;) {
        int flag = 0;
        MPI_Message message;
        MPI_Status status;
        check_mpi(MPI_Improbe(MPI_ANY_SOURCE, kTagFrame, comm_, &flag, &message, &status),
                  "MPI_Improbe");
        if (!flag) break;
        receive_frame(message, status);
        active = true;
    }
    active |= complete_receives();
    active |= complete_drains();
    active |= complete_sends();
    if (wave_active_ && !wave_completed_) {
        int flag = 0;
        check_mpi(MPI_Test(&wave_req_, &flag, MPI_STATUS_IGNORE), "MPI_Test");
        if (flag) {
            wave_completed_ = true;
            active = true;
        }
    }
    return active;
}

bool Engine::wait(double timeout, int uncongested) {
    if (uncongested >= 0) check_dest(uncongested, size_);
    DeferReleases defer;
    std::unique_lock<YieldingMutex> guard(lock_);
    owner_active_.store(true, std::memory_order_relaxed);
    flush_locked();
    // Idle ranks wait here most of the time: the background thread parks
    // meanwhile, so that a waiting rank costs nothing but its own naps.
    owner_waiting_.store(true);
    struct Unpark {
        Engine& e;
        // Sequentially consistent with the background's park: either it sees
        // the owner has left, or the owner sees it parked and wakes it.
        ~Unpark() {
            e.owner_waiting_.store(false);
            if (e.background_parked_.load()) e.wake_background();
        }
    } unpark{*this};
    auto start = Clock::now();
    IdleBackoff backoff(options_, start);
    auto woken = [&] {
        return !ready_.empty() || (wave_active_ && wave_completed_) ||
               (uncongested >= 0 && !congested_locked(uncongested));
    };
    bool napped = false;
    bool spinning = false;
    int unclocked = 0;  // spinning iterations since the clock was read
    for (;;) {
        if (napped ? progress_after_nap() : progress_locked()) backoff.active();
        napped = false;
        // Messages it relays fill batches while it waits (the background
        // thread is parked): they leave once flush_delay_seconds old, as
        // the background would send them, so that a relay aggregates what
        // arrives from several ranks meanwhile.
        const bool relays = relaying() && open_batches_.load(std::memory_order_relaxed) != 0;
        if (relays && flush_stale_batches() != 0) backoff.active();
        if (woken()) return true;
        if (lock_.wanted()) {
            // Another thread of the program would post (a messenger served
            // by a thread of its own): let it, rather than make it wait
            // through the spin; it has the lock once it no longer waits.
            guard.unlock();
            auto asked = Clock::now();
            while (lock_.wanted() && seconds_since(asked) < kHandOverSeconds) sched_yield();
            guard.lock();
        }
        // A spinning wait reads the clock once in kPollsPerClock iterations:
        // read on every one, it took as many samples as MPI_Improbe (perf),
        // and each poll came that much later. The first iteration reads it,
        // so a wait of 0 s polls once.
        if (spinning && ++unclocked < kPollsPerClock) continue;
        unclocked = 0;
        auto now = Clock::now();
        if (timeout >= 0 && seconds_between(start, now) >= timeout) return false;
        const auto step = backoff.step(now);
        spinning = step == IdleBackoff::Step::Spin;
        switch (step) {
            case IdleBackoff::Step::Spin: continue;
            case IdleBackoff::Step::Yield: sched_yield(); continue;
            case IdleBackoff::Step::Nap: break;
        }
        double limit = options_.max_sleep_seconds;
        if (timeout >= 0) limit = std::min(limit, std::max(0.0, timeout - seconds_since(start)));
        if (relays) limit = std::min(limit, options_.flush_delay_seconds);
        // Sleeping without the lock lets the background thread work meanwhile.
        guard.unlock();
        sleep_for(std::min(backoff.nap(), limit));
        guard.lock();
        stats_.waits_slept += 1;
        napped = true;
    }
}

bool Engine::has_ready() const {
    Guard guard(lock_);
    return !ready_.empty();
}

std::unique_ptr<Incoming> Engine::pop() {
    Guard guard(lock_);
    owner_active_.store(true, std::memory_order_relaxed);
    if (ready_.empty()) {
        if (owner_signalled_.exchange(false)) wake_background();  // it waits for the owner to drain
        return nullptr;
    }
    auto in = std::move(ready_.front());
    ready_.pop_front();
    if (in->credit_to >= 0) {
        FlowBytes bytes{in->credit_frames, in->drained};
        for (const auto& b : in->oob) bytes.data += b->size();
        consumed(in->credit_to, bytes);
    }
    return in;
}

void Engine::mark_finished(std::int64_t frames, std::int64_t messages) {
    Guard guard(lock_);
    // Unsigned counters wrap back for negative counts.
    stats_.frames_finished += static_cast<std::uint64_t>(frames);
    stats_.messages_handled += static_cast<std::uint64_t>(messages);
}

bool Engine::flush_sends(double timeout) {
    DeferReleases defer;
    auto start = Clock::now();
    std::unique_lock<YieldingMutex> guard(lock_);
    flush_locked();
    for (;;) {
        flush_locked();  // messages it relayed meanwhile
        bool held = false;
        for (const auto& route : routes_) held |= !route.held.empty();
        if (send_reqs_.empty() && !held) return true;
        if (!progress_locked()) {
            if (timeout >= 0 && seconds_since(start) >= timeout) return false;
            guard.unlock();
            sleep_for(20e-6);
            guard.lock();
        }
    }
}

void Engine::abort(int code) {
    MPI_Abort(comm_, code);
    std::abort();  // MPI_Abort does not return; this keeps the promise of [[noreturn]]
}

}  // namespace conveyor
