"""What can travel: built-in carriers, numpy layouts, CarriageableItem, pickle opt-in."""

import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor as cv
from conveyor._native import core

from _helpers import same

DTYPES = [
    "?",
    "i1",
    "i2",
    "i4",
    "i8",
    "u1",
    "u2",
    "u4",
    "u8",
    "f2",
    "f4",
    "f8",
    "g",
    "c8",
    "c16",
    "G",
    "M8[ns]",
    "m8[s]",
    ">i4",
    ">f8",
    "S5",
    "U3",
]


def roundtrip(value, threshold=16384, allow_pickle=False):
    frame, oob = core.testing.encode_frame(
        core.message.KIND_SEND, 0, "t", value, threshold, allow_pickle
    )
    return core.testing.decode_frame(frame, oob, allow_pickle)[3]


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64,
        -(2**200) + 7,
        1.5,
        float("inf"),
        float("nan"),
        -0.0,
        3 - 4j,
        "",
        "héllo wörld ✓",
        "\udcff",
        b"",
        b"\x00\xff",
        bytearray(b"ab"),
        [],
        (),
        {},
        [1, [2, [3, (4, {"k": None})]]],
        {1: "a", "b": 2.0, (1, 2): [3]},
        cv.Address(3, "logger"),
        cv.Address(0, "x", ref=2**40),
        np.float64(2.5),
        np.int8(-3),
        np.bool_(True),
        np.complex64(1j),
    ],
    ids=repr,
)
def test_builtin_values_roundtrip_with_their_type(value):
    assert same(roundtrip(value), value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 3, 5)])
@pytest.mark.parametrize("threshold", [0, 1 << 30], ids=["out-of-band", "inline"])
def test_arrays_of_every_dtype_and_shape(dtype, shape, threshold):
    rng = np.random.default_rng(0)
    a = np.asarray(rng.integers(0, 100, size=shape)).astype(dtype)
    b = roundtrip(a, threshold)
    assert same(b, a)
    assert b.flags.writeable


@pytest.mark.parametrize("threshold", [0, 1 << 30], ids=["out-of-band", "inline"])
def test_array_layouts(threshold):
    base = np.arange(2 * 3 * 40, dtype=np.float64).reshape(2, 3, 40)
    fortran = np.asfortranarray(base)
    out = roundtrip(fortran, threshold)
    assert same(out, fortran) and out.flags.f_contiguous
    for view in (base[:, ::2, ::3], base[::-1], base.transpose(2, 0, 1), base[..., 5]):
        out = roundtrip(view, threshold)
        assert same(out, np.ascontiguousarray(view))
    records = np.zeros(4, dtype=[("kmer", "<u8"), ("count", "<u4"), ("pad", "V4")])
    records["kmer"] = [1, 2, 3, 4]
    assert same(roundtrip(records, threshold), records)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(), (0,), (1,), (5,), (3, 1), (1, 4), (2, 0, 3), (2, 3, 4)])
def test_inline_arrays_are_laid_out_as_np_empty_lays_them_out(shape, order):
    # The decoder lets numpy lay out an array of memory of its own: its
    # strides and flags are those of np.empty, whatever the shape. (An
    # array both C- and F-contiguous, a size-1 dimension, travels as C's.)
    a = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape, order=order)
    out = roundtrip(a, 1 << 30)
    like = np.empty(shape, np.int32, order="C" if a.flags.c_contiguous else "F")
    assert same(out, a)
    assert out.strides == like.strides
    for flag in ("c_contiguous", "f_contiguous", "aligned", "owndata", "writeable"):
        assert getattr(out.flags, flag) == getattr(like.flags, flag), flag


def test_dtypes_met_again_decode_to_the_same_dtype():
    # Many dtypes with names alike (a prefix of another, the same letters in
    # another order), more than the decoder keeps and some with names longer
    # than it keeps, each read back twice.
    names = ["<i4", "<i8", "<u4", "<u8", ">i4", ">u4", "|b1", "|u1", "|i1", "<f4", "<f8", ">f8"]
    names += ["<c8", "<c16", "|S1", "|S12", "|S123", "<U1", "<U12", "<M8[ns]", "<m8[us]"]
    names += ["<M8[10ms]", "<M8[1000000000ns]", "<M8[100000000ns]", "|S1000", "<U1000"]
    for _ in range(2):
        for name in names:
            a = np.zeros(2, dtype=name)
            out = roundtrip(a, 1 << 30)
            assert out.dtype == a.dtype and out.dtype.str == name, name


