// Alignment of distributed arrays with R's recycling.
//
// A distributed array is an ordered list of chunks; a call on several of them
// aligns each argument to a target, whose row i takes row i mod L of an
// argument of L rows. The owner of a target chunk fetches from each argument
// only one period of what it needs and tiles it locally, so a short argument
// recycled over a long target travels once, not once per repetition.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace conveyor {

// Rows [start, stop) of chunk `chunk`, counted from the chunk's first row.
struct Piece {
    std::size_t chunk;
    std::uint64_t start;
    std::uint64_t stop;
};

// The pieces, in order, of an argument of chunk sizes `sizes` (some may be 0)
// that hold one period of target rows [begin, end): min(end - begin, L) rows
// from row begin mod L on, wrapping from the last row to row 0. The caller
// tiles them to end - begin rows. Empty when begin == end or L == 0; never an
// empty piece. Takes O(n) for the prefix sums, then O(k log n) for k pieces.
// Throws UsageError if begin > end or the sizes add up to more than 2**64 - 1.
std::vector<Piece> align(const std::vector<std::uint64_t>& sizes, std::uint64_t begin,
                         std::uint64_t end);

}  // namespace conveyor
