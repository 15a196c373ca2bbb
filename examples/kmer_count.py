"""Distributed k-mer counting: the first step of the Ray genome assembler.

Every rank extracts the k-mers of its share of the reads and sends each one to
the rank that owns it; owners count what they receive. This demonstrates

- ``Sender.send_many``: millions of tiny items (one uint64 per k-mer) routed
  in C++ and sent as one message per destination rank per batch, instead of
  one MPI message per k-mer;
- receivers (``@m.on``) that do the counting as messages arrive;
- ``Messenger.wait_quiet``: termination detection, so no rank needs to know
  how many messages it will get;
- large numpy arrays travelling without copies (each owner's table is sent to
  rank 0 for the final check).

Rank 0 then compares the distributed table with a single-process count of the
same reads and prints PASS or FAIL (exit status 1 on a mismatch).

By default the reads are sampled from a seeded random genome (both strands,
with sequencing errors); give a FASTA or FASTQ file (plain or gzipped) to
count real reads instead. The result does not depend on the number of ranks::

    mpiexec -n 4 python examples/kmer_count.py
    mpiexec -n 2 python examples/kmer_count.py -k 21 --histo histo.txt reads.fq.gz
    python examples/kmer_count.py --genome-size 100000
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

import conveyor as cv

try:  # rank 0's progress bar, if tqdm is there (pip install 'conveyor-mpi[progress]')
    from tqdm import tqdm
except ImportError:
    tqdm = None

# Codes of the bases in 2-bit k-mers (A=0, C=1, G=2, T=3); the complement of
# a code is ``code ^ 3``. Every other byte (N, IUPAC codes, the separator put
# after each read) becomes INVALID, and k-mers that contain it are skipped.
INVALID = 4
_CODES = np.full(256, INVALID, dtype=np.uint8)
_CODES[np.frombuffer(b"ACGTacgt", dtype=np.uint8)] = [
    0,
    1,
    2,
    3,
    0,
    1,
    2,
    3,
]  # lowercase = uppercase

# Fibonacci hashing: the high bits of ``kmer * odd constant`` depend on every
# bit of the k-mer, so owners get even shares although k-mers are far from
# uniform (canonical ones lean towards small values; genomes repeat patterns).
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_HASH_SHIFT = np.uint64(32)

HISTOGRAM_LINES = 10


class InputError(Exception):
    """The input cannot be read as reads (shown to the user without a traceback)."""


class Reads(NamedTuple):
    """Reads as base codes, each read followed by one INVALID separator.

    The separators make k-mers that would span two reads invalid, so any slice
    of ``codes`` can be scanned for k-mers without knowing where reads end.
    """

    codes: np.ndarray  # uint8, len(lengths) + sum(lengths) codes
    lengths: np.ndarray  # int64, the length of each read (separator excluded)

    def share(self, rank: int, size: int) -> np.ndarray:
        """Return the codes of reads ``rank::size`` (with their separators)."""
        mine = np.arange(len(self.lengths)) % size == rank
        codes: np.ndarray = self.codes[np.repeat(mine, self.lengths + 1)]
        return codes


def simulate_reads(
    genome_size: int, read_length: int, coverage: float, error_rate: float, seed: int
) -> Reads:
    """Sample reads from a random genome; every rank gets the same reads."""
    rng = np.random.default_rng(seed)
    genome = rng.integers(0, 4, genome_size, dtype=np.uint8)
    n = math.ceil(coverage * genome_size / read_length)
    starts = rng.integers(0, genome_size - read_length + 1, n)
    codes = np.full((n, read_length + 1), INVALID, dtype=np.uint8)
    bases = codes[:, :read_length]
    bases[:] = np.lib.stride_tricks.sliding_window_view(genome, read_length)[starts]
    # A sequencer reads either strand; canonical k-mers make the count blind to it.
    minus = rng.random(n) < 0.5
    bases[minus] = bases[minus, ::-1] ^ 3
    # Sequencing errors: substitutions, and one in ten an uncalled base (N).
    errors = rng.integers(0, bases.size, rng.binomial(bases.size, error_rate))
    rows, cols = np.divmod(errors, read_length)
    bases[rows, cols] = (bases[rows, cols] + rng.integers(1, 4, len(errors), dtype=np.uint8)) % 4
    uncalled = rng.random(len(errors)) < 0.1
    bases[rows[uncalled], cols[uncalled]] = INVALID
    return Reads(codes.reshape(-1), np.full(n, read_length, dtype=np.int64))


def read_sequences(path: str) -> Reads:
    """Read FASTA or FASTQ (plain or gzipped, told apart by content) as reads."""
    try:
        with open(path, "rb") as file:
            data = file.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # EOFError: truncated gzip
        raise InputError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    text = data.lstrip()
    if not text:
        raise InputError(f"{path} is empty")
    if text[:1] == b">":
        sequences = _parse_fasta(text)
    elif text[:1] == b"@":
        sequences = _parse_fastq(text, path)
    else:
        raise InputError(f"{path} is neither FASTA (starts with '>') nor FASTQ (starts with '@')")
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    # b"\n" is not a base, so it serves as the separator after each read.
    joined = b"\n".join(sequences) + b"\n" if sequences else b""
    return Reads(_CODES[np.frombuffer(joined, dtype=np.uint8)], lengths)


def _parse_fasta(text: bytes) -> list[bytes]:
    # A record is a '>' header line then any number of sequence lines.
    records = (b"\n" + text).split(b"\n>")[1:]
    return [b"".join(record.partition(b"\n")[2].split()) for record in records]


def _parse_fastq(text: bytes, path: str) -> list[bytes]:
    lines = text.rstrip().splitlines()
    if len(lines) % 4:
        raise InputError(f"{path}: FASTQ has {len(lines)} lines, not a multiple of 4")
    for i in range(0, len(lines), 4):
        header, sequence, plus, quality = lines[i : i + 4]
        if (
            header[:1] != b"@"
            or plus[:1] != b"+"
            or len(quality.rstrip()) != len(sequence.rstrip())
        ):
            raise InputError(f"{path}: line {i + 1}: not a 4-line FASTQ record")
    return [sequence.rstrip() for sequence in lines[1::4]]


def canonical_kmers(codes: np.ndarray, k: int) -> np.ndarray:
    """Return the canonical 2-bit k-mers of `codes`, skipping those with an INVALID code.

    Vectorized over positions: the loops run over the k offsets in a k-mer.
    """
    n = len(codes) - k + 1
    if n <= 0:
        return np.empty(0, dtype=np.uint64)
    bases = (codes & 3).astype(np.uint64)
    complement = bases ^ np.uint64(3)
    two = np.uint64(2)
    forward = np.zeros(n, dtype=np.uint64)
    for j in range(k):  # first base in the high bits
        forward <<= two
        forward |= bases[j : j + n]
    reverse = np.zeros(n, dtype=np.uint64)
    for j in reversed(range(k)):  # the reverse complement reads the k-mer backwards
        reverse <<= two
        reverse |= complement[j : j + n]
    invalid_before = np.concatenate(([0], np.cumsum(codes == INVALID)))
    valid = invalid_before[k:] == invalid_before[:-k]
    canonical: np.ndarray = np.minimum(forward, reverse)[valid]
    return canonical


def kmer_batches(codes: np.ndarray, k: int, batch: int) -> Iterator[np.ndarray]:
    """Yield the canonical k-mers of `codes`, at most `batch` start positions at a time."""
    for start in range(0, max(len(codes) - k + 1, 0), batch):
        # Overlap by k - 1 codes so that every start position is seen once.
        yield canonical_kmers(codes[start : start + batch + k - 1], k)


def owners(kmers: np.ndarray, size: int) -> np.ndarray:
    """Return the rank that counts each k-mer."""
    ranks: np.ndarray = ((kmers * _HASH_MULTIPLIER) >> _HASH_SHIFT) % np.uint64(size)
    return ranks


class KmerCounts:
    """A k-mer -> count table kept as sorted, unique `kmers` and their `counts`."""

    def __init__(self) -> None:
        self.kmers = np.empty(0, dtype=np.uint64)
        self.counts = np.empty(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, kmers: np.ndarray) -> None:
        """Count the k-mers of one batch."""
        self._pending.append(np.unique(kmers, return_counts=True))
        self._pending_size += len(self._pending[-1][0])
        # Merging sorts the whole table: wait until the pending batches are as
        # large as the table, so that the total work stays O(n log n) and
        # memory within a small multiple of the table.
        if self._pending_size > len(self.kmers):
            self.merge()

    def merge(self) -> None:
        """Merge the pending batches into the table."""
        if not self._pending:
            return
        kmers = np.concatenate([self.kmers] + [k for k, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending])
        self._pending, self._pending_size = [], 0
        order = np.argsort(kmers)
        kmers, counts = kmers[order], counts[order]
        firsts = np.flatnonzero(np.concatenate(([True], kmers[1:] != kmers[:-1])))
        self.kmers = kmers[firsts]
        self.counts = np.add.reduceat(counts, firsts) if len(firsts) else counts


def histogram(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return Jellyfish ``histo`` rows: (count, number of k-mers with that count), non-zero only."""
    return np.unique(counts, return_counts=True)


