#pragma once

#include <cstddef>
#include <cstdint>

namespace conveyor {

// Uninitialised memory that MPI writes a received buffer into, `offset`
// bytes past a 64-byte boundary: where the sender's buffer lies in its cache
// line, which makes MPI's copy between them fast (see kLineBytes in wire.hpp).
// Ownership passes to whoever delivers it (a numpy array in the bindings).
//
// Large buffers come from a bounded cache of freed ones of the same size:
// fresh memory of that size must be faulted in page by page while MPI copies
// into it, which costs ten times the copy itself from ~64 MiB up.
class Buffer {
  public:
    // `offset` is taken modulo kLineBytes (wire.hpp).
    explicit Buffer(std::size_t size, std::size_t offset = 0);
    ~Buffer();
    // The most bytes of freed buffers kept for reuse (process-wide; 0 disables).
    static void set_cache_limit(std::size_t bytes);
    static std::size_t cached_bytes();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    std::uint8_t* data() const { return data_; }
    std::size_t size() const { return size_; }

  private:
    // What was allocated, for free(): data_ is `offset` bytes past its first
    // 64-byte boundary.
    void* memory_ = nullptr;
    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace conveyor
