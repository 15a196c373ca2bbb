#include "conveyor/chunks/chunks.hpp"

#include <algorithm>
#include <limits>
#include <utility>

namespace conveyor {

namespace {

constexpr std::uint64_t kSequenceMask = (std::uint64_t(1) << kSequenceBits) - 1;
constexpr int kMaxRank = (1 << (64 - kSequenceBits)) - 1;

// The id as a number, and who minted it: what one needs to trace it.
std::string describe(ChunkId id) {
    return "chunk " + std::to_string(id) + " (rank " + std::to_string(ChunkTable::creator_of(id)) +
           " #" + std::to_string(id & kSequenceMask) + ")";
}

const char* state_name(ChunkState s) {
    switch (s) {
        case ChunkState::Pending: return "pending";
        case ChunkState::Resolved: return "resolved";
        case ChunkState::Error: return "failed";
    }
    return "?";
}

}  // namespace

UnknownChunk::UnknownChunk(ChunkId id, const std::string& why)
    : std::out_of_range(describe(id) + ": " + why), id(id) {}

ChunkTable::ChunkTable(int rank) : rank_(rank) {
    if (rank < 0 || rank > kMaxRank)
        throw UsageError("rank " + std::to_string(rank) + " is outside 0.." +
                         std::to_string(kMaxRank) + " (chunk ids keep 24 bits for it)");
}

ChunkId ChunkTable::new_id() {
    if (sequence_ == kSequenceMask)
        throw UsageError("rank " + std::to_string(rank_) + " has minted all its 2**40 chunk ids");
    return (static_cast<ChunkId>(rank_) << kSequenceBits) | ++sequence_;
}

ChunkTable::Owned& ChunkTable::owned(ChunkId id) {
    return const_cast<Owned&>(std::as_const(*this).owned(id));
}

const ChunkTable::Owned& ChunkTable::owned(ChunkId id) const {
    auto it = owned_.find(id);
    if (it != owned_.end() && it->second.created) return it->second;
    unknown(id);
}

std::unordered_map<ChunkId, ChunkTable::Owned>::iterator ChunkTable::held(ChunkId id) {
    auto it = owned_.find(id);
    if (it == owned_.end()) unknown(id);
    return it;
}

void ChunkTable::unknown(ChunkId id) const {
    auto it = owned_.find(id);
    auto f = foreign_.find(id);
    if (f != foreign_.end())
        throw UnknownChunk(id, "owned by rank " + std::to_string(f->second.owner) +
                                   ", not by this rank (" + std::to_string(rank_) + ")");
    if (it != owned_.end())
        throw UnknownChunk(id, "not created on rank " + std::to_string(rank_) + " yet");
    throw UnknownChunk(id, "not in the chunk table of rank " + std::to_string(rank_));
}

ChunkTable::Owned& ChunkTable::pending(ChunkId id) {
    Owned& e = owned(id);
    if (e.state != ChunkState::Pending)
        throw UsageError(describe(id) + " is already " + state_name(e.state));
    return e;
}

void ChunkTable::refuse_foreign(ChunkId id) const {
    if (auto f = foreign_.find(id); f != foreign_.end())
        throw UsageError(describe(id) + " is owned by rank " + std::to_string(f->second.owner) +
                         ", not by this rank (" + std::to_string(rank_) + ")");
}

std::int64_t ChunkTable::owner_weight(ChunkId id, std::uint64_t weight) const {
    refuse_foreign(id);
    if (weight > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        throw UsageError(describe(id) + ": weight " + std::to_string(weight) + " is out of range");
    return static_cast<std::int64_t>(weight);
}

void ChunkTable::create(ChunkId id, std::uint64_t lent_weight) {
    auto lent = owner_weight(id, lent_weight);
    auto [it, fresh] = owned_.try_emplace(id);
    Owned& e = it->second;
    if (e.created) throw UsageError(describe(id) + " was already created");
    auto outstanding = e.outstanding + lent;
    if (outstanding < 0)
        throw UsageError(describe(id) + ": " + std::to_string(-e.outstanding) +
                         " weight was given back, only " + std::to_string(lent_weight) + " lent");
    e.created = true;
    e.outstanding = outstanding;
    if (!fresh) placeholders_ -= 1;
}

std::vector<std::uint64_t> ChunkTable::resolve(ChunkId id, ChunkValue value) {
    Owned& e = pending(id);
    e.state = ChunkState::Resolved;
    e.value = std::move(value);
    return std::exchange(e.waiters, {});
}

std::vector<std::uint64_t> ChunkTable::fail(ChunkId id, std::string error) {
    Owned& e = pending(id);
    e.state = ChunkState::Error;
    e.error = std::move(error);
    return std::exchange(e.waiters, {});
}

ChunkState ChunkTable::state(ChunkId id) const { return owned(id).state; }

const ChunkValue& ChunkTable::value(ChunkId id) const {
    const Owned& e = owned(id);
    if (e.state != ChunkState::Resolved)
        throw UsageError(describe(id) + " has no value: it is " + state_name(e.state));
    return e.value;
}

void ChunkTable::replace(ChunkId id, ChunkValue value) {
    Owned& e = owned(id);
    if (e.state != ChunkState::Resolved)
        throw UsageError(describe(id) + " has no value to replace: it is " + state_name(e.state));
    if (value.size != e.value.size || value.dtype != e.value.dtype || value.shape != e.value.shape)
        throw UsageError(describe(id) + ": a replacement must have the value's dtype and shape");
    e.value = std::move(value);
}

const std::string& ChunkTable::error(ChunkId id) const {
    const Owned& e = owned(id);
    if (e.state != ChunkState::Error)
        throw UsageError(describe(id) + " has no error: it is " + state_name(e.state));
    return e.error;
}

bool ChunkTable::add_waiter(ChunkId id, std::uint64_t token) {
    Owned& e = owned(id);
    if (e.state != ChunkState::Pending) return false;
    e.waiters.push_back(token);
    return true;
}

bool ChunkTable::contains(ChunkId id) const {
    auto it = owned_.find(id);
    return (it != owned_.end() && it->second.created) || foreign_.count(id) != 0;
}

std::size_t ChunkTable::size() const { return owned_.size() - placeholders_ + foreign_.size(); }

void ChunkTable::hold(ChunkId id) {
    auto f = foreign_.find(id);
    if (f != foreign_.end()) {
        f->second.local += 1;
    } else {
        owned(id).local += 1;
    }
}

void ChunkTable::hold_owned(ChunkId id) {
    refuse_foreign(id);
    auto [it, fresh] = owned_.try_emplace(id);
    if (fresh) placeholders_ += 1;
    it->second.local += 1;
}

Released ChunkTable::release(ChunkId id) {
    auto f = foreign_.find(id);
    if (f != foreign_.end()) {
        Foreign& e = f->second;
        if (e.local == 0) throw UsageError(describe(id) + ": release() without a handle held");
        e.local -= 1;
        return drop_if_unused(f);
    }
    auto it = held(id);
    Owned& e = it->second;
    if (e.local == 0) throw UsageError(describe(id) + ": release() without a handle held");
    e.local -= 1;
    return {free_if_unreferenced(it), rank_, 0};
}

Lent ChunkTable::lend(ChunkId id) {
    auto f = foreign_.find(id);
    if (f != foreign_.end()) {
        Foreign& e = f->second;
        Lent l;
        // A split must leave the entry some weight, or the home could not
        // tell it from no reference: below 2, lend as a proxy.
        if (e.weight >= 2) {
            l = {std::min(e.weight / 2, kLendCap), e.home, false};
            e.weight -= l.weight;
        } else {
            if (e.proxied > UINT64_MAX - kLendCap)
                throw UsageError(describe(id) +
                                 ": too much proxied weight outstanding to lend more");
            e.proxied += kLendCap;
            l = {kLendCap, rank_, false};
        }
        l.refill = e.weight < kRefillBelow && !e.refill_asked;
        e.refill_asked = e.refill_asked || l.refill;
        return l;
    }
    Owned& e = held(id)->second;
    if (e.outstanding >
        std::numeric_limits<std::int64_t>::max() - static_cast<std::int64_t>(kMintWeight))
        throw UsageError(describe(id) + ": too much reference weight outstanding to lend more");
    e.outstanding += static_cast<std::int64_t>(kMintWeight);
    return {kMintWeight, rank_, false};
}

Released ChunkTable::adopt(ChunkId id, int owner, int home, std::uint64_t weight) {
    if (home == rank_)
        throw UsageError(describe(id) + ": weight lent by this rank comes back by give_back()");
    if (owner < 0 || home < 0)
        throw UsageError(describe(id) + ": owner rank " + std::to_string(owner) + " or home rank " +
                         std::to_string(home) + " is negative");
    // A reference without weight would let its home free the chunk under it.
    if (weight == 0) throw UsageError(describe(id) + ": a reference must arrive with some weight");
    if (owner == rank_)
        return {false, home, weight};  // the owner keeps no weight: a proxy's goes back
    auto it = owned_.find(id);
    if (it != owned_.end() && it->second.created)
        throw UsageError(describe(id) + " was created on this rank, not on rank " +
                         std::to_string(owner));
    auto [f, fresh] = foreign_.try_emplace(id, Foreign{owner, home});
    Foreign& e = f->second;
    if (!fresh && e.owner != owner)
        throw UsageError(describe(id) + " is owned by rank " + std::to_string(e.owner) +
                         ", not rank " + std::to_string(owner));
    // Weights of two homes: the owner's is kept, and a proxy's goes back.
    if (e.home != home && home != owner) return {false, home, weight};
    e.refill_asked = false;
    if (e.home != home)
        return {false, std::exchange(e.home, home), std::exchange(e.weight, weight)};
    if (weight > UINT64_MAX - e.weight)
        throw UsageError(describe(id) + ": adopted weight overflows");
    e.weight += weight;
    return {false, home, 0};
}

Released ChunkTable::give_back(ChunkId id, std::uint64_t weight) {
    if (auto f = foreign_.find(id); f != foreign_.end()) {
        Foreign& e = f->second;
        if (weight > e.proxied)
            throw UsageError(describe(id) + ": " + std::to_string(weight) +
                             " weight given back, only " + std::to_string(e.proxied) +
                             " lent by this rank (rank " + std::to_string(e.owner) + " owns it)");
        e.proxied -= weight;
        return drop_if_unused(f);
    }
    auto w = owner_weight(id, weight);
    auto [it, fresh] = owned_.try_emplace(id);
    Owned& e = it->second;
    // Before the create, outstanding may go as low as it likes; after it,
    // a give-back of more than was lent is a bug elsewhere, refused whole.
    if (e.created && w > e.outstanding)
        throw UsageError(describe(id) + ": " + std::to_string(weight) +
                         " weight given back, only " + std::to_string(e.outstanding) +
                         " outstanding");
    if (!e.created && e.outstanding < std::numeric_limits<std::int64_t>::min() + w) {
        if (fresh) owned_.erase(it);
        throw UsageError(describe(id) + ": given-back weight overflows");
    }
    e.outstanding -= w;
    if (fresh) placeholders_ += 1;
    return {free_if_unreferenced(it), rank_, 0};
}

bool ChunkTable::free_if_unreferenced(std::unordered_map<ChunkId, Owned>::iterator it) {
    const Owned& e = it->second;
    if (!e.created || e.outstanding != 0 || e.local != 0) return false;
    owned_.erase(it);
    return true;
}

Released ChunkTable::drop_if_unused(std::unordered_map<ChunkId, Foreign>::iterator it) {
    const Foreign& e = it->second;
    if (e.local != 0 || e.proxied != 0) return {false, e.home, 0};
    Released r{true, e.home, e.weight};
    foreign_.erase(it);
    return r;
}

ChunkStats ChunkTable::stats() const {
    ChunkStats s;
    for (const auto& [id, e] : owned_) {
        if (!e.created) {
            s.placeholders += 1;
        } else if (e.state == ChunkState::Resolved) {
            s.chunks += 1;
            s.bytes += e.value.size;
        } else if (e.state == ChunkState::Error) {
            s.failed += 1;
        } else {
            s.pending += 1;
        }
    }
    s.foreign = foreign_.size();
    return s;
}

}  // namespace conveyor
