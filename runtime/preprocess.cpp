// edgevlp._preprocess: the C++ half of edgevlp.runtime.preprocess.
//
// normalize() turns one uint8 HxWx3 frame (any strides, BGR by default) into the float32
// (1, 3, H, W) tensor a vision encoder takes: out[0, c, y, x] = src[y, x, c'] * a[c] + b[c] with
// a = scale / std and b = -mean / std, c' = 2 - c when swap_rb (BGR in, RGB out).
//
// Every check a user can trip raises a Python exception (ValueError / TypeError) with the same text
// as the numpy reference, normalize_reference() in edgevlp/runtime/preprocess.py; the tests compare
// both, message included. The pixel loop runs without the GIL.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// One call handles at most this many values (H * W * 3): 8 GiB of float32 output.
constexpr py::ssize_t kMaxValues = py::ssize_t{1} << 31;

std::string repr_str(py::handle obj) { return py::repr(obj).cast<std::string>(); }

std::string type_name(py::handle obj) {
    return py::type::handle_of(obj).attr("__name__").cast<std::string>();
}

// Same text as Python's repr() of the shape tuple: "(4, 4, 3)", "(5,)", "()".
std::string shape_str(const py::array& arr) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
        if (i > 0) s += ", ";
        s += std::to_string(arr.shape(i));
    }
    if (arr.ndim() == 1) s += ",";
    return s + ")";
}

std::string dtype_str(const py::array& arr) { return py::str(arr.dtype()).cast<std::string>(); }

bool is_text(py::handle obj) {
    return PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr()) || PyByteArray_Check(obj.ptr());
}

