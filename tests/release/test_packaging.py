"""The distribution conveyor-mpi: what `make dist` builds, installed as a user would.

One `make dist` per session. Its sdist and its wheel each go into a fresh venv
and run a 2-rank program there; the wheel's venv has no compiler on PATH. The
dependencies and build requirements come from a wheelhouse of the versions
installed here, so those venvs differ from this one by conveyor alone (pip's
cache serves the wheelhouse after the first download).
"""

import importlib.util
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import types
import zipfile
from importlib import metadata

import pytest
from elftools.elf.elffile import ELFFile

import conveyor

from conftest import ROOT, run_command

pytestmark = pytest.mark.slow

# What conveyor-mpi needs at run time, with the mpich wheel as its MPI, and
# what building it from the sdist needs (build-system.requires).
WHEELHOUSE = (
    "numpy",
    "mpi4py",
    "cloudpickle",
    "xxhash",
    "mpich",
    "setuptools",
    "pybind11",
    "Cython",
)

PROGRAM = '''\
"""Rank 0 sends rank 1 an array, then requests its sum from rank 1."""
import numpy as np
import conveyor as cv

data = np.arange(100_000, dtype=np.int64)  # 800 kB: travels out of band
with cv.Messenger() as m:
    received = []

    @m.on("array")
    def keep(msg):
        received.append(msg.payload)

    @m.on("sum")
    def total(msg):
        return int(msg.payload.sum())

    if m.rank == 0:
        m.send(1, "array", data)
        assert m.request(1, "sum", data).result(timeout=30) == data.sum()
    m.wait_quiet()
    if m.rank == 1:
        assert len(received) == 1 and np.array_equal(received[0], data)
    print(f"rank {m.rank} ok {cv.__version__} {cv.__file__}")
'''


def check(cmd, timeout, **kwargs):
    """Run `cmd`; fail with what it printed unless it exits 0."""
    result = run_command(cmd, timeout=timeout, **kwargs)
    if result.returncode != 0:
        pytest.fail(
            f"{cmd} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
            f"--- stderr\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def dist():
    """`make dist` with this interpreter's venv: the sdist and the wheel."""
    if not pathlib.Path(sys.prefix, ".deps").exists():
        pytest.skip("make dist needs a venv set up by the Makefile")
    check(["make", "-C", str(ROOT), "dist", f"VENV={sys.prefix}"], timeout=600)
    (sdist,) = (ROOT / "dist").glob("conveyor_mpi-*.tar.gz")
    (wheel,) = (ROOT / "dist").glob("conveyor_mpi-*.whl")
    return types.SimpleNamespace(sdist=sdist, wheel=wheel)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """Wheels of the dependencies and build requirements, at the versions installed here."""
    try:
        pins = [f"{name}=={metadata.version(name)}" for name in WHEELHOUSE]
    except metadata.PackageNotFoundError as exc:
        pytest.skip(f"the installed-as-a-user tests need the mpich wheel ({exc})")
    where = tmp_path_factory.mktemp("wheelhouse")
    check(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--dest",
            str(where),
            *pins,
        ],
        timeout=300,
    )
    return where


def make_venv(where):
    """A fresh venv without pip: this venv's pip installs into it (pip --python)."""
    check([sys.executable, "-m", "venv", "--without-pip", str(where)], timeout=60)
    return where / "bin" / "python"


def pip_install(python, wheelhouse, *args, env=None):
    check(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            *args,
        ],
        timeout=600,
        env=env,
    )


def run_program(venv, bindir, cwd):
    """Run PROGRAM on 2 ranks with `bindir`'s mpiexec, `bindir` alone on PATH."""
    script = cwd / "program.py"
    script.write_text(PROGRAM)
    env = {"PATH": str(bindir), "PYTHONPATH": ""}
    out = check(
        [str(bindir / "mpiexec"), "-n", "2", "python", str(script)], timeout=120, env=env, cwd=cwd
    ).stdout
    site = pathlib.Path(sysconfig.get_path("purelib", vars={"base": str(venv)}))
    for rank in (0, 1):
        assert f"rank {rank} ok {conveyor.__version__} {site / 'conveyor' / '__init__.py'}" in out


def test_sdist_installs_and_runs(dist, wheelhouse, tmp_path):
    venv = tmp_path / "venv"
    python = make_venv(venv)
    # As on a machine without MPI: the mpich wheel first, which the build finds
    # next to the interpreter; pip builds the sdist in an isolated environment.
    pip_install(python, wheelhouse, "mpich")
    pip_install(python, wheelhouse, str(dist.sdist))
    run_program(venv, venv / "bin", tmp_path)


def test_wheel_installs_and_runs_without_a_compiler(dist, wheelhouse, tmp_path):
    venv = tmp_path / "venv"
    python = make_venv(venv)
    # PATH holds python and mpiexec only: no cc, c++, gcc or mpicc. python is a
    # script, not a link: the venv is found from the path the interpreter runs as.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    (bare / "python").chmod(0o755)
    nothing_to_compile = {"PATH": str(bare), "CC": "/bin/false", "CXX": "/bin/false"}
    pip_install(
        python, wheelhouse, "--only-binary", ":all:", f"{dist.wheel}[mpich]", env=nothing_to_compile
    )
    for name in ("mpiexec", "hydra_pmi_proxy"):  # mpiexec starts its proxy from its own folder
        (bare / name).symlink_to(venv / "bin" / name)
    for compiler in ("cc", "c++", "gcc", "g++", "mpicc"):
        assert shutil.which(compiler, path=str(bare)) is None
    run_program(venv, bare, tmp_path)


