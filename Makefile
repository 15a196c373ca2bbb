# The two commands of the README: `make demo` and `make test` (both set up .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
NP ?= 4
SOURCES := setup.py pyproject.toml $(shell find csrc pycore -name '*.cpp' -o -name '*.hpp' -o -name '*.py' -o -name '*.pyx' 2>/dev/null)

.PHONY: all venv install demo test docs bench clean

all: install

# MPI comes from the mpich wheel unless MPICC points at a system MPI.
$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(MPICC),,mpich) "mpi4py>=4" numpy "cloudpickle>=2" "pybind11>=2.12" "Cython>=3" setuptools wheel \
		pytest hypothesis "sphinx>=7" "numpydoc>=1.6" pytest-benchmark "matplotlib>=3.5" \
		"dask[array,distributed]>=2024"
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps .
	touch $@

install: $(VENV)/.installed

demo: install
	$(MPIEXEC) -n $(NP) $(PY) examples/kmer_count.py

test: install
	$(PY) -m pytest -q tests

docs: install
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

# conveyor bench, keeping its JSON and plot in bench/results/.
bench: install
	$(PY) bench/run.py

clean:
	rm -rf build docs/_build $(VENV) pycore/conveyor/*.so
