// The encoder: a Python value to a frame's body and the buffers that
// travel out of band beside it (the format: payload.hpp).
#include <cstring>
#include <string>

#include "bindings/message/codec.hpp"
#include "bindings/message/payload.hpp"

namespace conveyor::py_codec {

namespace {

class Encoder {
  public:
    Encoder(Encoded& out, const EncodeOptions& options)
        : body(out.frame), out_(out), options_(options) {}
    Writer& body;

    void value(py::handle obj, int depth) {
        if (depth > kMaxDepth)
            throw CarriageError("payload nested deeper than " + std::to_string(kMaxDepth) +
                                " levels (is it self-referential?)");
        PyObject* o = obj.ptr();
        PyTypeObject* t = Py_TYPE(o);
        if (o == Py_None) return body.u8(T_NONE);
        if (t == &PyBool_Type) return body.u8(o == Py_True ? T_TRUE : T_FALSE);
        if (t == &PyLong_Type) return integer(obj);
        if (t == &PyFloat_Type) {
            body.u8(T_FLOAT);
            return body.f64(PyFloat_AS_DOUBLE(o));
        }
        if (t == &PyComplex_Type) {
            body.u8(T_COMPLEX);
            body.f64(PyComplex_RealAsDouble(o));
            return body.f64(PyComplex_ImagAsDouble(o));
        }
        if (t == &PyUnicode_Type) return text(obj);
        if (t == &PyBytes_Type) {
            body.u8(T_BYTES);
            return bytes_run(obj, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
        }
        if (t == &PyByteArray_Type) {
            body.u8(T_BYTEARRAY);
            return bytes_run(obj, PyByteArray_AS_STRING(o), PyByteArray_GET_SIZE(o));
        }
        if (t == &PyMemoryView_Type) return memoryview(obj);
        if (t == &PyList_Type || t == &PyTuple_Type) {
            body.u8(t == &PyList_Type ? T_LIST : T_TUPLE);
            auto n = PySequence_Fast_GET_SIZE(o);
            body.u64(static_cast<std::uint64_t>(n));
            // Index each time: a list may not be resized under us (no Python
            // code runs between items except CarriageableItem.dump, which could).
            for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(o); ++i)
                value(PySequence_Fast_GET_ITEM(o, i), depth + 1);
            if (PySequence_Fast_GET_SIZE(o) != n)
                throw CarriageError("list changed size while it was being sent");
            return;
        }
        if (t == &PyDict_Type) {
            body.u8(T_DICT);
            body.u64(static_cast<std::uint64_t>(PyDict_Size(o)));
            // Copy the items first so user code run by a nested dump() cannot
            // invalidate the iteration.
            py::list items = py::reinterpret_steal<py::list>(PyDict_Items(o));
            for (auto kv : items) {
                auto pair = kv.cast<py::tuple>();
                value(pair[0], depth + 1);
                value(pair[1], depth + 1);
            }
            return;
        }
        if (py::isinstance<py::array>(obj)) return array(py::reinterpret_borrow<py::array>(obj));
        if (py::isinstance(obj, types().np_generic)) return np_scalar(obj);
        if (t == reinterpret_cast<PyTypeObject*>(types().address.ptr())) return address(obj);
        if (types().item_base && py::isinstance(obj, types().item_base)) return item(obj, depth);
        if (options_.allow_pickle) return pickled(obj);
        throw CarriageError("objects of type '" + type_name(obj) +
                            "' are not carriageable: implement cv.CarriageableItem, convert "
                            "to a built-in type, or create the Messenger with pickle=True");
    }

  private:
    void integer(py::handle obj) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
        if (!overflow) {
            body.u8(T_INT);
            return body.i64(v);
        }
        // Arbitrary size: signed little-endian bytes, as int.to_bytes makes them.
        auto bits = obj.attr("bit_length")().cast<std::uint64_t>();
        auto n = bits / 8 + 1;
        py::bytes raw = obj.attr("to_bytes")(n, "little", py::arg("signed") = true);
        body.u8(T_BIGINT);
        body.blob(std::string_view(PyBytes_AS_STRING(raw.ptr()), PyBytes_GET_SIZE(raw.ptr())));
    }

    void text(py::handle obj) {
        Py_ssize_t n = 0;
        const char* s = PyUnicode_AsUTF8AndSize(obj.ptr(), &n);
        body.u8(T_STR);
        if (s) return body.blob(std::string_view(s, n));
        PyErr_Clear();  // lone surrogates: carried as they are
        py::bytes raw = py::reinterpret_steal<py::bytes>(
            PyUnicode_AsEncodedString(obj.ptr(), "utf-8", "surrogatepass"));
        if (!raw) throw py::error_already_set();
        body.blob(std::string_view(PyBytes_AS_STRING(raw.ptr()), PyBytes_GET_SIZE(raw.ptr())));
    }

