"""Starting ranks: the one mpiexec finder and environment, and jobs in a process group.

``conveyor run``, ``conveyor shell -n N``, ``conveyor bench`` and the test
harness start their ranks through this module; it imports nothing of MPI,
so the launching process never initialises it.
"""

import os
import shutil
import signal
import subprocess
import sys

__all__ = [
    "INTERRUPTED",
    "MPIEXEC_HELP",
    "RANK_VARIABLES",
    "STATE_GRACE",
    "TERMINATE_GRACE",
    "THREAD_VARIABLES",
    "TIMED_OUT",
    "descendants",
    "fault_tolerance_options",
    "find_mpiexec",
    "find_srun",
    "inside_mpi_job",
    "kill_group",
    "mpiexec_environment",
    "rank_from_environment",
    "rank_of_task",
    "rank_threads",
    "require_mpiexec",
    "run_in_group",
    "start_in_group",
    "stopped_reason",
]

# Exit statuses of a job that did not end by itself, as timeout(1) and a shell report them.
TIMED_OUT = 124
INTERRUPTED = 130


def stopped_reason(status, timeout):
    """What a launcher says of a job that `run_in_group` stopped; None if it ended by itself.

    Parameters
    ----------
    status : int
        `run_in_group`'s return value.
    timeout : float
        The seconds the job was given.

    Returns
    -------
    str or None
        The reason, to follow the launcher's name on standard error.
    """
    if status == TIMED_OUT:
        return (
            f"still running after {timeout:g} s: asked every rank for its state, "
            "then killed every rank"
        )
    if status == INTERRUPTED:
        return "interrupted: killed every rank"
    return None


# Where a process that mpiexec started finds its rank (MPICH's hydra and other
# PMI launchers, Open MPI, PMIx): read without initialising MPI.
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")

# What sizes the thread pools of numpy's BLAS (OpenBLAS, MKL) and of OpenMP code.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

MPIEXEC_HELP = (
    "the mpiexec to use (default: $CONVEYOR_MPIEXEC, else the one next to this "
    "Python, else the one on PATH)"
)


def rank_from_environment():
    """The rank mpiexec gave this process, or None if it was not started by mpiexec."""
    for variable in RANK_VARIABLES:
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return None


def rank_of_task():
    """The rank of this process under mpiexec or srun; None if neither started it.

    srun's tasks know theirs from ``SLURM_PROCID`` whichever MPI plugin it
    runs (the variables of `RANK_VARIABLES` come first: an sbatch script,
    which mpiexec may run in, has ``SLURM_PROCID=0`` too).
    """
    rank = rank_from_environment()
    if rank is None and os.environ.get("SLURM_PROCID", "").isdigit():
        rank = int(os.environ["SLURM_PROCID"])
    return rank


def inside_mpi_job():
    """Whether this process is a rank that mpiexec started."""
    return rank_from_environment() is not None


def find_mpiexec(explicit=None):
    """Return the mpiexec to start ranks with.

    Parameters
    ----------
    explicit : str, optional
        A path or command name given with ``--mpiexec``; it wins.

    Returns
    -------
    str or None
        `explicit` resolved, else ``$CONVEYOR_MPIEXEC`` resolved, else the
        mpiexec next to this Python (the mpich wheel installs it there),
        else the one on ``PATH``; None if the chosen one is not an
        executable or there is none.
    """
    # A system mpiexec on PATH may belong to another MPI than the one mpi4py
    # was built with, so the one beside this interpreter comes before it.
    chosen = explicit if explicit is not None else os.environ.get("CONVEYOR_MPIEXEC")
    if chosen:
        return shutil.which(chosen)
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def find_srun():
    """Return the srun to start ranks with inside a Slurm allocation, or None.

    Returns
    -------
    str or None
        ``srun`` on ``PATH`` if ``SLURM_JOB_ID`` is set (this process runs
        inside an allocation: an ``sbatch`` script or a ``salloc`` shell);
        None otherwise.
    """
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    return shutil.which("srun")


