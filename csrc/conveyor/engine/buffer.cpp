#include "conveyor/engine/buffer.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <new>

#include "conveyor/wire/wire.hpp"

namespace conveyor {

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

// Room for `size` bytes at any offset in the first 64-byte line (see
// first_line), so that a cached buffer serves every offset. One too small to
// cache comes from malloc, aligned by first_line: glibc's posix_memalign
// cuts the aligned block out of a larger chunk and gives the pieces back to
// malloc's bins: 90 ns to allocate and free 64 KiB against 26 for malloc
// (glibc 2.36), a point or two of a stream of 64 KiB arrays (bench/README.md).
void* allocate(std::size_t size) {
    if (size > std::numeric_limits<std::size_t>::max() - 2 * kLineBytes) throw std::bad_alloc();
    void* p = nullptr;
    if (size < kCachedFrom) {
        p = std::malloc(size + 2 * kLineBytes);
        if (!p) throw std::bad_alloc();
        return p;
    }
    bool huge = size >= 2 * kHugePage;
    if (posix_memalign(&p, huge ? kHugePage : kLineBytes, size + kLineBytes) != 0)
        throw std::bad_alloc();
    // Transparent huge pages fault 2 MiB at a time (numpy asks for them too).
    if (huge) madvise(p, size & ~(kHugePage - 1), MADV_HUGEPAGE);
    return p;
}

// The first 64-byte boundary in `memory`: `memory` itself when it is aligned.
std::uint8_t* first_line(void* memory) {
    auto address = reinterpret_cast<std::uintptr_t>(memory);
    return reinterpret_cast<std::uint8_t*>((address + kLineBytes - 1) & ~(kLineBytes - 1));
}

}  // namespace

Buffer::Buffer(std::size_t size, std::size_t offset) : size_(size) {
    if (size >= kCachedFrom) {
        auto& cache = buffer_cache();
        std::lock_guard<std::mutex> guard(cache.lock);
        memory_ = cache.take(size);
    }
    if (!memory_) memory_ = allocate(size);
    data_ = first_line(memory_) + offset % kLineBytes;
}

Buffer::~Buffer() {
    if (size_ >= kCachedFrom) {
        auto& cache = buffer_cache();
        std::lock_guard<std::mutex> guard(cache.lock);
        if (size_ <= cache.limit) {
            while (cache.bytes + size_ > cache.limit) cache.drop_oldest();
            auto entry = cache.by_age.insert(cache.by_age.end(), {size_, memory_});
            cache.by_size.emplace(size_, entry);
            cache.bytes += size_;
            return;
        }
    }
    std::free(memory_);
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

}  // namespace conveyor
