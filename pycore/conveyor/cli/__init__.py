"""The command line of conveyor: ``conveyor run``, ``shell``, ``script``, ``bench`` and ``trace``.

One module per concept, dependencies pointing down: `main` builds the
parser and dispatches; `run`, `shell` and the bench package's launcher
start ranks through `launch`; the shell's language is `grammar`, carried
out by `interpreter` against the `service` every rank registers.
Nothing here imports MPI until a rank needs it: a process that only
parses options or starts ``mpiexec`` never initialises MPI.
"""
