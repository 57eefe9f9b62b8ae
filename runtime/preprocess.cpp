// edgevlp._preprocess: the C++ half of edgevlp.runtime.preprocess.
//
// normalize() turns one uint8 HxWx3 frame (any strides, BGR by default) into the float32
// (1, 3, H, W) tensor a vision encoder takes: out[0, c, y, x] = src[y, x, c'] * a[c] + b[c] with
// a = scale / std and b = -mean / std, c' = 2 - c when swap_rb (BGR in, RGB out).
//
// Every check a user can trip raises a Python exception (ValueError / TypeError) with the same text
// as the numpy reference, normalize_reference() in edgevlp/runtime/preprocess.py; the tests compare
// both, message included. The pixel loop runs without the GIL.

#include "pil_resample.h"
#include "pyutil.h"
#include "resize.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using namespace edgevlp_py;

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
    const py::array image = check_image(image_obj, swap_rb);
    const py::ssize_t height = image.shape(0), width = image.shape(1);

    double mean[3], stdv[3], scale = 0.0;
    to_triplet(mean_obj, "mean", mean);
    to_triplet(std_obj, "std", stdv);
    for (double s : stdv) {
        if (!(s > 0.0)) throw py::value_error("std must be > 0 (it divides), got " + repr_str(std_obj));
    }
    if (!to_real(scale_obj, &scale)) throw py::type_error("scale must be a number, got " + repr_str(scale_obj));
    if (!std::isfinite(scale)) throw py::value_error("scale must be finite, got " + repr_str(scale_obj));

    // ---- output buffer ----
    py::array out = check_out(out_obj, {1}, height, width);
    if (!out_obj.is_none()) check_no_overlap(image, out);

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
    // Bumped when a function's signature or semantics change; the Python wrapper checks it.
    // 3: preprocess / preprocess_batch take a Params (built from a PreprocessSpec); Mode / Interp by name.
    // 4: pil_resize (Pillow's resampler, edgevlp.runtime.vlm_processing.pil_resize).
    m.attr("ABI_VERSION") = 4;
    m.def("normalize", &normalize, py::arg("image"), py::arg("mean"), py::arg("std"),
          py::arg("scale") = 1.0 / 255.0, py::arg("swap_rb") = true, py::arg("out") = py::none(),
          "normalize(image, mean, std, scale=1/255, swap_rb=True, out=None) -> float32 (1, 3, H, W)\n\n"
          "uint8 HxWx3 frame (any strides) -> (src * scale - mean) / std, channels first; BGR -> RGB "
          "when swap_rb. Writes into and returns `out` when given. See edgevlp.runtime.preprocess.");
    edgevlp::register_resize(m);
    edgevlp::register_pil_resample(m);
}
