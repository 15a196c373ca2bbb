// The chunk table of one rank: chunk id -> value, state, waiters, references.
//
// Chunks are the pieces of distributed objects. The rank that computes a
// chunk owns its entry: the value (or the error), who waits for it, and the
// reference weight it lent out. Other ranks holding references to it keep a
// foreign entry: their share of the weight and their count of local handles.
//
// Reference counting is by weights, so that references can travel in
// messages without a round trip to the owner per copy. The owner mints
// kMintWeight for each lend and counts it as outstanding; a rank passing a
// reference on gives away part of its own weight; the last local handle of a
// rank sends its remaining weight back to the owner. The owner frees the
// chunk once it has been created, no weight is outstanding and it holds no
// handle itself. A give-back may overtake the order that creates the chunk
// (they come from different ranks), hence a signed outstanding weight and
// placeholder entries for chunks not created yet.
//
// Splitting halves the weight with each copy of a copy, so a reference
// passed on many times runs out before a refill from the owner can arrive
// (a handler sending it in a loop). A foreign entry down to a weight of 1
// then lends weight of its own, as a proxy (indirect reference counting):
// those copies carry it back to this rank, their `home`, and the entry, with
// the weight it owes its own home, stays until all of it is back. Weight of
// two homes for one chunk is never merged: a rank keeps the owner's (else
// the weight it has) and sends the other back at once, so chains of proxies
// stay short.
//
// Used from one thread only (the façade's, under the GIL): no locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "conveyor/common/errors.hpp"
#include "conveyor/common/keep_alive.hpp"

namespace conveyor {

// (creator rank << kSequenceBits) | sequence: unique without coordination.
using ChunkId = std::uint64_t;
constexpr int kSequenceBits = 40;

enum class ChunkState : std::uint8_t { Pending = 0, Resolved = 1, Error = 2 };

// A resolved chunk: `size` bytes at `data`, C-contiguous, kept valid by `keep`.
struct ChunkValue {
    const void* data = nullptr;
    std::size_t size = 0;
    KeepAlive keep;
    std::string dtype;  // numpy's dtype.str
    std::vector<std::int64_t> shape;
};

// An id this rank has no entry for (or not the kind of entry asked for).
class UnknownChunk : public std::out_of_range {
  public:
    UnknownChunk(ChunkId id, const std::string& why);
    ChunkId id;
};

// What lend() gives: weight to put in the outgoing message, the rank it
// returns to, and whether the caller should ask the owner for more weight (a
// foreign entry running low).
struct Lent {
    std::uint64_t weight;
    int home;
    bool refill;
};

// What release(), give_back() or adopt() leaves to do: whether an entry was
// erased, and the weight to send back to `home` (0: nothing to send).
struct Released {
    bool freed;
    int home;
    std::uint64_t weight;
};

struct ChunkStats {
    std::size_t chunks = 0;        // owned, resolved: holding a value
    std::size_t bytes = 0;         // ... the sum of their sizes
    std::size_t pending = 0;       // owned, not settled yet
    std::size_t failed = 0;        // owned, settled with an error
    std::size_t placeholders = 0;  // given back to or held before being created
    std::size_t foreign = 0;       // references to chunks owned elsewhere, proxies included
};

class ChunkTable {
  public:
    static constexpr std::uint64_t kMintWeight = std::uint64_t(1) << 40;
    static constexpr std::uint64_t kLendCap = std::uint64_t(1) << 20;
    static constexpr std::uint64_t kRefillBelow = std::uint64_t(1) << 30;

    explicit ChunkTable(int rank);

    int rank() const { return rank_; }
    // A fresh id created by this rank (sequences start at 1: id 0 is never minted).
    ChunkId new_id();
    static int creator_of(ChunkId id) { return static_cast<int>(id >> kSequenceBits); }

