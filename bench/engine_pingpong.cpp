// The one-way latency of conveyor's engine without Python, beside C MPI's in
// the same job: the floor under conveyor's latency rows (bench/engine_latency.py
// builds and runs it; bench/README.md reads the figures).
//
// Each contestant ping-pongs one small message between ranks 0 and 1,
// `iters` times per repetition after a warm-up, and rank 0 prints the median
// one-way time of `reps` repetitions, alternating the contestants:
//   mpi         MPI_Send / MPI_Recv of 8 bytes (osu_latency)
//   engine      Engine::post of an 8-byte frame, Engine::wait, Engine::pop
//   aggregated  the same through Engine::post_aggregated (a batch per message)
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "contest.hpp"
#include "conveyor/engine/engine.hpp"
#include "conveyor/wire/wire.hpp"

using namespace conveyor;

namespace {

std::vector<std::uint8_t> ping_frame() {
    Writer w;
    write_header(w, FrameKind::Send, 0, "p", {});
    w.u64(7);  // an 8-byte body
    return w.bytes;
}

// One message each way through the engine; the peer answers what it pops.
void engine_round(Engine& engine, bool aggregated, bool first) {
    static const auto frame = ping_frame();
    auto send = [&] {
        if (!aggregated || engine.post_aggregated(1 - engine.rank(), frame.data(), frame.size()) ==
                               Engine::Posted::TooLarge)
            engine.post(1 - engine.rank(), frame, {}, nullptr);
    };
    auto receive = [&] {
        std::unique_ptr<Incoming> in;
        while (!(in = engine.pop())) engine.wait(-1);
        engine.mark_finished(1, 1);
    };
    if (first) {
        send();
        receive();
    } else {
        receive();
        send();
    }
}

void mpi_round(MPI_Comm comm, int rank) {
    static std::uint64_t buffer = 0;
    int peer = 1 - rank;
    if (rank == 0) {
        MPI_Send(&buffer, 8, MPI_BYTE, peer, 0, comm);
        MPI_Recv(&buffer, 8, MPI_BYTE, peer, 0, comm, MPI_STATUS_IGNORE);
    } else {
        MPI_Recv(&buffer, 8, MPI_BYTE, peer, 0, comm, MPI_STATUS_IGNORE);
        MPI_Send(&buffer, 8, MPI_BYTE, peer, 0, comm);
    }
}

}  // namespace

int main(int argc, char** argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int iters = argc > 1 ? std::atoi(argv[1]) : 20000;
    int reps = argc > 2 ? std::atoi(argv[2]) : 9;
    int rank = two_ranks();
    MPI_Comm raw, direct_comm, batch_comm;
    MPI_Comm_dup(MPI_COMM_WORLD, &raw);
    MPI_Comm_dup(MPI_COMM_WORLD, &direct_comm);
    MPI_Comm_dup(MPI_COMM_WORLD, &batch_comm);
    {
        Engine direct(direct_comm, EngineOptions{});
        Engine batched(batch_comm, EngineOptions{});
        // A repetition's figure: the one-way time of its round trips, in microseconds.
        contest(raw,
                {
                    {"mpi", [&] { mpi_round(raw, rank); }},
                    {"engine", [&] { engine_round(direct, false, rank == 0); }},
                    {"aggregated", [&] { engine_round(batched, true, rank == 0); }},
                },
                reps, iters / 10, iters, [&](double seconds) { return seconds / iters / 2 * 1e6; });
    }
    MPI_Comm_free(&raw);
    MPI_Comm_free(&direct_comm);
    MPI_Comm_free(&batch_comm);
    MPI_Finalize();
    return 0;
}
