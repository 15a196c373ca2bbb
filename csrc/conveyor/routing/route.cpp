#include "conveyor/routing/route.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "conveyor/common/errors.hpp"

namespace conveyor {

namespace {

// Moves each row to its slot. Rows of 1, 2, 4, 8 or 16 bytes (the usual
// numbers and small records) are copied as one value rather than through
// a memcpy call per row, which would cost several times the copy.
template <std::size_t Size, class Dest>
void scatter_fixed(const Dest* dests, std::size_t n, const std::uint8_t* rows, std::uint8_t* out,
                   std::vector<std::uint64_t>& next) {
    struct Row {
        std::uint8_t bytes[Size];
    };
    for (std::size_t i = 0; i < n; ++i) {
        auto slot = next[static_cast<std::size_t>(dests[i])]++;
        Row r;
        std::memcpy(&r, rows + i * Size, Size);
        std::memcpy(out + slot * Size, &r, Size);
    }
}

template <class Dest>
void scatter(const Dest* dests, std::size_t n, const std::uint8_t* rows, std::size_t row_bytes,
             std::uint8_t* out, std::vector<std::uint64_t>& next) {
    switch (row_bytes) {
        case 1: return scatter_fixed<1>(dests, n, rows, out, next);
        case 2: return scatter_fixed<2>(dests, n, rows, out, next);
        case 4: return scatter_fixed<4>(dests, n, rows, out, next);
        case 8: return scatter_fixed<8>(dests, n, rows, out, next);
        case 16: return scatter_fixed<16>(dests, n, rows, out, next);
        default:
            for (std::size_t i = 0; i < n; ++i) {
                auto slot = next[static_cast<std::size_t>(dests[i])]++;
                std::memcpy(out + slot * row_bytes, rows + i * row_bytes, row_bytes);
            }
    }
}

}  // namespace

template <class Dest>
int count_rows(const Dest* dests, std::size_t n, int nranks, std::uint64_t* offsets) {
    const auto ranks = static_cast<std::size_t>(nranks);
    auto check = [&](std::size_t i) {
        auto d = dests[i];
        bool negative = false;
        if constexpr (std::is_signed_v<Dest>) negative = d < 0;
        if (negative || static_cast<std::uint64_t>(d) >= ranks)
            throw UsageError("destination rank " + std::to_string(d) + " at index " +
                             std::to_string(i) + " is out of range 0.." +
                             std::to_string(nranks - 1));
        return static_cast<std::size_t>(d);
    };
    std::fill(offsets, offsets + ranks + 1, 0);
    // A batch to one rank, the common case, is found by an OR of the
    // differences from the first row, which the compiler vectorizes (a
    // 64-bit compare is not in the baseline instruction set): no tally then.
    using Bits = std::make_unsigned_t<Dest>;
    Bits differ = 0;
    for (std::size_t i = 0; i < n; ++i)
        differ |= static_cast<Bits>(static_cast<Bits>(dests[i]) ^ static_cast<Bits>(dests[0]));
    if (n != 0 && differ == 0) {
        auto only = check(0);
        std::fill(offsets + only + 1, offsets + ranks + 1, n);
        return static_cast<int>(only);
    }
    // Four tallies, so that rows to one rank in a row do not each wait for
    // the increment before them.
    std::vector<std::uint64_t> tally(4 * ranks, 0);
    std::size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (std::size_t k = 0; k < 4; ++k) tally[k * ranks + check(i + k)] += 1;
    for (; i < n; ++i) tally[check(i)] += 1;
    for (std::size_t r = 0; r < ranks; ++r)
        offsets[r + 1] =
            offsets[r] + tally[r] + tally[ranks + r] + tally[2 * ranks + r] + tally[3 * ranks + r];
    return -1;
}

template <class Dest>
void group_rows(const Dest* dests, std::size_t n, const std::uint8_t* rows, std::size_t row_bytes,
                const std::uint64_t* offsets, int nranks, std::uint8_t* out) {
    std::vector<std::uint64_t> next(offsets, offsets + nranks + 1);
    scatter(dests, n, rows, row_bytes, out, next);
}

#define CONVEYOR_ROUTE_ROWS(Dest)                                                              \
    template int count_rows<Dest>(const Dest*, std::size_t, int, std::uint64_t*);              \
    template void group_rows<Dest>(const Dest*, std::size_t, const std::uint8_t*, std::size_t, \
                                   const std::uint64_t*, int, std::uint8_t*);
CONVEYOR_ROUTE_ROWS(std::int8_t)
CONVEYOR_ROUTE_ROWS(std::uint8_t)
CONVEYOR_ROUTE_ROWS(std::int16_t)
CONVEYOR_ROUTE_ROWS(std::uint16_t)
CONVEYOR_ROUTE_ROWS(std::int32_t)
CONVEYOR_ROUTE_ROWS(std::uint32_t)
CONVEYOR_ROUTE_ROWS(std::int64_t)
CONVEYOR_ROUTE_ROWS(std::uint64_t)
#undef CONVEYOR_ROUTE_ROWS

}  // namespace conveyor
