#include "conveyor/engine/engine.hpp"

#include <sched.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <new>

namespace conveyor {

namespace {

using Clock = std::chrono::steady_clock;
using Guard = std::lock_guard<std::mutex>;

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

void sleep_for(double seconds) {
    timespec ts;
    ts.tv_sec = static_cast<time_t>(seconds);
    ts.tv_nsec = static_cast<long>((seconds - ts.tv_sec) * 1e9);
    nanosleep(&ts, nullptr);
}

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

// True on the engine's background thread, which must not release the
// keep-alives of sends (they may hold Python objects).
thread_local bool on_background_thread = false;

}  // namespace

void check_mpi(int code, const char* what) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
    throw MPIError(std::string(what) + " failed: " + std::string(text, len));
}

namespace {

constexpr std::size_t kCachedFrom = std::size_t(1) << 20;  // smaller ones: malloc is fast
constexpr std::size_t kHugePage = std::size_t(2) << 20;

// Freed large buffers, found by exact size. Buffers are freed by whoever
// drops the last reference (a numpy array's owner, on any Python thread)
// while the engine allocates from its GIL-free wait: hence the lock. A full
// cache makes room by dropping the buffers freed longest ago, so that a
// program moving on to messages of another size gets its buffers cached.
// It hands out the buffer of the size freed last, whose memory is likeliest
// still in the processor's cache: a consumer that drops each message soon
// receives the next ones into the few buffers it keeps returning, not into
// every buffer of the cache in turn.
struct BufferCache {
    struct Entry {
        std::size_t size;
        void* data;
    };
    std::mutex lock;
    std::list<Entry> by_age;  // oldest first
    std::multimap<std::size_t, std::list<Entry>::iterator> by_size;
    std::size_t bytes = 0;
    std::size_t limit = std::size_t(512) << 20;

    void* take(std::size_t size) {
        // Equal sizes stay in the order they were freed: the last is the newest.
        auto it = by_size.upper_bound(size);
        if (it == by_size.begin() || std::prev(it)->first != size) return nullptr;
        --it;
        void* data = it->second->data;
        by_age.erase(it->second);
        by_size.erase(it);
        bytes -= size;
        return data;
    }
    void drop_oldest() {
        auto oldest = by_age.begin();
        auto range = by_size.equal_range(oldest->size);
        for (auto it = range.first; it != range.second; ++it)
            if (it->second == oldest) {
                by_size.erase(it);
                break;
            }
        bytes -= oldest->size;
        std::free(oldest->data);
        by_age.erase(oldest);
    }
};

BufferCache& buffer_cache() {
    static BufferCache* cache = new BufferCache();  // leaked: buffers may outlive statics
    return *cache;
}

void* allocate(std::size_t size) {
    // posix_memalign rejects 0; a zero-size buffer still gets a valid pointer.
    bool huge = size >= 2 * kHugePage;
    void* p = nullptr;
    if (posix_memalign(&p, huge ? kHugePage : 64, std::max<std::size_t>(size, 1)) != 0)
        throw std::bad_alloc();
    // Transparent huge pages fault 2 MiB at a time (numpy asks for them too).
    if (huge) madvise(p, size & ~(kHugePage - 1), MADV_HUGEPAGE);
    return p;
}

}  // namespace

Buffer::Buffer(std::size_t size) : size_(size) {
    if (size >= kCachedFrom) {
        auto& cache = buffer_cache();
        std::lock_guard<std::mutex> guard(cache.lock);
        if (void* data = cache.take(size)) {
            data_ = static_cast<std::uint8_t*>(data);
            return;
        }
    }
    data_ = static_cast<std::uint8_t*>(allocate(size));
}

Buffer::~Buffer() {
    if (size_ >= kCachedFrom) {
        auto& cache = buffer_cache();
        std::lock_guard<std::mutex> guard(cache.lock);
        if (size_ <= cache.limit) {
            while (cache.bytes + size_ > cache.limit) cache.drop_oldest();
            auto entry = cache.by_age.insert(cache.by_age.end(), {size_, data_});
            cache.by_size.emplace(size_, entry);
            cache.bytes += size_;
            return;
        }
    }
    std::free(data_);
}