    // Small runs are copied into the frame; large ones travel from `owner`'s memory.
    void bytes_run(py::handle owner, const void* data, std::size_t n) {
        if (n >= options_.zero_copy_threshold) {
            body.u8(S_OUT_OF_BAND);
            body.u32(static_cast<std::uint32_t>(out_.oob.size()));
            out_.oob.push_back({data, n});
            if (!out_.keep) out_.keep = py::list();
            if (PyList_Append(out_.keep.ptr(), owner.ptr()) != 0) throw py::error_already_set();
        } else {
            body.u8(S_INLINE);
            body.blob(std::string_view(static_cast<const char*>(data), n));
        }
    }

    void memoryview(py::handle obj) {
        // The format and shape travel along so the receiver gets a view of
        // the same layout, which it makes with memoryview.cast: a view cast
        // cannot make (a format that is not one native character, a 0 in
        // its shape) is refused here rather than failing the receiver.
        Py_buffer* b = PyMemoryView_GET_BUFFER(obj.ptr());
        std::string_view format = b->format ? b->format : "B";
        std::string_view code = format.size() == 2 && format[0] == '@' ? format.substr(1) : format;
        bool castable = code.size() == 1 && std::strchr("cbB?hHiIlLqQnNfdP", code[0]) != nullptr;
        for (int i = 0; i < b->ndim && castable; ++i) castable = b->shape[i] != 0;
        if (!castable)
            throw CarriageError("memoryviews of format '" + std::string(format) +
                                "' or with a 0 in their shape are not carriageable: send "
                                "bytes or a numpy array");
        body.u8(T_MEMORYVIEW);
        body.blob(format);
        body.u32(static_cast<std::uint32_t>(b->ndim));
        for (int i = 0; i < b->ndim; ++i) body.u64(static_cast<std::uint64_t>(b->shape[i]));
        if (PyBuffer_IsContiguous(b, 'C'))
            return bytes_run(obj, b->buf, static_cast<std::size_t>(b->len));
        // Not contiguous: its bytes in C order, copied once, are sent.
        py::bytes copy = obj.attr("tobytes")();
        bytes_run(copy, PyBytes_AS_STRING(copy.ptr()),
                  static_cast<std::size_t>(PyBytes_GET_SIZE(copy.ptr())));
    }

    void dtype(const py::dtype& dt, const py::handle& owner) {
        if (!carriable_dtype(dt))
            throw CarriageError("numpy arrays of dtype " + py::str(dt).cast<std::string>() +
                                " (in a '" + type_name(owner) +
                                "') are not carriageable: only plain-data dtypes are");
        if (!dt.has_fields()) {
            body.u8(0);
            dtype_string(dt);
        } else {  // a record dtype: its description is itself a carriageable value
            body.u8(1);
            value(dt.attr("descr"), 1);
        }
    }

    // numpy's dtype.str, written here for the common numeric kinds (order,
    // kind, itemsize: "<f8"): numpy builds the string anew on every access,
    // which dominates small messages.
    void dtype_string(const py::dtype& dt) {
        char kind = dt.kind();
        auto itemsize = dt.itemsize();
        bool numeric = kind == 'b' || kind == 'i' || kind == 'u' || kind == 'f' || kind == 'c';
        if (!numeric || itemsize < 1 || itemsize > 99)
            return body.blob(dt.attr("str").cast<std::string>());
        char order = dt.byteorder();
        char s[4] = {order == '=' ? kNativeOrder : order, kind};
        std::size_t n = 2;
        if (itemsize >= 10) s[n++] = static_cast<char>('0' + itemsize / 10);
        s[n++] = static_cast<char>('0' + itemsize % 10);
        body.blob(std::string_view(s, n));
    }

    void array(py::array arr) {
        bool c = arr.flags() & py::array::c_style;
        bool f = arr.flags() & py::array::f_style;
        if (!c && !f) {  // strided: made contiguous once, and that copy is sent
            arr = contiguous_copy(arr);
            c = true;
        }
        body.u8(T_NDARRAY);
        dtype(arr.dtype(), arr);
        body.u8(c ? 0 : 1);
        body.u32(static_cast<std::uint32_t>(arr.ndim()));
        for (py::ssize_t i = 0; i < arr.ndim(); ++i)
            body.u64(static_cast<std::uint64_t>(arr.shape(i)));
        bytes_run(arr, arr.data(), static_cast<std::size_t>(arr.nbytes()));
    }

