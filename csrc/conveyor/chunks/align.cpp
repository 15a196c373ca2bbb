#include "conveyor/chunks/align.hpp"

#include <algorithm>
#include <string>

#include "conveyor/common/errors.hpp"

namespace conveyor {

std::vector<Piece> align(const std::vector<std::uint64_t>& sizes, std::uint64_t begin,
                         std::uint64_t end) {
    if (begin > end)
        throw UsageError("target rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                         ") end before they begin");
    // offsets[c] is the first row of chunk c; offsets.back() the total.
    std::vector<std::uint64_t> offsets(sizes.size() + 1, 0);
    for (std::size_t c = 0; c < sizes.size(); ++c) {
        if (sizes[c] > UINT64_MAX - offsets[c])
            throw UsageError("chunk sizes add up to more than 2**64 - 1 rows");
        offsets[c + 1] = offsets[c] + sizes[c];
    }
    const std::uint64_t total = offsets.back();
    std::vector<Piece> pieces;
    if (begin == end || total == 0) return pieces;
    std::uint64_t left = std::min(end - begin, total);
    std::uint64_t row = begin % total;
    while (left != 0) {
        // The first offset past `row` ends the chunk holding it; searching
        // (rather than stepping to the next chunk) skips runs of empty chunks.
        auto past = std::upper_bound(offsets.begin(), offsets.end(), row);
        auto c = static_cast<std::size_t>(past - offsets.begin()) - 1;
        std::uint64_t start = row - offsets[c];
        std::uint64_t take = std::min(left, sizes[c] - start);
        pieces.push_back({c, start, start + take});
        left -= take;
        row += take;
        if (row == total) row = 0;
    }
    return pieces;
}

}  // namespace conveyor
