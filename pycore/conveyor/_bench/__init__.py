"""The OSU-style benchmarks behind ``conveyor bench`` (conveyor vs raw mpi4py)."""