def count_distributed(m: cv.Messenger, reads: Reads, args: argparse.Namespace) -> bool:
    """Count the k-mers of `reads` over the ranks of `m`; on rank 0, report and check.

    Returns False on rank 0 if the check fails or the histogram cannot be written.
    """
    table = KmerCounts()

    @m.on("kmers")
    def count(msg: cv.Message) -> None:
        table.add(msg.payload)

    tables: dict[int, dict[str, Any]] = {}

    @m.on("table")
    def collect(msg: cv.Message) -> None:
        tables[msg.source] = msg.payload

    share = reads.share(m.rank, m.size)
    sender = m.sender("kmers")
    m.wait_quiet()  # as a barrier: every rank starts the clock together
    start = time.perf_counter()
    batches = kmer_batches(share, args.k, args.batch)
    if m.rank == 0 and tqdm is not None:  # its share is the job's, in proportion
        total = math.ceil(max(len(share) - args.k + 1, 0) / args.batch)
        batches = tqdm(batches, total=total, desc="rank 0: batches sent", unit="batch")
    for kmers in batches:
        sender.send_many(owners(kmers, m.size), kmers)
        # Count what has arrived so far: received batches would otherwise
        # wait in memory until wait_quiet.
        m.progress()
    m.wait_quiet()
    table.merge()
    seconds = time.perf_counter() - start

    m.send(0, "table", {"kmers": table.kmers, "counts": table.counts, "seconds": seconds})
    m.wait_quiet()
    if m.rank != 0:
        return True

    kmers = np.concatenate([tables[r]["kmers"] for r in range(m.size)])
    counts = np.concatenate([tables[r]["counts"] for r in range(m.size)])
    seconds = max(tables[r]["seconds"] for r in range(m.size))
    total = int(counts.sum())
    histo = np.column_stack(histogram(counts))
    print(f"reads            {len(reads.lengths):>14,}")
    print(f"total k-mers     {total:>14,}")
    print(f"distinct k-mers  {len(kmers):>14,}")
    print(
        f"counting phase   {seconds:>14.3f} s  ({total / seconds:,.0f} k-mers/s on {m.size} "
        f"rank{'s' if m.size > 1 else ''}: extraction + send + count)"
    )
    print(f"histogram (count, distinct k-mers with that count), first {HISTOGRAM_LINES} rows:")
    for value, number in histo[:HISTOGRAM_LINES]:
        print(f"  {value:>6} {number:>12,}")
    written = True
    if args.histo:
        try:
            np.savetxt(args.histo, histo, fmt="%d", delimiter=" ")
        except OSError as exc:
            print(f"error: cannot write the histogram: {exc}", file=sys.stderr)
            written = False
    return check(kmers, counts, reads, args) and written


