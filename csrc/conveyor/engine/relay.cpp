// Relaying: small messages travel aggregated through other ranks, so that a
// rank keeps batches for a few next hops rather than for every rank (at P
// ranks, a 2-D grid of them needs some 2√P; see conveyor/_relay.py for the
// tables). A relaying engine packs every aggregated message, in short form
// (SmallFrame) with its origin and destination, into a Relayed frame to the
// message's next hop; the rank that receives it passes each entry on as it
// is into its own batch for the next hop, or, at the destination, rebuilds
// the frames into a batch from their origin. Large messages still go
// straight to their destination, zero-copy.
//
// Order per pair. One origin's relayed messages to one destination all take
// the same path, and every hop keeps their order, so they arrive in order
// among themselves, as do its direct frames (MPI's non-overtaking rule).
// Between the two paths, fences restore the order in which they were sent:
// before a direct frame that follows relayed messages, the origin posts a
// Fence frame with the count of messages it relayed to that destination so
// far, and before a relayed message that follows direct frames, a fence
// entry with the count of its direct frames. The destination counts what it
// released of each path per origin, and a fence holds its stream until the
// other one reached its count (Engine::release_in_order).
//
// Trust. A relayed message's origin is written by the engines that relay
// it, so Relayed frames (and Fences, which could stall a stream) are stamped
// like credits (stamp.cpp): a forged one is dropped as a rejection.
//
// Termination detection counts frames: a Relayed frame is finished where it
// is received, and the batches it is unpacked into are posted there, so the
// sums still balance once every message was handled.
#include <algorithm>
#include <cstring>
#include <unordered_set>
#include <utility>

#include "conveyor/engine/engine.hpp"

