// The background thread: takes over MPI while the owner is away (see class
// Engine), and serves an event loop by signalling its descriptor.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "conveyor/engine/backoff.hpp"
#include "conveyor/engine/engine.hpp"

namespace conveyor {

void Engine::serve_in_background(int fd) {
    {
        Guard guard(lock_);
        notify_fd_.store(fd);
        owner_signalled_.store(false);
    }
    wake_background();
}

void Engine::stop_background() {
    background_stop_.store(true);
    wake_background();
    if (background_.joinable()) background_.join();
}

void Engine::wake_background() {
    {
        // Taken so that the wake-up cannot fall between the background's
        // check of its condition and its sleep.
        std::lock_guard<std::mutex> sleep(sleep_lock_);
        background_parked_.store(false);
    }
    sleep_wake_.notify_all();
}

// The background thread: sends batches that waited too long, receives while
// the owner stays away and, when the owner asked for it, signals the
// owner's descriptor. It naps between rounds with the same growing interval
// as an idle wait.
void Engine::background_loop() {
    defer_releases = true;
    try {
        background_rounds();
    } catch (const std::exception& e) {
        // The owner's next call reports it; meanwhile the owner drives MPI alone.
        Guard guard(lock_);
        background_failure_ = e.what();
    }
}

void Engine::background_rounds() {
    IdleBackoff backoff(options_, Clock::now());
    bool unparked = false;
    double nap = 0;  // the last sleep while nothing needed us
    while (!background_stop_.load()) {
        background_rounds_.fetch_add(1, std::memory_order_relaxed);
        // An owner that calls in makes progress itself: then only batches it
        // left filling need the background. In an event loop the owner never
        // waits in the engine and relies on the background entirely.
        bool serving = notify_fd_.load() >= 0;
        bool owner_called = owner_active_.exchange(false, std::memory_order_relaxed);
        bool active = serving && owner_called;  // it sent or took something
        bool receive = serving || (!owner_called && !owner_waiting_.load());
        bool flush = open_batches_.load(std::memory_order_relaxed) != 0;
        bool quiet = false;  // it probed and nothing came, went, or is under way
        if (receive || flush) {
            std::unique_lock<YieldingMutex> guard(lock_, std::defer_lock);
            // An event loop's owner needs this round; any other owner
            // holding the lock is making progress itself.
            if (serving)
                guard.lock();
            else
                guard.try_lock();
            if (guard.owns_lock()) {
                if (flush) {
                    const std::size_t sent = flush_stale_batches();
                    stats_.background_flushes += sent;
                    active |= sent != 0;
                }
                if (receive) {
                    // Rounds follow the background's sleeps: as wait() does after a nap.
                    active |= progress_after_nap();
                    quiet = !active && !flush && send_reqs_.empty() && recv_reqs_.empty() &&
                            !wave_active_;
                }
                if (serving) signal_owner();
            }
        }
        std::unique_lock<std::mutex> sleep(sleep_lock_);
        if (background_stop_.load()) break;
        if (!serving) {
            bool waiting = owner_waiting_.load();
            if (waiting && !owner_called && !unparked) {
                // The owner has waited in the engine since the last round, a
                // long wait (an idle rank): it drives MPI until it leaves,
                // and wakes us then. Not twice running: an owner that began
                // a wait between our reads of its two flags looks the same,
                // and would then wake us at the end of each of its waits.
                background_parked_.store(true);
                if (!owner_waiting_.load()) background_parked_.store(false);  // it just left
                sleep_wake_.wait(sleep, [this] { return !background_parked_.load(); });
                unparked = true;
                nap = 0;  // it may be away now: take over within `base`
            } else {
                unparked = false;
                // Wake rarely: every wake-up takes a core from the ranks,
                // which may outnumber cores, and a batch left behind waits
                // at most this long.
                double base =
                    std::max(2 * options_.max_sleep_seconds, options_.flush_delay_seconds);
                // And rarer still while nothing needs us: an owner that
                // keeps calling in drives MPI itself, and a wake-up a
                // millisecond beside its loop of sends and waits took 4 % of
                // a 64 KiB stream's bandwidth on 2 cores (bench/README.md).
                // Up to half the longest sleep: the round after the owner's
                // last call still sees it, so we take over within the
                // longest sleep once it stops calling. An owner away with
                // nothing in flight: each of our rounds' probes take MPI's
                // lock and join its progress, slowing the transfers of the
                // process's other threads and messengers (conveyor bench's
                // idle second messenger took 5% of the first one's
                // bandwidth).
                bool owner_busy = (owner_called || waiting) && !flush;
                double longest = options_.background_max_sleep_seconds;
                nap = owner_busy ? std::min(2 * nap, longest / 2)
                      : quiet    ? std::min(2 * nap, longest)
                                 : 0;
                nap = std::max(nap, base);
                // A new batch wakes a doze (the owner away), not the sleep
                // beside a busy owner, whose next wait sends it: a wake-up
                // a batch would cost a request/reply loop one a message.
                if (quiet && nap > base) {
                    background_dozing_.store(true);
                    if (open_batches_.load() == 0)
                        sleep_wake_.wait_for(sleep, std::chrono::duration<double>(nap));
                    background_dozing_.store(false);
                } else {
                    sleep_wake_.wait_for(sleep, std::chrono::duration<double>(nap));
                }
            }
            continue;
        }
        if (owner_signalled_.load()) {
            // The owner has messages to handle: give it the core until it
            // took them (pop() wakes us) rather than polling beside it.
            sleep_wake_.wait_for(
                sleep, std::chrono::duration<double>(options_.max_sleep_seconds),
                [this] { return !owner_signalled_.load() || background_stop_.load(); });
            backoff.idle_from_now();
            continue;
        }
        // Serving an event loop: the backoff of an idle wait, spinning and
        // yielding without the sleep lock (through which the owner wakes us).
        if (active) backoff.active();
        switch (backoff.step(Clock::now())) {
            case IdleBackoff::Step::Spin: sleep.unlock(); continue;
            case IdleBackoff::Step::Yield:
                sleep.unlock();
                sched_yield();
                continue;
            case IdleBackoff::Step::Nap: break;
        }
        sleep_wake_.wait_for(sleep, std::chrono::duration<double>(backoff.nap()));
    }
}

// Called with the lock held, under which the owner changes notify_fd_ (and
// closes the old descriptor only after): it may have stopped serving since
// the round began.
void Engine::signal_owner() {
    int fd = notify_fd_.load();
    if (fd < 0 || owner_signalled_.load()) return;
    if (ready_.empty() && !(wave_active_ && wave_completed_)) return;
    std::uint64_t one = 1;
    // A full eventfd or pipe already tells the owner to come: ignore EAGAIN.
    if (write(fd, &one, sizeof one) < 0 && errno != EAGAIN)
        throw MPIError(std::string("signalling the event loop failed: ") + std::strerror(errno));
    owner_signalled_.store(true);
}

}  // namespace conveyor
