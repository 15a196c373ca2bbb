// Idle waiting, written once for the owner's wait() and for the background
// thread serving an event loop: spin for spin_seconds after the last
// activity, then yield the core until yield_seconds, then nap with an
// interval that doubles from 10 µs to max_sleep_seconds. Answers are seen
// within microseconds while traffic flows, and a rank waiting for messages
// does not keep a core busy when ranks outnumber cores.
#pragma once

#include <time.h>

#include <algorithm>
#include <chrono>

#include "conveyor/engine/engine.hpp"

namespace conveyor {

inline double seconds_between(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double>(to - from).count();
}

inline double seconds_since(Clock::time_point t) { return seconds_between(t, Clock::now()); }

inline void sleep_for(double seconds) {
    timespec ts;
    ts.tv_sec = static_cast<time_t>(seconds);
    ts.tv_nsec = static_cast<long>((seconds - ts.tv_sec) * 1e9);
    nanosleep(&ts, nullptr);
}

class IdleBackoff {
  public:
    enum class Step { Spin, Yield, Nap };

    IdleBackoff(const EngineOptions& options, Clock::time_point idle_since)
        : options_(options), idle_since_(idle_since) {}

    // Something happened: spin again, and make the next nap the shortest.
    void active() {
        idle_since_ = Clock::now();
        nap_ = kFirstNap;
    }
    // Count idle time from now, keeping the nap reached.
    void idle_from_now() { idle_since_ = Clock::now(); }

    // What the idle time calls for at `now`, the caller's reading of the
    // clock (a spinning caller reads it once an iteration); the caller
    // yields or naps itself, since what it holds meanwhile differs.
    Step step(Clock::time_point now) const {
        double idle = seconds_between(idle_since_, now);
        if (idle < options_.spin_seconds) return Step::Spin;
        if (idle < options_.yield_seconds) return Step::Yield;
        return Step::Nap;
    }
    // The next nap's length; the one after it is twice as long.
    double nap() {
        double nap = nap_;
        nap_ = std::min(nap_ * 2, options_.max_sleep_seconds);
        return nap;
    }

  private:
    static constexpr double kFirstNap = 10e-6;
    const EngineOptions& options_;
    Clock::time_point idle_since_;
    double nap_ = kFirstNap;
};

}  // namespace conveyor
