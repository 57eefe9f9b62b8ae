// Python-facing helpers shared by the bindings of edgevlp._preprocess (normalize, preprocess):
// argument conversion and the checks a user can trip, each raising a Python exception whose text
// matches the numpy reference in edgevlp/runtime/preprocess.py.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace edgevlp_py {

namespace py = pybind11;

// One call handles at most this many values (H * W * 3): 8 GiB of float32 output.
constexpr py::ssize_t kMaxValues = py::ssize_t{1} << 31;

inline std::string repr_str(py::handle obj) { return py::repr(obj).cast<std::string>(); }

inline std::string type_name(py::handle obj) {
    return py::type::handle_of(obj).attr("__name__").cast<std::string>();
}

// Same text as Python's repr() of the shape tuple: "(4, 4, 3)", "(5,)", "()".
inline std::string shape_str(const py::array& arr) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
        if (i > 0) s += ", ";
        s += std::to_string(arr.shape(i));
    }
    if (arr.ndim() == 1) s += ",";
    return s + ")";
}

inline std::string dtype_str(const py::array& arr) { return py::str(arr.dtype()).cast<std::string>(); }

inline bool is_text(py::handle obj) {
    return PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr()) || PyByteArray_Check(obj.ptr());
}

// A number as float() would take it, but without parsing strings (PyFloat_AsDouble rules).
inline bool to_real(py::handle obj, double* value) {
    if (is_text(obj)) return false;
    const double v = PyFloat_AsDouble(obj.ptr());
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
    }
    *value = v;
    return true;
}

// mean / std: a sequence of exactly 3 real numbers.
inline void to_triplet(py::handle obj, const char* name, double out[3]) {
    const std::string expected = std::string(name) + " must be a sequence of 3 numbers (R, G, B), got ";
    if (is_text(obj)) throw py::type_error(expected + repr_str(obj));
    const Py_ssize_t n = PyObject_Size(obj.ptr());
    if (n < 0) {
        PyErr_Clear();
        throw py::type_error(expected + repr_str(obj));
    }
    if (n != 3) throw py::value_error(expected + std::to_string(n) + " values: " + repr_str(obj));
    for (int i = 0; i < 3; ++i) {
        const py::object index = py::int_(i);
        PyObject* item = PyObject_GetItem(obj.ptr(), index.ptr());  // value[i], as Python indexes
        if (item == nullptr) {
            PyErr_Clear();
            throw py::type_error(expected + repr_str(obj));
        }
        const py::object owned = py::reinterpret_steal<py::object>(item);
        if (!to_real(owned, &out[i])) {
            throw py::type_error(std::string(name) + "[" + std::to_string(i) + "] must be a number, got " +
                                 repr_str(owned));
        }
    }
    for (int i = 0; i < 3; ++i) {
        if (!std::isfinite(out[i])) {
            throw py::value_error(std::string(name) + " must contain finite numbers, got " + repr_str(obj));
        }
    }
}

inline bool is_bool(py::handle obj) {
    if (PyBool_Check(obj.ptr())) return true;
    static const py::object* np_bool = nullptr;
    if (np_bool == nullptr) {
        // Leaked on purpose: lives as long as the interpreter, avoids teardown-order issues.
        np_bool = new py::object(py::module_::import("numpy").attr("bool_"));
    }
    return py::isinstance(obj, *np_bool);
}

