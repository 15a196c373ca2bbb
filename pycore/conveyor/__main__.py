"""``python -m conveyor``: the ``conveyor`` command (see `conveyor.cli.main`)."""

import sys

from .cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
