// The decoder: a frame's body and its out-of-band buffers back to a Python
// value, refusing whatever is malformed (the format: payload.hpp).
#include <cstring>
#include <limits>
#include <string>

#include "bindings/message/codec.hpp"
#include "bindings/message/payload.hpp"

namespace conveyor::py_codec {

namespace {

// dtype strings read off the wire -> numpy dtypes (dtypes are immutable).
// A process meets few, with short names: they are kept in place in one
// table, so that finding one reads a cache line or two between messages,
// where a hash map's buckets, nodes and strings spread it over several.
class KnownDtypes {
  public:
    PyObject* find(std::string_view key) const {
        for (std::size_t i = 0; i < count_; ++i) {
            const auto& e = entries_[i];
            if (e.size == key.size() && std::memcmp(e.key, key.data(), key.size()) == 0)
                return e.dtype;
        }
        return nullptr;
    }
    void add(std::string_view key, py::handle dtype) {
        if (count_ == kCapacity || key.size() > sizeof(Entry::key)) return;
        auto& e = entries_[count_++];
        e.size = static_cast<std::uint8_t>(key.size());
        std::memcpy(e.key, key.data(), key.size());
        e.dtype = dtype.inc_ref().ptr();  // kept for good, as types() keeps its objects
    }

  private:
    static constexpr std::size_t kCapacity = 16;
    struct Entry {
        char key[15];
        std::uint8_t size;
        PyObject* dtype;
    };
    Entry entries_[kCapacity] = {};
    std::size_t count_ = 0;
};
KnownDtypes known_dtypes;  // read and filled with the GIL held

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
        auto storage = r_.u8();
        if (storage == S_INLINE) {
            auto n = r_.u64();
            if (n != nbytes)
                throw DecodeError("array data has " + std::to_string(n) + " bytes, " +
                                  std::to_string(nbytes) + " expected");
            auto src = r_.take(n);
            auto a = new_array(dt, layout.ndim, layout.dims, fortran);
            if (n) std::memcpy(a.mutable_data(), src, n);
            return a;
        }
        if (storage != S_OUT_OF_BAND)
            throw DecodeError("bad storage mark " + std::to_string(storage));
        py::ssize_t step = dt.itemsize();
        for (int k = 0; k < layout.ndim; ++k) {
            int i = fortran ? k : layout.ndim - 1 - k;
            layout.strides[i] = step;
            step *= layout.dims[i];
        }
        return over_buffer(take_oob(nbytes), dt, layout.ndim, layout.dims, layout.strides);
    }

    // An array of memory of its own, laid out as np.empty lays it out: given
    // no strides, numpy sets the contiguity flags as it fills them in, where
    // strides passed in would make it work the flags out again from them.
    static py::array new_array(const py::dtype& dt, int ndim, const py::ssize_t* dims,
                               bool fortran) {
        auto& api = py::detail::npy_api::get();
        auto a = py::reinterpret_steal<py::array>(
            api.PyArray_NewFromDescr_(api.PyArray_Type_, dt.inc_ref().ptr(), ndim, dims, nullptr,
                                      nullptr, fortran ? 1 : 0, nullptr));
        if (!a) throw py::error_already_set();
        return a;
    }

    // Zero copy: an array over the buffer MPI received into, which it owns.
    static py::array over_buffer(const std::shared_ptr<Buffer>& buffer, const py::dtype& dt,
                                 int ndim, const py::ssize_t* dims, const py::ssize_t* strides) {
        auto holder = new std::shared_ptr<Buffer>(buffer);
        py::capsule owner(holder, "conveyor.Buffer", [](PyObject* cap) {
            delete static_cast<std::shared_ptr<Buffer>*>(
                PyCapsule_GetPointer(cap, "conveyor.Buffer"));
        });
        auto& api = py::detail::npy_api::get();
        // Strides given, numpy works out the contiguity and alignment flags
        // from them and the address (a buffer's offset in its line may leave
        // it unaligned for the dtype).
        auto a = py::reinterpret_steal<py::array>(api.PyArray_NewFromDescr_(
            api.PyArray_Type_, dt.inc_ref().ptr(), ndim, dims, strides, buffer->data(),
            py::detail::npy_api::NPY_ARRAY_WRITEABLE_, nullptr));
        if (!a) throw py::error_already_set();
        // Steals the reference to the owner, even when it fails.
        if (api.PyArray_SetBaseObject_(a.ptr(), owner.inc_ref().ptr()) < 0)
            throw py::error_already_set();
        return a;
    }

    // A record's description is a value nested in the array's: it counts
    // toward the depth limit, or arrays in descriptions in arrays (two bytes
    // a level) would recurse until the stack ran out.
    py::dtype dtype(int depth) {
        auto form = r_.u8();
        py::object spec;
        std::string_view key;
        if (form == 0) {
            key = r_.blob();
            if (auto known = known_dtypes.find(key))
                return py::reinterpret_borrow<py::dtype>(known);
            spec = name(key);
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
        if (form == 0) known_dtypes.add(key, dt);
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

}  // namespace conveyor