    static py::array contiguous_copy(const py::array& arr) {
        return types().np_ascontiguousarray(arr);
    }

    void np_scalar(py::handle obj) {
        py::array arr = types().np_asarray(obj);
        body.u8(T_NPSCALAR);
        dtype(arr.dtype(), obj);
        body.blob(std::string_view(static_cast<const char*>(arr.data()), arr.nbytes()));
    }

    void address(py::handle obj) {
        body.u8(T_ADDRESS);
        body.i64(obj.attr("rank").cast<std::int64_t>());
        body.blob(obj.attr("name").cast<std::string>());
        py::object ref = obj.attr("ref");
        body.u8(ref.is_none() ? 0 : 1);
        body.u64(ref.is_none() ? 0 : ref.cast<std::uint64_t>());
    }

    void item(py::handle obj, int depth) {
        py::handle cls = py::type::handle_of(obj);
        py::object name = cls.attr("carriage_name");
        if (name.is_none() || !types().registry.contains(name) ||
            py::object(types().registry[name]).ptr() != cls.ptr())
            throw CarriageError("CarriageableItem type '" + type_name(obj) +
                                "' is not registered: subclass it with name=\"...\"");
        auto n = obj.attr("required_bytes")();
        if (!py::isinstance<py::int_>(n) || n.cast<long long>() < 0)
            throw CarriageError(type_name(obj) + ".required_bytes() must return an int >= 0");
        py::bytearray buffer(std::string(n.cast<std::size_t>(), '\0'));
        obj.attr("dump")(py::memoryview(buffer));
        out_.dumped.emplace_back(py::reinterpret_borrow<py::object>(obj), buffer);
        py::list extra(obj.attr("out_of_band")());
        body.u8(T_ITEM);
        body.blob(name.cast<std::string>());
        body.blob(std::string_view(PyByteArray_AS_STRING(buffer.ptr()),
                                   PyByteArray_GET_SIZE(buffer.ptr())));
        body.u64(extra.size());
        for (auto v : extra) value(v, depth + 1);
    }

    void pickled(py::handle obj) {
        py::list buffers;
        py::bytes data = types().pickle.attr("dumps")(
            obj, py::arg("protocol") = 5, py::arg("buffer_callback") = buffers.attr("append"));
        body.u8(T_PICKLE);
        body.blob(std::string_view(PyBytes_AS_STRING(data.ptr()), PyBytes_GET_SIZE(data.ptr())));
        body.u64(buffers.size());
        for (auto b : buffers) {
            py::object raw = b.attr("raw")();  // a contiguous 'B' memoryview
            Py_buffer* pb = PyMemoryView_GET_BUFFER(raw.ptr());
            bytes_run(raw, pb->buf, static_cast<std::size_t>(pb->len));
        }
    }

    Encoded& out_;
    const EncodeOptions& options_;
};
}  // namespace

void encode_frame(Encoded& out, FrameKind kind, std::uint64_t ref, std::string_view tag,
                  py::handle payload, const EncodeOptions& options) {
    // Most frames carry no out-of-band data: write the header announcing
    // none and the body right after it, and only if the body turned out to
    // use buffers, insert their sizes, their offsets and the stamp (the
    // engine fills in both), and patch the count.
    out.frame.bytes.clear();
    out.oob.clear();
    out.keep = py::object();
    out.dumped.clear();
    write_header(out.frame, kind, ref, tag, {});
    std::size_t body_offset = out.frame.size();
    Encoder enc(out, options);
    enc.value(payload, 0);
    if (out.oob.empty()) return;
    Writer announced;
    for (const auto& b : out.oob) announced.u64(b.size);
    for (std::size_t i = 0; i < out.oob.size(); ++i) announced.u8(0);
    announced.u64(0);
    auto& bytes = out.frame.bytes;
    auto at = bytes.begin() + static_cast<std::ptrdiff_t>(body_offset);
    bytes.insert(at, announced.bytes.begin(), announced.bytes.end());
    auto count = static_cast<std::uint32_t>(out.oob.size());
    std::memcpy(bytes.data() + body_offset - 4, &count, 4);  // the header's last field
}

void unsent(Encoded& out) {
    auto dumped = std::move(out.dumped);
    out.dumped.clear();
    for (auto it = dumped.rbegin(); it != dumped.rend(); ++it) {
        try {
            it->first.attr("unsent")(py::memoryview(it->second));
        } catch (py::error_already_set& e) {
            e.discard_as_unraisable(it->first.attr("unsent"));
        }
    }
}

}  // namespace conveyor::py_codec
