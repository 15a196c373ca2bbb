// Routing of batches: groups rows by destination rank.
#pragma once

#include <cstddef>
#include <cstdint>

namespace conveyor {

// A stable counting sort of `n` rows by `dests[i]`, in two passes, so that
// the caller allocates room for the grouped rows only when they must move.
//
// count_rows writes, for each rank r, its rows' [offsets[r], offsets[r+1])
// range (`offsets` holds nranks + 1 entries), and returns the rank every row
// goes to when they all go to one (the rows are in order as they are), else
// -1. Throws UsageError naming the first destination outside 0..nranks-1.
template <class Dest>
int count_rows(const Dest* dests, std::size_t n, int nranks, std::uint64_t* offsets);

// Writes the rows, of `row_bytes` bytes each, to `out` in the order of
// those ranges, keeping their order within each rank.
template <class Dest>
void group_rows(const Dest* dests, std::size_t n, const std::uint8_t* rows, std::size_t row_bytes,
                const std::uint64_t* offsets, int nranks, std::uint8_t* out);

}  // namespace conveyor
