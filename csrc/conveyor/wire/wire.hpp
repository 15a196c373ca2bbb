// The frame format: what one conveyor message looks like on the wire.
//
// A frame is a small header, the sizes and offsets of its out-of-band
// buffers, then a body. Out-of-band buffers (large arrays) never enter the
// frame: they travel as separate MPI messages straight from the sender's
// memory into memory that the receiver hands to the user. Everything read
// from a frame is bounds-checked: a malformed or truncated frame is a
// DecodeError, never an out-of-bounds read.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/common/errors.hpp"

namespace conveyor {

constexpr std::uint16_t kFrameMagic = 0xC0FE;
constexpr std::uint8_t kFrameVersion = 2;

// The largest number of out-of-band buffers one frame may announce; a frame
// announcing more is malformed (it would make the receiver allocate blindly).
constexpr std::uint32_t kMaxOutOfBand = 1u << 16;

// A frame announces each out-of-band buffer with its size and its offset: the
// sender's address modulo this line. The receiver places the buffer at the
// same offset, since the copy between two processes of a host (MPI's shared
// memory, CMA or XPMEM) runs at full speed only when source and destination
// lie at the same place in a cache line: 14 GB/s there, 3 to 9 GB/s at other
// offsets on the machines of bench/README.md.
constexpr std::size_t kLineBytes = 64;
constexpr std::size_t kAnnouncedBytes = 8 + 1;  // a buffer's size and offset

// What a frame asks the receiving rank to do.
enum class FrameKind : std::uint8_t {
    Send = 1,     // deliver payload to the receiver registered under `tag`
    Request = 2,  // same, and answer the sender with a Reply carrying `ref`
    Reply = 3,    // resolves the requester's future `ref` with the payload
    Error = 4,    // resolves the requester's future `ref` with an error
    Batch = 5,    // `ref` small frames to one rank, aggregated: see BatchReader
    Credit = 6,   // flow control: the receiver consumed `ref` more bytes of ours (stamped)
    Answer = 7,   // one answer to request `ref`, with more to come (a stream)
    Relayed = 8,  // `ref` small frames from and to any ranks, relayed (stamped): see RelayReader
    Fence = 9,    // the frames behind it wait for `ref` relayed messages of their source (stamped)
};

inline bool valid_kind(std::uint8_t k) { return k >= 1 && k <= 9; }
// The kinds that carry a message for the façade (a batch carries only these).
inline bool valid_message_kind(FrameKind k) {
    return (k >= FrameKind::Send && k <= FrameKind::Error) || k == FrameKind::Answer;
}
// The kinds that answer a request of this rank's.
inline bool is_answer(FrameKind k) {
    return k == FrameKind::Reply || k == FrameKind::Answer || k == FrameKind::Error;
}

// Appends little-endian scalars and byte runs to a growable buffer.
class Writer {
  public:
    std::vector<std::uint8_t> bytes;

    void u8(std::uint8_t v) { bytes.push_back(v); }
    void u32(std::uint32_t v) { raw(&v, sizeof v); }
    void u64(std::uint64_t v) { raw(&v, sizeof v); }
    void i64(std::int64_t v) { raw(&v, sizeof v); }
    void f64(double v) { raw(&v, sizeof v); }
    void raw(const void* data, std::size_t n) {
        // resize + memcpy: vector::insert's generic path costs more for the
        // few bytes most calls write.
        std::size_t at = bytes.size();
        bytes.resize(at + n);
        if (n) std::memcpy(bytes.data() + at, data, n);
    }
    // An unsigned LEB128 integer: 7 bits a byte, low bits first.
    void varint(std::uint64_t v) {
        while (v >= 0x80) {
            bytes.push_back(static_cast<std::uint8_t>(v) | 0x80);
            v >>= 7;
        }
        bytes.push_back(static_cast<std::uint8_t>(v));
    }
    // A length-prefixed byte string.
    void blob(std::string_view s) {
        u64(s.size());
        raw(s.data(), s.size());
    }
    std::size_t size() const { return bytes.size(); }
};

// How many bytes Writer::varint writes for `v`.
inline std::size_t varint_bytes(std::uint64_t v) {
    std::size_t n = 1;
    for (; v >= 0x80; v >>= 7) ++n;
    return n;
}

// Reads what Writer wrote, refusing to step past the end.
class Reader {
  public:
    Reader(const std::uint8_t* data, std::size_t size) : p_(data), end_(data + size) {}

