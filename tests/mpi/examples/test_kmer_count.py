"""The k-mer counting example, run as a user would run it: under mpiexec and in plain python.

Results are checked against a k-mer count written here with Python strings,
independent of the example's vectorized 2-bit code.
"""

import collections
import functools
import gzip
import re

import numpy as np
import pytest

from conftest import load_example, run_example

_COMPLEMENT = str.maketrans("ACGT", "TGCA")


kmer_count = load_example("kmer_count")
run_kmer_count = functools.partial(run_example, "kmer_count")


def count_kmers(sequences, k):
    """Canonical k-mer -> count, with strings (A < C < G < T, as in the 2-bit order)."""
    counts = collections.Counter()
    for sequence in sequences:
        for run in re.findall("[ACGT]+", sequence.upper()):
            for i in range(len(run) - k + 1):
                kmer = run[i : i + k]
                counts[min(kmer, kmer.translate(_COMPLEMENT)[::-1])] += 1
    return counts


def check_run(result, histo_path, sequences, k):
    """Check the exit status, the printed numbers and the --histo file of a run."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout, result.stdout
    assert "rank 0: batches sent" in result.stderr  # tqdm's bar, off the results' stream
    counts = count_kmers(sequences, k)
    histo = collections.Counter(counts.values())
    assert histo_path.read_text() == "".join(f"{c} {n}\n" for c, n in sorted(histo.items()))
    for label, value in [
        ("reads", len(sequences)),
        ("total k-mers", sum(counts.values())),
        ("distinct k-mers", len(counts)),
    ]:
        assert re.search(rf"^{label}\s+{value:,}$", result.stdout, re.M), (label, result.stdout)


@pytest.mark.parametrize("k", [1, 2, 5, 21, 31, 32])
def test_canonical_kmers_match_strings(k):
    rng = np.random.default_rng(k)
    text = "".join(rng.choice(list("ACGTACGTACGTN"), 2000))
    seq = np.frombuffer(text.encode(), dtype=np.uint8)
    got = kmer_count.canonical_kmers(kmer_count._CODES[seq], k)
    # Back from 2 bits to letters, to compare with the string count.
    letters = ["".join("ACGT"[(int(x) >> 2 * (k - 1 - j)) & 3] for j in range(k)) for x in got]
    assert collections.Counter(letters) == count_kmers([text], k)


def simulated_sequences(genome_size, read_length, coverage, error_rate, seed):
    reads = kmer_count.simulate_reads(genome_size, read_length, coverage, error_rate, seed)
    text = reads.codes.tobytes().translate(bytes.maketrans(bytes(range(5)), b"ACGTN")).decode()
    # Each read is followed by one separator.
    return [text[i : i + read_length] for i in range(0, len(text), read_length + 1)]


@pytest.mark.parametrize("nranks", [None, 1, 2, 4], ids=["python", "np1", "np2", "np4"])
def test_random_genome(nranks, tmp_path):
    histo = tmp_path / "histo.txt"
    # --batch smaller than a rank's share: several batches per rank.
    result = run_kmer_count(
        nranks,
        "--genome-size",
        20_000,
        "--coverage",
        5,
        "--error-rate",
        0.01,
        "--seed",
        7,
        "--batch",
        5_000,
        "--histo",
        histo,
    )
    sequences = simulated_sequences(20_000, 100, 5, 0.01, 7)
    check_run(result, histo, sequences, 31)


def sample_reads(seed, n=400):
    """Reads of varied length from a small genome (k-mers repeat), with N, IUPAC and lowercase."""
    rng = np.random.default_rng(seed)
    genome = "".join(rng.choice(list("ACGT"), 3000))
    reads = []
    for _ in range(n):
        length = int(rng.integers(5, 150))  # some shorter than k
        start = int(rng.integers(0, len(genome) - length))
        read = list(genome[start : start + length])
        for i in rng.integers(0, length, 2):
            read[i] = str(rng.choice(list("ACGTNRY")))
        read = "".join(read)
        reads.append(read.lower() if rng.random() < 0.1 else read)
    return reads


def test_fastq_gz(tmp_path):
    reads = sample_reads(1)
    path = tmp_path / "reads.fq.gz"
    with gzip.open(path, "wt") as file:
        for i, read in enumerate(reads):
            file.write(f"@read{i}\n{read}\n+\n{'I' * len(read)}\n")
    histo = tmp_path / "histo.txt"
    result = run_kmer_count(2, "-k", 21, "--histo", histo, path)
    check_run(result, histo, reads, 21)


def test_fasta_multiline(tmp_path):
    reads = sample_reads(2)
    reads[3] = ""  # a record without sequence
    path = tmp_path / "reads.fasta"
    with open(path, "w", newline="") as file:
        for i, read in enumerate(reads):
            # Sequences wrapped at 60 columns; CRLF line ends on some records.
            end = "\r\n" if i % 5 == 0 else "\n"
            lines = [read[j : j + 60] for j in range(0, len(read), 60)]
            file.write(end.join([f">read{i} some description", *lines]) + end)
    histo = tmp_path / "histo.txt"
    result = run_kmer_count(3, "-k", 21, "--histo", histo, path)
    check_run(result, histo, reads, 21)


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent/reads.fa"], "cannot read /nonexistent/reads.fa: No such file or directory"),
        (["-k", "0"], "-k must be between 1 and 32"),
        (["-k", "33"], "-k must be between 1 and 32"),
        (["--read-length", "50", "--genome-size", "10"], "--read-length <= --genome-size"),
    ],
    ids=["missing-file", "k0", "k33", "read-longer-than-genome"],
)
def test_bad_arguments(args, message):
    result = run_kmer_count(None, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_files(tmp_path):
    truncated = tmp_path / "reads.fq"
    truncated.write_text("@read0\nACGT\n+\n")
    not_reads = tmp_path / "notes.txt"
    not_reads.write_text("hello\n")
    corrupt = tmp_path / "reads.fa.gz"
    corrupt.write_bytes(gzip.compress(b">r\nACGT\n")[:-6])
    for path, message in [
        (truncated, "not a multiple of 4"),
        (not_reads, "neither FASTA"),
        (corrupt, "cannot read"),
        (tmp_path, "Is a directory"),
    ]:
        result = run_kmer_count(None, path)
        assert result.returncode == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_bad_input_under_mpiexec():
    # Every rank must stop with the message, none may wait for the others.
    result = run_kmer_count(2, "/nonexistent/reads.fa", timeout=30)
    assert result.returncode != 0
    assert "cannot read /nonexistent/reads.fa" in result.stderr
    assert "Traceback" not in result.stderr
