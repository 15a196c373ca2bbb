// Time as the engine's idle waits measure it.
#pragma once

#include <time.h>

#include <chrono>

#include "conveyor/engine/engine.hpp"

namespace conveyor {

inline double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

inline void sleep_for(double seconds) {
    timespec ts;
    ts.tv_sec = static_cast<time_t>(seconds);
    ts.tv_nsec = static_cast<long>((seconds - ts.tv_sec) * 1e9);
    nanosleep(&ts, nullptr);
}

}  // namespace conveyor