    std::size_t remaining() const { return static_cast<std::size_t>(end_ - p_); }
    const std::uint8_t* position() const { return p_; }

    std::uint8_t u8() { return scalar<std::uint8_t>(); }
    std::uint32_t u32() { return scalar<std::uint32_t>(); }
    std::uint64_t u64() { return scalar<std::uint64_t>(); }
    std::int64_t i64() { return scalar<std::int64_t>(); }
    double f64() { return scalar<double>(); }
    std::uint64_t varint() {
        std::uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            const std::uint8_t b = u8();
            v |= std::uint64_t(b & 0x7F) << shift;
            if (!(b & 0x80)) return v;
        }
        throw DecodeError("corrupt frame: a variable-length integer longer than 10 bytes");
    }

    // Returns a pointer to the next n bytes and steps over them.
    const std::uint8_t* take(std::uint64_t n) {
        if (n > remaining()) truncated(n);
        auto at = p_;
        p_ += n;
        return at;
    }
    std::string_view blob() {
        auto n = u64();
        auto at = take(n);
        return {reinterpret_cast<const char*>(at), static_cast<std::size_t>(n)};
    }
    // A count of items that each take at least `min_item_bytes` bytes: bounded
    // by what is left, so a corrupted count cannot make us allocate gigabytes.
    std::uint64_t count(std::size_t min_item_bytes) {
        auto n = u64();
        if (min_item_bytes && n > remaining() / min_item_bytes)
            throw DecodeError("corrupt frame: item count " + std::to_string(n) +
                              " exceeds what the frame holds");
        return n;
    }

  private:
    // Out of line and cold: with the message built here, take() would be
    // too large to inline, and every field read would pay a call.
    [[noreturn, gnu::noinline, gnu::cold]] void truncated(std::uint64_t n) const {
        throw DecodeError("truncated frame: " + std::to_string(n) + " bytes announced, " +
                          std::to_string(remaining()) + " left");
    }
    template <class T>
    T scalar() {
        T v;
        std::memcpy(&v, take(sizeof v), sizeof v);
        return v;
    }
    const std::uint8_t* p_;
    const std::uint8_t* end_;
};

// The part of a frame the engine reads before anything is delivered.
struct FrameHeader {
    FrameKind kind = FrameKind::Send;
    std::uint64_t ref = 0;                  // request id (Request/Reply/Error), else 0
    std::string tag;                        // receiver name (Send/Request)
    std::vector<std::uint64_t> oob;         // sizes of the out-of-band buffers, in order
    std::vector<std::uint8_t> oob_offsets;  // and their offsets (see kLineBytes)
    std::uint64_t stamp = 0;                // with out-of-band buffers: see kStampBytes
    std::size_t body_offset = 0;            // where the encoded payload starts
};

// A frame that announces out-of-band buffers ends its header with their
// offsets and a stamp: 8 bytes that the sending engine fills in as it posts
// the frame, as it does the offsets, and that the receiving engine checks
// before it posts receives for the data (see Engine::stamp). The encoder
// leaves both 0.
constexpr std::size_t kStampBytes = 8;

inline void write_header(Writer& w, FrameKind kind, std::uint64_t ref, std::string_view tag,
                         const std::vector<std::uint64_t>& oob) {
    w.u32(kFrameMagic | (std::uint32_t(kFrameVersion) << 16) | (std::uint32_t(kind) << 24));
    w.u64(ref);
    w.blob(tag);
    w.u32(static_cast<std::uint32_t>(oob.size()));
    for (auto n : oob) w.u64(n);
    for (std::size_t i = 0; i < oob.size(); ++i) w.u8(0);  // the offsets
    if (!oob.empty()) w.u64(0);                            // the stamp
}

