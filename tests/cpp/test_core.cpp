// Unit tests of the native core without Python: the wire format, routing,
// and the engine over real MPI. Run under mpiexec at any rank count.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "conveyor/engine/engine.hpp"
#include "conveyor/routing/route.hpp"
#include "conveyor/wire/wire.hpp"

using namespace conveyor;

static std::vector<std::uint8_t> sample_frame() {
    Writer w;
    write_header(w, FrameKind::Request, 42, "kmers", {5, 1u << 20});
    w.u8(0);  // a one-byte body
    return w.bytes;
}

static void test_wire() {
    auto frame = sample_frame();
    auto h = read_header(frame.data(), frame.size());
    CHECK(h.kind == FrameKind::Request);
    CHECK(h.ref == 42 && h.tag == "kmers");
    CHECK(h.oob.size() == 2 && h.oob[0] == 5 && h.oob[1] == (1u << 20));
    CHECK(h.body_offset == frame.size() - 1);
    // The offsets and the stamp end a header that announces buffers: left 0
    // for the engine.
    CHECK(h.oob_offsets.size() == 2 && h.oob_offsets[0] == 0 && h.oob_offsets[1] == 0);
    CHECK(h.stamp == 0 && h.body_offset == 4 + 8 + 8 + 5 + 4 + 2 * (8 + 1) + kStampBytes);
    CHECK(stamp_offset(frame.data(), 2) == h.body_offset - kStampBytes);
    auto offsets = frame.data() + stamp_offset(frame.data(), 2) - 2;
    offsets[1] = kLineBytes - 1;
    CHECK(read_header(frame.data(), frame.size()).oob_offsets[1] == kLineBytes - 1);
    offsets[1] = kLineBytes;  // past a line: a forged or corrupt header
    CHECK(throws<DecodeError>([&] { read_header(frame.data(), frame.size()); }));
    frame = sample_frame();

    // Every truncation of the header is an error, never an out-of-bounds read.
    for (std::size_t n = 0; n < h.body_offset; ++n)
        CHECK(throws<DecodeError>([&] { read_header(frame.data(), n); }));

    auto bad = frame;
    bad[0] ^= 1;
    CHECK(throws<DecodeError>([&] { read_header(bad.data(), bad.size()); }));  // magic
    bad = frame;
    bad[2] = 99;
    CHECK(throws<DecodeError>([&] { read_header(bad.data(), bad.size()); }));  // version
    bad = frame;
    bad[3] = 77;
    CHECK(throws<DecodeError>([&] { read_header(bad.data(), bad.size()); }));  // kind

    // A huge announced out-of-band count is refused before allocating.
    Writer w;
    write_header(w, FrameKind::Send, 0, "t", {});
    auto huge = w.bytes;
    std::uint32_t n = 0xFFFFFFFFu;
    std::memcpy(huge.data() + huge.size() - 4, &n, 4);
    CHECK(throws<DecodeError>([&] { read_header(huge.data(), huge.size()); }));

    Writer counts;
    counts.u64(1ull << 60);
    Reader r(counts.bytes.data(), counts.bytes.size());
    CHECK(throws<DecodeError>([&] { r.count(1); }));
}

