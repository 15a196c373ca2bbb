"""conveyor._core.testing: the frame codec without an engine or MPI, for tests."""

from collections.abc import Sequence

def encode_frame(
    kind: int,
    ref: int,
    tag: str,
    payload: object,
    zero_copy_threshold: int,
    allow_pickle: bool,
) -> tuple[bytes, list[bytes]]:
    """Encode a frame without sending it: return the frame and copies of its out-of-band buffers."""

def decode_frame(
    frame: bytes, oob: Sequence[bytes], allow_pickle: bool
) -> tuple[int, int, str, object]:
    """Decode what `encode_frame` made: return ``(kind, ref, tag, payload)``.

    Raises FrameError for a malformed or truncated frame.
    """