    // Owned chunks. create() makes a Pending entry that this rank will settle,
    // whoever minted the id; `lent_weight` is what the minter already handed
    // out for it. The entry stays until a release() or give_back() drops the
    // last reference, so whoever computes it should hold a handle meanwhile.
    void create(ChunkId id, std::uint64_t lent_weight);
    // Settle a Pending chunk; return the waiter tokens to notify.
    std::vector<std::uint64_t> resolve(ChunkId id, ChunkValue value);
    std::vector<std::uint64_t> fail(ChunkId id, std::string error);
    ChunkState state(ChunkId id) const;
    const ChunkValue& value(ChunkId id) const;  // Resolved only
    // A resolved chunk's value, now kept in other memory that holds the
    // same bytes (a copy in shared memory): of the same dtype and shape.
    void replace(ChunkId id, ChunkValue value);
    const std::string& error(ChunkId id) const;  // Error only
    // Register `token` if the chunk is still Pending (true); false if it is
    // settled and the caller can go on at once.
    bool add_waiter(ChunkId id, std::uint64_t token);

    // Whether this rank has an entry for `id`: a created owned chunk, or a
    // foreign reference. Placeholders do not count; size() counts the same.
    bool contains(ChunkId id) const;
    std::size_t size() const;

    // Local handles (a Python ChunkRef each), owned or foreign.
    void hold(ChunkId id);
    // A handle of a chunk this rank owns or will own: a reference may arrive
    // before the create() of its chunk (they come from different ranks), and
    // holds a placeholder until then.
    void hold_owned(ChunkId id);
    Released release(ChunkId id);

    // Weight for a reference about to leave in a message. The owner mints;
    // a foreign entry gives part of its own, min(weight / 2, kLendCap), or
    // lends kLendCap as a proxy once down to 1, and asks for a refill once
    // when its weight falls below kRefillBelow.
    Lent lend(ChunkId id);
    // Weight received with a reference to a chunk `owner` owns, lent by
    // `home` (not this rank: that weight comes back by give_back()), or the
    // owner's answer to a refill. Returns weight not kept, to send back: all
    // of it at the owner. A refill answer for a chunk no longer held here
    // must go straight back instead.
    Released adopt(ChunkId id, int owner, int home, std::uint64_t weight);
    // Weight returned to where it was lent: the owner (freed: the chunk is
    // gone) or a proxy (the entry may go, sending its weight on to its home).
    Released give_back(ChunkId id, std::uint64_t weight);

    ChunkStats stats() const;

  private:
    struct Owned {
        bool created = false;
        ChunkState state = ChunkState::Pending;
        ChunkValue value;
        std::string error;
        std::vector<std::uint64_t> waiters;
        std::int64_t outstanding = 0;  // negative while give-backs overtake the create
        std::uint64_t local = 0;
    };
    struct Foreign {
        int owner;
        int home;  // where `weight` returns: the owner or a proxy
        std::uint64_t weight = 0;
        std::uint64_t local = 0;
        std::uint64_t proxied = 0;  // lent by this rank as a proxy, not back yet
        bool refill_asked = false;
    };

    Owned& owned(ChunkId id);
    const Owned& owned(ChunkId id) const;
    // The owned entry of `id`, created or a placeholder a handle holds (see
    // hold_owned()): handles may release it and pass it on either way.
    std::unordered_map<ChunkId, Owned>::iterator held(ChunkId id);
    // Throws the UnknownChunk that says why `id` is not a created chunk here.
    [[noreturn]] void unknown(ChunkId id) const;
    Owned& pending(ChunkId id);
    // Throws if `id` is a reference to a chunk owned elsewhere.
    void refuse_foreign(ChunkId id) const;
    // `weight` for chunk `id` as its owner counts it: signed, since
    // give-backs may come first. Refuses chunks owned elsewhere.
    std::int64_t owner_weight(ChunkId id, std::uint64_t weight) const;
    // Erases an owned entry nobody references any more; returns whether it did.
    bool free_if_unreferenced(std::unordered_map<ChunkId, Owned>::iterator it);
    // Erases a foreign entry without handles or proxied weight, if it is one.
    Released drop_if_unused(std::unordered_map<ChunkId, Foreign>::iterator it);

    int rank_;
    std::uint64_t sequence_ = 0;
    std::unordered_map<ChunkId, Owned> owned_;
    std::unordered_map<ChunkId, Foreign> foreign_;
    std::size_t placeholders_ = 0;  // owned_ entries not created yet
};

}  // namespace conveyor
