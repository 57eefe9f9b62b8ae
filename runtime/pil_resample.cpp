// edgevlp._preprocess.pil_resize: Pillow's two-pass resampler on uint8 HxW / HxWxC images.
//
// Same algorithm as the numpy reference _pil_resize_reference in edgevlp/runtime/vlm_processing.py,
// operation for operation, so both give the same bytes:
//
// * taps per axis (Pillow's precompute_coeffs + normalize_coeffs_8bpc): scale = in / out,
//   filterscale = max(scale, 1), support = filter support * filterscale, ksize = 2 ceil(support) + 1;
//   output i centred at (i + 0.5) scale reads [xmin, xmin + count) with weights
//   kernel((x + xmin - center + 0.5) / filterscale), divided by their left-to-right sum when it is
//   not 0, then rounded half away from zero to 22-bit fixed point (int32);
// * each pass: acc = 2^21 + sum(src * tap) in int32, then clip(acc >> 22, 0, 255);
// * pass order: vertical first when the height shrinks and the width grows (Pillow 13, measured),
//   else horizontal first; a pass runs only when its size changes; same size gives a copy.
//
// Floating-point contraction (FMA) is off for this file (CMakeLists.txt and the pragma below): the
// taps must round as numpy's separate multiplies and adds do.

#include "pil_resample.h"

#include "pyutil.h"
#include "resize.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace edgevlp {