// A Relayed frame's entries: a message in short form and a fence entry read
// back, the message rebuilt to the very frame it was; every truncation is an
// error, never an out-of-bounds read.
static void test_relay_entries() {
    Writer full;
    write_header(full, FrameKind::Request, 300, "kmers", {});
    full.u8(0);  // a one-byte body
    auto message = SmallFrame::read_full(full.bytes.data(), full.size());
    CHECK(message.full_bytes() == full.size());
    Writer in_short;
    message.write_short(in_short);
    CHECK(in_short.size() == 1 + 2 + 1 + 5 + 1);  // kind, ref 300, tag size, tag, body
    RelayEntry sent;
    sent.origin = 3;
    sent.dest = 5000;
    sent.frame = in_short.bytes.data();
    sent.size = in_short.size();
    RelayEntry fence;
    fence.origin = 3;
    fence.dest = 6;
    fence.fence = true;
    fence.count = 41;
    Writer w;
    sent.write(w);
    fence.write(w);
    CHECK(w.size() == sent.bytes() + fence.bytes());
    RelayReader reader(w.bytes.data(), w.size(), 2);
    RelayEntry e;
    CHECK(reader.next(e) && !e.fence && e.origin == 3 && e.dest == 5000);
    CHECK(e.size == in_short.size() && e.bytes() == sent.bytes());
    Writer rebuilt;
    SmallFrame::read_short(e.frame, e.size).write_full(rebuilt);
    CHECK(rebuilt.bytes == full.bytes);
    CHECK(reader.next(e) && e.fence && e.origin == 3 && e.dest == 6 && e.count == 41);
    CHECK(!reader.next(e) && reader.trailing() == 0);
    for (std::size_t n = 0; n < w.size(); ++n) {
        RelayReader cut(w.bytes.data(), n, 2);
        CHECK(throws<DecodeError>([&] {
            RelayEntry x;
            while (cut.next(x)) {
            }
        }));
    }
    // A count beyond the entries: the reader stops at the end, with an error.
    RelayReader more(w.bytes.data(), w.size(), 3);
    CHECK(throws<DecodeError>([&] {
        RelayEntry x;
        while (more.next(x)) {
        }
    }));
    // Short forms that say too much: a tag past the end, a kind that carries
    // no message, a varint without end; and a full frame with buffers.
    for (std::size_t n = 0; n < in_short.size() - 1; ++n)  // all but the body
        CHECK(throws<DecodeError>([&] { SmallFrame::read_short(in_short.bytes.data(), n); }));
    auto credit = in_short.bytes;
    credit[0] = static_cast<std::uint8_t>(FrameKind::Credit);
    CHECK(throws<DecodeError>([&] { SmallFrame::read_short(credit.data(), credit.size()); }));
    std::vector<std::uint8_t> endless(11, 0xFF);
    Reader endless_reader(endless.data(), endless.size());
    CHECK(throws<DecodeError>([&] { endless_reader.varint(); }));
    auto with_buffers = sample_frame();
    CHECK(throws<DecodeError>(
        [&] { SmallFrame::read_full(with_buffers.data(), with_buffers.size()); }));
}

// Relayed entries mangled at random (bytes changed, cut short): reading
// every entry and rebuilding every message either works or throws
// DecodeError, reading nothing past the buffer (this test under ASan: no
// report; its buffers are copied to their exact size for that).
static void test_relay_entries_mangled() {
    Writer body;
    for (std::uint32_t i = 0; i < 8; ++i) {
        Writer full;
        write_header(full, FrameKind::Send, i, "tag", {});
        full.raw("payload", 1 + i % 7);
        auto message = SmallFrame::read_full(full.bytes.data(), full.size());
        Writer in_short;
        message.write_short(in_short);
        RelayEntry e;
        e.origin = i;
        e.dest = 300 + i;
        e.fence = i % 3 == 0;
        e.count = std::uint64_t(1) << (7 * i);
        e.frame = in_short.bytes.data();
        e.size = in_short.size();
        e.write(body);
    }
    std::mt19937 random(2026);
    std::size_t failed = 0;
    for (int round = 0; round < 20000; ++round) {
        auto bytes = body.bytes;
        for (int n = 1 + static_cast<int>(random() % 4); n > 0; --n)
            bytes[random() % bytes.size()] = static_cast<std::uint8_t>(random());
        bytes.resize(random() % 4 == 0 ? random() % bytes.size() : bytes.size());
        std::vector<std::uint8_t> exact(bytes.begin(), bytes.end());
        try {
            RelayReader reader(exact.data(), exact.size(), 8);
            RelayEntry e;
            while (reader.next(e)) {
                if (e.fence) continue;
                Writer rebuilt;
                SmallFrame::read_short(e.frame, e.size).write_full(rebuilt);
                CHECK(read_header(rebuilt.bytes.data(), rebuilt.size()).oob.empty());
            }
        } catch (const DecodeError&) {
            failed += 1;
        }
    }
    CHECK(failed > 0 && failed < 20000);  // both outcomes were reached
}

// Both passes of routing, as send_many makes them: the rows move only when
// they go to more than one rank.
template <class Dest>
static int grouped_by_rank(const Dest* dests, std::size_t n, const std::uint8_t* rows,
                           std::size_t row_bytes, int nranks, std::uint8_t* out,
                           std::uint64_t* offsets) {
    int only = count_rows(dests, n, nranks, offsets);
    if (only < 0) group_rows(dests, n, rows, row_bytes, offsets, nranks, out);
    return only;
}