@pytest.mark.parametrize("threshold", [0, 1 << 30], ids=["out-of-band", "inline"])
def test_records_with_padding_keep_their_dtype(threshold):
    # A record's description names its padding '': read back with np.dtype,
    # the padding became fields f0, f1... (another dtype), or the frame was
    # refused when such a name was taken (found by the fuzzer's round trip).
    nested = np.dtype({"names": ["x"], "formats": ["<i2"], "offsets": [2], "itemsize": 6})
    for dtype in (
        np.dtype([("f0", "u1"), ("f1", "<i4")], align=True),
        np.dtype({"names": [], "formats": [], "offsets": [], "itemsize": 3}),
        np.dtype([("a", nested, (2,)), ("b", "<f8")], align=True),
    ):
        value = np.frombuffer(bytes(range(2 * dtype.itemsize)), dtype)
        out = roundtrip(value, threshold)
        assert out.dtype == dtype and out.dtype.names == dtype.names
        assert out.tobytes() == value.tobytes()


def test_memoryview_keeps_format_and_shape():
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    for threshold in (0, 1 << 30):
        out = roundtrip(memoryview(a), threshold)
        assert isinstance(out, memoryview)
        assert (out.format, out.shape, out.tobytes()) == ("i", (3, 4), a.tobytes())
    # A strided view arrived flat, of format 'B' (found by the fuzzer's round trip).
    strided = memoryview(a)[::2]
    for threshold in (0, 1 << 30):
        out = roundtrip(strided, threshold)
        assert (out.format, out.shape, out.tobytes()) == ("i", (2, 4), a[::2].tobytes())


def test_memoryviews_the_receiver_cannot_rebuild_are_refused():
    # The receiver casts the bytes to the format and shape: views whose format
    # memoryview.cast refuses, or with a 0 in their shape, were sent and then
    # failed to decode on the receiving rank.
    for view in (
        memoryview(np.arange(3, dtype=">i4")),
        memoryview(np.zeros(2, [("a", "<i4")])),
        memoryview(np.zeros((0, 3))),
    ):
        with pytest.raises(cv.CarriageError, match="memoryviews of format"):
            roundtrip(view)
    assert roundtrip(memoryview(b"ab").cast("@B")).format == "@B"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.complex_numbers(allow_nan=False),
)
nested = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(nested)
def test_nested_values_roundtrip(value):
    assert same(roundtrip(value), value)


class Plain:
    pass


class MyList(list):
    pass


@pytest.mark.parametrize(
    "value, name",
    [
        (Plain(), "Plain"),
        ([1, {2: Plain()}], "Plain"),
        (MyList([1]), "MyList"),
        ({1, 2}, "set"),
        (np.array([object()], dtype=object), "ndarray"),
        (lambda: 0, "function"),
    ],
)
def test_uncarriageable_values_raise_type_error_naming_the_type(value, name):
    with pytest.raises(TypeError, match=name) as info:
        roundtrip(value)
    assert isinstance(info.value, cv.CarriageError)


def test_self_referential_payload_is_refused():
    loop = []
    loop.append(loop)
    with pytest.raises(cv.CarriageError, match="nested deeper"):
        roundtrip(loop)


def test_nothing_is_sent_when_encoding_fails():
    with cv.Messenger() as m:
        before = m.stats()["frames_sent"]
        with pytest.raises(TypeError, match="Plain"):
            m.send(0, "x", [1, 2, Plain()])
        with pytest.raises(TypeError, match="Plain"):
            m.request(0, "x", Plain())
        assert m.stats()["frames_sent"] == before
        assert m.stats()["pending_requests"] == 0


class Reads(cv.CarriageableItem, name="tests.Reads"):
    """A sample id in the buffer, its reads out of band (RayPlatform style)."""

    def __init__(self, sample, codes):
        self.sample = sample
        self.codes = codes

    def required_bytes(self):
        return 8

    def dump(self, buffer):
        buffer[:8] = self.sample.to_bytes(8, "little")

    def out_of_band(self):
        return [self.codes]

    @classmethod
    def load(cls, buffer, out_of_band):
        return cls(int.from_bytes(buffer[:8], "little"), out_of_band[0])


def test_carriageable_item_with_out_of_band_array():
    codes = np.arange(1 << 20, dtype=np.uint8)
    frame, oob = core.testing.encode_frame(
        core.message.KIND_SEND, 0, "t", [Reads(42, codes)], 16384, False
    )
    assert len(frame) < 200 and [len(b) for b in oob] == [codes.nbytes]
    (item,) = core.testing.decode_frame(frame, oob, False)[3]
    assert isinstance(item, Reads) and item.sample == 42
    assert np.array_equal(item.codes, codes)


def test_carriageable_item_registration_errors():
    with pytest.raises(TypeError, match="load"):

        class NoLoad(cv.CarriageableItem, name="tests.NoLoad"):
            pass

    with pytest.raises(ValueError, match="already taken"):

        class Impostor(cv.CarriageableItem, name="tests.Reads"):
            @classmethod
            def load(cls, buffer, out_of_band):
                return cls()

    with pytest.raises(TypeError):

        class Nameless(cv.CarriageableItem, name=""):
            pass


