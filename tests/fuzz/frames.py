"""Forged frames for the fuzzer, its seed corpus and the multi-rank test.

The frame decoder's contract (wire.hpp, decoder.cpp): any bytes either decode
or raise `cv.FrameError`; nothing crashes, hangs or allocates more than the
frame and its out-of-band buffers could justify. This module turns fuzzer
bytes into frames that test it, most of them nearly valid: a payload is
built from the bytes (nested containers, strings, numbers, numpy arrays of
many dtypes, records and empty ones included), the project's own encoder
makes its frame, and then header fields, lengths, counts and dtype
descriptions are forged, as an attacker would.

`check(data)` is one fuzz input: it raises `Finding` when the decoder broke
its contract; a crash or a sanitizer report ends the process instead.
"""

from __future__ import annotations

import math
import os
import resource
import struct

import atheris
import numpy as np

import conveyor as cv
from conveyor._native import core

encode_frame = core.testing.encode_frame
decode_frame = core.testing.decode_frame
KINDS = (
    core.message.KIND_SEND,
    core.message.KIND_REQUEST,
    core.message.KIND_REPLY,
    core.message.KIND_ERROR,
    core.message.KIND_ANSWER,
)
# A zero-copy threshold no payload reaches: everything travels in the frame.
NEVER_OUT_OF_BAND = 1 << 62
# The out-of-band data an input may make the harness allocate: a frame
# announcing more is decoded without its buffers (and must be refused).
MAX_OUT_OF_BAND_BYTES = 1 << 20
# The fuzzing process's address space without ASan: Python, numpy and MPI
# take some hundreds of MiB; no input justifies gigabytes.
ADDRESS_SPACE_BYTES = 4 << 30

# Values that lengths, counts, sizes and shapes are forged to.
EXTREME_U64 = [
    0, 1, 2, 7, 8, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
]  # fmt: skip
EXTREME_U32 = [0, 1, 2, 64, 65, 2**16, 2**16 + 1, 2**31 - 1, 2**31, 2**32 - 1]

SCALAR_DTYPES = [
    "?", "i1", "u1", "<i2", ">i2", "<u4", ">i4", "<i8", ">u8", "<f2", ">f4", "<f8", ">f8",
    "<c8", ">c16", "<M8[ns]", ">m8[s]", "<M8[D]", "S1", "S7", "<U3", ">U1", "V1", "V5",
]  # fmt: skip
# Dtype strings to forge: object, zero-size, unknown, huge and malformed ones.
FORGED_DTYPE_STRINGS = [
    "|O8", "O", "V0", "|V0", "S0", "<U0", "<i3", "<f16", "<f99999999999", "V9223372036854775807",
    "<U4611686018427387904", "S2147483648", "M8[xx]", "(2,)<i4", "(4611686018427387904,)u1",
    "i4, f8", "[('a', '<i4')]", "", "<", "\x00", "\udcff", "Q" * 300, "T", "<m8[Y/2]",
]  # fmt: skip


class Finding(AssertionError):
    """The decoder broke its contract on one input."""


class Blob(cv.CarriageableItem, name="conveyor.fuzz.Blob"):
    """A user item: its bytes in the frame, and carriageable values beside them."""

    def __init__(self, data: bytes, extra: list[object]) -> None:
        self.data, self.extra = data, extra

    def required_bytes(self) -> int:
        return len(self.data)

    def dump(self, buffer: memoryview) -> None:
        buffer[:] = self.data

    def out_of_band(self) -> list[object]:
        return self.extra

    @classmethod
    def load(cls, buffer: memoryview, out_of_band: list[object]) -> Blob:
        return cls(bytes(buffer), out_of_band)


def body_of(value: object) -> bytes:
    """The encoded value alone: a frame's body (a bare header has 24 bytes)."""
    frame, _ = encode_frame(core.message.KIND_SEND, 0, "", value, NEVER_OUT_OF_BAND, False)
    return frame[24:]


# -- the header, read in Python ------------------------------------------------


def header_fields(frame: bytes) -> dict[str, int] | None:
    """Where a frame's header fields are; None if the header is truncated.

    Keys: ``count`` (the offset of the u32 count of out-of-band buffers),
    ``sizes`` (the offset of their u64 sizes), ``offsets`` (of their u8
    offsets in a cache line, which the stamp follows), ``body`` and ``n``
    (the count).
    """
    if len(frame) < 20:
        return None
    (tag_len,) = struct.unpack_from("<Q", frame, 12)
    count_at = 20 + tag_len
    if count_at + 4 > len(frame):
        return None
    (n,) = struct.unpack_from("<I", frame, count_at)
    offsets = count_at + 4 + 8 * n
    body = offsets + n + (8 if n else 0)
    if body > len(frame):
        return None
    return {"count": count_at, "sizes": count_at + 4, "offsets": offsets, "body": body, "n": n}


