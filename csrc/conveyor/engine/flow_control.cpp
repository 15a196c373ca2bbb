// Flow control: per destination, a window of frame bytes and one of
// out-of-band bytes in flight; frames beyond it are held, in order, until
// the receiver reports what it consumed with a Credit frame.
//
// A pool caps both kinds of bytes in flight, all destinations together, so
// that they do not grow with the number of ranks. It never holds back a
// destination with nothing in flight: then no pair of ranks waits on
// another pair's credit, and what makes the windows deadlock-free (each
// waits only for its receiver, relay.cpp) still holds pair by pair. So a
// rank's frames in flight stay within window_pool_bytes plus one frame per
// destination: with relaying, a batch per next hop.
#include <algorithm>

#include "conveyor/engine/engine.hpp"

namespace conveyor {

bool Engine::congested(int dest) const {
    check_dest(dest, size_);
    Guard guard(lock_);
    return congested_locked(dest);
}

void Engine::queue(int dest, std::shared_ptr<Outgoing> out) {
    auto& route = routes_[dest];
    held_bytes_ += out->bytes.frames;
    route.held.push_back(std::move(out));
    release(dest);
    if (!route.held.empty()) stats_.sends_held += 1;
}

namespace {

// Whether `add` more bytes would overflow a window of `limit` (0: none). A
// message larger than the whole window still goes once nothing else is in
// flight, so every message can be sent.
bool overflows(std::size_t in_flight, std::size_t add, std::size_t limit) {
    return limit != 0 && in_flight != 0 && in_flight + add > limit;
}

}  // namespace

bool Engine::overflows_pool(const Route& route, const Outgoing& next) const {
    if (route.in_flight.frames == 0 && route.in_flight.data == 0) return false;
    return overflows(in_flight_.frames, next.bytes.frames, options_.window_pool_bytes) ||
           overflows(in_flight_.data, next.bytes.data, options_.data_window_pool_bytes);
}

// Sends what credit allows, in order.
void Engine::release(int dest) {
    auto& route = routes_[dest];
    while (!route.held.empty()) {
        auto& next = route.held.front();
        const bool pooled = overflows_pool(route, *next);
        if (pooled ||
            overflows(route.in_flight.frames, next->bytes.frames, options_.window_bytes) ||
            overflows(route.in_flight.data, next->bytes.data, options_.data_window_bytes)) {
            if (!route.asked) {
                route.asked = true;
                send_credit(dest, {});  // nothing consumed: "credit, please"
            }
            if (pooled && !route.pooled) {
                // Credit from any destination may let it go (release_pooled).
                route.pooled = true;
                pool_waiting_.push_back(dest);
                stats_.window_pool_waits += 1;
            }
            return;
        }
        route.in_flight.frames += next->bytes.frames;
        route.in_flight.data += next->bytes.data;
        in_flight_.frames += next->bytes.frames;
        in_flight_.data += next->bytes.data;
        stats_.in_flight_frame_bytes_peak =
            std::max<std::uint64_t>(stats_.in_flight_frame_bytes_peak, in_flight_.frames);
        stats_.in_flight_data_bytes_peak =
            std::max<std::uint64_t>(stats_.in_flight_data_bytes_peak, in_flight_.data);
        held_bytes_ -= next->bytes.frames;
        isend(dest, std::move(next));
        route.held.pop_front();
    }
}

void Engine::abandon(int dest) {
    check_dest(dest, size_);
    Guard guard(lock_);
    auto& route = routes_[dest];
    for (const auto& out : route.held) held_bytes_ -= out->bytes.frames;
    route.held.clear();
    in_flight_.frames -= route.in_flight.frames;
    in_flight_.data -= route.in_flight.data;
    route.in_flight = {};
    route.asked = false;
    release_pooled();
    repay_relays();
}

// After credit returned to the pool: the destinations that waited for it,
// in the order they began to (those still held go back in line).
void Engine::release_pooled() {
    std::vector<int> waiting;
    waiting.swap(pool_waiting_);
    for (int dest : waiting) {
        routes_[dest].pooled = false;
        release(dest);
    }
}

// A Credit frame: the frame bytes consumed in `ref`, the out-of-band bytes
// then a stamp (stamp.cpp) in its body; nothing consumed asks for credit.
// Control frames bypass batches and flow control and are not logical messages.
void Engine::send_credit(int dest, FlowBytes consumed) {
    auto out = std::make_shared<Outgoing>();
    Writer w;
    write_header(w, FrameKind::Credit, consumed.frames, {}, {});
    w.u64(consumed.data);
    out->stamp_at = w.size();
    w.u64(0);
    out->frame = std::move(w.bytes);
    isend(dest, std::move(out));
    stats_.credits_sent += 1;
}

// Flow control, receiving side: credit a sender every quarter of either
// window it consumed, or at once when it asked (it waits for exactly that).
void Engine::consumed(int source, FlowBytes bytes) {
    auto& route = routes_[source];
    route.consumed.frames += bytes.frames;
    route.consumed.data += bytes.data;
    auto reached = [](std::size_t consumed, std::size_t window) {
        return window != 0 && consumed >= window / 4;
    };
    if (reached(route.consumed.frames, options_.window_bytes) ||
        reached(route.consumed.data, options_.data_window_bytes) || route.owes)
        credit(source);
}

void Engine::credit(int source) {
    auto& route = routes_[source];
    if (route.consumed.frames == 0 && route.consumed.data == 0) return;
    send_credit(source, route.consumed);
    route.consumed = {};
    route.owes = false;
}

// A Credit frame from `in.source`: bytes of ours it consumed, which let
// held frames go, or none, when it asks for the credit it is owed. Returns
// false, changing nothing, for a forged one (its stamp is wrong or missing),
// which would let more than a window go.
bool Engine::receive_credit(const Incoming& in) {
    Reader body(in.frame.data() + in.header.body_offset, in.frame.size() - in.header.body_offset);
    if (body.remaining() < 2 * 8) {
        stats_.frames_forged += 1;
        return false;
    }
    FlowBytes credited{in.header.ref, body.u64()};
    if (!genuine(in.source, body.u64())) return false;
    stats_.credits_received += 1;
    auto& route = routes_[in.source];
    if (credited.frames == 0 && credited.data == 0) {
        route.owes = true;
        credit(in.source);
    } else {
        // A genuine credit may count more than this engine sent: frames other
        // code of this rank sent on the communicator were consumed too.
        const FlowBytes returned{std::min(route.in_flight.frames, credited.frames),
                                 std::min(route.in_flight.data, credited.data)};
        route.in_flight.frames -= returned.frames;
        route.in_flight.data -= returned.data;
        in_flight_.frames -= returned.frames;
        in_flight_.data -= returned.data;
        route.asked = false;
        release(in.source);
        release_pooled();
        repay_relays();
    }
    return true;
}

}  // namespace conveyor