namespace conveyor {

void Engine::check_next_hops() const {
    const auto& table = options_.next_hop;
    if (table.empty()) return;
    if (table.size() != static_cast<std::size_t>(size_))
        throw UsageError("next_hop has " + std::to_string(table.size()) +
                         " ranks; the communicator has " + std::to_string(size_));
    for (int hop : table)
        if (hop < 0 || hop >= size_)
            throw UsageError("next_hop names rank " + std::to_string(hop) + ", out of range 0.." +
                             std::to_string(size_ - 1));
}

// One of this rank's small messages to `dest`, after a fence entry if
// direct frames to `dest` went since the last one. Read before anything
// changes: a frame it refuses leaves no trace.
void Engine::relay(int dest, const std::uint8_t* frame, std::size_t size) {
    const auto message = SmallFrame::read_full(frame, size);
    auto& to = routes_[dest];
    RelayEntry entry;
    entry.origin = static_cast<std::uint32_t>(rank_);
    entry.dest = static_cast<std::uint32_t>(dest);
    if (to.marked != to.direct_posted) {
        entry.fence = true;
        entry.count = to.marked = to.direct_posted;
        append_relayed(entry);
        stats_.fences_sent += 1;
    }
    relay_scratch_.bytes.clear();
    message.write_short(relay_scratch_);
    entry.fence = false;
    entry.frame = relay_scratch_.bytes.data();
    entry.size = relay_scratch_.size();
    append_relayed(entry);
    to.relayed_posted += 1;
}

void Engine::append_relayed(const RelayEntry& entry) {
    const int next = hop(static_cast<int>(entry.dest));
    auto& route = routes_[next];
    batch_room(next, entry.bytes());
    entry.write(route.batch);
    route.batch_messages += 1;
}

// Before a direct frame to `dest`: a Fence if messages to it were relayed
// since the last one. It is queued like the frame (flow control may hold
// both), costing no window.
void Engine::fence_direct(int dest) {
    auto& to = routes_[dest];
    if (to.fenced == to.relayed_posted) return;
    to.fenced = to.relayed_posted;
    Writer w;
    write_header(w, FrameKind::Fence, to.fenced, {}, {});
    auto out = std::make_shared<Outgoing>();
    out->stamp_at = w.size();
    w.u64(0);
    out->frame = std::move(w.bytes);
    stats_.fences_sent += 1;
    queue(dest, std::move(out));
}

// Whether a Fence or Relayed frame starts its body with the stamp its
// sender's engine makes; if not, it is marked as the forged frame it is
// (`what` says what it claims to be), to be delivered as a rejection.
bool Engine::stamped(Incoming& in, const char* what) {
    std::uint64_t stamp = 0;
    const bool room = in.frame.size() - in.header.body_offset >= 8;
    if (room) std::memcpy(&stamp, in.frame.data() + in.header.body_offset, 8);
    if (room && genuine(in.source, stamp)) return true;
    if (!room) stats_.frames_forged += 1;  // else genuine() counted it
    in.malformed = std::string(what) + " that rank " + std::to_string(in.source) +
                   "'s engine did not send (a forged frame)";
    return false;
}

// A Fence from `in.source`: its direct frames that follow wait in order
// behind it until `ref` of its relayed messages were released.
void Engine::receive_fence(std::unique_ptr<Incoming> in) {
    if (!stamped(*in, "a fence")) return enqueue(std::move(in));
    stats_.frames_received -= 1;  // a control frame, as a credit
    in->credit_to = -1;           // it cost its sender no window
    enqueue(std::move(in));
}

// A Relayed frame: its messages for other ranks go on into the batches for
// their next hops; those for this rank become one batch per run of the same
// origin, queued behind that origin's earlier relayed messages.
void Engine::receive_relayed(std::unique_ptr<Incoming> in) {
    const int source = in->source;
    if (!stamped(*in, "relayed messages")) return enqueue(std::move(in));
    if (!relaying()) {  // its sender relays: the ranks were set up apart
        in->malformed = "relayed messages, but this rank does not relay";
        stats_.frames_malformed += 1;
        return enqueue(std::move(in));
    }
    stats_.batches_received += 1;
    stats_.frames_finished += 1;  // done here: what it carries is posted anew
    const std::uint8_t* body = in->frame.data() + in->header.body_offset + 8;
    RelayReader reader(body, in->frame.size() - in->header.body_offset - 8, in->header.ref);
    std::unordered_set<int> origins;
    // Of this frame's bytes, those of the messages delivered here: credited
    // to `source` as they are taken, the rest now.
    std::size_t kept = 0;

    std::unique_ptr<Incoming> run;  // the batch of the current run of one origin's messages
    Writer batch;
    auto close_run = [&] {
        if (!run) return;
        std::memcpy(batch.bytes.data() + 4, &run->header.ref, 8);
        kept += run->credit_frames;
        run->frame = std::move(batch.bytes);
        batch.bytes.clear();
        stats_.frames_posted += 1;  // finished by the dispatcher, as any batch
        relayed_[run->source].push_back(std::move(run));
    };
    auto local = [&](int origin) {
        auto q = std::make_unique<Incoming>();
        q->source = origin;
        q->credit_to = source;
        origins.insert(origin);
        return q;
    };
    std::string error;
    try {
        RelayEntry e;
        while (reader.next(e)) {
            if (e.origin >= static_cast<std::uint32_t>(size_) ||
                e.dest >= static_cast<std::uint32_t>(size_))
                throw DecodeError("a relayed message names rank " +
                                  std::to_string(std::max(e.origin, e.dest)) + ", out of range");
            if (static_cast<int>(e.dest) != rank_) {
                append_relayed(e);
                if (!e.fence) stats_.messages_relayed += 1;
                continue;
            }
            const int origin = static_cast<int>(e.origin);
            if (e.fence) {
                close_run();
                auto fence = local(origin);
                fence->header.kind = FrameKind::Fence;
                fence->header.ref = e.count;
                fence->credit_to = -1;
                relayed_[origin].push_back(std::move(fence));
                continue;
            }
            if (run && run->source != origin) close_run();
            if (!run) {
                run = local(origin);
                run->header.kind = FrameKind::Batch;
                run->header.body_offset = kBareHeaderBytes;
                write_header(batch, FrameKind::Batch, 0, {}, {});
            }
            const auto message = SmallFrame::read_short(e.frame, e.size);
            batch.u32(static_cast<std::uint32_t>(message.full_bytes()));
            message.write_full(batch);
            run->header.ref += 1;
            run->credit_frames += e.bytes();
        }
        if (reader.trailing() != 0)
            throw DecodeError("corrupt relayed frame: " + std::to_string(reader.trailing()) +
                              " bytes after its last entry");
    } catch (const DecodeError& e) {
        error = e.what();
    }
    close_run();
    consumed_relayed(source, in->frame.size() - std::min(kept, in->frame.size()));
    for (int origin : origins) release_in_order(origin);
    if (!error.empty()) {
        // A genuine engine never writes one: the rest of the frame is lost,
        // reported once as a rejection from the rank that relayed it.
        auto bad = std::make_unique<Incoming>();
        bad->source = source;
        bad->malformed = error;
        stats_.frames_malformed += 1;
        stats_.frames_posted += 1;         // finished when the dispatcher takes the rejection
        ready_.push_back(std::move(bad));  // not one of `source`'s direct frames
    }
}

// What was passed on is consumed, as far as `source` is concerned, once it
// left here: credited at once while the frames held here fit the relay
// pool, else when they do again (repay_relays). Deadlock-free for the
// tables of _relay.py: the hops that wait on a pool lead to hops whose
// frames all end at their receiver, which always takes them.
void Engine::consumed_relayed(int source, std::size_t bytes) {
    if (options_.relay_pool_bytes == 0 || held_bytes_ <= options_.relay_pool_bytes) {
        repay_relays();
        return consumed(source, {bytes, 0});
    }
    auto& route = routes_[source];
    if (route.relay_owed == 0) relays_owed_.push_back(source);
    route.relay_owed += bytes;
}

void Engine::repay_relays() {
    if (relays_owed_.empty() || held_bytes_ > options_.relay_pool_bytes) return;
    for (int source : relays_owed_) {
        auto& route = routes_[source];
        std::size_t owed = std::exchange(route.relay_owed, 0);
        consumed(source, {owed, 0});
    }
    relays_owed_.clear();
}

}  // namespace conveyor
