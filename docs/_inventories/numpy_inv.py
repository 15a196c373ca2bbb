"""Compile numpy.txt (beside this file) into the Sphinx inventory numpy.inv.

Run by ``make docs-inventories``; see docs/conf.py for why the inventories
are committed.
"""

import pathlib
import zlib

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    """Write numpy.inv from the lines of numpy.txt that are not comments."""
    lines = [
        line
        for line in (HERE / "numpy.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    header = (
        "# Sphinx inventory version 2\n"
        "# Project: NumPy\n"
        "# Version: stable\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = zlib.compress(("\n".join(lines) + "\n").encode(), 9)
    (HERE / "numpy.inv").write_bytes(header.encode() + body)


if __name__ == "__main__":
    main()
