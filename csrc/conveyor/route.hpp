// Routing of batches: groups rows by destination rank in one pass.
#pragma once

#include <cstddef>
#include <cstdint>

namespace conveyor {

// A stable counting sort of `n` rows of `row_bytes` bytes by `dests[i]`.
// Writes the grouped rows to `out` and, for each rank r, its rows'
// [offsets[r], offsets[r+1]) range; `offsets` holds nranks + 1 entries.
// Throws UsageError naming the first destination outside 0..nranks-1.
void route_rows(const std::int64_t* dests, std::size_t n, const std::uint8_t* rows,
                std::size_t row_bytes, int nranks, std::uint8_t* out, std::uint64_t* offsets);

}  // namespace conveyor