class Ticket(cv.CarriageableItem, name="tests.Ticket"):
    """Each copy dumped takes a numbered ticket; a copy never sent hands it back."""

    def __init__(self, office):
        self.office = office

    def required_bytes(self):
        return 8

    def dump(self, buffer):
        self.office["issued"] += 1
        buffer[:8] = self.office["issued"].to_bytes(8, "little")

    def unsent(self, buffer):
        self.office["returned"].append(int.from_bytes(buffer[:8], "little"))

    @classmethod
    def load(cls, buffer, out_of_band):
        return cls(None)


def test_items_of_a_message_that_fails_are_told_it_was_not_sent(monkeypatch):
    monkeypatch.setenv("CONVEYOR_MAX_FRAME_BYTES", "4096")
    office = {"issued": 0, "returned": []}
    ticket = Ticket(office)
    with cv.Messenger() as m:
        got = []
        m.on("t")(lambda msg: got.append(msg.payload))
        m.on("ask")(lambda msg: [Ticket(office), object()])  # its reply cannot travel
        with pytest.raises(cv.CarriageError):
            m.send(0, "t", [ticket, object()])
        with pytest.raises(cv.CarriageError):
            m.sender("t").send(0, [ticket, {"k": ticket}, object()])
        with pytest.raises(cv.MessageTooLargeError):
            m.send(0, "t", [ticket, list(range(1000))])
        assert office["returned"] == [1, 3, 2, 4]  # every copy, the last dumped first
        m.send(0, "t", [ticket])
        m.wait_quiet()
        assert len(got) == 1 and office["returned"] == [1, 3, 2, 4] and office["issued"] == 5
        with pytest.raises(cv.RemoteError, match="CarriageError"):
            m.request(0, "ask").result(timeout=10)
        # The native reply, then the façade's with the error's type: both handed back.
        assert office["issued"] == 7 and office["returned"][4:] == [6, 7]
        assert m.stats()["handler_errors"] == 1


class BadTicket(Ticket, name="tests.BadTicket"):
    def unsent(self, buffer):
        raise RuntimeError("the ticket office is closed")


def test_an_unsent_that_raises_does_not_hide_the_send_error(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with cv.Messenger() as m:
        with pytest.raises(cv.CarriageError, match="object"):
            m.send(0, "t", [BadTicket({"issued": 0}), object()])
    assert [str(r.exc_value) for r in reported] == ["the ticket office is closed"]


def test_unknown_item_type_on_the_receiver_is_a_frame_error():
    class Ephemeral(cv.CarriageableItem, name="tests.Ephemeral"):
        @classmethod
        def load(cls, buffer, out_of_band):
            return cls()

    frame, oob = core.testing.encode_frame(
        core.message.KIND_SEND, 0, "t", Ephemeral(), 16384, False
    )
    from conveyor._carriage import _registry

    del _registry["tests.Ephemeral"]
    with pytest.raises(cv.FrameError, match="unknown CarriageableItem type 'tests.Ephemeral'"):
        core.testing.decode_frame(frame, oob, False)


def test_item_with_wrong_required_bytes_is_refused():
    class Liar(cv.CarriageableItem, name="tests.Liar"):
        def required_bytes(self):
            return -1

        @classmethod
        def load(cls, buffer, out_of_band):
            return cls()

    with pytest.raises(cv.CarriageError, match="required_bytes"):
        roundtrip(Liar())


def test_pickle_is_opt_in():
    value = {"obj": Plain.__new__(Plain), "array": np.arange(100_000)}
    with pytest.raises(cv.CarriageError):
        roundtrip(value)
    value = [pickle.PickleBuffer(np.arange(100_000)), {1, 2, 3}]
    out = roundtrip(value, allow_pickle=True)
    assert out[1] == {1, 2, 3}
    frame, oob = core.testing.encode_frame(core.message.KIND_SEND, 0, "t", {1, 2}, 16384, True)
    with pytest.raises(cv.FrameError, match="pickle=True"):
        core.testing.decode_frame(frame, oob, False)


def test_pickle_messenger_carries_arbitrary_objects():
    with cv.Messenger(pickle=True) as m:
        m.on("echo")(lambda msg: msg.payload)
        assert m.request(0, "echo", {frozenset({1}), 2}).result(timeout=5) == {frozenset({1}), 2}


@pytest.mark.parametrize("address", [cv.Address(3, "logger"), cv.Address(0, "x", ref=2**40)])
def test_an_address_survives_pickle_and_copy(address):
    import copy
    import pickle

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(address, protocol))
        assert again == address and again.ref == address.ref
    assert copy.copy(address) == address and copy.deepcopy(address) == address
    with pytest.raises(AttributeError, match="immutable"):
        again.rank = 1
