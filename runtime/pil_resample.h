// Pillow's two-pass fixed-point resampler for uint8 images: edgevlp._preprocess.pil_resize.
//
// A C++ port of the numpy reference _pil_resize_reference in edgevlp/runtime/vlm_processing.py
// (itself a port of Pillow's Resample.c: precompute_coeffs, normalize_coeffs_8bpc, 22-bit fixed
// point, clip to 0..255) with the same pass-order rule; the tests compare both bit for bit.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

namespace edgevlp {

// PIL.Image.Resampling values the port covers (NEAREST = 0 is not a convolution).
enum PilFilter { kPilLanczos = 1, kPilBilinear = 2, kPilBicubic = 3, kPilBox = 4, kPilHamming = 5 };

// The taps of one axis: output i reads count[i] source pixels from xmin[i] with weights
// k[i * ksize + j] (22-bit fixed point). Built once per call and axis.
struct PilTaps {
    int ksize = 0;
    std::vector<std::int64_t> xmin, count;
    std::vector<std::int32_t> k;
};

PilTaps pil_taps(std::int64_t in_size, std::int64_t out_size, int filter);

// src: C-contiguous height x width x channels uint8; dst: out_h x out_w x channels. No Python, no
// GIL needed; sizes are taken as checked by the binding.
void pil_resize_image(const std::uint8_t* src, std::int64_t height, std::int64_t width, std::int64_t channels,
                      std::uint8_t* dst, std::int64_t out_h, std::int64_t out_w, int filter);

void register_pil_resample(pybind11::module_& m);

}  // namespace edgevlp
