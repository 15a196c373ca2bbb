// Routing of batches: groups rows by destination rank in one pass.
#pragma once

#include <cstddef>
#include <cstdint>

namespace conveyor {

// A stable counting sort of `n` rows of `row_bytes` bytes by `dests[i]`.
// Writes the grouped rows to `out` and, for each rank r, its rows'
// [offsets[r], offsets[r+1]) range; `offsets` holds nranks + 1 entries.
// Returns the rank every row goes to when they all go to one (then `out` is
// left untouched: the rows are already in order), else -1.
// Throws UsageError naming the first destination outside 0..nranks-1.
template <class Dest>
int route_rows(const Dest* dests, std::size_t n, const std::uint8_t* rows, std::size_t row_bytes,
               int nranks, std::uint8_t* out, std::uint64_t* offsets);

}  // namespace conveyor