def dynamic_entries(elf_bytes, kind):
    """The values of a shared object's dynamic entries of one kind (DT_NEEDED, ...)."""
    dynamic = ELFFile(io.BytesIO(elf_bytes)).get_section_by_name(".dynamic")
    field = kind[3:].lower()  # pyelftools names the value after the tag: DT_RUNPATH -> runpath
    return [getattr(tag, field) for tag in dynamic.iter_tags() if tag.entry.d_tag == kind]


def libmpi_needed(elf_bytes):
    """The libmpi sonames a shared object needs."""
    return [name for name in dynamic_entries(elf_bytes, "DT_NEEDED") if name.startswith("libmpi")]


def test_wheel_is_relocatable_and_manylinux(dist):
    assert re.fullmatch(
        r"conveyor_mpi-[^-]+-cp\d+-cp\d+-manylinux_\d+_\d+_x86_64\.whl", dist.wheel.name
    )
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = wheel.namelist()
        extensions = [name for name in names if name.endswith(".so")]
        assert sorted(pathlib.PurePath(name).name.split(".")[0] for name in extensions) == [
            "_core",
            "_mpi",
        ]
        for name in extensions:
            data = wheel.read(name)
            paths = [
                path
                for kind in ("DT_RPATH", "DT_RUNPATH")
                for entry in dynamic_entries(data, kind)
                for path in entry.split(":")
            ]
            # A run path may only lead inside the installed package.
            assert all(path.startswith("$ORIGIN") for path in paths), (name, paths)
        # libmpi comes from the MPI that mpi4py loads, never from the wheel.
        assert not [name for name in names if "libmpi" in name]
        # The wheel links the libmpi its MPI's wrapper names, as the build
        # installed here does: libmpi.so.12 (MPICH's ABI) in .venv.
        core = wheel.read(next(name for name in extensions if "/_core" in name))
        installed = pathlib.Path(importlib.util.find_spec("conveyor._core").origin)
        assert libmpi_needed(core) == libmpi_needed(installed.read_bytes())
        tags = [
            line
            for line in wheel.read(f"conveyor_mpi-{conveyor.__version__}.dist-info/WHEEL")
            .decode()
            .splitlines()
            if line.startswith("Tag:")
        ]
        assert tags and all("manylinux_" in tag for tag in tags)


def test_metadata(dist):
    with zipfile.ZipFile(dist.wheel) as wheel:
        info = f"conveyor_mpi-{conveyor.__version__}.dist-info"
        meta = wheel.read(f"{info}/METADATA").decode()
        assert "BSD 3-Clause License" in wheel.read(f"{info}/licenses/LICENSE").decode()
    fields = [line.split(": ", 1) for line in meta.split("\n\n", 1)[0].splitlines()]
    assert ["Name", "conveyor-mpi"] in fields
    assert ["Version", conveyor.__version__] in fields
    assert ["License-Expression", "BSD-3-Clause"] in fields
    assert ["License-File", "LICENSE"] in fields
    requires = [value for key, value in fields if key == "Requires-Dist"]
    # MPI is whatever mpi4py loads: the mpich wheel only through the extra.
    assert [r for r in requires if "extra ==" not in r] == [
        "numpy>=1.22",
        "mpi4py>=4.0",
        "cloudpickle>=2",
        "xxhash>=3",
    ]
    assert 'mpich; extra == "mpich"' in requires
    assert not [r for r in requires if "benchmark" in r]
    extras = {value for key, value in fields if key == "Provides-Extra"}
    assert extras == {"plot", "mpich", "test", "docs", "bench", "hdf5", "progress"}


def test_sdist_holds_the_tracked_files(dist):
    """The sdist builds and tests: every file git tracks is in it, less git's own and CI's."""
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("needs a git checkout")
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    expected = {name for name in tracked if name not in (".gitignore", ".ci/run")}
    with tarfile.open(dist.sdist) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert expected - members == set()
    assert not [
        name for name in members if name.startswith("build/") or name.endswith((".so", ".o"))
    ]
    assert top == f"conveyor_mpi-{conveyor.__version__}"


def test_header_change_rebuilds_the_core(dist, tmp_path):
    """setuptools rebuilds _core when a header is newer than it, not only a .cpp.

    Stand-ins newer than every source play the built extensions; the compiler
    is /bin/false, so a rebuild shows as its log line and a failed compile.
    """
    with tarfile.open(dist.sdist) as sdist:
        sdist.extractall(tmp_path, filter="data")
    (src,) = tmp_path.iterdir()
    lib = tmp_path / "lib"
    (lib / "conveyor").mkdir(parents=True)
    later = time.time() + 60
    for name in ("_core", "_mpi"):
        built = lib / "conveyor" / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
        built.touch()
        os.utime(built, (later, later))

    def build_ext():
        result = run_command(
            [sys.executable, "setup.py", "-v", "build_ext", "--build-lib", str(lib)],
            timeout=120,
            cwd=src,
            env={"CC": "/bin/false", "CXX": "/bin/false"},
        )
        return result.returncode, result.stdout + result.stderr

    returncode, log = build_ext()
    assert returncode == 0 and "skipping 'conveyor._core' extension (up-to-date)" in log, log
    os.utime(src / "csrc" / "conveyor" / "wire" / "wire.hpp", (later + 60, later + 60))
    returncode, log = build_ext()
    assert returncode != 0 and "building 'conveyor._core' extension" in log, log
