"""The fuzzer of the frame decoder: its seeds, and a 60-second campaign.

The smoke runs on the normal build (the one every other test uses): the
sanitized build is a second venv and a second compile of the extension,
minutes that `make test` cannot spare. A crash, a hang (10 s on one input),
a resident size above 2 GiB or a broken invariant still fails it; `make
fuzz` runs the same fuzzer on the ASan + UBSan build, for as long as asked.
"""

import pathlib
import re
import sys

import make_corpus
from conftest import run_command
from frames import NEVER_OUT_OF_BAND, Blob, check, decode_frame, encode_frame, same

HERE = pathlib.Path(__file__).resolve().parent
SMOKE_SECONDS = 60


def test_the_seeds_hold_to_the_contract():
    for path in sorted(make_corpus.CORPUS.iterdir()):
        check(path.read_bytes())


def test_the_round_trip_compares_keys_as_values():
    # A user item is a dict key by identity: the decoded key is another
    # object, which the first campaign's comparison (by repr) took for a change.
    value = {Blob(b"k", []): None, None: 1.0}
    frame, oob = encode_frame(1, 0, "t", value, NEVER_OUT_OF_BAND, False)
    assert same(value, decode_frame(frame, oob, False)[3])


def test_the_committed_corpus_is_what_make_corpus_writes(tmp_path):
    make_corpus.write(tmp_path)
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in make_corpus.CORPUS.iterdir()}
    assert written == committed, "run python tests/fuzz/make_corpus.py and commit the corpus"
    assert 30 <= len(committed) <= 100 and sum(map(len, committed.values())) < 32768


def test_sixty_seconds_of_fuzzing_find_nothing(tmp_path):
    # New inputs go to a scratch directory, the committed seeds are only read.
    found = tmp_path / "corpus"
    found.mkdir()
    command = [
        sys.executable,
        str(HERE / "fuzz_frames.py"),
        f"-max_total_time={SMOKE_SECONDS}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(found),
        str(make_corpus.CORPUS),
    ]
    result = run_command(command, timeout=SMOKE_SECONDS + 90)
    report = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-20000:]}"
    assert result.returncode == 0, report
    runs = re.search(r"^Done (\d+) runs in (\d+) second", result.stderr, re.MULTILINE)
    assert runs, report
    assert int(runs.group(1)) > 10_000, report
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*")), report
