// Unit tests of the alignment kernel and the chunk table: pure C++, built
// without MPI (tests/cpp/test_cpp.py), which also proves the kernels need none.
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"
#include "conveyor/chunks/align.hpp"
#include "conveyor/chunks/chunks.hpp"
#include "conveyor/common/errors.hpp"

using namespace conveyor;

using Pieces = std::vector<std::vector<std::uint64_t>>;

static Pieces pieces(const std::vector<std::uint64_t>& sizes, std::uint64_t begin,
                     std::uint64_t end) {
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

static ChunkValue bytes_value(std::size_t size) {
    auto memory = std::make_shared<std::vector<char>>(size);
    return {memory->data(), size, memory, "|u1", {static_cast<std::int64_t>(size)}};
}

static void test_ids_and_states() {
    ChunkTable t(3);
    ChunkId a = t.new_id(), b = t.new_id();
    CHECK(a != b && a != 0);
    CHECK(ChunkTable::creator_of(a) == 3 && ChunkTable::creator_of(b) == 3);
    CHECK(throws<UsageError>([] { ChunkTable(-1); }));
    CHECK(throws<UsageError>([] { ChunkTable(1 << 24); }));
    CHECK(ChunkTable::creator_of(ChunkTable((1 << 24) - 1).new_id()) == (1 << 24) - 1);

    CHECK(throws<UnknownChunk>([&] { t.state(a); }));
    CHECK(!t.contains(a) && t.size() == 0);
    t.create(a, 0);
    t.hold(a);
    CHECK(t.contains(a) && t.size() == 1);
    CHECK(t.state(a) == ChunkState::Pending);
    CHECK(throws<UsageError>([&] { t.create(a, 0); }));
    CHECK(throws<UsageError>([&] { t.value(a); }));
    CHECK(t.add_waiter(a, 7) && t.add_waiter(a, 8));
    auto value = bytes_value(100);
    std::weak_ptr<void> memory = value.keep;
    CHECK((t.resolve(a, std::move(value)) == std::vector<std::uint64_t>{7, 8}));
    CHECK(t.state(a) == ChunkState::Resolved && t.value(a).size == 100);
    CHECK(!t.add_waiter(a, 9));    // settled: the caller goes on at once
    auto copy = bytes_value(100);  // the same bytes elsewhere: the first memory goes
    std::weak_ptr<void> first = memory;
    memory = copy.keep;
    const void* where = copy.data;
    t.replace(a, std::move(copy));
    CHECK(first.expired() && t.value(a).data == where);
    CHECK(throws<UsageError>([&] { t.replace(a, bytes_value(99)); }));
    CHECK(throws<UsageError>([&] { t.resolve(a, bytes_value(1)); }));
    CHECK(throws<UsageError>([&] { t.fail(a, "again"); }));
    CHECK(throws<UsageError>([&] { t.error(a); }));

    t.create(b, 0);
    t.hold(b);
    CHECK(t.add_waiter(b, 1));
    CHECK((t.fail(b, std::string("pickled\0error", 13)) == std::vector<std::uint64_t>{1}));
    CHECK(t.state(b) == ChunkState::Error && t.error(b).size() == 13);
    CHECK(throws<UsageError>([&] { t.value(b); }));

    auto s = t.stats();
    CHECK(s.chunks == 1 && s.bytes == 100 && s.failed == 1 && s.pending == 0);
    CHECK(!memory.expired());
    auto r = t.release(a);
    CHECK(r.freed && r.weight == 0 && r.home == 3);
    CHECK(memory.expired());  // the value's memory goes with the entry
    CHECK(throws<UnknownChunk>([&] { t.release(a); }));
    CHECK(t.stats().bytes == 0 && t.size() == 1);

    bool named = false;
    try {
        t.state(12345);
    } catch (const UnknownChunk& e) {
        named = e.id == 12345 && std::string(e.what()).find("chunk 12345") != std::string::npos;
    }
    CHECK(named);
}

static void test_owner_weights() {
    ChunkTable owner(1);
    ChunkId id = owner.new_id();
    owner.create(id, 0);
    owner.hold(id);
    auto lent = owner.lend(id);  // the owner mints rather than splits
    CHECK(lent.weight == ChunkTable::kMintWeight && lent.home == 1 && !lent.refill);
    CHECK(owner.lend(id).weight == ChunkTable::kMintWeight);
    CHECK(!owner.release(id).freed);  // two lends still out
    CHECK(!owner.give_back(id, ChunkTable::kMintWeight).freed);
    CHECK(throws<UsageError>([&] { owner.give_back(id, ChunkTable::kMintWeight + 1); }));
    CHECK(owner.contains(id));  // the refused give-back changed nothing
    CHECK(
        !owner.give_back(id, ChunkTable::kMintWeight - 5).freed);  // passed on, given back in parts
    auto back = owner.give_back(id, 5);
    CHECK(back.freed && back.weight == 0);
    CHECK(!owner.contains(id));

    // All weight back while the owner still holds a handle: kept for it.
    ChunkId held = owner.new_id();
    owner.create(held, 0);
    owner.hold(held);
    CHECK(!owner.give_back(held, owner.lend(held).weight).freed);
    CHECK(owner.contains(held));
    CHECK(owner.release(held).freed);

    // A give-back overtaking the create: a placeholder, completed by create().
    ChunkTable b(2);
    ChunkId minted = ChunkTable(0).new_id();  // a driver on rank 0 chose rank 2
    CHECK(!b.give_back(minted, 600).freed);
    CHECK(!b.contains(minted) && b.size() == 0 && b.stats().placeholders == 1);
    CHECK(throws<UsageError>([&] { b.create(minted, 599); }));  // more back than lent
    CHECK(!b.contains(minted));
    CHECK(throws<UnknownChunk>([&] { b.hold(minted); }));
    b.create(minted, 1000);
    CHECK(b.contains(minted) && b.size() == 1);
    CHECK(b.stats().placeholders == 0 && b.stats().pending == 1);
    CHECK(b.resolve(minted, bytes_value(8)).empty());
    CHECK(b.give_back(minted, 400).freed);  // all 1000 are back, no local handle: freed
    CHECK(!b.contains(minted) && b.stats().chunks == 0);

    // Everything came back before the create: the entry waits for a handle to go.
    ChunkId early = ChunkTable(0).new_id() + 1;
    CHECK(!b.give_back(early, 10).freed);
    b.create(early, 10);
    CHECK(b.contains(early));
    b.hold(early);
    CHECK(b.release(early).freed);

    // A reference held before the create: a placeholder, which the create
    // completes, and which a release leaves waiting for it.
    ChunkId ahead = early + 1;
    CHECK(throws<UnknownChunk>([&] { b.hold(ahead); }));  // only the owner may expect it
    b.hold_owned(ahead);
    CHECK(!b.give_back(ahead, 30).freed);
    CHECK(!b.contains(ahead) && b.stats().placeholders == 1);
    CHECK(throws<UnknownChunk>([&] { b.state(ahead); }));
    CHECK(b.lend(ahead).weight == ChunkTable::kMintWeight);  // passed on before the create
    CHECK(!b.give_back(ahead, ChunkTable::kMintWeight).freed);
    CHECK(!b.release(ahead).freed);
    b.hold_owned(ahead);
    b.create(ahead, 100);
    CHECK(b.contains(ahead) && b.stats().placeholders == 0 &&
          b.state(ahead) == ChunkState::Pending);
    CHECK(!b.give_back(ahead, 70).freed);
    CHECK(b.release(ahead).freed);
    CHECK(throws<UsageError>([&] {
        ChunkTable t(0);
        t.adopt(ahead, 3, 3, 1);
        t.hold_owned(ahead);
    }));
}

static void test_foreign_weights() {
    ChunkTable t(0);
    ChunkId id = (std::uint64_t(5) << kSequenceBits) | 1;
    CHECK(throws<UnknownChunk>([&] { t.lend(id); }));
    t.adopt(id, 5, 5, ChunkTable::kMintWeight);
    t.hold(id);
    t.hold(id);
    CHECK(t.contains(id) && t.stats().foreign == 1);
    CHECK(throws<UnknownChunk>([&] { t.state(id); }));  // the value lives on its owner
    CHECK(throws<UsageError>([&] { t.adopt(id, 4, 4, 10); }));
    CHECK(throws<UsageError>([&] { t.adopt(id, 5, 0, 10); }));  // lent by this rank
    CHECK(throws<UsageError>([&] { t.adopt(id, 5, 5, 0); }));
    CHECK(throws<UsageError>([&] { t.give_back(id, 10); }));  // lent nothing as a proxy
    CHECK(throws<UsageError>([&] { t.create(id, 0); }));

    // Lends are capped, and one refill is asked once the weight runs low.
    std::uint64_t given = 0, lends = 0, refills = 0;
    for (; given < ChunkTable::kMintWeight - ChunkTable::kRefillBelow + 1; ++lends) {
        auto l = t.lend(id);
        CHECK(l.weight == ChunkTable::kLendCap && l.home == 5);
        given += l.weight;
        refills += l.refill;
    }
    CHECK(refills == 1);
    CHECK(!t.lend(id).refill);  // still low, already asked
    given += ChunkTable::kLendCap;
    t.adopt(id, 5, 5, ChunkTable::kMintWeight);  // the owner's answer
    CHECK(!t.release(id).freed);
    auto r = t.release(id);
    CHECK(r.freed && r.home == 5);
    CHECK(r.weight + given == 2 * ChunkTable::kMintWeight);  // no weight lost or made up
    CHECK(!t.contains(id));
    CHECK(throws<UnknownChunk>([&] { t.release(id); }));

    // Low weight asks again after each answer, and halves down to 1.
    t.adopt(id, 5, 5, 8);
    t.hold(id);
    auto first = t.lend(id);
    CHECK(first.weight == 4 && first.refill);
    CHECK(!t.lend(id).refill);
    t.adopt(id, 5, 5, 6);
    auto again = t.lend(id);
    CHECK(again.weight == 4 && again.refill);
    CHECK(t.lend(id).weight == 2 && t.lend(id).weight == 1);
    CHECK(t.release(id).weight == 1);

    // At the owner, weight lent by a proxy goes back to the proxy.
    ChunkTable owner(5);
    ChunkId mine = owner.new_id();
    owner.create(mine, 0);
    auto returned = owner.adopt(mine, 5, 2, 10);
    CHECK(!returned.freed && returned.home == 2 && returned.weight == 10);
    CHECK(throws<UsageError>([&] { owner.adopt(mine, 5, 5, 10); }));  // its own: give_back()
}

// Weight down to 1: a foreign entry lends weight of its own, which comes back
// to it, and it owes its home its 1 until all of it is back.
static void test_proxy_weights() {
    ChunkId id = (std::uint64_t(5) << kSequenceBits) | 1;
    ChunkTable proxy(0);
    proxy.adopt(id, 5, 5, 1);
    proxy.hold(id);
    auto lent = proxy.lend(id);
    CHECK(lent.weight == ChunkTable::kLendCap && lent.home == 0 && lent.refill);
    CHECK(proxy.lend(id).home == 0);  // and so on: it never runs out

    // A proxied copy passed on by another rank splits the proxy's weight,
    // down to 1 and then proxies in turn: chains of any length.
    ChunkTable next(1);
    next.adopt(id, 5, 0, 2);
    next.hold(id);
    CHECK(next.lend(id).home == 0 && next.lend(id).home == 1);

    // The proxy's last handle goes while copies are out: the entry stays.
    CHECK(!proxy.release(id).freed);
    CHECK(proxy.contains(id) && proxy.stats().foreign == 1);
    CHECK(throws<UsageError>([&] { proxy.give_back(id, 2 * ChunkTable::kLendCap + 1); }));
    CHECK(!proxy.give_back(id, ChunkTable::kLendCap).freed);
    auto home = proxy.give_back(id, ChunkTable::kLendCap);
    CHECK(home.freed && home.home == 5 && home.weight == 1);  // its own weight goes to the owner
    CHECK(!proxy.contains(id));

    // Weights of two homes are not mixed: another proxy's goes back, the
    // owner's replaces the proxy's (which goes back).
    auto other = next.adopt(id, 5, 3, 7);
    CHECK(!other.freed && other.home == 3 && other.weight == 7);
    auto replaced = next.adopt(id, 5, 5, 100);
    CHECK(replaced.home == 0 && replaced.weight == 1);
    CHECK(next.lend(id).home == 5);  // owner's weight again: split, not proxied
    auto last = next.release(id);
    CHECK(!last.freed);  // still owes the copy it lent as a proxy
    last = next.give_back(id, ChunkTable::kLendCap);
    CHECK(last.freed && last.home == 5 && last.weight == 50);
}

int main() {
    test_align();
    test_ids_and_states();
    test_owner_weights();
    test_foreign_weights();
    test_proxy_weights();
    std::printf("%s: %d failed checks\n", failures ? "FAIL" : "OK", failures);
    return failures ? 1 : 0;
}
