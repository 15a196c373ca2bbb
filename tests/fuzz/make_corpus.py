"""Write the fuzzer's seed corpus: ``python tests/fuzz/make_corpus.py [DIR]``.

Two kinds of seeds, as `frames.check` reads them: frames the encoder made
for payloads of every carrier (a first byte of 0: decoded as they are, so
that libFuzzer's byte mutations start from valid structure), and recipes
of random bytes (a first byte of 1: a payload is built from them, encoded,
checked and forged). The seeds are the same on every run: the committed
corpus (tests/fuzz/corpus) is this script's output, which a test checks.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
import sys

import numpy as np

import conveyor as cv

from frames import KINDS, NEVER_OUT_OF_BAND, Blob, encode_frame

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"

PAYLOADS = [
    None,
    True,
    -7,
    2**90,
    2.5,
    complex(1, -1),
    "text \udcff",
    b"bytes",
    bytearray(b"ba"),
    memoryview(b"abcdefgh").cast("h", [2, 2]),
    [1, (2, [3.0, {"k": None}])],
    {"a": np.arange(5), 7: b"x", ("t", 1): "v"},
    np.arange(12, dtype=">i4").reshape(3, 4, order="F"),
    np.zeros((0, 3), "<f8"),
    np.array(["ab", "c"], "<U2"),
    np.array([1, 2], "M8[ns]"),
    np.zeros(2, [("a", "<u8"), ("b", [("c", "<f4", (2,)), ("d", "S3")])]),
    np.zeros(1, np.dtype({"names": ["x"], "formats": ["<i2"], "offsets": [2], "itemsize": 6})),
    np.float32(1.5),
    np.void(b"\x01\x02"),
    cv.Address(3, "name", 9),
    Blob(b"item", [np.arange(3)]),
]
RECIPES = 24  # random byte strings, of 16 to 400 bytes


def seeds() -> list[bytes]:
    """Every seed, in a fixed order."""
    out = []
    for i, payload in enumerate(PAYLOADS):
        for threshold in (NEVER_OUT_OF_BAND, 0):
            kind = KINDS[i % len(KINDS)]
            frame, _ = encode_frame(kind, i, "tag", payload, threshold, False)
            out.append(b"\x00" + frame)
    rng = random.Random(16)
    out += [b"\x01" + rng.randbytes(rng.randrange(16, 400)) for _ in range(RECIPES)]
    return out


def write(directory: pathlib.Path) -> None:
    """Replace the seeds in `directory`: each named by its SHA-1, as libFuzzer names inputs."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    for seed in seeds():
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


if __name__ == "__main__":
    write(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS)
