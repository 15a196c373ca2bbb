"""Build the native core of conveyor against the MPI that mpi4py uses.

MPI is found the way mpi4py finds it: the ``MPICC`` environment variable,
else ``mpicc`` next to the interpreter or on ``PATH`` (``pip install mpich``
puts one there). The metadata is static, in pyproject.toml.
"""

import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys

from pybind11.setup_helpers import ParallelCompile
from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py


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
        elif word == "-pthread":
            flags["extra_link_args"].append(word)
    flags["extra_link_args"] += linker_options(words)
    return flags


def linker_options(words):
    """The wrapper's ``-Wl,`` options, less those that set a run path.

    No run path: the extension finds libmpi because mpi4py has already loaded
    it (see conveyor/_native.py), and a wheel must not point into the build
    machine's directories.
    """
    options = [
        option for word in words if word.startswith("-Wl,") for option in word[4:].split(",")
    ]
    kept = []
    value_follows = False
    for option in options:
        if value_follows:
            value_follows = False
        elif option in ("-rpath", "-R"):
            value_follows = True
        elif not option.startswith(("-rpath=", "--enable-new-dtags", "--disable-new-dtags")):
            kept.append(option)
    return ["-Wl," + ",".join(kept)] if kept else []


def build_base():
    """A build directory of the MPI's own: ``build/mpi-<digest of its wrapper>``.

    setuptools rebuilds an extension only when a source is newer than it: in
    one shared build/, the extensions built against one MPI were installed
    as they were into an environment of another (``make test MPI=openmpi``,
    then ``make test``), where they could not load.
    """
    mpicc = find_mpicc()
    if mpicc is None:
        return "build"
    words = shlex.split(mpicc)
    wrapper = os.path.realpath(shutil.which(words[0]) or words[0])
    digest = hashlib.sha256(shlex.join([wrapper, *words[1:]]).encode()).hexdigest()
    return os.path.join("build", f"mpi-{digest[:12]}{'-sanitize' if sanitized() else ''}")


def sanitized():
    """Whether to build with AddressSanitizer and UBSan (``make sanitize`` sets it).

    The fuzzer runs on that build (tests/fuzz): an out-of-bounds read or an
    overflow in the codec then ends the process with a report, where the
    normal build might go on with wrong data.
    """
    return os.environ.get("CONVEYOR_SANITIZE") == "1"


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


class BuildPythonFresh(build_py):
    """Copy the package's Python files, dropping the ones the sources no longer have.

    The build directory outlives a build (one per MPI, for the extensions'
    sake) and build_py only adds to it: a module deleted or moved in pycore/
    stayed there and was installed again beside what replaced it.
    """

    def run(self):
        built = os.path.join(self.build_lib, "conveyor")
        for path in glob.glob(os.path.join(built, "**", "*.py*"), recursive=True):
            source = os.path.join("pycore", os.path.relpath(path, self.build_lib))
            if path.endswith((".py", ".pyi")) and not os.path.exists(source):
                os.remove(path)
        super().run()


def extensions():
    import mpi4py
    from Cython.Build import cythonize
    from pybind11.setup_helpers import Pybind11Extension
    from setuptools import Extension

    cxxflags = ["-O3", "-fvisibility=hidden", "-pthread"]
    linkflags = ["-pthread"]  # the engine's background thread
    if sanitized():
        # Any undefined behaviour aborts (no recovery): a fuzzer counts it as a crash.
        checks = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        cxxflags = [
            *checks,
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fvisibility=hidden",
            "-pthread",
        ]
        linkflags += checks
    # setuptools rebuilds an extension only when a source or one of its depends
    # is newer than it: without the headers and this script (its flags), an
    # edit of either left a stale extension in build/ for `pip install .`.
    core = Pybind11Extension(
        "conveyor._core",
        # Every C++ source of csrc/ (tests/cpp/test_cpp.py finds the core's the
        # same way): a new file needs no edit here.
        sources=sorted(glob.glob("csrc/**/*.cpp", recursive=True)),
        include_dirs=["csrc"],
        depends=sorted(glob.glob("csrc/**/*.hpp", recursive=True)) + ["setup.py"],
        cxx_std=17,
        extra_compile_args=cxxflags,
        extra_link_args=linkflags,
    )
    bridge = Extension(
        "conveyor._mpi",
        sources=["pycore/conveyor/_mpi.pyx"],
        include_dirs=[mpi4py.get_include()],
        language="c++",
        depends=["setup.py"],
        extra_compile_args=["-O2"],
    )
    # The generated C++ goes to build/, not into the package it would ship with.
    return [core] + cythonize([bridge], language_level=3, quiet=True, build_dir="build/cython")


# The core's C++ sources compile side by side, one per CPU (CONVEYOR_BUILD_JOBS
# to choose): one after another, a build took most of `make install`'s time.
# Every source is compiled whenever the extension is rebuilt, as setuptools
# decides from the sources and depends: a source's own date would miss a
# header it includes.
ParallelCompile("CONVEYOR_BUILD_JOBS").install()

setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildMPIExtensions, "build_py": BuildPythonFresh},
    options={"build": {"build_base": build_base()}},
)