// Byte extent [lo, hi) an array's elements can touch, as numpy.may_share_memory computes it.
inline void byte_bounds(const py::array& arr, std::intptr_t* lo, std::intptr_t* hi) {
    std::intptr_t low = reinterpret_cast<std::intptr_t>(arr.data());
    std::intptr_t high = low;
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
        const std::intptr_t span = static_cast<std::intptr_t>(arr.shape(i) - 1) * arr.strides(i);
        if (span < 0) low += span; else high += span;
    }
    *lo = low;
    *hi = high + arr.itemsize();
}
// The frame: uint8 HxWx3, non-empty, at most kMaxValues values. `prefix` starts every message
// ("" for one frame, "images[3]: " in a batch). Returns the array.
inline py::array check_image(const py::object& image_obj, bool swap_rb, const std::string& prefix = "") {
    const std::string order = swap_rb ? "BGR" : "RGB";
    if (!py::isinstance<py::array>(image_obj)) {
        throw py::type_error(prefix + "image must be a numpy.ndarray (uint8 HxWx3, " + order + "), got " +
                             type_name(image_obj));
    }
    const auto image = py::reinterpret_borrow<py::array>(image_obj);
    const bool is_u8 = image.dtype().kind() == 'u' && image.itemsize() == 1;
    if (!is_u8 || image.ndim() != 3 || image.shape(2) != 3) {
        std::string hint;
        if (!is_u8) {
            hint = "; convert it to uint8 (values 0..255) first";
        } else if (image.ndim() == 2 || (image.ndim() == 3 && image.shape(2) == 1)) {
            hint = "; expand grayscale with cv2.cvtColor(img, cv2.COLOR_GRAY2" + order + ")";
        } else if (image.ndim() == 3 && image.shape(2) == 4) {
            hint = "; drop alpha with cv2.cvtColor(img, cv2.COLOR_" + order + "A2" + order + ")";
        } else if (image.ndim() == 4) {
            hint = "; pass one frame at a time, e.g. batch[0]";
        }
        throw py::value_error(prefix + "image must be uint8 HxWx3 (" + order + "), got " + dtype_str(image) +
                              " with shape " + shape_str(image) + hint);
    }
    const py::ssize_t height = image.shape(0), width = image.shape(1);
    if (height == 0 || width == 0) {
        throw py::value_error(prefix + "image is empty (shape " + shape_str(image) +
                              "); expected H >= 1 and W >= 1");
    }
    if (width > kMaxValues / 3 || height > kMaxValues / (3 * width)) {
        throw py::value_error(prefix + "image is too large: shape " + shape_str(image) + " has more than " +
                              std::to_string(kMaxValues) + " values; resize or tile the frame first");
    }
    return image;
}

// `out`: None (a new float32 array of shape `lead + (3, H, W)` is returned) or a float32, C-contiguous,
// writable, aligned array of shape lead + (3, H, W) (or (3, H, W) when lead is (1,)) that does not
// overlap any of `inputs`.
inline py::array check_out(const py::object& out_obj, const std::vector<py::ssize_t>& lead, py::ssize_t height,
                           py::ssize_t width) {
    std::vector<py::ssize_t> want = lead;
    want.insert(want.end(), {3, height, width});
    if (out_obj.is_none()) return py::array_t<float>(want);
    std::string lead_str;
    for (py::ssize_t v : lead) lead_str += std::to_string(v) + ", ";
    const std::string hw = std::to_string(height) + ", " + std::to_string(width);
    const bool single = lead.size() == 1 && lead[0] == 1;
    if (!py::isinstance<py::array>(out_obj)) {
        throw py::type_error("out must be a numpy.ndarray (float32, shape (" + lead_str + "3, " + hw + ")), got " +
                             type_name(out_obj));
    }
    auto out = py::reinterpret_borrow<py::array>(out_obj);
    bool shape_ok = out.ndim() == static_cast<py::ssize_t>(want.size());
    for (py::ssize_t i = 0; shape_ok && i < out.ndim(); ++i) shape_ok = out.shape(i) == want[i];
    if (single && !shape_ok) {
        shape_ok = out.ndim() == 3 && out.shape(0) == 3 && out.shape(1) == height && out.shape(2) == width;
    }
    if (!out.dtype().equal(py::dtype::of<float>()) || !shape_ok) {
        throw py::value_error("out must be float32 with shape (" + lead_str + "3, " + hw + ")" +
                              (single ? " or (3, " + hw + ")" : std::string()) + ", got " + dtype_str(out) +
                              " with shape " + shape_str(out));
    }
    const int flags = out.flags();
    std::string problems;
    auto add = [&problems](const char* what) { problems += (problems.empty() ? "" : ", ") + std::string(what); };
    if (!(flags & py::array::c_style)) add("not C-contiguous");
    if (!out.writeable()) add("read-only");
    if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) add("not aligned");
    if (!problems.empty()) {
        throw py::value_error("out is " + problems + "; pass np.empty((" + lead_str + "3, " + hw + "), np.float32)");
    }
    return out;
}

// Raises when `out` and `image` share memory.
inline void check_no_overlap(const py::array& image, const py::array& out, const std::string& prefix = "") {
    std::intptr_t ilo, ihi, olo, ohi;
    byte_bounds(image, &ilo, &ihi);
    byte_bounds(out, &olo, &ohi);
    if (ilo < ohi && olo < ihi) {
        throw py::value_error("out overlaps the " + prefix + "image's memory; pass a separate buffer");
    }
}

}  // namespace edgevlp_py