// A number as float() would take it, but without parsing strings (PyFloat_AsDouble rules).
bool to_real(py::handle obj, double* value) {
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
void to_triplet(py::handle obj, const char* name, double out[3]) {
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

bool is_bool(py::handle obj) {
    if (PyBool_Check(obj.ptr())) return true;
    static const py::object* np_bool = nullptr;
    if (np_bool == nullptr) {
        // Leaked on purpose: lives as long as the interpreter, avoids teardown-order issues.
        np_bool = new py::object(py::module_::import("numpy").attr("bool_"));
    }
    return py::isinstance(obj, *np_bool);
}

// Byte extent [lo, hi) an array's elements can touch, as numpy.may_share_memory computes it.
void byte_bounds(const py::array& arr, std::intptr_t* lo, std::intptr_t* hi) {
    std::intptr_t low = reinterpret_cast<std::intptr_t>(arr.data());
    std::intptr_t high = low;
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
        const std::intptr_t span = static_cast<std::intptr_t>(arr.shape(i) - 1) * arr.strides(i);
        if (span < 0) low += span; else high += span;
    }
    *lo = low;
    *hi = high + arr.itemsize();
}

// Pixels per block of the packed path.
constexpr int kBlock = 64;

struct Coeffs {
    float a[3];  // per *source* channel: scale / std of the output channel it lands in
    float b[3];  // -mean / std of that output channel
    // a and b repeated kBlock times (a0 a1 a2 a0 a1 a2 ...): the packed path's multiply-add then runs
    // on contiguous bytes, which vectorises well everywhere (SSE2 included), and only the float
    // de-interleave remains strided.
    float pa[3 * kBlock];
    float pb[3 * kBlock];
};

// Packed rows (pixel stride 3, channel stride 1): the common cv2 / PIL layout.
void row_packed(const std::uint8_t* __restrict src, float* __restrict d0, float* __restrict d1,
                float* __restrict d2, py::ssize_t width, const Coeffs& k) {
    py::ssize_t x = 0;
    for (; x + kBlock <= width; x += kBlock) {
        float tmp[3 * kBlock];
        const std::uint8_t* p = src + 3 * x;
        for (int i = 0; i < 3 * kBlock; ++i) tmp[i] = static_cast<float>(p[i]) * k.pa[i] + k.pb[i];
        for (int i = 0; i < kBlock; ++i) {
            d0[x + i] = tmp[3 * i];
            d1[x + i] = tmp[3 * i + 1];
            d2[x + i] = tmp[3 * i + 2];
        }
    }
    for (const std::uint8_t* p = src + 3 * x; x < width; ++x, p += 3) {
        d0[x] = static_cast<float>(p[0]) * k.a[0] + k.b[0];
        d1[x] = static_cast<float>(p[1]) * k.a[1] + k.b[1];
        d2[x] = static_cast<float>(p[2]) * k.a[2] + k.b[2];
    }
}

// Any strides, negative and zero included.
void row_strided(const std::uint8_t* src, py::ssize_t sx, py::ssize_t sc, float* __restrict d0,
                 float* __restrict d1, float* __restrict d2, py::ssize_t width, const Coeffs& k) {
    for (py::ssize_t x = 0; x < width; ++x) {
        const std::uint8_t* p = src + x * sx;
        d0[x] = static_cast<float>(p[0]) * k.a[0] + k.b[0];
        d1[x] = static_cast<float>(p[sc]) * k.a[1] + k.b[1];
        d2[x] = static_cast<float>(p[2 * sc]) * k.a[2] + k.b[2];
    }
}

py::object normalize(const py::object& image_obj, const py::object& mean_obj, const py::object& std_obj,
                     const py::object& scale_obj, const py::object& swap_obj, const py::object& out_obj) {
    // ---- arguments (same order and text as normalize_reference) ----
    if (!is_bool(swap_obj)) throw py::type_error("swap_rb must be True or False, got " + repr_str(swap_obj));
    const bool swap_rb = py::cast<bool>(swap_obj);
    const std::string order = swap_rb ? "BGR" : "RGB";

    if (!py::isinstance<py::array>(image_obj)) {
        throw py::type_error("image must be a numpy.ndarray (uint8 HxWx3, " + order + "), got " +
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
        throw py::value_error("image must be uint8 HxWx3 (" + order + "), got " + dtype_str(image) +
                              " with shape " + shape_str(image) + hint);
    }
    const py::ssize_t height = image.shape(0), width = image.shape(1);
    if (height == 0 || width == 0) {
        throw py::value_error("image is empty (shape " + shape_str(image) + "); expected H >= 1 and W >= 1");
    }
    if (width > kMaxValues / 3 || height > kMaxValues / (3 * width)) {
        throw py::value_error("image is too large: shape " + shape_str(image) + " has more than " +
                              std::to_string(kMaxValues) + " values; resize or tile the frame first");
    }

    double mean[3], stdv[3], scale = 0.0;
    to_triplet(mean_obj, "mean", mean);
    to_triplet(std_obj, "std", stdv);
    for (double s : stdv) {
        if (!(s > 0.0)) throw py::value_error("std must be > 0 (it divides), got " + repr_str(std_obj));
    }
    if (!to_real(scale_obj, &scale)) throw py::type_error("scale must be a number, got " + repr_str(scale_obj));
    if (!std::isfinite(scale)) throw py::value_error("scale must be finite, got " + repr_str(scale_obj));

    // ---- output buffer ----
    const std::string hw = std::to_string(height) + ", " + std::to_string(width);
    py::array out;
    if (out_obj.is_none()) {
        out = py::array_t<float>(std::vector<py::ssize_t>{1, 3, height, width});
    } else {
        if (!py::isinstance<py::array>(out_obj)) {
            throw py::type_error("out must be a numpy.ndarray (float32, shape (1, 3, " + hw + ")), got " +
                                 type_name(out_obj));
        }
        out = py::reinterpret_borrow<py::array>(out_obj);
        const bool shape_ok =
            (out.ndim() == 4 && out.shape(0) == 1 && out.shape(1) == 3 && out.shape(2) == height &&
             out.shape(3) == width) ||
            (out.ndim() == 3 && out.shape(0) == 3 && out.shape(1) == height && out.shape(2) == width);
        if (!out.dtype().equal(py::dtype::of<float>()) || !shape_ok) {
            throw py::value_error("out must be float32 with shape (1, 3, " + hw + ") or (3, " + hw +
                                  "), got " + dtype_str(out) + " with shape " + shape_str(out));
        }
        const int flags = out.flags();
        std::string problems;
        auto add = [&problems](const char* what) { problems += (problems.empty() ? "" : ", ") + std::string(what); };
        if (!(flags & py::array::c_style)) add("not C-contiguous");
        if (!out.writeable()) add("read-only");
        if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) add("not aligned");
        if (!problems.empty()) {
            throw py::value_error("out is " + problems + "; pass np.empty((1, 3, " + hw + "), np.float32)");
        }
        std::intptr_t ilo, ihi, olo, ohi;
        byte_bounds(image, &ilo, &ihi);
        byte_bounds(out, &olo, &ohi);
        if (ilo < ohi && olo < ihi) {
            throw py::value_error("out overlaps the image's memory; pass a separate buffer");
        }
    }

    // Coefficients indexed by *source* channel, so the row loops need no branch on swap_rb.
    Coeffs k{};
    float* planes[3];
    float* const dst = static_cast<float*>(out.mutable_data());
    const py::ssize_t plane = height * width;
    for (int c = 0; c < 3; ++c) {  // c: output (RGB) channel
        const int src_c = swap_rb ? 2 - c : c;
        k.a[src_c] = static_cast<float>(scale / stdv[c]);
        k.b[src_c] = static_cast<float>(-mean[c] / stdv[c]);
        planes[src_c] = dst + c * plane;
    }
    // The same with the channel axis reversed, for BGR<->RGB views such as rgb[..., ::-1].
    Coeffs kr{};
    for (int c = 0; c < 3; ++c) {
        kr.a[c] = k.a[2 - c];
        kr.b[c] = k.b[2 - c];
    }
    for (int i = 0; i < 3 * kBlock; ++i) {
        k.pa[i] = k.a[i % 3];
        k.pb[i] = k.b[i % 3];
        kr.pa[i] = kr.a[i % 3];
        kr.pb[i] = kr.b[i % 3];
    }

    const auto* base = static_cast<const std::uint8_t*>(image.data());
    const py::ssize_t sy = image.strides(0), sx = image.strides(1), sc = image.strides(2);
    {
        py::gil_scoped_release release;
        const bool packed = sx == 3 && sc == 1;
        const bool packed_reversed = sx == 3 && sc == -1;  // channel 0 is the last byte of a pixel
        for (py::ssize_t y = 0; y < height; ++y) {
            const std::uint8_t* row = base + y * sy;
            float* d0 = planes[0] + y * width;
            float* d1 = planes[1] + y * width;
            float* d2 = planes[2] + y * width;
            if (packed) row_packed(row, d0, d1, d2, width, k);
            else if (packed_reversed) row_packed(row - 2, d2, d1, d0, width, kr);
            else row_strided(row, sx, sc, d0, d1, d2, width, k);
        }
    }
    return out_obj.is_none() ? py::object(out) : out_obj;
}

}  // namespace

PYBIND11_MODULE(_preprocess, m) {
    m.doc() = "C++ image preprocessing for edgevlp.runtime.preprocess (use that module, not this one).";
    // Bumped when normalize()'s signature or semantics change; the Python wrapper checks it.
    m.attr("ABI_VERSION") = 1;
    m.def("normalize", &normalize, py::arg("image"), py::arg("mean"), py::arg("std"),
          py::arg("scale") = 1.0 / 255.0, py::arg("swap_rb") = true, py::arg("out") = py::none(),
          "normalize(image, mean, std, scale=1/255, swap_rb=True, out=None) -> float32 (1, 3, H, W)\n\n"
          "uint8 HxWx3 frame (any strides) -> (src * scale - mean) / std, channels first; BGR -> RGB "
          "when swap_rb. Writes into and returns `out` when given. See edgevlp.runtime.preprocess.");
}
