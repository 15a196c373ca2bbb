"""What every benchmark records about its run, so results can be compared later."""

import os
import platform
import sys
import time

import mpi4py
import numpy as np
from mpi4py import MPI

import conveyor as cv

from ..cli.launch import THREAD_VARIABLES
from .machine import cpu_model


def run_metadata(**settings):
    """Return the run's command, machine, versions, CONVEYOR_* and BLAS thread settings, plus `settings`."""
    return {
        "argv": sys.argv,
        **settings,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi": MPI.Get_library_version().strip(),
        "conveyor": cv.__version__,
        "env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith("CONVEYOR_") or k in THREAD_VARIABLES
        },
    }
