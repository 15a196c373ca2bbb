"""Build the HTML documentation into OUTDIR, as strict as ``make docs`` is.

Usage: ``python docs/build_docs.py OUTDIR``. ``make docs`` and tests/release/test_docs.py
both call it, so the options live here once. The API pages import the
installed ``conveyor`` (its compiled core included): run it with the
interpreter conveyor is installed in.
"""

import pathlib
import sys

from sphinx.cmd.build import build_main

DOCS = pathlib.Path(__file__).resolve().parent

# Every warning fails the build (-W), after all of them are reported
# (--keep-going). conf.py makes the build nitpicky: every reference resolves.
OPTIONS = ["-W", "--keep-going", "-q", "-b", "html"]


def main(argv: list[str]) -> int:
    """Build the docs into the directory ``argv[0]``; return the exit status."""
    if len(argv) != 1:
        sys.exit("usage: python docs/build_docs.py OUTDIR")
    return build_main([*OPTIONS, str(DOCS), argv[0]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
