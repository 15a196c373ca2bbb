"""The fuzzer of the frame decoder: ``python tests/fuzz/fuzz_frames.py [libFuzzer options] CORPUS_DIR...``.

libFuzzer (through atheris) is guided by the coverage of the Python code of
`frames` alone, which this script instruments: the extension is not
compiled for coverage, and instrumenting numpy and conveyor as well made
every input ten times slower. ``make fuzz`` runs it on the sanitized build.
"""

import sys

import atheris

with atheris.instrument_imports(include=["frames"]):
    import frames

if __name__ == "__main__":
    frames.main(sys.argv)
