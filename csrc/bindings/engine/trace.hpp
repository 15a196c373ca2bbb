// conveyor._core.engine.Engine's trace log: what a traced messenger
// (Messenger(trace=...)) records per message, in C++ because the message
// rate leaves no room for Python code per send and per delivery.
#pragma once

#include <pybind11/pybind11.h>

#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace conveyor {

namespace py = pybind11;

// One send or one dispatched message: 32 bytes, its tag an index into the
// log's table of tags (a tag repeats across millions of messages).
struct TraceEntry {
    std::uint64_t start;  // ticks (see TraceLog::ticks)
    std::uint64_t end;    // = start for a send
    std::uint64_t bytes;  // the frame and its out-of-band data
    std::int32_t peer;    // destination of a send, source of a delivery
    std::uint16_t tag;
    std::uint8_t kind;  // the frame kind; 0 for a frame rejected whole
    bool sent;
};

// The entries of one engine, up to a capacity (then counted as dropped): a
// trace must not grow a long run's memory without bound.
//
// Its budget is some 15% of a message's cost, about 30 ns at 4.7 M messages
// a second: each entry reads the clock once (a dispatch starts where the
// previous one in the same serve ended), and the clock is the CPU's tick
// counter, 16-19 ns on the development machine (a virtual one) against
// 36-50 for CLOCK_MONOTONIC.
// Ticks become CLOCK_MONOTONIC nanoseconds when read, by the line through
// the (ticks, ns) pairs taken when the log started and when it is read.
// Entries go into blocks of kBlock, never moved: a vector that doubled
// copied every entry again and touched fresh pages each time (measured
// here: 179 ns an entry, against some 20 in blocks).
class TraceLog {
  public:
    explicit TraceLog(std::size_t capacity)
        : capacity_(capacity), start_ticks_(ticks()), start_ns_(monotonic_ns()) {}

    // The clock Python reads as time.monotonic_ns(): the façade's own spans
    // (waits, waves) share it.
    static std::int64_t monotonic_ns() {
        timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
    }

    // The invariant time-stamp counter where there is one (every x86-64 CPU
    // of this century: constant rate, synchronised across cores), else
    // CLOCK_MONOTONIC itself.
    static std::uint64_t ticks() {
#if defined(__x86_64__) || defined(__i386__)
        return __rdtsc();
#else
        return static_cast<std::uint64_t>(monotonic_ns());
#endif
    }

    void sent(int kind, int dest, std::string_view tag, std::uint64_t bytes) {
        auto t = ticks();
        add({t, t, bytes, dest, static_cast<std::uint16_t>(sent_tag(tag)),
             static_cast<std::uint8_t>(kind), true});
    }

    // A dispatch that began at `start` (ticks) ends now; returns now.
    std::uint64_t dispatched(int kind, int source, py::handle tag, std::uint64_t bytes,
                             std::uint64_t start) {
        auto end = ticks();
        add({start, end, bytes, source, static_cast<std::uint16_t>(delivered_tag(tag)),
             static_cast<std::uint8_t>(kind), false});
        return end;
    }

    // Entries [start, start + count) as tuples (sent, kind, peer, tag,
    // start_ns, end_ns, bytes); read a slice at a time, a long trace is
    // written without all of it as Python objects at once.
    py::list read(std::size_t start, std::size_t count) const {
        py::list out;
        std::vector<py::object> tags(tags_.size());
        double scale = ns_per_tick();
        for (std::size_t i = start; i < size_ && i < start + count; ++i) {
            const auto& e = blocks_[i / kBlock][i % kBlock];
            auto& tag = tags[e.tag];
            if (!tag) {
                const auto& t = tags_[e.tag];
                tag = py::reinterpret_steal<py::object>(
                    PyUnicode_DecodeUTF8(t.data(), static_cast<Py_ssize_t>(t.size()), "replace"));
                if (!tag) throw py::error_already_set();
            }
            out.append(py::make_tuple(e.sent, e.kind, e.peer, tag, to_ns(e.start, scale),
                                      to_ns(e.end, scale), e.bytes));
        }
        return out;
    }

    std::size_t size() const { return size_; }
    std::uint64_t dropped() const { return dropped_; }

  private:
    double ns_per_tick() const {
        auto ticks_now = ticks();
        auto ns_now = monotonic_ns();
        if (ticks_now <= start_ticks_) return 1.0;
        return static_cast<double>(ns_now - start_ns_) /
               static_cast<double>(ticks_now - start_ticks_);
    }
    std::int64_t to_ns(std::uint64_t t, double scale) const {
        return start_ns_ +
               static_cast<std::int64_t>(
                   scale * static_cast<double>(static_cast<std::int64_t>(t - start_ticks_)));
    }

    std::uint32_t sent_tag(std::string_view tag) {
        // The tag of the previous send first: a stream repeats one tag.
        if (last_sent_ < tags_.size() && tags_[last_sent_] == tag) return last_sent_;
        return last_sent_ = tag_index(tag);
    }

    // Delivered tags are str objects that repeat (PyEngine keeps them): the
    // previous one is known by identity, held so that its address cannot
    // be another tag's later.
    std::uint32_t delivered_tag(py::handle tag) {
        if (tag.ptr() == last_delivered_.ptr()) return last_delivered_index_;
        Py_ssize_t size = 0;
        const char* text =
            tag && PyUnicode_Check(tag.ptr()) ? PyUnicode_AsUTF8AndSize(tag.ptr(), &size) : nullptr;
        if (!text) PyErr_Clear();
        std::string_view name = text ? std::string_view(text, static_cast<std::size_t>(size)) : "";
        last_delivered_ = py::reinterpret_borrow<py::object>(tag);
        return last_delivered_index_ = tag_index(name);
    }

    void add(const TraceEntry& e) {
        if (size_ >= capacity_) {
            ++dropped_;
            return;
        }
        // Left uninitialised: each entry is written before it is read.
        if (size_ % kBlock == 0) blocks_.emplace_back(new TraceEntry[kBlock]);
        blocks_.back()[size_ % kBlock] = e;
        ++size_;
    }

    std::uint32_t tag_index(std::string_view tag) {
        auto it = index_.find(std::string(tag));
        if (it == index_.end()) {
            // Tags come off the wire: past a bound, new ones share one name
            // rather than grow the table without end.
            if (tags_.size() >= kMaxTags) return other_tags();
            it = index_.emplace(std::string(tag), static_cast<std::uint32_t>(tags_.size())).first;
            tags_.emplace_back(tag);
        }
        return it->second;
    }

    std::uint32_t other_tags() {
        if (other_ == kNone) {
            other_ = static_cast<std::uint32_t>(tags_.size());
            tags_.emplace_back("(other tags)");
        }
        return other_;
    }

    static constexpr std::size_t kMaxTags = 4096;  // indexes fit TraceEntry::tag
    static constexpr std::uint32_t kNone = 0xffffffffu;

    std::size_t capacity_;
    std::uint64_t dropped_ = 0;
    static constexpr std::size_t kBlock = 65536;  // 2 MiB
    std::vector<std::unique_ptr<TraceEntry[]>> blocks_;
    std::size_t size_ = 0;
    std::vector<std::string> tags_;
    std::unordered_map<std::string, std::uint32_t> index_;
    std::uint32_t last_sent_ = kNone;
    py::object last_delivered_;
    std::uint32_t last_delivered_index_ = 0;
    std::uint64_t start_ticks_;
    std::int64_t start_ns_;
    std::uint32_t other_ = kNone;
};

}  // namespace conveyor
