#include "bindings/message/codec.hpp"

#include <pybind11/numpy.h>

#include <cstring>
#include <limits>
#include <unordered_map>

namespace conveyor::py_codec {

namespace {

// One byte before every value says what follows.
enum Type : std::uint8_t {
    T_NONE = 0,
    T_FALSE,
    T_TRUE,
    T_INT,
    T_BIGINT,
    T_FLOAT,
    T_COMPLEX,
    T_STR,
    T_BYTES,
    T_BYTEARRAY,
    T_MEMORYVIEW,
    T_LIST,
    T_TUPLE,
    T_DICT,
    T_NDARRAY,
    T_NPSCALAR,
    T_ADDRESS,
    T_ITEM,
    T_PICKLE,
};

// Where a run of bytes lives: inside the frame, or in an out-of-band buffer.
enum Storage : std::uint8_t { S_INLINE = 0, S_OUT_OF_BAND = 1 };

constexpr int kMaxDepth = 200;
constexpr char kNativeOrder = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '<' : '>';
constexpr std::size_t kDtypeCacheSize = 64;
constexpr std::uint32_t kMaxDims = 64;  // numpy's NPY_MAXDIMS

struct Types {
    py::object address;
    py::object item_base;
    py::dict registry;
    py::object pickle;
    py::object np_generic;
    py::object np_dtype;
    py::object np_descr_to_dtype;
    py::object np_asarray;
    py::object np_ascontiguousarray;
    py::object int_from_bytes;
    // dtype strings read off the wire -> numpy dtypes (dtypes are immutable).
    std::unordered_map<std::string, py::object> dtypes;
};

Types& types() {
    // Leaked on purpose: Python objects must not be released after the
    // interpreter is gone, which a static destructor would do.
    static Types* t = new Types();
    return *t;
}

std::string type_name(py::handle obj) {
    return py::str(py::type::handle_of(obj).attr("__qualname__")).cast<std::string>();
}

// Numeric, bool, datetime and fixed-size byte/str/record dtypes: their
// elements are plain bytes. Anything holding Python objects is refused,
// both when sending and when reading a dtype off the wire, and so are
// elements of no bytes (a record without fields, 'V0'): their arrays carry
// no data, so a 60-byte frame could announce 2**62 of them.
bool carriable_dtype(const py::dtype& dt) {
    constexpr char kItemRefcount = 0x01;  // NPY_ITEM_REFCOUNT: holds objects, records included
    if (dt.flags() & kItemRefcount || dt.itemsize() == 0) return false;
    switch (dt.kind()) {
        case 'b':
        case 'i':
        case 'u':
        case 'f':
        case 'c':
        case 'm':
        case 'M':
        case 'S':
        case 'U':
        case 'V': return true;
        default: return false;
    }
}

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
            body.blob(dtype_string(dt));
        } else {  // a record dtype: its description is itself a carriageable value
            body.u8(1);
            value(dt.attr("descr"), 1);
        }
    }

    // numpy's dtype.str, built here for the common numeric kinds: numpy
    // builds the string anew on every access, which dominates small messages.
    static std::string dtype_string(const py::dtype& dt) {
        char kind = dt.kind();
        if (std::strchr("biufc", kind) == nullptr) return dt.attr("str").cast<std::string>();
        char order = dt.byteorder();
        if (order == '=') order = kNativeOrder;
        return std::string{order, kind} + std::to_string(dt.itemsize());
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

class Decoder {
  public:
    Decoder(Reader& r, const std::vector<std::shared_ptr<Buffer>>& oob, bool allow_pickle)
        : r_(r), oob_(oob), used_(oob.size(), false), allow_pickle_(allow_pickle) {}

    py::object value(int depth) {
        if (depth > kMaxDepth) throw DecodeError("payload nested too deeply");
        auto type = r_.u8();
        switch (type) {
            case T_NONE: return py::none();
            case T_FALSE: return py::bool_(false);
            case T_TRUE: return py::bool_(true);
            case T_INT: return py::int_(r_.i64());
            case T_BIGINT: {
                auto raw = r_.blob();
                return types().int_from_bytes(py::bytes(raw.data(), raw.size()), "little",
                                              py::arg("signed") = true);
            }
            case T_FLOAT: return py::float_(r_.f64());
            case T_COMPLEX: {
                double re = r_.f64();
                double im = r_.f64();
                return py::reinterpret_steal<py::object>(PyComplex_FromDoubles(re, im));
            }
            case T_STR: {
                auto raw = r_.blob();
                PyObject* s = PyUnicode_DecodeUTF8(raw.data(), raw.size(), "surrogatepass");
                if (!s) python_failure("invalid UTF-8 in a string");
                return py::reinterpret_steal<py::object>(s);
            }
            case T_BYTES: {
                auto run = bytes_run();
                return py::bytes(reinterpret_cast<const char*>(run.first), run.second);
            }
            case T_BYTEARRAY: {
                auto run = bytes_run();
                return py::reinterpret_steal<py::object>(PyByteArray_FromStringAndSize(
                    reinterpret_cast<const char*>(run.first), run.second));
            }
            case T_MEMORYVIEW: return memoryview();
            case T_LIST:
            case T_TUPLE: {
                auto n = r_.count(1);
                py::list items;
                for (std::uint64_t i = 0; i < n; ++i) items.append(value(depth + 1));
                if (type == T_LIST) return std::move(items);
                return py::tuple(items);
            }
            case T_DICT: {
                auto n = r_.count(2);
                py::dict d;
                for (std::uint64_t i = 0; i < n; ++i) {
                    py::object k = value(depth + 1);
                    py::object v = value(depth + 1);
                    if (PyDict_SetItem(d.ptr(), k.ptr(), v.ptr()) != 0)
                        python_failure("unusable dict key");
                }
                return std::move(d);
            }
            case T_NDARRAY: return array(depth);
            case T_NPSCALAR: {
                py::dtype dt = dtype(depth);
                auto raw = r_.blob();
                if (raw.size() != static_cast<std::size_t>(dt.itemsize()))
                    throw DecodeError("numpy scalar has " + std::to_string(raw.size()) +
                                      " bytes, " + std::to_string(dt.itemsize()) + " expected");
                py::array a(dt, std::vector<py::ssize_t>{}, std::vector<py::ssize_t>{});
                std::memcpy(a.mutable_data(), raw.data(), raw.size());
                return a[py::tuple()];
            }
            case T_ADDRESS: {
                auto rank = r_.i64();
                auto name = r_.blob();
                bool has_ref = r_.u8() != 0;
                auto ref = r_.u64();
                return types().address(
                    rank, this->name(name),
                    has_ref ? py::object(py::int_(ref)) : py::object(py::none()));
            }
            case T_ITEM: return item(depth);
            case T_PICKLE: return pickled();
            default: throw DecodeError("unknown value type " + std::to_string(type));
        }
    }

    void finish() {
        if (r_.remaining() != 0)
            throw DecodeError(std::to_string(r_.remaining()) +
                              " unexpected bytes after the payload");
        for (std::size_t i = 0; i < used_.size(); ++i)
            if (!used_[i])
                throw DecodeError("out-of-band buffer " + std::to_string(i) + " is unused");
    }

  private:
    // Names (dtype strings, receiver names, formats) must be valid UTF-8.
    py::str name(std::string_view raw) {
        PyObject* s =
            PyUnicode_DecodeUTF8(raw.data(), static_cast<Py_ssize_t>(raw.size()), "strict");
        if (!s) python_failure("invalid UTF-8 in a name");
        return py::reinterpret_steal<py::str>(s);
    }

    [[noreturn]] void python_failure(const std::string& what) {
        py::error_already_set e;
        throw DecodeError(what + ": " + e.what());
    }

    const std::shared_ptr<Buffer>& take_oob(std::uint64_t expected_size) {
        auto i = r_.u32();
        if (i >= oob_.size())
            throw DecodeError("out-of-band buffer " + std::to_string(i) + " does not exist");
        if (used_[i]) throw DecodeError("out-of-band buffer " + std::to_string(i) + " used twice");
        if (expected_size != std::numeric_limits<std::uint64_t>::max() &&
            oob_[i]->size() != expected_size)
            throw DecodeError("out-of-band buffer " + std::to_string(i) + " has " +
                              std::to_string(oob_[i]->size()) + " bytes, " +
                              std::to_string(expected_size) + " expected");
        used_[i] = true;
        return oob_[i];
    }

    // A run of bytes whose size the run itself gives: a copy is made by the caller.
    std::pair<const std::uint8_t*, std::size_t> bytes_run() {
        auto storage = r_.u8();
        if (storage == S_INLINE) {
            auto n = r_.u64();
            return {r_.take(n), static_cast<std::size_t>(n)};
        }
        if (storage != S_OUT_OF_BAND)
            throw DecodeError("bad storage mark " + std::to_string(storage));
        const auto& b = take_oob(std::numeric_limits<std::uint64_t>::max());
        return {b->data(), b->size()};
    }

    // An array's dimensions and strides, read off the wire (numpy bounds
    // their number): on the stack, not in the two vectors pybind11's
    // py::array takes, two allocations on the path of every array received.
    struct Layout {
        int ndim = 0;
        py::ssize_t dims[kMaxDims];
        py::ssize_t strides[kMaxDims];
    };

    // A numpy array over received memory or a copy of inline bytes: `nbytes` known.
    py::array array_storage(const py::dtype& dt, Layout& layout, bool fortran,
                            std::uint64_t nbytes) {
        py::ssize_t step = dt.itemsize();
        for (int k = 0; k < layout.ndim; ++k) {
            int i = fortran ? k : layout.ndim - 1 - k;
            layout.strides[i] = step;
            step *= layout.dims[i];
        }
        auto storage = r_.u8();
        if (storage == S_INLINE) {
            auto n = r_.u64();
            if (n != nbytes)
                throw DecodeError("array data has " + std::to_string(n) + " bytes, " +
                                  std::to_string(nbytes) + " expected");
            auto src = r_.take(n);
            auto a = new_array(dt, layout.ndim, layout.dims, layout.strides, nullptr, {});
            if (n) std::memcpy(a.mutable_data(), src, n);
            return a;
        }
        if (storage != S_OUT_OF_BAND)
            throw DecodeError("bad storage mark " + std::to_string(storage));
        return over_buffer(take_oob(nbytes), dt, layout.ndim, layout.dims, layout.strides);
    }

    // Zero copy: an array over the buffer MPI received into, which it owns.
    static py::array over_buffer(const std::shared_ptr<Buffer>& buffer, const py::dtype& dt,
                                 int ndim, const py::ssize_t* dims, const py::ssize_t* strides) {
        auto holder = new std::shared_ptr<Buffer>(buffer);
        py::capsule owner(holder, "conveyor.Buffer", [](PyObject* cap) {
            delete static_cast<std::shared_ptr<Buffer>*>(
                PyCapsule_GetPointer(cap, "conveyor.Buffer"));
        });
        return new_array(dt, ndim, dims, strides, buffer->data(), owner);
    }

    // numpy's constructor: an array of `dt` over `data`, kept alive by
    // `base`, or, if `data` is null, over memory of its own.
    static py::array new_array(const py::dtype& dt, int ndim, const py::ssize_t* dims,
                               const py::ssize_t* strides, void* data, py::handle base) {
        auto& api = py::detail::npy_api::get();
        int flags = data ? py::detail::npy_api::NPY_ARRAY_WRITEABLE_ : 0;
        auto a = py::reinterpret_steal<py::array>(api.PyArray_NewFromDescr_(
            api.PyArray_Type_, dt.inc_ref().ptr(), ndim, dims, strides, data, flags, nullptr));
        if (!a) throw py::error_already_set();
        // Steals the reference to `base`, even when it fails.
        if (base && api.PyArray_SetBaseObject_(a.ptr(), base.inc_ref().ptr()) < 0)
            throw py::error_already_set();
        return a;
    }

    // A record's description is a value nested in the array's: it counts
    // toward the depth limit, or arrays in descriptions in arrays (two bytes
    // a level) would recurse until the stack ran out.
    py::dtype dtype(int depth) {
        auto form = r_.u8();
        py::object spec;
        std::string key;
        if (form == 0) {
            auto raw = r_.blob();
            key.assign(raw.data(), raw.size());
            auto cached = types().dtypes.find(key);
            if (cached != types().dtypes.end())
                return py::reinterpret_borrow<py::dtype>(cached->second);
            spec = name(raw);
        } else if (form == 1) {
            spec = value(depth + 1);
        } else {
            throw DecodeError("bad dtype mark " + std::to_string(form));
        }
        py::object dt;
        try {
            // A record's description is its dtype's descr, where padding is
            // a field named '': np.dtype would name it (f0, f1...) and so
            // change the dtype, or refuse it for a name taken (an aligned
            // record of default names); descr_to_dtype, as .npy files are
            // read, makes padding padding again.
            dt = form == 0 ? types().np_dtype(spec) : types().np_descr_to_dtype(spec);
        } catch (py::error_already_set& e) {
            throw DecodeError(std::string("invalid dtype: ") + e.what());
        }
        auto result = py::reinterpret_borrow<py::dtype>(dt);
        if (!carriable_dtype(result))
            throw DecodeError("refused dtype " + py::str(result).cast<std::string>());
        if (form == 0 && types().dtypes.size() < kDtypeCacheSize) types().dtypes.emplace(key, dt);
        return result;
    }

    void shape(std::uint64_t itemsize, Layout& layout, std::uint64_t& nbytes) {
        auto ndim = r_.u32();
        if (ndim > kMaxDims) throw DecodeError("array has " + std::to_string(ndim) + " dimensions");
        layout.ndim = static_cast<int>(ndim);
        // The product of the dimensions that are not 0 bounds every stride
        // (array_storage multiplies them in py::ssize_t): it must fit even
        // when a 0 makes the array empty.
        constexpr auto kMax = std::uint64_t(std::numeric_limits<py::ssize_t>::max());
        std::uint64_t total = itemsize;
        bool empty = false;
        for (int k = 0; k < layout.ndim; ++k) {
            auto n = r_.u64();
            if (n == 0) {
                empty = true;
            } else if (total > kMax / n) {
                throw DecodeError("array size overflows");
            } else {
                total *= n;
            }
            layout.dims[k] = static_cast<py::ssize_t>(n);
        }
        nbytes = empty ? 0 : total;
    }

    py::object array(int depth) {
        py::dtype dt = dtype(depth);
        auto order = r_.u8();
        if (order > 1) throw DecodeError("bad array order mark");
        std::uint64_t nbytes = 0;
        Layout layout;
        shape(dt.itemsize(), layout, nbytes);
        return array_storage(dt, layout, order == 1, nbytes);
    }

    py::object memoryview() {
        auto fmt = r_.blob();
        auto ndim = r_.u32();
        if (ndim > kMaxDims) throw DecodeError("memoryview has too many dimensions");
        py::list dims;
        for (std::uint32_t i = 0; i < ndim; ++i) dims.append(py::int_(r_.u64()));
        py::object flat;
        auto storage = r_.u8();
        if (storage == S_INLINE) {
            auto n = r_.u64();
            auto p = r_.take(n);
            flat = py::memoryview(py::bytes(reinterpret_cast<const char*>(p), n));
        } else if (storage == S_OUT_OF_BAND) {
            const auto& b = take_oob(std::numeric_limits<std::uint64_t>::max());
            py::ssize_t size = static_cast<py::ssize_t>(b->size()), stride = 1;
            flat = py::memoryview(over_buffer(b, py::dtype("u1"), 1, &size, &stride));
        } else {
            throw DecodeError("bad storage mark " + std::to_string(storage));
        }
        try {
            return flat.attr("cast")("B").attr("cast")(name(fmt), dims);
        } catch (py::error_already_set& e) {
            throw DecodeError(std::string("memoryview layout does not match its data: ") +
                              e.what());
        }
    }

    py::object item(int depth) {
        py::str type_name = name(r_.blob());
        auto data = r_.blob();
        auto n = r_.count(1);
        py::list extra;
        for (std::uint64_t i = 0; i < n; ++i) extra.append(value(depth + 1));
        if (!types().registry.contains(type_name))
            throw DecodeError("unknown CarriageableItem type '" + type_name.cast<std::string>() +
                              "' (register it on every rank)");
        py::object cls = types().registry[type_name];
        py::memoryview view(py::bytes(data.data(), data.size()));
        try {
            return cls.attr("load")(view, extra);
        } catch (py::error_already_set& e) {
            throw DecodeError(type_name.cast<std::string>() + ".load() failed: " + e.what());
        }
    }

    py::object pickled() {
        auto data = r_.blob();
        auto n = r_.count(1);
        py::list buffers;
        for (std::uint64_t i = 0; i < n; ++i) {
            auto run = bytes_run();
            buffers.append(py::bytearray(reinterpret_cast<const char*>(run.first), run.second));
        }
        if (!allow_pickle_)
            throw DecodeError(
                "the payload holds a pickled object, but this Messenger was not "
                "created with pickle=True");
        try {
            return types().pickle.attr("loads")(py::bytes(data.data(), data.size()),
                                                py::arg("buffers") = buffers);
        } catch (py::error_already_set& e) {
            throw DecodeError(std::string("unpickling failed: ") + e.what());
        }
    }

    Reader& r_;
    const std::vector<std::shared_ptr<Buffer>>& oob_;
    std::vector<bool> used_;
    bool allow_pickle_;
};

}  // namespace