void Buffer::set_cache_limit(std::size_t bytes) {
    auto& cache = buffer_cache();
    std::lock_guard<std::mutex> guard(cache.lock);
    cache.limit = bytes;
    while (cache.bytes > cache.limit) cache.drop_oldest();  // shrink at once
}

std::size_t Buffer::cached_bytes() {
    auto& cache = buffer_cache();
    std::lock_guard<std::mutex> guard(cache.lock);
    return cache.bytes;
}

Engine::Engine(MPI_Comm comm, EngineOptions options) : comm_(comm), options_(options) {
    if (options_.piece_bytes == 0 ||
        options_.piece_bytes > std::size_t(std::numeric_limits<int>::max()))
        throw UsageError("piece_bytes must be in 1 .. INT_MAX");
    if (options_.batch_bytes > std::size_t(std::numeric_limits<int>::max()))
        throw UsageError("batch_bytes must be at most INT_MAX");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    by_source_.resize(size_);
    routes_.resize(size_);
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
    return stats_;
}

std::size_t Engine::pending_sends() const {
    Guard guard(lock_);
    return send_reqs_.size();
}

std::size_t Engine::pending_receives() const {
    Guard guard(lock_);
    return recv_reqs_.size();
}

namespace {

void check_dest(int dest, int size) {
    if (dest < 0 || dest >= size)
        throw UsageError("destination rank " + std::to_string(dest) + " is out of range 0.." +
                         std::to_string(size - 1));
}

}  // namespace

bool Engine::post(int dest, std::vector<std::uint8_t> frame, const std::vector<OutOfBand>& oob,
                  KeepAlive keep, std::uint64_t messages) {
    check_dest(dest, size_);
    if (frame.size() > options_.max_frame_bytes)
        throw FrameTooLarge("message frame of " + std::to_string(frame.size()) +
                         " bytes exceeds the limit of " + std::to_string(options_.max_frame_bytes) +
                         " bytes (CONVEYOR_MAX_FRAME_BYTES); send large data as numpy arrays, "
                         "which travel out of band");
    auto out = std::make_shared<Outgoing>();
    out->bytes.frames = frame.size();
    for (const auto& b : oob) out->bytes.data += b.size;
    out->frame = std::move(frame);
    out->oob = oob;
    out->keep = std::move(keep);
    Guard guard(lock_);
    owner_active_.store(true, std::memory_order_relaxed);
    stats_.messages_sent += messages;
    if (routes_[dest].batch.size() != 0) seal_batch(dest);  // it goes first
    queue(dest, std::move(out));
    return congested_locked(dest);
}

Engine::Posted Engine::post_aggregated(int dest, const std::uint8_t* frame, std::size_t size) {
    check_dest(dest, size_);
    if (!aggregates(size)) return Posted::TooLarge;
    Guard guard(lock_);
    owner_active_.store(true, std::memory_order_relaxed);
    auto& route = routes_[dest];
    if (route.batch.size() + 4 + size > options_.batch_bytes) seal_batch(dest);
    if (route.batch.size() == 0) open_batch(dest);
    route.batch.u32(static_cast<std::uint32_t>(size));
    route.batch.raw(frame, size);
    route.batch_messages += 1;
    stats_.messages_sent += 1;
    stats_.messages_aggregated += 1;
    return congested_locked(dest) ? Posted::Congested : Posted::Accepted;
}

void Engine::open_batch(int dest) {
    auto& route = routes_[dest];
    // Most batches that leave early (a rank about to wait) hold a message or
    // two: start small, and let a busy stream grow it to batch_bytes.
    route.batch.bytes.reserve(std::min<std::size_t>(options_.batch_bytes, 1024));
    write_header(route.batch, FrameKind::Batch, 0, {}, {});  // ref: the count, set when sealed
    route.batch_messages = 0;
    route.batch_started = Clock::now();
    // Sequentially consistent with the background's doze: either it sees the
    // batch before it sleeps, or we see it dozing and wake it, so that a lone
    // message still leaves after flush_delay_seconds.
    if (open_batches_.fetch_add(1) == 0 && background_dozing_.load()) wake_background();
}