def rank_threads(nranks, srun=False):
    """The threads each of `nranks` ranks may give its BLAS and OpenMP: its share of the cores.

    numpy's OpenBLAS starts a thread per core in every process that imports
    it, and they spin for a while after each call: ranks that each start
    as many as the machine has cores take the cores from one another
    (ranks multiplying matrices on this project's 2-core machine took 4 to
    15 times as long: bench/blas_threads.py). mpiexec starts every rank
    here: the cores this process may run on, shared, at least 1 each.
    srun's tasks run on the allocation's nodes: ``SLURM_CPUS_PER_TASK``
    (``--cpus-per-task``), else 1.

    Parameters
    ----------
    nranks : int
        The number of ranks started.
    srun : bool, default False
        Whether srun starts them.

    Returns
    -------
    int
        Threads per rank, at least 1.
    """
    if srun:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        return int(cpus) if cpus.isdigit() and int(cpus) > 0 else 1
    return max(1, len(os.sched_getaffinity(0)) // max(1, nranks))


def mpiexec_environment(environ=None, threads=None):
    """The environment to start mpiexec in: `environ` and what Open MPI needs to run as MPICH does.

    MPICH's mpiexec starts ranks as root and more ranks than there are
    cores. Open MPI's refuses both unless told: as root (containers and CI
    machines run as root) it wants ``OMPI_ALLOW_RUN_AS_ROOT`` and its
    confirmation, and it starts no more ranks than cores without the
    oversubscribe mapping (``PRTE_MCA_rmaps_default_mapping_policy`` in
    Open MPI 5, ``OMPI_MCA_rmaps_base_oversubscribe`` in 4). Variables
    rather than options: other MPIs ignore them, so the command line stays
    ``mpiexec -n N`` whichever MPI it is, and a value the user set wins.

    Parameters
    ----------
    environ : mapping, optional
        The environment to start from (default: this process's).
    threads : int, optional
        Each rank's threads for BLAS and OpenMP (`rank_threads`), set in
        `THREAD_VARIABLES` that the user did not set, as Dask and Ray set
        them for their workers.

    Returns
    -------
    dict
        A copy of `environ` with the variables it does not set yet.
    """
    defaults = {
        "PRTE_MCA_rmaps_default_mapping_policy": ":OVERSUBSCRIBE",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
    }
    if os.geteuid() == 0:
        defaults.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if threads is not None:
        defaults.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    return {**defaults, **(os.environ if environ is None else environ)}


def fault_tolerance_options(mpiexec):
    """The options that make `mpiexec` leave the other ranks running when one dies.

    MPICH's hydra: ``-disable-auto-cleanup``; Open MPI's (PRRTE):
    ``--enable-recovery``. Neither turns on MPI-level fault tolerance
    (Open MPI's ``--with-ft ulfm`` does, and then the engine's own MPI calls
    fail on a dead rank): the messenger's heartbeats find the dead rank
    (``Messenger(fault_tolerant=True)``). An MPICH job still ends when a
    rank is killed by a signal: hydra ends it whatever the option says.

    Returns
    -------
    list of str or None
        The options; None if `mpiexec` is neither MPI's (``--version`` says).
    """
    try:
        version = subprocess.run(
            [mpiexec, "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if "HYDRA" in version:
        return ["-disable-auto-cleanup"]
    if "Open MPI" in version or "PRRTE" in version or "OpenRTE" in version:
        return ["--enable-recovery"]
    return None


def require_mpiexec(parser, explicit):
    """`find_mpiexec`, or a usage error of `parser` saying what to do."""
    mpiexec = find_mpiexec(explicit)
    if mpiexec is None:
        if explicit is not None:
            parser.error(f"argument --mpiexec: {explicit!r} is not an executable")
        if os.environ.get("CONVEYOR_MPIEXEC"):
            parser.error(
                f"CONVEYOR_MPIEXEC={os.environ['CONVEYOR_MPIEXEC']!r} is not an executable"
            )
        parser.error(
            "no mpiexec found: install the mpich wheel (pip install mpich), "
            "set CONVEYOR_MPIEXEC or pass --mpiexec"
        )
    return mpiexec


def start_in_group(cmd, threads=None, **popen_options):
    """Start the mpiexec job `cmd` as the leader of a new process group (and session).

    Every process mpiexec starts stays in that group, so `kill_group` ends
    the whole job, and a Ctrl-C typed at the terminal reaches only us. It
    runs in `mpiexec_environment`, with `threads` per rank if given.

    Returns
    -------
    subprocess.Popen
    """
    env = mpiexec_environment(threads=threads)
    return subprocess.Popen(cmd, start_new_session=True, env=env, **popen_options)


def descendants(pid):
    """The processes below `pid`, from Linux's /proc (none where there is no /proc)."""
    children = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (command) state ppid ...": the command may hold spaces and ')'.
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a process that just ended
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_group(proc):
    """Kill `proc` (from `start_in_group`), its descendants and its group, then reap it.

    The group holds what mpiexec started, except where mpiexec gives each
    rank a session of its own (MPICH's hydra does): while `proc` runs, its
    descendants are found and killed one by one too.
    """
    stray = descendants(proc.pid) if proc.poll() is None else []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is empty: the job ended whole
        pass
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# Seconds a launcher asked to stop (run_in_group's `terminate`) has before its group is killed.
TERMINATE_GRACE = 10.0
# Seconds a job that timed out has to log its ranks' state (SIGUSR1) before it is stopped.
STATE_GRACE = 1.0


def run_in_group(cmd, timeout=None, terminate=None, threads=None):
    """Run `cmd` in its own process group until it ends; its output goes to ours.

    Whatever is left of the group afterwards is killed: after a timeout,
    after Ctrl-C, and ranks that outlived mpiexec. A job that times out is
    first asked where it is: `cmd` gets SIGUSR1, which mpiexec (MPICH's and
    Open MPI's) and srun pass on to every rank, where each open messenger
    logs its state (`conveyor._diagnostics.watch`); it has `STATE_GRACE`
    seconds for that.

    Parameters
    ----------
    cmd : list of str
        The command (``[mpiexec, "-n", ...]``).
    timeout : float, optional
        Seconds before the job is killed; None or 0: no limit.
    terminate : int, optional
        A signal sent to `cmd` alone after a timeout or Ctrl-C, before its
        group is killed, which it has `TERMINATE_GRACE` seconds to obey:
        ``SIGTERM`` for srun, whose tasks run on other nodes, outside the
        group, and which ends them when told so.
    threads : int, optional
        Each rank's threads for BLAS and OpenMP (`mpiexec_environment`).

    Returns
    -------
    int
        The exit status of `cmd`; `TIMED_OUT` if it was killed after
        `timeout` seconds, `INTERRUPTED` after Ctrl-C.
    """
    proc = start_in_group(cmd, threads=threads)
    try:
        return proc.wait(timeout=timeout or None)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(timeout=STATE_GRACE)
        except subprocess.TimeoutExpired:
            pass  # the usual case: still hung, to be stopped below
        return TIMED_OUT
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        if terminate is not None and proc.poll() is None:
            proc.send_signal(terminate)
            try:
                proc.wait(timeout=TERMINATE_GRACE)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: at once
                pass
        kill_group(proc)
