// conveyor._core.engine.Engine's trace log: what a traced messenger
// (Messenger(trace=...)) records per message, in C++ because the message
// rate leaves no room for Python code per send and per delivery.
#pragma once

#include <pybind11/pybind11.h>

#include <time.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace conveyor {

namespace py = pybind11;

// One send or one dispatched message: a fixed-size entry, its tag an index
// into the log's table of tags (a tag repeats across millions of messages).
struct TraceEntry {
    std::int64_t start_ns;  // CLOCK_MONOTONIC, as Python's time.monotonic_ns()
    std::int64_t end_ns;    // = start_ns for a send
    std::uint64_t bytes;    // the frame and its out-of-band data
    std::uint32_t tag;
    std::int32_t peer;  // destination of a send, source of a delivery
    std::int32_t kind;  // the frame kind; 0 for a frame rejected whole
    bool sent;
};

// The entries of one engine, up to a capacity (then counted as dropped): a
// trace must not grow a long run's memory without bound.
class TraceLog {
  public:
    explicit TraceLog(std::size_t capacity) : capacity_(capacity) {}

    // The clock Python reads as time.monotonic_ns(): the façade's own spans
    // (waits, waves) share it. Read through the vDSO, some 20 ns.
    static std::int64_t now() {
        timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
    }

    void sent(int kind, int dest, std::string_view tag, std::uint64_t bytes) {
        auto t = now();
        add({t, t, bytes, tag_index(tag), dest, kind, true});
    }

    void dispatched(int kind, int source, py::handle tag, std::uint64_t bytes, std::int64_t start) {
        Py_ssize_t size = 0;
        const char* text =
            tag && PyUnicode_Check(tag.ptr()) ? PyUnicode_AsUTF8AndSize(tag.ptr(), &size) : nullptr;
        if (!text) PyErr_Clear();
        std::string_view name = text ? std::string_view(text, static_cast<std::size_t>(size)) : "";
        add({start, now(), bytes, tag_index(name), source, kind, false});
    }

    // Entries [start, start + count) as tuples (sent, kind, peer, tag,
    // start_ns, end_ns, bytes); read a slice at a time, a long trace is
    // written without all of it as Python objects at once.
    py::list read(std::size_t start, std::size_t count) const {
        py::list out;
        std::vector<py::object> tags(tags_.size());
        for (std::size_t i = start; i < entries_.size() && i < start + count; ++i) {
            const auto& e = entries_[i];
            auto& tag = tags[e.tag];
            if (!tag) {
                const auto& t = tags_[e.tag];
                tag = py::reinterpret_steal<py::object>(
                    PyUnicode_DecodeUTF8(t.data(), static_cast<Py_ssize_t>(t.size()), "replace"));
                if (!tag) throw py::error_already_set();
            }
            out.append(py::make_tuple(e.sent, e.kind, e.peer, tag, e.start_ns, e.end_ns, e.bytes));
        }
        return out;
    }

    std::size_t size() const { return entries_.size(); }
    std::uint64_t dropped() const { return dropped_; }

  private:
    void add(const TraceEntry& e) {
        if (entries_.size() >= capacity_) {
            ++dropped_;
            return;
        }
        entries_.push_back(e);
    }

    std::uint32_t tag_index(std::string_view tag) {
        // The tag of the previous entry first: a stream repeats one tag.
        if (last_ < tags_.size() && tags_[last_] == tag) return last_;
        auto it = index_.find(std::string(tag));
        if (it == index_.end()) {
            // Tags come off the wire: past a bound, new ones share one name
            // rather than grow the table without end.
            if (tags_.size() >= kMaxTags) return other_tags();
            it = index_.emplace(std::string(tag), static_cast<std::uint32_t>(tags_.size())).first;
            tags_.emplace_back(tag);
        }
        last_ = it->second;
        return last_;
    }

    std::uint32_t other_tags() {
        if (other_ == kNone) {
            other_ = static_cast<std::uint32_t>(tags_.size());
            tags_.emplace_back("(other tags)");
        }
        return other_;
    }

    static constexpr std::size_t kMaxTags = 4096;
    static constexpr std::uint32_t kNone = 0xffffffffu;

    std::size_t capacity_;
    std::uint64_t dropped_ = 0;
    std::vector<TraceEntry> entries_;
    std::vector<std::string> tags_;
    std::unordered_map<std::string, std::uint32_t> index_;
    std::uint32_t last_ = 0;
    std::uint32_t other_ = kNone;
};

}  // namespace conveyor