def announced_sizes(frame: bytes) -> list[int] | None:
    """The out-of-band sizes the frame's header announces, or None if unreadable."""
    fields = header_fields(frame)
    if fields is None:
        return None
    return list(struct.unpack_from(f"<{fields['n']}Q", frame, fields["sizes"]))


# -- payloads from fuzzer bytes --------------------------------------------------


class Payloads:
    """Builds a nested payload from a FuzzedDataProvider, within a budget."""

    def __init__(self, fdp: atheris.FuzzedDataProvider) -> None:
        self.fdp = fdp
        self.budget = 40  # values in one payload: inputs stay fast
        self.dtypes: list[np.dtype] = []  # every array dtype used, for the forger

    def value(self, depth: int = 0) -> object:
        fdp = self.fdp
        self.budget -= 1
        leaf = depth >= 5 or self.budget <= 0
        kind = fdp.ConsumeIntInRange(0, 11 if leaf else 15)
        if kind == 0:
            return None
        if kind == 1:
            return fdp.ConsumeBool()
        if kind == 2:
            return fdp.ConsumeIntInRange(-(2**63), 2**63 - 1)
        if kind == 3:
            return fdp.ConsumeInt(fdp.ConsumeIntInRange(9, 40))  # beyond 64 bits
        if kind == 4:
            return fdp.ConsumeFloat()
        if kind == 5:
            return complex(fdp.ConsumeFloat(), fdp.ConsumeFloat())
        if kind == 6:
            return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 24))  # surrogates too
        if kind == 7:
            return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 48))
        if kind == 8:
            return bytearray(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 48)))
        if kind == 9:
            return self.memoryview()
        if kind == 10:
            return cv.Address(
                fdp.ConsumeIntInRange(0, 2**63 - 1),
                fdp.ConsumeUnicodeNoSurrogates(8),
                fdp.PickValueInList([None, 0, 2**64 - 1, fdp.ConsumeIntInRange(0, 2**64 - 1)]),
            )
        if kind == 11:
            return self.array()
        if kind == 12:
            if fdp.ConsumeBool():
                return self.scalar()
            arr = self.array()
            try:
                return arr[()]  # a numpy scalar from a 0-d array, else the array
            except SystemError:
                return arr  # numpy's for text of code points beyond Unicode's
        n = fdp.ConsumeIntInRange(0, 6)
        if kind == 13:
            return [self.value(depth + 1) for _ in range(n)]
        if kind == 14:
            return tuple(self.value(depth + 1) for _ in range(n))
        if kind == 15 and fdp.ConsumeBool():
            return Blob(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32)), [self.value(depth + 1)])
        return {self.key(): self.value(depth + 1) for _ in range(n)}

    def key(self) -> object:
        fdp = self.fdp
        return fdp.PickValueInList(
            [
                fdp.ConsumeUnicode(6),
                fdp.ConsumeInt(4),
                fdp.ConsumeBytes(4),
                None,
                (fdp.ConsumeInt(2), fdp.ConsumeUnicodeNoSurrogates(3)),
            ]
        )

    def memoryview(self) -> memoryview:
        fdp = self.fdp
        fmt = fdp.PickValueInList(["B", "b", "h", "i", "q", "d", "f", "?", "c"])
        itemsize = struct.calcsize(fmt)
        # memoryview.cast takes no 0 in a shape
        shape = [fdp.ConsumeIntInRange(1, 4) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        data = bytes(itemsize * math.prod(shape))
        view = memoryview(data).cast("B").cast(fmt, shape)
        if fdp.ConsumeBool() and shape and shape[0] > 1:
            return view[::2]  # not contiguous: the encoder copies it
        return view

    def dtype(self, depth: int = 0) -> np.dtype:
        fdp = self.fdp
        if depth >= 3 or fdp.ConsumeProbability() < 0.6:
            return np.dtype(fdp.PickValueInList(SCALAR_DTYPES))
        names = [f"f{i}" for i in range(fdp.ConsumeIntInRange(0, 4))]
        spec: dict[str, object] = {
            "names": names,
            "formats": [
                (self.dtype(depth + 1), (fdp.ConsumeIntInRange(0, 3),))
                if fdp.ConsumeBool()
                else self.dtype(depth + 1)
                for _ in names
            ],
        }
        if fdp.ConsumeBool():  # padding: offsets apart and a larger itemsize
            formats = [np.dtype(f) for f in spec["formats"]]  # type: ignore[attr-defined]
            offsets = []
            at = 0
            for f in formats:
                at += fdp.ConsumeIntInRange(0, 3)
                offsets.append(at)
                at += f.itemsize
            spec["offsets"] = offsets
            spec["itemsize"] = at + fdp.ConsumeIntInRange(0, 5)
        try:
            return np.dtype(spec, align=fdp.ConsumeBool())  # type: ignore[call-overload]
        except ValueError:
            return np.dtype(spec)  # type: ignore[call-overload]  # offsets alignment refuses

    def array(self) -> np.ndarray:
        fdp = self.fdp
        dt = self.dtype()
        self.dtypes.append(dt)
        shape = [fdp.ConsumeIntInRange(0, 4) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        raw = fdp.ConsumeBytes(dt.itemsize * math.prod(shape))
        raw += bytes(dt.itemsize * math.prod(shape) - len(raw))
        order = fdp.PickValueInList(["C", "F"])
        arr = (
            np.frombuffer(raw, dt).reshape(shape, order=order)
            if dt.itemsize
            else np.zeros(shape, dt, order=order)
        )
        if fdp.ConsumeBool() and arr.ndim and arr.shape[0] > 1:
            return arr[::2]  # strided: the encoder sends a contiguous copy
        return arr

    def scalar(self) -> object:
        fdp = self.fdp
        with np.errstate(over="ignore"):  # a float64 beyond float32's range is inf
            return fdp.PickValueInList(
                [np.int8(fdp.ConsumeInt(1)), np.float32(fdp.ConsumeFloat()), np.bool_(True),
                 np.complex64(1j), np.datetime64(fdp.ConsumeInt(4), "s"), np.bytes_(b"ab"),
                 np.str_("zz"), np.void(b"\x01\x02")]
            )  # fmt: skip


# -- comparing what went in with what came out ---------------------------------


def data_bytes(a: np.ndarray | np.generic) -> bytes:
    """An array's bytes less a record's padding, which numpy's copies leave undefined."""
    a = np.asarray(a)
    if a.dtype.names is None:
        return a.tobytes()
    return b"".join(data_bytes(a[name]) for name in a.dtype.names)


def same(a: object, b: object) -> bool:
    """Whether a decoded value is exactly what was encoded (NaN equals NaN, bit for bit)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        assert isinstance(b, dict)
        # Keys compared as values too: a user item is a key by identity.
        return len(a) == len(b) and all(
            same(k, k2) and same(v, v2) for (k, v), (k2, v2) in zip(a.items(), b.items())
        )
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)  # type: ignore[arg-type]
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)  # type: ignore[attr-defined]
    if isinstance(a, memoryview):
        assert isinstance(b, memoryview)
        return (a.format, a.shape, a.tobytes()) == (b.format, b.shape, b.tobytes())
    if isinstance(a, (np.ndarray, np.generic)):
        assert isinstance(b, (np.ndarray, np.generic))
        return (a.dtype, a.shape, data_bytes(a)) == (b.dtype, b.shape, data_bytes(b))
    if isinstance(a, Blob):
        assert isinstance(b, Blob)
        return a.data == b.data and same(a.extra, b.extra)
    return a == b


def show(value: object) -> str:
    """repr() for a finding's message: numpy's fails on text of code points beyond Unicode's."""
    try:
        return repr(value)[:2000]
    except SystemError:
        return f"<{type(value).__name__} that numpy cannot print>"


# -- forging ------------------------------------------------------------------


def small_fields(frame: bytes, width: int, start: int) -> list[int]:
    """Offsets from `start` where a u64 (or u32) holds a plausible length or count."""
    limit = len(frame) + MAX_OUT_OF_BAND_BYTES
    found: list[int] = []
    for shift in range(width):  # numpy reads aligned words: one pass per alignment
        at = start + shift
        words = (len(frame) - at) // width
        if words <= 0:
            continue
        values = np.frombuffer(frame, f"<u{width}", words, at)
        # numpy's functions, not operators: atheris traces each comparison
        # operator, and holding on to the arrays compared, it grew the fuzzing
        # process by a kilobyte an input.
        plausible = np.logical_and(np.greater(values, 0), np.less_equal(values, limit))
        found += (at + width * np.flatnonzero(plausible)).tolist()
    return found


def forge_descr(fdp: atheris.FuzzedDataProvider, depth: int) -> object:
    """A record dtype's description as an attacker would write it: nested, huge, odd."""
    if depth > fdp.ConsumeIntInRange(0, 300):
        return fdp.PickValueInList(FORGED_DTYPE_STRINGS + SCALAR_DTYPES)
    fields = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        name: object = fdp.PickValueInList(["a", "", ("t", "b"), 7, None, fdp.ConsumeUnicode(3)])
        field: list[object] = [name, forge_descr(fdp, depth + 1)]
        if fdp.ConsumeBool():
            field.append(fdp.PickValueInList([(2,), (0,), (2**40,), (2**62, 4), -1, (), (1,) * 70]))
        fields.append(tuple(field) if fdp.ConsumeBool() else field)
    if fdp.ConsumeProbability() < 0.1:
        # An array inside a description: its dtype is another description.
        return [("a", np.zeros(1, [("x", "<i4")]))]
    return fields


def forge(
    fdp: atheris.FuzzedDataProvider, frame: bytes, oob: list[bytes], dtypes: list[np.dtype]
) -> tuple[bytes, list[bytes]]:
    """Apply one to four forgeries to an encoded frame and its buffers."""
    data = bytearray(frame)
    oob = list(oob)
    fields = header_fields(frame)
    assert fields is not None
    body = fields["body"]
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        op = fdp.ConsumeIntInRange(0, 13)
        if op == 0 and len(data) >= 4:  # magic, version, kind
            data[fdp.ConsumeIntInRange(0, 3)] = fdp.ConsumeInt(1) & 0xFF
        elif op == 1 and len(data) >= fields["count"] + 4:  # the out-of-band count
            struct.pack_into(
                "<I", data, fields["count"], fdp.PickValueInList([*EXTREME_U32, fields["n"] + 1])
            )
        elif op == 2 and oob:  # an announced size (the buffer follows it)
            i = fdp.ConsumeIntInRange(0, len(oob) - 1)
            size = fdp.PickValueInList([*EXTREME_U64, len(oob[i]) + 1, max(len(oob[i]) - 1, 0)])
            at = fields["sizes"] + 8 * i
            if at + 8 <= len(data):
                struct.pack_into("<Q", data, at, size)
            if size <= MAX_OUT_OF_BAND_BYTES:
                oob[i] = (oob[i] + bytes(size))[:size]
        elif op == 13 and fields["n"]:  # an announced offset in a cache line
            at = fields["offsets"] + fdp.ConsumeIntInRange(0, fields["n"] - 1)
            if at < len(data):
                data[at] = fdp.PickValueInList([63, 64, 255, fdp.ConsumeInt(1) & 0xFF])
        elif op == 3 and oob:  # buffers swapped, dropped or added
            if fdp.ConsumeBool():
                oob.reverse()
            else:
                del oob[fdp.ConsumeIntInRange(0, len(oob) - 1)]
        elif op in (4, 5):  # a length, count or dimension of the body
            width = 8 if op == 4 else 4
            spots = small_fields(bytes(data), width, body)
            if spots:
                at = fdp.PickValueInList(spots)
                value = fdp.PickValueInList(EXTREME_U64 if width == 8 else EXTREME_U32)
                old = struct.unpack_from("<Q" if width == 8 else "<I", data, at)[0]
                value = fdp.PickValueInList([value, old + 1, old - 1, old * 2, old * 8])
                struct.pack_into("<Q" if width == 8 else "<I", data, at, value % 2 ** (8 * width))
        elif op == 6 and dtypes:  # a dtype string replaced
            old_dt = fdp.PickValueInList(dtypes)
            if not old_dt.fields:
                old = struct.pack("<Q", len(old_dt.str)) + old_dt.str.encode()
                new = fdp.PickValueInList(FORGED_DTYPE_STRINGS + SCALAR_DTYPES)
                raw = new.encode("utf-8", "surrogatepass")
                data = bytearray(bytes(data).replace(old, struct.pack("<Q", len(raw)) + raw, 1))
        elif op == 7 and dtypes:  # a record's description replaced
            old_dt = fdp.PickValueInList(dtypes)
            if old_dt.fields:
                forged = body_of(forge_descr(fdp, 0))
                data = bytearray(bytes(data).replace(body_of(old_dt.descr), forged, 1))
        elif op == 8:  # truncated
            del data[fdp.ConsumeIntInRange(0, len(data)) :]
        elif op == 9:  # bytes inserted
            at = fdp.ConsumeIntInRange(0, len(data))
            data[at:at] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16))
        elif op == 10 and len(data) > body:  # a byte of the body (type marks, storage marks)
            data[fdp.ConsumeIntInRange(body, len(data) - 1)] = fdp.ConsumeInt(1) & 0xFF
        elif op == 11 and len(data) > body:  # a run of the body repeated: deep nesting
            at = fdp.ConsumeIntInRange(body, len(data) - 1)
            run = bytes(data[at : at + fdp.ConsumeIntInRange(1, 8)])
            data[at:at] = run * fdp.ConsumeIntInRange(1, 3000)
        else:  # another value's encoding spliced in
            at = fdp.ConsumeIntInRange(min(body, len(data)), len(data))
            end = fdp.ConsumeIntInRange(at, len(data))
            try:
                data[at:end] = body_of(Payloads(fdp).value())
            except cv.CarriageError:
                pass  # a dtype of no bytes: nothing to splice
    return bytes(data), oob