static void test_route() {
    std::vector<std::int64_t> dests = {2, 0, 2, 1, 0, 2};
    std::vector<std::uint32_t> rows = {10, 11, 12, 13, 14, 15};
    std::vector<std::uint32_t> out(rows.size());
    std::vector<std::uint64_t> offsets(4);
    CHECK(grouped_by_rank(dests.data(), dests.size(),
                          reinterpret_cast<const std::uint8_t*>(rows.data()), 4, 3,
                          reinterpret_cast<std::uint8_t*>(out.data()), offsets.data()) == -1);
    CHECK((offsets == std::vector<std::uint64_t>{0, 2, 3, 6}));
    CHECK((out == std::vector<std::uint32_t>{11, 14, 13, 10, 12, 15}));  // stable per rank

    // Rows of an odd size take the generic copy; narrower destination types work too.
    std::vector<std::int32_t> narrow = {1, 0, 1};
    const char wide[] =
        "aaa"
        "bbb"
        "ccc";
    char grouped[9] = {};
    std::vector<std::uint64_t> two(3);
    CHECK(grouped_by_rank(narrow.data(), 3, reinterpret_cast<const std::uint8_t*>(wide), 3, 2,
                          reinterpret_cast<std::uint8_t*>(grouped), two.data()) == -1);
    CHECK(std::string(grouped, 9) == "bbbaaaccc");
    CHECK((two == std::vector<std::uint64_t>{0, 1, 3}));

    // Every row to one rank: reported, and nothing to copy.
    std::vector<std::uint16_t> same = {1, 1, 1};
    CHECK(grouped_by_rank(same.data(), 3, reinterpret_cast<const std::uint8_t*>(wide), 3, 2,
                          reinterpret_cast<std::uint8_t*>(grouped), two.data()) == 1);
    CHECK((two == std::vector<std::uint64_t>{0, 0, 3}));
    // ...but only to a rank of the job.
    for (std::int16_t bad : {std::int16_t(2), std::int16_t(-1)}) {
        std::vector<std::int16_t> all_bad(3, bad);
        CHECK(throws<UsageError>([&] {
            grouped_by_rank(all_bad.data(), 3, reinterpret_cast<const std::uint8_t*>(wide), 3, 2,
                            reinterpret_cast<std::uint8_t*>(grouped), two.data());
        }));
    }

    // Many rows, runs of one rank among them: a stable sort by rank.
    std::vector<std::uint8_t> many;
    std::vector<std::uint64_t> values;
    for (std::uint64_t i = 0; i < 1003; ++i) {
        many.push_back(static_cast<std::uint8_t>(i < 500 ? 3 : (i * 7919) % 5));
        values.push_back(i);
    }
    std::vector<std::uint64_t> sorted(values.size()), five(6);
    CHECK(grouped_by_rank(many.data(), many.size(),
                          reinterpret_cast<const std::uint8_t*>(values.data()), 8, 5,
                          reinterpret_cast<std::uint8_t*>(sorted.data()), five.data()) == -1);
    std::vector<std::uint64_t> expected;
    for (std::uint8_t r = 0; r < 5; ++r) {
        CHECK(five[r] == expected.size());
        for (std::uint64_t i = 0; i < many.size(); ++i)
            if (many[i] == r) expected.push_back(i);
    }
    CHECK(five[5] == expected.size() && sorted == expected);

    dests[4] = 3;
    bool refused = false;
    try {
        grouped_by_rank(dests.data(), dests.size(),
                        reinterpret_cast<const std::uint8_t*>(rows.data()), 4, 3,
                        reinterpret_cast<std::uint8_t*>(out.data()), offsets.data());
    } catch (const UsageError& e) {
        refused = std::string(e.what()).find("index 4") != std::string::npos;
    }
    CHECK(refused);
}

