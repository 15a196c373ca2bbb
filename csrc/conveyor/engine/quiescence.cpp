// Termination detection: a non-blocking sum of (frames posted, frames
// finished) over all ranks, tested by every round of progress
// (progress_locked).
#include "conveyor/engine/engine.hpp"

namespace conveyor {

void Engine::start_wave() {
    Guard guard(lock_);
    if (wave_active_) throw UsageError("a quiescence wave is already in progress");
    wave_in_[0] = stats_.frames_posted;
    wave_in_[1] = stats_.frames_finished;
    check_mpi(MPI_Iallreduce(wave_in_, wave_out_, 2, MPI_UINT64_T, MPI_SUM, comm_, &wave_req_),
              "MPI_Iallreduce");
    wave_active_ = true;
    wave_completed_ = false;
}

std::uint64_t Engine::frames_posted_to(int dest) const {
    check_dest(dest, size_);
    Guard guard(lock_);
    return routes_[dest].frames_posted;
}

bool Engine::wave_active() const {
    Guard guard(lock_);
    return wave_active_;
}

bool Engine::wave_done() {
    Guard guard(lock_);
    if (!wave_active_) throw UsageError("no quiescence wave is in progress");
    if (!wave_completed_) progress_locked();
    if (!wave_completed_) return false;
    wave_active_ = false;
    wave_completed_ = false;
    owner_signalled_.store(false);
    return true;
}

}  // namespace conveyor
