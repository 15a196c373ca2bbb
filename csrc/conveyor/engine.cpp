#include "conveyor/engine.hpp"

#include <sched.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <new>

namespace conveyor {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

void sleep_for(double seconds) {
    timespec ts;
    ts.tv_sec = static_cast<time_t>(seconds);
    ts.tv_nsec = static_cast<long>((seconds - ts.tv_sec) * 1e9);
    nanosleep(&ts, nullptr);
}

// MPI_Testsome sets the requests it completed to MPI_REQUEST_NULL: drop them
// and their owners, keeping the rest in order.
template <class Owner>
void drop_completed(std::vector<MPI_Request>& reqs, std::vector<Owner>& owners) {
    std::size_t w = 0;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
        if (reqs[i] == MPI_REQUEST_NULL) continue;
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

namespace {

constexpr std::size_t kCachedFrom = std::size_t(1) << 20;  // smaller ones: malloc is fast
constexpr std::size_t kHugePage = std::size_t(2) << 20;

// Freed large buffers by exact size. Buffers are freed by whoever drops the
// last reference (a numpy array's owner, on any Python thread) while the
// engine allocates from its GIL-free wait: hence the lock.
struct BufferCache {
    std::mutex lock;
    std::multimap<std::size_t, void*> free_buffers;
    std::size_t bytes = 0;
    std::size_t limit = std::size_t(512) << 20;
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
        auto it = cache.free_buffers.find(size);
        if (it != cache.free_buffers.end()) {
            data_ = static_cast<std::uint8_t*>(it->second);
            cache.bytes -= size;
            cache.free_buffers.erase(it);
            return;
        }
    }
    data_ = static_cast<std::uint8_t*>(allocate(size));
}

Buffer::~Buffer() {
    if (size_ >= kCachedFrom) {
        auto& cache = buffer_cache();
        std::lock_guard<std::mutex> guard(cache.lock);
        if (cache.bytes + size_ <= cache.limit) {
            cache.free_buffers.emplace(size_, data_);
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
    // Shrink at once, largest buffers first.
    while (cache.bytes > cache.limit) {
        auto last = std::prev(cache.free_buffers.end());
        cache.bytes -= last->first;
        std::free(last->second);
        cache.free_buffers.erase(last);
    }
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
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    by_source_.resize(size_);
}

Engine::~Engine() {
    // Requests still pending here belong to a job that is being torn down
    // (an error path); MPI_Finalize or MPI_Abort reclaims them. Freeing a
    // pending receive would let MPI write into released memory, so leave them.
    if (wave_req_ != MPI_REQUEST_NULL) MPI_Request_free(&wave_req_);
}

void Engine::post(int dest, std::vector<std::uint8_t> frame, const std::vector<OutOfBand>& oob,
                  KeepAlive keep, std::uint64_t messages) {
    if (dest < 0 || dest >= size_)
        throw UsageError("destination rank " + std::to_string(dest) + " is out of range 0.." +
                         std::to_string(size_ - 1));
    if (frame.size() > options_.max_frame_bytes)
        throw FrameTooLarge("message frame of " + std::to_string(frame.size()) +
                         " bytes exceeds the limit of " + std::to_string(options_.max_frame_bytes) +
                         " bytes (CONVEYOR_MAX_FRAME_BYTES); send large data as numpy arrays, "
                         "which travel out of band");
    auto out = std::make_shared<Outgoing>();
    out->frame = std::move(frame);
    out->keep = std::move(keep);

    MPI_Request req;
    check_mpi(MPI_Isend(out->frame.data(), static_cast<int>(out->frame.size()), MPI_BYTE, dest,
                        kTagFrame, comm_, &req),
              "MPI_Isend");
    send_reqs_.push_back(req);
    send_owners_.push_back(out);
    stats_.frames_sent += 1;
    stats_.bytes_framed += out->frame.size();
    stats_.messages_sent += messages;

    for (const auto& b : oob) {
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

bool Engine::complete_sends() {
    if (send_reqs_.empty()) return false;
    int n = static_cast<int>(send_reqs_.size());
    done_indices_.resize(send_reqs_.size());
    int outcount = 0;
    check_mpi(MPI_Testsome(n, send_reqs_.data(), &outcount, done_indices_.data(),
                           MPI_STATUSES_IGNORE),
              "MPI_Testsome");
    if (outcount <= 0) return false;
    drop_completed(send_reqs_, send_owners_);
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
    drop_completed(recv_reqs_, recv_owners_);
    for (int s : sources) release_in_order(s);
    return true;
}

bool Engine::progress() {
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

bool Engine::wait(double timeout) {
    auto start = Clock::now();
    auto idle_since = start;
    double nap = 10e-6;
    // Any activity restarts the backoff: spin, then yield, then short naps.
    auto progress_and_rearm = [&] {
        if (progress()) {
            idle_since = Clock::now();
            nap = 10e-6;
        }
    };
    for (;;) {
        progress_and_rearm();
        if (!ready_.empty() || (wave_active_ && wave_completed_)) return true;
        if (timeout >= 0 && seconds_since(start) >= timeout) return false;
        double idle = seconds_since(idle_since);
        if (idle < options_.spin_seconds) continue;
        if (idle < options_.yield_seconds) {
            sched_yield();
            continue;
        }
        double limit = options_.max_sleep_seconds;
        if (timeout >= 0) limit = std::min(limit, std::max(0.0, timeout - seconds_since(start)));
        sleep_for(std::min(nap, limit));
        nap = std::min(nap * 2, options_.max_sleep_seconds);
        stats_.waits_slept += 1;
        // After a sleep, MPICH's first probe only makes progress on what
        // arrived meanwhile; the loop's next probe is the one that sees it.
        // Without this extra round, each wake-up would cost one more nap.
        progress_and_rearm();
    }
}

std::unique_ptr<Incoming> Engine::pop() {
    if (ready_.empty()) return nullptr;
    auto in = std::move(ready_.front());
    ready_.pop_front();
    return in;
}

void Engine::start_wave() {
    if (wave_active_) throw UsageError("a quiescence wave is already in progress");
    wave_in_[0] = stats_.messages_sent;
    wave_in_[1] = stats_.messages_handled;
    check_mpi(MPI_Iallreduce(wave_in_, wave_out_, 2, MPI_UINT64_T, MPI_SUM, comm_, &wave_req_),
              "MPI_Iallreduce");
    wave_active_ = true;
    wave_completed_ = false;
}

bool Engine::wave_done() {
    if (!wave_active_) throw UsageError("no quiescence wave is in progress");
    if (!wave_completed_) progress();
    if (!wave_completed_) return false;
    wave_active_ = false;
    wave_completed_ = false;
    return true;
}

bool Engine::flush_sends(double timeout) {
    auto start = Clock::now();
    while (!send_reqs_.empty()) {
        if (!progress()) {
            if (timeout >= 0 && seconds_since(start) >= timeout) return false;
            sleep_for(20e-6);
        }
    }
    return true;
}

void Engine::abort(int code) {
    MPI_Abort(comm_, code);
    std::abort();  // MPI_Abort does not return; this keeps the promise of [[noreturn]]
}

}  // namespace conveyor