void Engine::seal_batch(int dest) {
    auto& route = routes_[dest];
    auto out = std::make_shared<Outgoing>();
    auto& bytes = route.batch.bytes;
    if (route.batch_messages == 1) {
        // A lone message (its sender is about to wait) goes as itself: the
        // receiver need not unpack a batch, and the buffer stays for reuse.
        out->frame.assign(bytes.begin() + kBareHeaderBytes + 4, bytes.end());
        bytes.clear();
    } else {
        std::memcpy(bytes.data() + 4, &route.batch_messages, 8);
        out->frame = std::move(bytes);
        bytes.clear();
        stats_.batches_sent += 1;
    }
    out->bytes.frames = out->frame.size();
    route.batch_messages = 0;
    open_batches_.fetch_sub(1, std::memory_order_relaxed);
    queue(dest, std::move(out));
}

void Engine::flush() {
    Guard guard(lock_);
    flush_locked();
}

void Engine::flush_locked() {
    for (int dest = 0; open_batches_.load(std::memory_order_relaxed) != 0 && dest < size_; ++dest)
        if (routes_[dest].batch.size() != 0) seal_batch(dest);
}

bool Engine::congested(int dest) const {
    check_dest(dest, size_);
    Guard guard(lock_);
    return congested_locked(dest);
}

void Engine::queue(int dest, std::shared_ptr<Outgoing> out) {
    auto& route = routes_[dest];
    route.held.push_back(std::move(out));
    release(dest);
    if (!route.held.empty()) stats_.sends_held += 1;
}

namespace {

// Whether `add` more bytes would overflow a window of `limit` (0: none). A
// message larger than the whole window still goes once nothing else is in
// flight, so every message can be sent.
bool overflows(std::size_t in_flight, std::size_t add, std::size_t limit) {
    return limit != 0 && in_flight != 0 && in_flight + add > limit;
}

}  // namespace

// Sends what credit allows, in order.
void Engine::release(int dest) {
    auto& route = routes_[dest];
    while (!route.held.empty()) {
        auto& next = route.held.front();
        if (overflows(route.in_flight.frames, next->bytes.frames, options_.window_bytes) ||
            overflows(route.in_flight.data, next->bytes.data, options_.data_window_bytes)) {
            if (!route.asked) {
                route.asked = true;
                send_credit(dest, {});  // nothing consumed: "credit, please"
            }
            return;
        }
        route.in_flight.frames += next->bytes.frames;
        route.in_flight.data += next->bytes.data;
        isend(dest, std::move(next));
        route.held.pop_front();
    }
}

void Engine::isend(int dest, std::shared_ptr<Outgoing> out) {
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

// A Credit frame: the frame bytes consumed in `ref`, the out-of-band bytes
// in its body; nothing consumed asks for credit. Control frames bypass
// batches and flow control and are not logical messages.
void Engine::send_credit(int dest, FlowBytes consumed) {
    auto out = std::make_shared<Outgoing>();
    Writer w;
    write_header(w, FrameKind::Credit, consumed.frames, {}, {});
    w.u64(consumed.data);
    out->frame = std::move(w.bytes);
    isend(dest, std::move(out));
    stats_.credits_sent += 1;
}

// Flow control, receiving side: credit a sender every quarter of either
// window it consumed, or at once when it asked (it waits for exactly that).
void Engine::consumed(int source, FlowBytes bytes) {
    auto& route = routes_[source];
    route.consumed.frames += bytes.frames;
    route.consumed.data += bytes.data;
    auto reached = [](std::size_t consumed, std::size_t window) {
        return window != 0 && consumed >= window / 4;
    };
    if (reached(route.consumed.frames, options_.window_bytes) ||
        reached(route.consumed.data, options_.data_window_bytes) || route.owes)
        credit(source);
}

void Engine::credit(int source) {
    auto& route = routes_[source];
    if (route.consumed.frames == 0 && route.consumed.data == 0) return;
    send_credit(source, route.consumed);
    route.consumed = {};
    route.owes = false;
}

void Engine::receive_frame(MPI_Message message, const MPI_Status& status) {
    int count = 0;
    check_mpi(MPI_Get_count(&status, MPI_BYTE, &count), "MPI_Get_count");
    auto in = std::make_unique<Incoming>();
    in->source = status.MPI_SOURCE;
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
        stats_.frames_received -= 1;  // a control frame: counted on its own
        stats_.credits_received += 1;
        auto& route = routes_[in->source];
        FlowBytes credited{in->header.ref, 0};
        Reader body(in->frame.data() + in->header.body_offset,
                    in->frame.size() - in->header.body_offset);
        if (body.remaining() >= 8) credited.data = body.u64();
        if (credited.frames == 0 && credited.data == 0) {
            route.owes = true;
            credit(in->source);
        } else {
            route.in_flight.frames -= std::min(route.in_flight.frames, credited.frames);
            route.in_flight.data -= std::min(route.in_flight.data, credited.data);
            route.asked = false;
            release(in->source);
        }
        return;
    }
    if (in->header.kind == FrameKind::Batch) stats_.batches_received += 1;
    in->oob.reserve(in->header.oob.size());
    for (auto n : in->header.oob) {
        auto buf = std::make_shared<Buffer>(n);
        for (std::size_t off = 0; off < n; off += options_.piece_bytes) {
            int len = static_cast<int>(std::min<std::size_t>(options_.piece_bytes, n - off));
            MPI_Request req;
            check_mpi(MPI_Irecv(buf->data() + off, len, MPI_BYTE, in->source, kTagData, comm_, &req),
                      "MPI_Irecv");
            recv_reqs_.push_back(req);
            recv_owners_.push_back(in.get());
            in->pending += 1;
        }
        stats_.bytes_zero_copy_received += n;
        in->oob.push_back(std::move(buf));
    }
    enqueue(std::move(in));
}

