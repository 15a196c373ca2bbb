// Aggregation: small frames to one rank are packed into Batch frames, sent
// when full, when the owner flushes or waits, or, by the background thread,
// once older than flush_delay_seconds. A relaying engine's batches are
// Relayed frames to next hops (relay.cpp).
#include <algorithm>
#include <chrono>
#include <cstring>

#include "conveyor/engine/engine.hpp"

namespace conveyor {

Engine::Posted Engine::post_aggregated(int dest, const std::uint8_t* frame, std::size_t size) {
    check_dest(dest, size_);
    if (!aggregates(size)) return Posted::TooLarge;
    Guard guard(lock_);
    owner_active_.store(true, std::memory_order_relaxed);
    if (relaying()) {
        relay(dest, frame, size);
    } else {
        batch_room(dest, 4 + size);
        auto& route = routes_[dest];
        route.batch.u32(static_cast<std::uint32_t>(size));
        route.batch.raw(frame, size);
        route.batch_messages += 1;
    }
    stats_.messages_sent += 1;
    stats_.messages_aggregated += 1;
    return congested_locked(dest) ? Posted::Congested : Posted::Accepted;
}

// Makes room for `bytes` more in the batch to `dest`, open afterwards: a
// full batch is sealed first, and where its buffer must grow past the pool
// of every route's batch buffers, all are sealed or freed (reclaim_batches).
void Engine::batch_room(int dest, std::size_t bytes) {
    auto& route = routes_[dest];
    if (route.batch.size() + bytes > options_.batch_bytes) seal_batch(dest);
    auto& buffer = route.batch.bytes;
    const std::size_t header = kBareHeaderBytes + (relaying() ? 8 : 0);
    std::size_t need = std::max(buffer.size(), header) + bytes;
    if (need > buffer.capacity()) {
        // Most batches that leave early (a rank about to wait) hold a message
        // or two: start small, and let a busy stream double it up to batch_bytes.
        std::size_t grown = std::max({need, 2 * buffer.capacity(), std::size_t(1024)});
        grown = std::min(grown, std::max(need, options_.batch_bytes));
        const std::size_t pool = options_.batch_pool_bytes;
        if (pool != 0 && batch_buffer_bytes_ - buffer.capacity() + grown > pool) {
            reclaim_batches();  // seals this batch too: its buffer is gone
            need = header + bytes;
            grown = std::min(grown, std::max(need, pool));
        }
        batch_buffer_bytes_ += grown - buffer.capacity();
        buffer.reserve(grown);
        stats_.batch_bytes_peak =
            std::max<std::uint64_t>(stats_.batch_bytes_peak, batch_buffer_bytes_);
    }
    if (route.batch.size() != 0) return;
    // ref: the count, set when sealed; a Relayed frame's stamp follows it.
    write_header(route.batch, relaying() ? FrameKind::Relayed : FrameKind::Batch, 0, {}, {});
    if (relaying()) route.batch.u64(0);
    stats_.frames_posted += 1;  // sealed as a batch or as its lone message, one frame
    route.frames_posted += 1;
    route.batch_messages = 0;
    route.batch_started = Clock::now();
    // Sequentially consistent with the background's doze: either it sees the
    // batch before it sleeps, or we see it dozing and wake it, so that a lone
    // message still leaves after flush_delay_seconds.
    const std::size_t open = open_batches_.fetch_add(1);
    if (open == 0 && background_dozing_.load()) wake_background();
    stats_.batches_open_peak = std::max<std::uint64_t>(stats_.batches_open_peak, open + 1);
}

// The batch buffers reached the pool: every batch filling leaves now, and
// the buffers kept for reuse by idle routes are freed.
void Engine::reclaim_batches() {
    stats_.batch_pool_flushes += 1;
    flush_locked();
    for (auto& route : routes_) {
        auto& buffer = route.batch.bytes;
        batch_buffer_bytes_ -= buffer.capacity();
        std::vector<std::uint8_t>().swap(buffer);
    }
}

void Engine::seal_batch(int dest) {
    auto& route = routes_[dest];
    auto out = std::make_shared<Outgoing>();
    auto& bytes = route.batch.bytes;
    if (route.batch_messages == 1 && !relaying()) {
        // A lone message (its sender is about to wait) goes as itself: the
        // receiver need not unpack a batch, and the buffer stays for reuse.
        out->frame.assign(bytes.begin() + kBareHeaderBytes + 4, bytes.end());
        bytes.clear();
    } else {
        std::memcpy(bytes.data() + 4, &route.batch_messages, 8);
        batch_buffer_bytes_ -= bytes.capacity();  // it leaves with the frame
        out->frame = std::move(bytes);
        bytes.clear();
        stats_.batches_sent += 1;
        if (relaying()) out->stamp_at = kBareHeaderBytes;
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

// Sends the batches older than flush_delay_seconds; returns how many left.
std::size_t Engine::flush_stale_batches() {
    std::size_t sent = 0;
    auto now = Clock::now();
    for (int dest = 0; open_batches_.load(std::memory_order_relaxed) != 0 && dest < size_; ++dest) {
        auto& route = routes_[dest];
        if (route.batch.size() == 0 ||
            std::chrono::duration<double>(now - route.batch_started).count() <
                options_.flush_delay_seconds)
            continue;
        seal_batch(dest);
        sent += 1;
    }
    return sent;
}

}  // namespace conveyor
