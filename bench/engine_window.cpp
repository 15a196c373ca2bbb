// The bandwidth of conveyor's engine without Python, beside C MPI's in the
// same job: the floor under conveyor's bandwidth rows (bench/engine_bandwidth.py
// builds and runs it; bench/README.md reads the figures).
//
// As osu_bw: rank 0 sends a window of `window` messages of `bytes` bytes,
// rank 1 receives them all and answers a 4-byte ack; `windows` windows per
// repetition after a warm-up. Rank 0 prints the median MB/s of `reps`
// repetitions, alternating the contestants:
//   mpi           MPI_Isend window, MPI_Irecv window posted ahead into one
//                 buffer (osu_bw)
//   mpi-distinct  the same, each message of the window into a buffer of its own
//   engine        Engine::post of a frame whose data goes out of band (zero
//                 copy, as a large numpy array does), Engine::wait and
//                 Engine::pop; the data lands in a buffer of the engine's own
//                 per message, as conveyor delivers it
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "contest.hpp"
#include "conveyor/engine/engine.hpp"
#include "conveyor/wire/wire.hpp"

using namespace conveyor;

namespace {

// A frame that announces `oob`, the sizes of its out-of-band buffers.
std::vector<std::uint8_t> frame_of(const std::vector<std::uint64_t>& oob) {
    Writer w;
    write_header(w, FrameKind::Send, 0, "w", oob);
    return w.bytes;
}

std::unique_ptr<Incoming> next(Engine& engine) {
    std::unique_ptr<Incoming> in;
    while (!(in = engine.pop())) engine.wait(-1);
    engine.mark_finished(1, 1);
    return in;
}

void engine_window(Engine& engine, const std::vector<char>& data, int window) {
    static const std::vector<std::uint8_t> ack = frame_of({});
    if (engine.rank() == 0) {
        const auto frame = frame_of({data.size()});
        for (int i = 0; i < window; ++i)
            engine.post(1, frame, {OutOfBand{data.data(), data.size()}}, nullptr);
        next(engine);
    } else {
        for (int i = 0; i < window; ++i) next(engine);
        engine.post(0, ack, {}, nullptr);
    }
}

// osu_bw's window; rank 1 receives message i into targets[i % targets.size()].
void mpi_window(MPI_Comm comm, const std::vector<char>& data,
                std::vector<std::vector<char>>& targets, int window) {
    std::vector<MPI_Request> requests(static_cast<std::size_t>(window));
    int rank, ack = 0;
    MPI_Comm_rank(comm, &rank);
    int n = static_cast<int>(data.size());
    if (rank == 0) {
        for (auto& r : requests) MPI_Isend(data.data(), n, MPI_BYTE, 1, 0, comm, &r);
        MPI_Waitall(window, requests.data(), MPI_STATUSES_IGNORE);
        MPI_Recv(&ack, 4, MPI_BYTE, 1, 1, comm, MPI_STATUS_IGNORE);
    } else {
        for (std::size_t i = 0; i < requests.size(); ++i)
            MPI_Irecv(targets[i % targets.size()].data(), n, MPI_BYTE, 0, 0, comm, &requests[i]);
        MPI_Waitall(window, requests.data(), MPI_STATUSES_IGNORE);
        MPI_Send(&ack, 4, MPI_BYTE, 0, 1, comm);
    }
}

}  // namespace

int main(int argc, char** argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (argc != 5) {
        std::fprintf(stderr, "usage: engine_window BYTES WINDOW WINDOWS REPS\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    std::size_t bytes = std::strtoull(argv[1], nullptr, 10);
    int window = std::atoi(argv[2]);
    int windows = std::atoi(argv[3]);
    int reps = std::atoi(argv[4]);
    two_ranks();
    MPI_Comm raw, engine_comm;
    MPI_Comm_dup(MPI_COMM_WORLD, &raw);
    MPI_Comm_dup(MPI_COMM_WORLD, &engine_comm);
    std::vector<char> data(bytes, 1);
    // osu_bw receives every message of a window into one buffer, which stays
    // in the processor's cache; a program that keeps its messages (conveyor
    // delivers each in memory of its own) writes a window's worth of memory.
    std::vector<std::vector<char>> one_target(1, std::vector<char>(bytes));
    std::vector<std::vector<char>> distinct_targets(static_cast<std::size_t>(window),
                                                    std::vector<char>(bytes));
    {
        Engine engine(engine_comm, EngineOptions{});
        double moved = static_cast<double>(bytes) * window * windows;
        contest(raw,
                {
                    {"mpi", [&] { mpi_window(raw, data, one_target, window); }},
                    {"mpi-distinct", [&] { mpi_window(raw, data, distinct_targets, window); }},
                    {"engine", [&] { engine_window(engine, data, window); }},
                },
                reps, std::max(1, windows / 10), windows,
                [&](double seconds) { return moved / seconds / 1e6; });  // MB/s
    }
    MPI_Comm_free(&raw);
    MPI_Comm_free(&engine_comm);
    MPI_Finalize();
    return 0;
}