namespace {

namespace py = pybind11;
using i64 = std::int64_t;

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's Resample.c
constexpr double kPi = 3.141592653589793;   // == math.pi == M_PI

double sinc(double x) {
    if (x == 0.0) return 1.0;
    return std::sin(x * kPi) / (x * kPi);
}

double lanczos(double x) { return (x >= -3.0 && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }

double bilinear(double x) { return std::max(1.0 - std::fabs(x), 0.0); }

double bicubic(double x) {
    constexpr double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

double box(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double hamming(double x) {
    x = std::fabs(x);
    if (x == 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    return std::sin(x * kPi) / (x * kPi) * (0.54 + 0.46 * std::cos(x * kPi));
}

// Pillow's clip8 on the accumulator; the int32 sum wraps as numpy's does (it cannot overflow for
// these filters, but the arithmetic is unsigned so that nothing is undefined).
inline std::uint8_t clip8(std::uint32_t acc) {
    const auto v = static_cast<std::int32_t>(acc);
    if (v <= 0) return 0;
    if (v >= (1 << kPrecisionBits << 8)) return 255;
    return static_cast<std::uint8_t>(v >> kPrecisionBits);
}

constexpr std::uint32_t kHalf = 1u << (kPrecisionBits - 1);

// x86-64's baseline (SSE2) has no 32-bit vector multiply: on GCC / clang ELF targets the passes
// also get an AVX2 clone, picked at load time by the CPU (the wheel still runs anywhere).
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define EDGEVLP_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define EDGEVLP_AVX2_CLONE
#endif

// Horizontal pass, `C` channels (0: any, given by `channels`). rows x in_w x C -> rows x out_w x C.
template <int C>
EDGEVLP_AVX2_CLONE void pass_horizontal(const std::uint8_t* src, i64 rows, i64 in_w, i64 channels, std::uint8_t* dst, i64 out_w,
                     const PilTaps& t) {
    const i64 ch = C > 0 ? C : channels;
    for (i64 y = 0; y < rows; ++y) {
        const std::uint8_t* row = src + y * in_w * ch;
        std::uint8_t* out = dst + y * out_w * ch;
        for (i64 xo = 0; xo < out_w; ++xo) {
            const std::uint8_t* p = row + t.xmin[xo] * ch;
            const std::int32_t* k = t.k.data() + xo * t.ksize;
            const i64 n = t.count[xo];
            if constexpr (C > 0) {
                std::uint32_t acc[C];
                for (int c = 0; c < C; ++c) acc[c] = kHalf;
                for (i64 j = 0; j < n; ++j) {
                    const auto w = static_cast<std::uint32_t>(k[j]);
                    for (int c = 0; c < C; ++c) acc[c] += static_cast<std::uint32_t>(p[j * C + c]) * w;
                }
                for (int c = 0; c < C; ++c) out[xo * C + c] = clip8(acc[c]);
            } else {
                for (i64 c = 0; c < ch; ++c) {
                    std::uint32_t acc = kHalf;
                    for (i64 j = 0; j < n; ++j) {
                        acc += static_cast<std::uint32_t>(p[j * ch + c]) * static_cast<std::uint32_t>(k[j]);
                    }
                    out[xo * ch + c] = clip8(acc);
                }
            }
        }
    }
}

// Vertical pass on rows of `len` bytes: in_h x len -> out_h x len. Each output row accumulates its
// source rows in chunks that stay in L1.
EDGEVLP_AVX2_CLONE void pass_vertical(const std::uint8_t* src, i64 len, std::uint8_t* dst, i64 out_h, const PilTaps& t) {
    constexpr i64 kChunk = 2048;
    std::uint32_t acc[kChunk];
    for (i64 yo = 0; yo < out_h; ++yo) {
        const std::int32_t* k = t.k.data() + yo * t.ksize;
        const i64 n = t.count[yo];
        const std::uint8_t* first = src + t.xmin[yo] * len;
        std::uint8_t* out = dst + yo * len;
        for (i64 x0 = 0; x0 < len; x0 += kChunk) {
            const i64 m = std::min(kChunk, len - x0);
            for (i64 i = 0; i < m; ++i) acc[i] = kHalf;
            for (i64 j = 0; j < n; ++j) {
                const auto w = static_cast<std::uint32_t>(k[j]);
                const std::uint8_t* __restrict row = first + j * len + x0;
                for (i64 i = 0; i < m; ++i) acc[i] += static_cast<std::uint32_t>(row[i]) * w;
            }
            for (i64 i = 0; i < m; ++i) out[x0 + i] = clip8(acc[i]);
        }
    }
}

void horizontal(const std::uint8_t* src, i64 rows, i64 in_w, i64 channels, std::uint8_t* dst, i64 out_w, int filter) {
    const PilTaps t = pil_taps(in_w, out_w, filter);
    switch (channels) {
        case 1: pass_horizontal<1>(src, rows, in_w, channels, dst, out_w, t); break;
        case 3: pass_horizontal<3>(src, rows, in_w, channels, dst, out_w, t); break;
        case 4: pass_horizontal<4>(src, rows, in_w, channels, dst, out_w, t); break;
        default: pass_horizontal<0>(src, rows, in_w, channels, dst, out_w, t); break;
    }
}

void vertical(const std::uint8_t* src, i64 in_h, i64 len, std::uint8_t* dst, i64 out_h, int filter) {
    pass_vertical(src, len, dst, out_h, pil_taps(in_h, out_h, filter));
}

}  // namespace

PilTaps pil_taps(i64 in_size, i64 out_size, int filter) {
    double support = 0.0;
    double (*kernel)(double) = nullptr;
    switch (filter) {
        case kPilLanczos: support = 3.0; kernel = lanczos; break;
        case kPilBilinear: support = 1.0; kernel = bilinear; break;
        case kPilBicubic: support = 2.0; kernel = bicubic; break;
        case kPilBox: support = 0.5; kernel = box; break;
        default: support = 1.0; kernel = hamming; break;  // kPilHamming (the binding checked the value)
    }
    const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
    const double filterscale = std::max(scale, 1.0);
    support *= filterscale;
    PilTaps t;
    t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    t.xmin.resize(out_size);
    t.count.resize(out_size);
    t.k.assign(static_cast<std::size_t>(out_size * t.ksize), 0);
    std::vector<double> w(t.ksize);
    const double one = static_cast<double>(1 << kPrecisionBits);
    for (i64 i = 0; i < out_size; ++i) {
        const double center = (static_cast<double>(i) + 0.5) * scale;
        const i64 xmin = std::max<i64>(static_cast<i64>(std::trunc(center - support + 0.5)), 0);
        const i64 xmax = std::min<i64>(static_cast<i64>(std::trunc(center + support + 0.5)), in_size);
        const i64 count = std::min<i64>(std::max<i64>(xmax - xmin, 0), t.ksize);
        double ww = 0.0;
        for (int x = 0; x < t.ksize; ++x) {
            w[x] = x < count ? kernel((static_cast<double>(x + xmin) - center + 0.5) / filterscale) : 0.0;
            ww = ww + w[x];
        }
        std::int32_t* k = t.k.data() + i * t.ksize;
        for (int x = 0; x < t.ksize; ++x) {
            const double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = static_cast<std::int32_t>(std::trunc(v < 0 ? -0.5 + v * one : 0.5 + v * one));
        }
        t.xmin[i] = xmin;
        t.count[i] = count;
    }
    return t;
}

void pil_resize_image(const std::uint8_t* src, i64 height, i64 width, i64 channels, std::uint8_t* dst, i64 out_h,
                      i64 out_w, int filter) {
    const bool do_h = width != out_w, do_v = height != out_h;
    if (!do_h && !do_v) {
        std::memcpy(dst, src, static_cast<std::size_t>(height * width * channels));
        return;
    }
    if (do_h && do_v) {
        if (out_h < height && out_w > width) {  // Pillow 13 goes vertical first here (measured)
            std::vector<std::uint8_t> tmp(static_cast<std::size_t>(out_h * width * channels));
            vertical(src, height, width * channels, tmp.data(), out_h, filter);
            horizontal(tmp.data(), out_h, width, channels, dst, out_w, filter);
        } else {
            std::vector<std::uint8_t> tmp(static_cast<std::size_t>(height * out_w * channels));
            horizontal(src, height, width, channels, tmp.data(), out_w, filter);
            vertical(tmp.data(), height, out_w * channels, dst, out_h, filter);
        }
    } else if (do_h) {
        horizontal(src, height, width, channels, dst, out_w, filter);
    } else {
        vertical(src, height, width * channels, dst, out_h, filter);
    }
}

namespace {

using namespace edgevlp_py;

// An int argument (not bool) in lo..hi, else TypeError / ValueError with `what` describing the range.
i64 to_int(const py::object& obj, const char* name, i64 lo, i64 hi, const std::string& what) {
    const auto not_int = [&] { return py::type_error(std::string(name) + " must be an int, got " + repr_str(obj)); };
    if (is_bool(obj) || !PyIndex_Check(obj.ptr())) throw not_int();
    const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
    if (!index) {
        PyErr_Clear();
        throw not_int();
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow != 0 || v < lo || v > hi) {
        throw py::value_error(std::string(name) + " must be " + what + ", got " + repr_str(obj));
    }
    return static_cast<i64>(v);
}

py::array pil_resize(const py::object& src_obj, const py::object& height_obj, const py::object& width_obj,
                     const py::object& resample_obj) {
    if (!py::isinstance<py::array>(src_obj)) {
        throw py::type_error("img must be a numpy.ndarray (uint8 HxW or HxWxC), got " + type_name(src_obj));
    }
    const auto src = py::reinterpret_borrow<py::array>(src_obj);
    const bool is_u8 = src.dtype().kind() == 'u' && src.itemsize() == 1;
    if (!is_u8 || (src.ndim() != 2 && src.ndim() != 3)) {
        throw py::value_error("img must be uint8 HxW or HxWxC, got " + dtype_str(src) + " with shape " +
                              shape_str(src));
    }
    const i64 in_h = src.shape(0), in_w = src.shape(1), channels = src.ndim() == 3 ? src.shape(2) : 1;
    if (in_h == 0 || in_w == 0 || channels == 0) {
        throw py::value_error("img is empty (shape " + shape_str(src) + "); expected H, W (and C) >= 1");
    }
    const std::string side = "in 1.." + std::to_string(kMaxSide);
    const i64 out_h = to_int(height_obj, "height", 1, kMaxSide, side);
    const i64 out_w = to_int(width_obj, "width", 1, kMaxSide, side);
    const int filter = static_cast<int>(to_int(resample_obj, "resample", 1, 5, "1 (LANCZOS), 2 (BILINEAR), "
                                               "3 (BICUBIC), 4 (BOX) or 5 (HAMMING)"));
    // Input, intermediate and output each within kMaxValues; the input is checked first, so that
    // the products cannot overflow (out_h, out_w <= 65536).
    const auto too_large = [&] {
        if (in_w > kMaxValues / channels || in_h > kMaxValues / (in_w * channels)) return true;
        return std::max(in_h, out_h) * std::max(in_w, out_w) > kMaxValues / channels;
    };
    if (too_large()) {
        throw py::value_error("img is too large: shape " + shape_str(src) + " resized to (" + std::to_string(out_h) +
                              ", " + std::to_string(out_w) + ") needs more than " + std::to_string(kMaxValues) +
                              " values in one pass");
    }
    if (!(src.flags() & py::array::c_style)) {
        throw py::value_error("img must be C-contiguous; pass np.ascontiguousarray(img)");
    }
    std::vector<py::ssize_t> shape = {out_h, out_w};
    if (src.ndim() == 3) shape.push_back(channels);
    py::array_t<std::uint8_t> out(shape);
    const auto* in = static_cast<const std::uint8_t*>(src.data());
    std::uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        pil_resize_image(in, in_h, in_w, channels, dst, out_h, out_w, filter);
    }
    return out;
}

}  // namespace

void register_pil_resample(py::module_& m) {
    m.def("pil_resize", &pil_resize, py::arg("img"), py::arg("height"), py::arg("width"), py::arg("resample") = 1,
          "pil_resize(img, height, width, resample=1) -> uint8 (height, width[, C])\n\n"
          "C-contiguous uint8 HxW or HxWxC -> resized exactly as PIL.Image.resize((width, height), resample) "
          "(1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING); bit-exact with the numpy reference. "
          "See edgevlp.runtime.vlm_processing.pil_resize.");
}

}  // namespace edgevlp