KeepAlive keep_alive(py::object obj) {
    return KeepAlive(new py::object(std::move(obj)), [](void* p) {
        py::gil_scoped_acquire gil;
        delete static_cast<py::object*>(p);
    });
}

py::object make_address(py::handle rank, py::handle name, py::handle ref) {
    return types().address(rank, name, ref);
}

void configure(py::object address_type, py::object item_base, py::dict item_registry,
               py::object pickle_module) {
    auto& t = types();
    t.address = std::move(address_type);
    t.item_base = std::move(item_base);
    t.registry = std::move(item_registry);
    t.pickle = std::move(pickle_module);
    auto np = py::module_::import("numpy");
    t.np_generic = np.attr("generic");
    t.np_dtype = np.attr("dtype");
    t.np_descr_to_dtype = py::module_::import("numpy.lib.format").attr("descr_to_dtype");
    t.np_asarray = np.attr("asarray");
    t.np_ascontiguousarray = np.attr("ascontiguousarray");
    t.int_from_bytes = py::module_::import("builtins").attr("int").attr("from_bytes");
}

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

py::object decode_body(const std::uint8_t* body, std::size_t size,
                       const std::vector<std::shared_ptr<Buffer>>& oob, bool allow_pickle) {
    Reader r(body, size);
    Decoder dec(r, oob, allow_pickle);
    try {
        py::object v = dec.value(0);
        dec.finish();
        return v;
    } catch (py::error_already_set& e) {
        // Whatever Python raised while building values from untrusted bytes
        // (a dict key that is unhashable, say) makes the payload malformed.
        throw DecodeError(std::string("payload could not be decoded: ") + e.what());
    }
}

}  // namespace conveyor::py_codec

namespace conveyor {

py::object decode_tag(const std::string& tag) {
    auto s = py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(tag.data(), static_cast<Py_ssize_t>(tag.size()), "replace"));
    if (!s) throw py::error_already_set();
    return s;
}

void register_codec(py::module_& m) {
    // The frame kinds the façade passes to Engine.send and encode_frame.
    m.attr("KIND_SEND") = static_cast<int>(FrameKind::Send);
    m.attr("KIND_REQUEST") = static_cast<int>(FrameKind::Request);
    m.attr("KIND_REPLY") = static_cast<int>(FrameKind::Reply);
    m.attr("KIND_ERROR") = static_cast<int>(FrameKind::Error);
    m.attr("KIND_ANSWER") = static_cast<int>(FrameKind::Answer);
    // What the frames of this build carry, for tests that write frames by hand.
    m.attr("FRAME_VERSION") = static_cast<int>(kFrameVersion);
}

}  // namespace conveyor