# -- one input -------------------------------------------------------------------


def decode_only(frame: bytes, oob: list[bytes]) -> object:
    """Decode; return the payload or None when it was refused as a FrameError."""
    try:
        return decode_frame(frame, oob, False)[3]
    except cv.FrameError:
        return None
    except BaseException as e:
        raise Finding(f"decode raised {type(e).__name__}, not FrameError: {e}") from e


def raw_buffers(frame: bytes) -> list[bytes]:
    """Zero-filled buffers of the sizes a frame announces, if they are reasonable."""
    sizes = announced_sizes(frame)
    if sizes is None or sum(sizes) > MAX_OUT_OF_BAND_BYTES:
        return []
    return [bytes(n) for n in sizes]


def forged_frame(data: bytes) -> tuple[bytes, list[bytes]] | None:
    """A frame made from fuzzer bytes and forged, or None for a payload the encoder refuses."""
    fdp = atheris.FuzzedDataProvider(data)
    payloads = Payloads(fdp)
    payload = payloads.value()
    kind = fdp.PickValueInList(list(KINDS))
    ref = fdp.ConsumeIntInRange(0, 2**64 - 1)
    tag = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    threshold = fdp.PickValueInList([0, 8, 64, NEVER_OUT_OF_BAND])
    try:
        frame, oob = encode_frame(kind, ref, tag, payload, threshold, False)
    except cv.CarriageError:
        return None  # dtypes of no bytes are refused when sent
    # The round trip of a valid frame is identity.
    try:
        decoded = decode_frame(frame, oob, False)
    except BaseException as e:
        raise Finding(f"a valid frame failed to decode: {type(e).__name__}: {e}") from e
    if decoded[:2] != (kind, ref) or not same(payload, decoded[3]):
        raise Finding(f"round trip changed the payload: {show(payload)} -> {show(decoded[3])}")
    return forge(fdp, frame, oob, payloads.dtypes)


