#pragma once

#include <cstddef>
#include <cstdint>

namespace conveyor {

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

}  // namespace conveyor
