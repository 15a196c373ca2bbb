#include "conveyor/route.hpp"

#include <cstring>
#include <string>
#include <vector>

#include "conveyor/engine.hpp"

namespace conveyor {

void route_rows(const std::int64_t* dests, std::size_t n, const std::uint8_t* rows,
                std::size_t row_bytes, int nranks, std::uint8_t* out, std::uint64_t* offsets) {
    std::vector<std::uint64_t> next(static_cast<std::size_t>(nranks) + 1, 0);
    for (std::size_t i = 0; i < n; ++i) {
        auto d = dests[i];
        if (d < 0 || d >= nranks)
            throw UsageError("destination rank " + std::to_string(d) + " at index " +
                             std::to_string(i) + " is out of range 0.." + std::to_string(nranks - 1));
        next[static_cast<std::size_t>(d) + 1] += 1;
    }
    for (int r = 0; r < nranks; ++r) next[r + 1] += next[r];
    std::memcpy(offsets, next.data(), next.size() * sizeof(std::uint64_t));
    for (std::size_t i = 0; i < n; ++i) {
        auto slot = next[static_cast<std::size_t>(dests[i])]++;
        std::memcpy(out + slot * row_bytes, rows + i * row_bytes, row_bytes);
    }
}

}  // namespace conveyor