def check(data: bytes) -> None:
    """One fuzz input: the first byte chooses a raw frame or a forged payload."""
    if not data:
        return
    if data[0] & 1 == 0:
        frame = data[1:]
        decode_only(frame, raw_buffers(frame))
        return
    forged = forged_frame(data[1:])
    if forged is None:
        return
    payload = decode_only(*forged)
    if payload is not None:
        # What decodes is carriageable again: no value the decoder made is
        # one a handler could not send on.
        try:
            frame, oob = encode_frame(core.message.KIND_SEND, 0, "t", payload, 64, False)
        except cv.CarriageError as e:
            raise Finding(f"a decoded payload cannot be sent again: {e}") from e
        if not same(payload, decode_frame(frame, oob, False)[3]):
            raise Finding(f"a decoded payload does not round-trip: {show(payload)}")


def main(argv: list[str]) -> None:
    """Run libFuzzer over `check` (fuzz_frames.py calls it, with this module instrumented)."""
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        # Linux hands out any allocation and faults only when it is touched:
        # with an address-space limit, an absurd one fails at once, and the
        # MemoryError out of decode is a finding. (Under ASan, which reserves
        # terabytes of address space, make fuzz sets max_allocation_size_mb.)
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    atheris.Setup(argv, check)
    atheris.Fuzz()
