"""Build the native core of conveyor against the MPI that mpi4py uses.

MPI is found the way mpi4py finds it: the ``MPICC`` environment variable,
else ``mpicc`` on ``PATH``. With neither, the ``mpich`` wheel from PyPI is
added to the build requirements (and to the run-time ones), so that a plain
``pip install .`` works on a machine without a system MPI.
"""

import glob
import os
import shlex
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


def find_mpicc():
    """Return the MPI compiler wrapper, or None when there is none yet."""
    mpicc = os.environ.get("MPICC")
    if mpicc:
        return mpicc
    for directory in (os.path.dirname(sys.executable), None):
        found = shutil.which("mpicc", path=directory)
        if found:
            return found
    return None


def is_mpich_wheel(mpicc):
    """Return True if `mpicc` is the one the ``mpich`` wheel installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution("mpich")
    except metadata.PackageNotFoundError:
        return False
    wrapper = shutil.which(mpicc) or mpicc
    for entry in dist.files or ():
        if entry.name == "mpicc":
            path = str(dist.locate_file(entry))
            if os.path.exists(path) and os.path.samefile(path, wrapper):
                return True
    return False


def mpi_flags(mpicc):
    """Split the wrapper's command line into setuptools arguments."""
    words = None
    for option in ("-show", "--showme"):  # MPICH / Intel MPI, then Open MPI
        try:
            out = subprocess.run(
                shlex.split(mpicc) + [option], capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        words = shlex.split(out)[1:]
        break
    if words is None:
        sys.exit(f"conveyor: cannot query the MPI compiler wrapper {mpicc!r} for its flags")
    flags = {"include_dirs": [], "library_dirs": [], "libraries": [], "extra_link_args": []}
    for word in words:
        if word.startswith("-I"):
            flags["include_dirs"].append(word[2:])
        elif word.startswith("-L"):
            flags["library_dirs"].append(word[2:])
        elif word.startswith("-l"):
            flags["libraries"].append(word[2:])
        elif word.startswith("-Wl,") or word == "-pthread":
            flags["extra_link_args"].append(word)
    return flags


class BuildMPIExtensions(build_ext):
    """Add the MPI flags only when something is compiled (not for sdists)."""

    def build_extensions(self):
        mpicc = find_mpicc()
        if mpicc is None:
            sys.exit("conveyor: no MPI found; set MPICC=/path/to/mpicc or pip install mpich")
        flags = mpi_flags(mpicc)
        for ext in self.extensions:
            for key, values in flags.items():
                getattr(ext, key).extend(values)
        super().build_extensions()


def extensions():
    import mpi4py
    from Cython.Build import cythonize
    from pybind11.setup_helpers import Pybind11Extension
    from setuptools import Extension

    cxxflags = ["-O3", "-fvisibility=hidden", "-pthread"]
    core = Pybind11Extension(
        "conveyor._core",
        # Every C++ source of csrc/ (tests/test_cpp.py finds the core's the
        # same way): a new file needs no edit here.
        sources=sorted(glob.glob("csrc/**/*.cpp", recursive=True)),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=cxxflags,
        extra_link_args=["-pthread"],  # the engine's background thread
    )
    bridge = Extension(
        "conveyor._mpi",
        sources=["pycore/conveyor/_mpi.pyx"],
        include_dirs=[mpi4py.get_include()],
        language="c++",
        extra_compile_args=["-O2"],
    )
    # The generated C++ goes to build/, not into the package it would ship with.
    return [core] + cythonize([bridge], language_level=3, quiet=True, build_dir="build/cython")


mpicc = find_mpicc()
# Built against the mpich wheel (found, or about to be fetched into an isolated
# build environment), the package needs that wheel at run time too.
uses_mpich_wheel = mpicc is None or is_mpich_wheel(mpicc)
setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildMPIExtensions},
    # setuptools' PEP 517 backend turns setup_requires into build requirements.
    setup_requires=["mpich"] if mpicc is None else [],
    install_requires=["numpy>=1.22", "mpi4py>=4.0", "cloudpickle>=2"] + (["mpich"] if uses_mpich_wheel else []),
)
