// What the engine's C++ benchmarks (engine_pingpong.cpp, engine_window.cpp)
// share: contestants timed in turn in one job, and rank 0's report.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

// This rank of MPI_COMM_WORLD, which must have two ranks (else the job aborts).
inline int two_ranks() {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
        if (rank == 0) std::fprintf(stderr, "run on 2 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return rank;
}

// A name and one round of it, run by both ranks.
using Contestants = std::vector<std::pair<std::string, std::function<void()>>>;

// Runs the contestants in turn `reps` times: each time `warmup` untimed
// rounds, a barrier on `comm`, then `rounds` timed ones, whose seconds
// `figure` turns into the repetition's figure. Rank 0 prints a line per
// contestant: its name and the median, lowest and highest figure.
inline void contest(MPI_Comm comm, const Contestants& contestants, int reps, int warmup, int rounds,
                    const std::function<double(double)>& figure) {
    std::map<std::string, std::vector<double>> figures;
    for (int rep = 0; rep < reps; ++rep)
        for (const auto& [name, round] : contestants) {
            for (int i = 0; i < warmup; ++i) round();
            MPI_Barrier(comm);
            auto start = std::chrono::steady_clock::now();
            for (int i = 0; i < rounds; ++i) round();
            std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
            figures[name].push_back(figure(took.count()));
        }
    MPI_Barrier(comm);
    int rank;
    MPI_Comm_rank(comm, &rank);
    if (rank != 0) return;
    for (auto& [name, f] : figures) {
        std::sort(f.begin(), f.end());
        std::printf("%s %.3f %.3f %.3f\n", name.c_str(), f[f.size() / 2], f.front(), f.back());
    }
}
