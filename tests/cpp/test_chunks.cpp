// Unit tests of the alignment kernel: pure C++, no MPI calls (built with
// mpicxx only because engine.hpp includes mpi.h).
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"
#include "conveyor/align.hpp"
#include "conveyor/engine.hpp"

using namespace conveyor;

using Pieces = std::vector<std::vector<std::uint64_t>>;

static Pieces pieces(const std::vector<std::uint64_t>& sizes, std::uint64_t begin, std::uint64_t end) {
    Pieces out;
    for (const auto& p : align(sizes, begin, end)) out.push_back({p.chunk, p.start, p.stop});
    return out;
}

// (chunk, row within it) of each row of one period, found one row at a time.
static std::vector<std::pair<std::size_t, std::uint64_t>> brute_force(
    const std::vector<std::uint64_t>& sizes, std::uint64_t begin, std::uint64_t end) {
    std::vector<std::pair<std::size_t, std::uint64_t>> rows;
    std::vector<std::pair<std::size_t, std::uint64_t>> argument;
    for (std::size_t c = 0; c < sizes.size(); ++c)
        for (std::uint64_t r = 0; r < sizes[c]; ++r) argument.push_back({c, r});
    if (argument.empty()) return rows;
    for (std::uint64_t i = begin; i < end && i - begin < argument.size(); ++i)
        rows.push_back(argument[i % argument.size()]);
    return rows;
}

static void check_against_brute_force(const std::vector<std::uint64_t>& sizes, std::uint64_t begin,
                                      std::uint64_t end) {
    auto got = align(sizes, begin, end);
    std::vector<std::pair<std::size_t, std::uint64_t>> rows;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const auto& p = got[i];
        CHECK(p.chunk < sizes.size() && p.start < p.stop && p.stop <= sizes[p.chunk]);
        // Maximal pieces: one never continues the previous one in the same chunk.
        if (i > 0) CHECK(!(got[i - 1].chunk == p.chunk && got[i - 1].stop == p.start));
        for (auto r = p.start; r < p.stop; ++r) rows.push_back({p.chunk, r});
    }
    CHECK(rows == brute_force(sizes, begin, end));
}

static void test_align() {
    const std::vector<std::uint64_t> sizes = {3, 0, 4, 2};  // L = 9
    CHECK((pieces(sizes, 0, 9) == Pieces{{0, 0, 3}, {2, 0, 4}, {3, 0, 2}}));
    CHECK((pieces(sizes, 1, 5) == Pieces{{0, 1, 3}, {2, 0, 2}}));
    // Wrap-around: rows 7..10 are rows 7, 8, 0, 1 of the argument.
    CHECK((pieces(sizes, 7, 11) == Pieces{{3, 0, 2}, {0, 0, 2}}));
    // begin far beyond L: only begin mod L matters.
    CHECK((pieces(sizes, 9 * 1000003 + 4, 9 * 1000003 + 6) == Pieces{{2, 1, 3}}));
    CHECK(pieces(sizes, 1ull << 62, (1ull << 62) + 9).size() == 3 + 1);
    // A target longer than the argument: one period, rotated to start at begin mod L.
    CHECK((pieces(sizes, 5, 100) == Pieces{{2, 2, 4}, {3, 0, 2}, {0, 0, 3}, {2, 0, 2}}));
    CHECK((pieces({1}, 12, 40) == Pieces{{0, 0, 1}}));  // L == 1
    CHECK((pieces({0, 0, 1, 0}, 3, 4) == Pieces{{2, 0, 1}}));
    CHECK(pieces(sizes, 4, 4).empty());
    CHECK(pieces({}, 0, 10).empty());
    CHECK(pieces({0, 0}, 0, 10).empty());
    CHECK(throws<UsageError>([&] { align(sizes, 5, 4); }));
    CHECK(throws<UsageError>([&] { align({UINT64_MAX, 1}, 0, 1); }));

    // Every small case against the row-by-row answer.
    std::vector<std::uint64_t> s;
    std::function<void(std::size_t)> each = [&](std::size_t len) {
        std::uint64_t total = 0;
        for (auto x : s) total += x;
        for (std::uint64_t begin = 0; begin <= 2 * total + 1; ++begin)
            for (std::uint64_t end = begin; end <= begin + 2 * total + 1; ++end)
                check_against_brute_force(s, begin, end);
        if (len == 4) return;
        for (std::uint64_t x = 0; x <= 3; ++x) {
            s.push_back(x);
            each(len + 1);
            s.pop_back();
        }
    };
    each(0);
}

int main() {
    test_align();
    std::printf("%s: %d failed checks\n", failures ? "FAIL" : "OK", failures);
    return failures ? 1 : 0;
}
