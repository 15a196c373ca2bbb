// Stamps: how a receiver tells the frames its peer's engine posted from
// frames that other code of that rank forged (a raw MPI send on the
// messenger's communicator, or the test hooks' post_raw).
//
// MPI vouches for the rank a message comes from, not for the code that sent
// it. Most forged frames harm only themselves: they are bounds-checked and
// dropped. Two kinds reach further. A frame announcing out-of-band data
// makes the receiver post receives for the source's next data messages: a
// forged one would take the data of that source's next real large message
// (delivered as the forged message) and leave the real one waiting forever,
// with every later message from that source held behind it. A Credit frame
// frees window on the sending side. So these two kinds carry a stamp: the
// n-th stamped frame from rank s to rank d carries mix(key_s, d, n), where
// key_s is drawn at random by rank s's engine and shared with the job's
// engines when they are made. Code that cannot read an engine's memory
// cannot predict it.
//
// A receiver counts the genuine stamped frames from each source in the order
// MPI delivers frames (non-overtaking per source and tag), so it knows the
// next one's stamp: a frame with any other is counted as forged and dropped
// before anything is posted for it, and the count does not move. A genuine
// announcement's data is certain to come, so no timeout gives up on one (it
// would be wrong for a slow genuine transfer, and is needed for no forged one).
// The cost is one hash per large message or credit; small messages carry none.
#include <cstring>
#include <random>

#include "conveyor/engine/engine.hpp"

namespace conveyor {

namespace {

// splitmix64's finalizer: every bit of the input moves every bit of the output.
std::uint64_t mix(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

}  // namespace

// Collective: every engine of the communicator draws its key and learns the others'.
void Engine::make_stamp_keys() {
    std::random_device random;
    std::uint64_t key = (std::uint64_t(random()) << 32) ^ random();
    stamp_keys_.resize(static_cast<std::size_t>(size_));
    check_mpi(MPI_Allgather(&key, 1, MPI_UINT64_T, stamp_keys_.data(), 1, MPI_UINT64_T, comm_),
              "MPI_Allgather");
}

std::uint64_t Engine::stamp(int source, int dest, std::uint64_t n) const {
    return mix(mix(stamp_keys_[static_cast<std::size_t>(source)] ^ std::uint64_t(dest)) + n);
}

void Engine::stamp_outgoing(int dest, Outgoing& out) {
    if (out.stamp_at == 0) return;
    std::uint64_t value = stamp(rank_, dest, routes_[dest].stamped_sent++);
    std::memcpy(out.frame.data() + out.stamp_at, &value, sizeof value);
}

bool Engine::genuine(int source, std::uint64_t value) {
    auto& route = routes_[source];
    if (value != stamp(source, rank_, route.stamped_received)) {
        stats_.frames_forged += 1;
        return false;
    }
    route.stamped_received += 1;
    return true;
}

}  // namespace conveyor
