// Frame -> tensor preprocessing with resize: edgevlp._preprocess.preprocess / preprocess_batch.
//
// resize_core.cpp holds the pixel work (no Python); resize.cpp the bindings and the memory-safety
// checks (options are validated once, by edgevlp.spec.PreprocessSpec). The enums are exposed to
// Python by name (edgevlp._preprocess.Mode / Interp); their order here means nothing outside C++.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace edgevlp {

enum class Mode { Stretch, Letterbox, PadSquare, ShortestEdge };
enum class Interp { Nearest, Bilinear, Bicubic, Area, Lanczos };

// Where the frame lands in the output. The frame (height x width) is first seen as the "virtual
// source" virt_h x virt_w (the frame itself, or for pad_square the square padded bottom/right), which
// is resized to res_h x res_w; output pixel (oy, ox) then shows resized pixel (oy - off_y, ox - off_x)
// and pad_value where that falls outside the resized image.
struct Geometry {
    std::int64_t src_h = 0, src_w = 0;
    std::int64_t virt_h = 0, virt_w = 0;
    std::int64_t res_h = 0, res_w = 0;
    std::int64_t out_h = 0, out_w = 0;
    std::int64_t off_y = 0, off_x = 0;
};

// Largest side of the resized image (shortest_edge can ask for huge ones) and of the output.
constexpr std::int64_t kMaxSide = 65536;

// Fills `g`; returns "" or the text of the ValueError to raise (same text as the numpy reference).
std::string make_geometry(Mode mode, std::int64_t src_h, std::int64_t src_w, std::int64_t out_h,
                          std::int64_t out_w, std::int64_t crop_h, std::int64_t crop_w, std::int64_t shortest_edge,
                          Geometry* g);

// One frame's pixel job: everything the worker threads need, no Python objects.
struct Frame {
    const std::uint8_t* base = nullptr;    // pixel (0, 0), channel 0
    std::int64_t sy = 0, sx = 0;           // byte strides of rows and pixels
    std::int64_t sc[3] = {0, 0, 0};        // byte offset of the source channel feeding output channel c
    float a[3] = {1, 1, 1}, b[3] = {0, 0, 0};  // out = resized * a + b, per output channel
    float pad_raw = 0.0f;                  // pad_value / scale: the pad in raw pixel units
    float* out = nullptr;                  // (3, out_h, out_w) float32, C-contiguous
};

// Resizes + normalises one frame into f.out. threads: 0 = auto, else the most worker threads to use.
// Must be called without the GIL; never throws for valid geometry (allocation failure aside).
void run_frame(const Geometry& g, Interp interp, const Frame& f, int threads);

void register_resize(pybind11::module_& m);

}  // namespace edgevlp