// Where the stamp lies in a frame that write_header (or the encoder) wrote
// with `buffers` out-of-band buffers (their offsets are the `buffers` bytes
// before it): found without reading the header into a FrameHeader (no
// allocation on a large message's path), for the sending engine, which
// stamps only frames it was handed by the encoder.
inline std::size_t stamp_offset(const std::uint8_t* frame, std::size_t buffers) {
    std::uint64_t tag_bytes;
    std::memcpy(&tag_bytes, frame + 4 + 8, sizeof tag_bytes);
    return 4 + 8 + 8 + static_cast<std::size_t>(tag_bytes) + 4 + kAnnouncedBytes * buffers;
}

// The header of a frame without tag or out-of-band buffers (Batch, Credit).
constexpr std::size_t kBareHeaderBytes = 4 + 8 + 8 + 4;

// Walks the body of a Batch frame: `count` entries of [u32 size][frame].
// Entries are read one at a time, so a corrupt entry loses only the rest.
class BatchReader {
  public:
    BatchReader(const std::uint8_t* body, std::size_t size, std::uint64_t count)
        : reader_(body, size), left_(count) {}

    std::uint64_t left() const { return left_; }
    // The next entry, or false once `count` entries were read. Throws
    // DecodeError if the entry runs past the batch.
    bool next(const std::uint8_t*& frame, std::size_t& size) {
        if (left_ == 0) return false;
        --left_;
        size = reader_.u32();
        frame = reader_.take(size);
        return true;
    }
    // Trailing bytes after the last entry make the batch malformed.
    std::size_t trailing() const { return reader_.remaining(); }

  private:
    Reader reader_;
    std::uint64_t left_;
};

// A message frame without out-of-band buffers, read in place: what a
// relayed entry carries of it.
struct SmallFrame {
    FrameKind kind = FrameKind::Send;
    std::uint64_t ref = 0;
    std::string_view tag;
    const std::uint8_t* body = nullptr;
    std::size_t body_size = 0;

    // The frame in full (write_header then the body) and in short: a
    // relayed entry drops the magic, the version and the fixed-width fields,
    // which the Relayed frame around it makes redundant. In short, an 8-byte
    // integer to tag "item" takes 16 bytes, against 37 in full: relaying moves
    // each message over some 2 hops on a 2-D grid, and pays for it in bytes.
    std::size_t full_bytes() const { return 4 + 8 + 8 + tag.size() + 4 + body_size; }
    void write_full(Writer& w) const {
        write_header(w, kind, ref, tag, {});
        w.raw(body, body_size);
    }
    // [u8 kind][varint ref][varint tag bytes][tag][body]
    void write_short(Writer& w) const {
        w.u8(static_cast<std::uint8_t>(kind));
        w.varint(ref);
        w.varint(tag.size());
        w.raw(tag.data(), tag.size());
        w.raw(body, body_size);
    }
    static SmallFrame read_full(const std::uint8_t* frame, std::size_t size);
    static SmallFrame read_short(const std::uint8_t* data, std::size_t size) {
        Reader r(data, size);
        SmallFrame f;
        f.kind = checked_kind(r.u8());
        f.ref = r.varint();
        auto n = r.varint();
        f.tag = {reinterpret_cast<const char*>(r.take(n)), static_cast<std::size_t>(n)};
        f.body = r.position();
        f.body_size = r.remaining();
        return f;
    }

  private:
    static FrameKind checked_kind(std::uint8_t k) {
        if (!valid_kind(k) || !valid_message_kind(static_cast<FrameKind>(k)))
            throw DecodeError("a relayed message of kind " + std::to_string(k) +
                              ", which carries no message");
        return static_cast<FrameKind>(k);
    }
};