void Engine::enqueue(std::unique_ptr<Incoming> in) {
    auto& queue = by_source_[in->source];
    if (queue.empty() && in->pending == 0) {
        ready_.push_back(std::move(in));
    } else {
        queue.push_back(std::move(in));
    }
}

void Engine::release_in_order(int source) {
    auto& queue = by_source_[source];
    while (!queue.empty() && queue.front()->pending == 0) {
        ready_.push_back(std::move(queue.front()));
        queue.pop_front();
    }
}

void Engine::bury(std::shared_ptr<Outgoing> out) {
    if (on_background_thread && out.use_count() == 1 && out->keep) graveyard_.push_back(std::move(out));
}

bool Engine::complete_sends() {
    if (send_reqs_.empty()) return false;
    int n = static_cast<int>(send_reqs_.size());
    done_indices_.resize(send_reqs_.size());
    int outcount = 0;
    check_mpi(MPI_Testsome(n, send_reqs_.data(), &outcount, done_indices_.data(),
                           MPI_STATUSES_IGNORE),
              "MPI_Testsome");
    if (outcount <= 0) return false;
    drop_completed(send_reqs_, send_owners_, [this](auto out) { bury(std::move(out)); });
    return true;
}

bool Engine::complete_receives() {
    if (recv_reqs_.empty()) return false;
    int n = static_cast<int>(recv_reqs_.size());
    done_indices_.resize(recv_reqs_.size());
    int outcount = 0;
    check_mpi(MPI_Testsome(n, recv_reqs_.data(), &outcount, done_indices_.data(),
                           MPI_STATUSES_IGNORE),
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

bool Engine::progress_locked() {
    if (!on_background_thread) {
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
    std::unique_lock<std::mutex> guard(lock_);
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
    auto idle_since = start;
    double nap = 10e-6;
    // Any activity restarts the backoff: spin, then yield, then short naps.
    auto progress_and_rearm = [&] {
        if (progress_locked()) {
            idle_since = Clock::now();
            nap = 10e-6;
        }
    };
    auto woken = [&] {
        return !ready_.empty() || (wave_active_ && wave_completed_) ||
               (uncongested >= 0 && !congested_locked(uncongested));
    };
    for (;;) {
        progress_and_rearm();
        if (woken()) return true;
        if (timeout >= 0 && seconds_since(start) >= timeout) return false;
        double idle = seconds_since(idle_since);
        if (idle < options_.spin_seconds) continue;
        if (idle < options_.yield_seconds) {
            sched_yield();
            continue;
        }
        double limit = options_.max_sleep_seconds;
        if (timeout >= 0) limit = std::min(limit, std::max(0.0, timeout - seconds_since(start)));
        // Sleeping without the lock lets the background thread work meanwhile.
        guard.unlock();
        sleep_for(std::min(nap, limit));
        guard.lock();
        nap = std::min(nap * 2, options_.max_sleep_seconds);
        stats_.waits_slept += 1;
        // After a sleep, MPICH's first probe only makes progress on what
        // arrived meanwhile; the loop's next probe is the one that sees it.
        // Without this extra round, each wake-up would cost one more nap.
        progress_and_rearm();
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
    if (in->source >= 0) {
        FlowBytes bytes{in->frame.size(), 0};
        for (const auto& b : in->oob) bytes.data += b->size();
        consumed(in->source, bytes);
    }
    return in;
}

void Engine::mark_handled(std::int64_t messages) {
    Guard guard(lock_);
    stats_.messages_handled += static_cast<std::uint64_t>(messages);  // wraps back for negatives
}

void Engine::start_wave() {
    Guard guard(lock_);
    if (wave_active_) throw UsageError("a quiescence wave is already in progress");
    wave_in_[0] = stats_.messages_sent;
    wave_in_[1] = stats_.messages_handled;
    check_mpi(MPI_Iallreduce(wave_in_, wave_out_, 2, MPI_UINT64_T, MPI_SUM, comm_, &wave_req_),
              "MPI_Iallreduce");
    wave_active_ = true;
    wave_completed_ = false;
}

bool Engine::wave_active() const {
    Guard guard(lock_);
    return wave_active_;
}

bool Engine::wave_done() {
    Guard guard(lock_);
    if (!wave_active_) throw UsageError("no quiescence wave is in progress");
    if (!wave_completed_) progress_locked();
    if (!wave_completed_) return false;
    wave_active_ = false;
    wave_completed_ = false;
    owner_signalled_.store(false);
    return true;
}

bool Engine::flush_sends(double timeout) {
    auto start = Clock::now();
    std::unique_lock<std::mutex> guard(lock_);
    flush_locked();
    for (;;) {
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

void Engine::serve_in_background(int fd) {
    {
        Guard guard(lock_);
        notify_fd_.store(fd);
        owner_signalled_.store(false);
    }
    wake_background();
}

void Engine::stop_background() {
    background_stop_.store(true);
    wake_background();
    if (background_.joinable()) background_.join();
}

void Engine::wake_background() {
    {
        // Taken so that the wake-up cannot fall between the background's
        // check of its condition and its sleep.
        std::lock_guard<std::mutex> sleep(sleep_lock_);
        background_parked_.store(false);
    }
    sleep_wake_.notify_all();
}

// The background thread: sends batches that waited too long, receives while
// the owner stays away and, when the owner asked for it, signals the
// owner's descriptor. It naps between rounds with the same growing interval
// as an idle wait.
void Engine::background_loop() {
    on_background_thread = true;
    try {
        background_rounds();
    } catch (const std::exception& e) {
        // The owner's next call reports it; meanwhile the owner drives MPI alone.
        Guard guard(lock_);
        background_failure_ = e.what();
    }
}

void Engine::background_rounds() {
    auto idle_since = Clock::now();
    double nap = 10e-6;
    bool unparked = false;
    double away_nap = 0;  // the last sleep while the owner stayed away
    while (!background_stop_.load()) {
        // An owner that calls in makes progress itself: then only batches it
        // left filling need the background. In an event loop the owner never
        // waits in the engine and relies on the background entirely.
        bool serving = notify_fd_.load() >= 0;
        bool owner_called = owner_active_.exchange(false, std::memory_order_relaxed);
        bool active = serving && owner_called;  // it sent or took something
        bool receive = serving || (!owner_called && !owner_waiting_.load());
        bool flush = open_batches_.load(std::memory_order_relaxed) != 0;
        bool quiet = false;  // it probed and nothing came, went, or is under way
        if (receive || flush) {
            std::unique_lock<std::mutex> guard(lock_, std::defer_lock);
            // An event loop's owner needs this round; any other owner
            // holding the lock is making progress itself.
            if (serving)
                guard.lock();
            else
                guard.try_lock();
            if (guard.owns_lock()) {
                if (flush) active |= flush_stale_batches();
                if (receive) {
                    active |= progress_locked();
                    // As in wait(): after a nap, MPICH's first probe only makes
                    // progress on what arrived meanwhile, the second one sees it.
                    if (!active) active |= progress_locked();
                    quiet = !active && !flush && send_reqs_.empty() && recv_reqs_.empty() &&
                            !wave_active_;
                }
                if (serving) signal_owner();
            }
        }
        std::unique_lock<std::mutex> sleep(sleep_lock_);
        if (background_stop_.load()) break;
        if (!serving) {
            if (owner_waiting_.load() && !unparked) {
                // The owner drives MPI until it stops waiting, and wakes us
                // then. Once woken, nap before parking again: an owner that
                // waits often (a ping-pong) then pays one wake-up per nap,
                // not one per wait.
                background_parked_.store(true);
                if (!owner_waiting_.load()) background_parked_.store(false);  // it just left
                sleep_wake_.wait(sleep, [this] { return !background_parked_.load(); });
                unparked = true;
            } else {
                unparked = false;
                // Wake rarely: every wake-up takes a core from the ranks,
                // which may outnumber cores, and a batch left behind waits
                // at most this long.
                double base = std::max(2 * options_.max_sleep_seconds, options_.flush_delay_seconds);
                // And rarer still while the owner stays away with nothing in
                // flight: each round's probes take MPI's lock and join its
                // progress, slowing the transfers of the process's other
                // threads and messengers (conveyor bench's idle second
                // messenger took 5% of the first one's bandwidth).
                away_nap = quiet ? std::min(2 * away_nap, options_.background_max_sleep_seconds) : 0;
                away_nap = std::max(away_nap, base);
                if (away_nap > base) {
                    background_dozing_.store(true);
                    if (open_batches_.load() == 0)
                        sleep_wake_.wait_for(sleep, std::chrono::duration<double>(away_nap));
                    background_dozing_.store(false);
                } else {
                    sleep_wake_.wait_for(sleep, std::chrono::duration<double>(base));
                }
            }
            continue;
        }
        if (owner_signalled_.load()) {
            // The owner has messages to handle: give it the core until it
            // took them (pop() wakes us) rather than polling beside it.
            sleep_wake_.wait_for(sleep, std::chrono::duration<double>(options_.max_sleep_seconds),
                                 [this] { return !owner_signalled_.load() || background_stop_.load(); });
            idle_since = Clock::now();
            continue;
        }
        // Serving an event loop: the same backoff as an idle wait (spin,
        // yield, then growing naps), so answers are seen within microseconds
        // while traffic flows and an idle loop costs next to nothing.
        if (active) {
            idle_since = Clock::now();
            nap = 10e-6;
        }
        double idle = seconds_since(idle_since);
        if (idle < options_.yield_seconds) {
            sleep.unlock();
            if (idle >= options_.spin_seconds) sched_yield();
            continue;
        }
        sleep_wake_.wait_for(sleep, std::chrono::duration<double>(nap));
        nap = std::min(nap * 2, options_.max_sleep_seconds);
    }
}

// Sends the batches older than flush_delay_seconds; returns whether any left.
bool Engine::flush_stale_batches() {
    bool sent = false;
    auto now = Clock::now();
    for (int dest = 0; open_batches_.load(std::memory_order_relaxed) != 0 && dest < size_; ++dest) {
        auto& route = routes_[dest];
        if (route.batch.size() == 0 ||
            std::chrono::duration<double>(now - route.batch_started).count() < options_.flush_delay_seconds)
            continue;
        seal_batch(dest);
        stats_.background_flushes += 1;
        sent = true;
    }
    return sent;
}

// Called with the lock held, under which the owner changes notify_fd_ (and
// closes the old descriptor only after): it may have stopped serving since
// the round began.
void Engine::signal_owner() {
    int fd = notify_fd_.load();
    if (fd < 0 || owner_signalled_.load()) return;
    if (ready_.empty() && !(wave_active_ && wave_completed_)) return;
    std::uint64_t one = 1;
    // A full eventfd or pipe already tells the owner to come: ignore EAGAIN.
    if (write(fd, &one, sizeof one) < 0 && errno != EAGAIN)
        throw MPIError(std::string("signalling the event loop failed: ") + std::strerror(errno));
    owner_signalled_.store(true);
}

void Engine::abort(int code) {
    MPI_Abort(comm_, code);
    std::abort();  // MPI_Abort does not return; this keeps the promise of [[noreturn]]
}

}  // namespace conveyor