def check(kmers: np.ndarray, counts: np.ndarray, reads: Reads, args: argparse.Namespace) -> bool:
    """Compare the gathered table with a single-process count; print PASS or FAIL."""
    all_kmers = np.concatenate(
        [np.empty(0, np.uint64), *kmer_batches(reads.codes, args.k, args.batch)]
    )
    expected_kmers, expected_counts = np.unique(all_kmers, return_counts=True)
    order = np.argsort(kmers)
    if np.array_equal(kmers[order], expected_kmers) and np.array_equal(
        counts[order], expected_counts
    ):
        print(f"PASS: the distributed table equals a single-process count ({len(kmers):,} k-mers)")
        return True
    print(
        f"FAIL: the distributed table has {len(kmers):,} k-mers with {int(counts.sum()):,} "
        f"occurrences; a single-process count has {len(expected_kmers):,} with "
        f"{int(expected_counts.sum()):,}"
    )
    return False


def parse_args(
    argv: list[str] | None = None,
) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description="Count canonical k-mers over MPI ranks with conveyor (Ray's first step)."
    )
    parser.add_argument(
        "reads",
        nargs="?",
        metavar="FILE",
        help="FASTA or FASTQ file, plain or gzipped (default: reads of a random genome)",
    )
    parser.add_argument(
        "-k", type=int, default=31, help="k-mer length, 1 to 32 (default: %(default)s)"
    )
    parser.add_argument(
        "--histo",
        metavar="FILE",
        help="write the full histogram in Jellyfish 'histo' format to FILE",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1 << 20,
        help="k-mer positions extracted and sent per batch (default: %(default)s)",
    )
    simulated = parser.add_argument_group("random genome (without FILE)")
    simulated.add_argument(
        "--genome-size",
        type=int,
        default=1_000_000,
        help="genome length in bp (default: %(default)s)",
    )
    simulated.add_argument(
        "--read-length", type=int, default=100, help="read length in bp (default: %(default)s)"
    )
    simulated.add_argument(
        "--coverage",
        type=float,
        default=10.0,
        help="mean times each base is read (default: %(default)s)",
    )
    simulated.add_argument(
        "--error-rate",
        type=float,
        default=0.005,
        help="sequencing errors per base (default: %(default)s)",
    )
    simulated.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 1 <= args.k <= 32:
        parser.error(f"-k must be between 1 and 32 (a k-mer is packed in 64 bits), not {args.k}")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.reads is None:
        if args.genome_size < 1 or not 1 <= args.read_length <= args.genome_size:
            parser.error("need 1 <= --read-length <= --genome-size")
        if not args.coverage > 0 or not 0 <= args.error_rate <= 1:
            parser.error("need --coverage > 0 and 0 <= --error-rate <= 1")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    # Every rank loads the same reads: a bad input stops all of them here,
    # before any collective call could leave one waiting for the others.
    if args.reads is None:
        reads = simulate_reads(
            args.genome_size, args.read_length, args.coverage, args.error_rate, args.seed
        )
        source = (
            f"random genome of {args.genome_size:,} bp (seed {args.seed}), "
            f"{args.read_length} bp reads at {args.coverage:g}x coverage, "
            f"{args.error_rate:.2%} errors"
        )
    else:
        try:
            reads = read_sequences(args.reads)
        except InputError as exc:
            parser.error(str(exc))
        source = args.reads
    with cv.Messenger() as m:
        if m.rank == 0:
            print(f"k-mer counting, k={args.k}, {m.size} rank{'s' if m.size > 1 else ''}: {source}")
        ok = count_distributed(m, reads, args)
    # Exit only after the messenger has closed (collectively) on every rank.
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