// Walks the entries of a Relayed frame. An entry is three varints, origin,
// dest and n, then n bytes: the message in short form (SmallFrame); or, where
// n is 0, a fence: a varint count, and the origin's messages to dest that
// follow wait until `count` of its frames posted directly to dest were
// delivered (see relay.cpp).
struct RelayEntry {
    std::uint32_t origin = 0, dest = 0;
    const std::uint8_t* frame = nullptr;  // the message in short form
    std::size_t size = 0;
    bool fence = false;
    std::uint64_t count = 0;  // of a fence entry

    std::size_t bytes() const {
        return varint_bytes(origin) + varint_bytes(dest) +
               (fence ? 1 + varint_bytes(count) : varint_bytes(size) + size);
    }
    void write(Writer& w) const {
        w.varint(origin);
        w.varint(dest);
        w.varint(fence ? 0 : size);
        if (fence)
            w.varint(count);
        else
            w.raw(frame, size);
    }
};

class RelayReader {
  public:
    RelayReader(const std::uint8_t* body, std::size_t size, std::uint64_t count)
        : reader_(body, size), left_(count) {}

    // The next entry, or false once `count` entries were read; DecodeError if
    // it runs past the frame. Origin and destination are the caller's to check.
    bool next(RelayEntry& e) {
        if (left_ == 0) return false;
        --left_;
        e.origin = rank();
        e.dest = rank();
        auto size = reader_.varint();
        e.fence = size == 0;
        if (e.fence) {
            e.count = reader_.varint();
            e.frame = nullptr;
            e.size = 0;
        } else {
            e.size = static_cast<std::size_t>(size);
            e.frame = reader_.take(size);
        }
        return true;
    }
    std::size_t trailing() const { return reader_.remaining(); }

  private:
    std::uint32_t rank() {
        auto r = reader_.varint();
        if (r > 0x7FFFFFFF)
            throw DecodeError("a relayed message names rank " + std::to_string(r) +
                              ", out of range");
        return static_cast<std::uint32_t>(r);
    }
    Reader reader_;
    std::uint64_t left_;
};

// A frame's first word: its magic, version and kind, checked.
inline FrameKind read_kind(Reader& r) {
    auto word = r.u32();
    if ((word & 0xFFFF) != kFrameMagic) throw DecodeError("not a conveyor frame (bad magic)");
    if (((word >> 16) & 0xFF) != kFrameVersion)
        throw DecodeError("unsupported frame version " + std::to_string((word >> 16) & 0xFF));
    auto kind = static_cast<std::uint8_t>(word >> 24);
    if (!valid_kind(kind)) throw DecodeError("unknown frame kind " + std::to_string(kind));
    return static_cast<FrameKind>(kind);
}

inline FrameHeader read_header(const std::uint8_t* data, std::size_t size) {
    Reader r(data, size);
    FrameHeader h;
    h.kind = read_kind(r);
    h.ref = r.u64();
    auto tag = r.blob();
    h.tag.assign(tag.data(), tag.size());
    auto n = r.u32();
    if (n > kMaxOutOfBand || n > r.remaining() / kAnnouncedBytes)
        throw DecodeError("corrupt frame: " + std::to_string(n) + " out-of-band buffers announced");
    h.oob.resize(n);
    for (auto& s : h.oob) s = r.u64();
    h.oob_offsets.resize(n);
    for (auto& offset : h.oob_offsets) {
        offset = r.u8();
        if (offset >= kLineBytes)
            throw DecodeError("corrupt frame: out-of-band buffer offset " + std::to_string(offset) +
                              " is not below " + std::to_string(kLineBytes));
    }
    if (n != 0) h.stamp = r.u64();
    h.body_offset = size - r.remaining();
    return h;
}

inline SmallFrame SmallFrame::read_full(const std::uint8_t* frame, std::size_t size) {
    Reader r(frame, size);
    SmallFrame f;
    f.kind = checked_kind(static_cast<std::uint8_t>(read_kind(r)));
    f.ref = r.u64();
    f.tag = r.blob();
    if (r.u32() != 0) throw DecodeError("a relayed message announces out-of-band buffers");
    f.body = r.position();
    f.body_size = r.remaining();
    return f;
}

}  // namespace conveyor