// Every rank sends every rank (itself included) small frames and large
// out-of-band buffers cut into many pieces; each source's messages must arrive
// whole and in order, and the quiescence wave must balance.
static void test_engine() {
    EngineOptions options;
    options.piece_bytes = 4099;
    Engine engine(MPI_COMM_WORLD, options);
    const int size = engine.size(), rank = engine.rank();
    const int per_dest = 6;
    std::vector<std::vector<std::int32_t>> payloads;
    for (int i = 0; i < per_dest; ++i) {
        std::vector<std::int32_t> p(i % 2 ? 50000 : 0);
        std::iota(p.begin(), p.end(), rank * 1000 + i);
        payloads.push_back(std::move(p));
    }
    for (int dest = 0; dest < size; ++dest) {
        for (int i = 0; i < per_dest; ++i) {
            Writer w;
            const auto& p = payloads[i];
            std::vector<std::uint64_t> sizes;
            if (!p.empty()) sizes.push_back(p.size() * sizeof(std::int32_t));
            write_header(w, FrameKind::Send, static_cast<std::uint64_t>(i), "t", sizes);
            std::vector<OutOfBand> oob;
            if (!p.empty()) oob.push_back({p.data(), p.size() * sizeof(std::int32_t)});
            engine.post(dest, std::move(w.bytes), oob, nullptr);
        }
    }
    std::vector<int> next(size, 0);
    int received = 0;
    while (received < per_dest * size) {
        CHECK(engine.wait(30.0));
        while (auto in = engine.pop()) {
            CHECK(in->malformed.empty());
            CHECK(static_cast<int>(in->header.ref) == next[in->source]);
            int i = next[in->source]++;
            if (i % 2) {
                CHECK(in->oob.size() == 1);
                auto data = reinterpret_cast<const std::int32_t*>(in->oob[0]->data());
                CHECK(data[0] == in->source * 1000 + i &&
                      data[49999] == in->source * 1000 + i + 49999);
            }
            engine.mark_finished(1, 1);
            ++received;
        }
    }
    // Two balanced waves in a row: the job is quiet.
    for (int wave = 0; wave < 2; ++wave) {
        engine.start_wave();
        while (!engine.wave_done()) engine.wait(1.0);
        CHECK(engine.wave_posted() == std::uint64_t(size) * size * per_dest);
        CHECK(engine.wave_finished() == engine.wave_posted());
    }
    CHECK(engine.flush_sends(30.0));
    CHECK(engine.stats().bytes_zero_copy_received == std::uint64_t(size) * 3 * 50000 * 4);

    CHECK(throws<UsageError>([&] { engine.post(size, {}, {}, nullptr); }));
}

// Freed buffers from 1 MiB on are kept for reuse by size, the one freed
// last first; a full cache drops the ones freed longest ago, so buffers of a
// new size get cached.
static void test_buffer_cache() {
    constexpr std::size_t MiB = std::size_t(1) << 20;
    Buffer::set_cache_limit(0);
    Buffer::set_cache_limit(8 * MiB);
    std::vector<std::uint8_t*> small;
    {
        std::vector<std::unique_ptr<Buffer>> held;
        for (int k = 0; k < 4; ++k) held.push_back(std::make_unique<Buffer>(2 * MiB));
        for (auto& b : held) small.push_back(b->data());
    }  // freed in order: the cache holds all four
    CHECK(Buffer::cached_bytes() == 8 * MiB);
    std::uint8_t* large = nullptr;
    {
        Buffer b(4 * MiB);
        large = b.data();
    }  // room made by dropping the two oldest 2 MiB buffers
    CHECK(Buffer::cached_bytes() == 8 * MiB);
    Buffer reused(4 * MiB);
    CHECK(reused.data() == large);
    Buffer newest(2 * MiB);
    CHECK(newest.data() == small[3]);
    Buffer older(2 * MiB);
    CHECK(older.data() == small[2]);
    {
        Buffer too_large(16 * MiB);
    }  // over the limit: never cached, nothing dropped for it
    CHECK(Buffer::cached_bytes() == 0);
    Buffer::set_cache_limit(0);
    CHECK(Buffer::cached_bytes() == 0);
}

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    test_wire();
    test_relay_entries();
    test_relay_entries_mangled();
    test_route();
    test_buffer_cache();
    test_engine();
    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) std::printf("%s: %d failed checks\n", all ? "FAIL" : "OK", all);
    MPI_Finalize();
    return all ? 1 : 0;
}
