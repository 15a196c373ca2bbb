"""A rank that received a batch of the fuzzer's frames still serves.

The frames are made here, by the fuzzer's own forger, and posted raw on the
messenger's communicator by the other rank. The ranks import only this file:
the fuzzer's modules are not on their path (they start from tests/).
"""

import pathlib
import random
import struct

import conveyor as cv

from _helpers import wait_quiet_warned

FRAMES = 2000
CREDIT = 6  # the frame kind, wire.hpp's FrameKind::Credit


def frames_to_post():
    """Forged frames a rank can take in alone, and how many announce out-of-band buffers.

    Those announcements carry no stamp of the sending rank's engine: each is
    counted as forged and dropped, so the receiver waits for no data. Left
    out: Credit frames, which post_raw counts as a message sent for
    wait_quiet but are none where they arrive, so the ranks' counts would
    never meet (the test hook's doing: a rank that forges frames with MPI
    itself counts nothing).
    """
    from frames import announced_sizes, forged_frame

    rng = random.Random(2)
    out = []
    announcing = 0
    while len(out) < FRAMES:
        made = forged_frame(rng.randbytes(rng.randrange(8, 600)))
        if made is None:
            continue
        frame, _ = made
        if frame[:2] == b"\xfe\xc0" and frame[3:4] == bytes([CREDIT]):  # any version
            continue
        announcing += bool(announced_sizes(frame))
        out.append(frame)
    return out, announcing


def case_forged_frames_leave_the_rank_serving(path):
    frames = pathlib.Path(path).read_bytes()
    with cv.Messenger() as m:
        got = []
        m.on("ok")(lambda msg: got.append(msg.payload))
        m.on("echo")(lambda msg: msg.payload)
        dest = (m.rank + 1) % m.size
        at = 0
        while at < len(frames):
            (n,) = struct.unpack_from("<I", frames, at)
            m._transport.engine.post_raw(dest, frames[at + 4 : at + 4 + n])
            at += 4 + n
        m.send(dest, "ok", "after")
        caught = wait_quiet_warned(m)  # a warning for each frame dropped
        assert got == ["after"], (got, caught)
        stats = m.stats()
        dropped = stats["frames_malformed"] + stats["frames_forged"] + stats["payloads_undecodable"]
        assert dropped > FRAMES // 2 and stats["frames_forged"] > 0, stats
        assert m.request(dest, "echo", "still here").result(timeout=10) == "still here"
        m.wait_quiet()


def test_forged_frames_leave_the_rank_serving(mpirun, tmp_path):
    frames, announcing = frames_to_post()
    assert announcing > FRAMES // 10, announcing
    path = tmp_path / "frames"
    path.write_bytes(b"".join(struct.pack("<I", len(f)) + f for f in frames))
    mpirun(2, case_forged_frames_leave_the_rank_serving, path, timeout=120)
