// Pixel work of edgevlp._preprocess.preprocess: separable resize + BGR->RGB + normalisation, fused.
//
// Semantics are OpenCV's cv2.resize on a float32 image (INTER_NEAREST, INTER_LINEAR, INTER_CUBIC with
// a = -0.75, INTER_AREA, INTER_LANCZOS4; borders replicated): the tap positions and weights below are
// computed with the same expressions, in the same precision, as opencv/modules/imgproc/src/resize.cpp
// (resizeNN, resizeGeneric_ / interpolateCubic / interpolateLanczos4, computeResizeAreaTab and the
// INTER_AREA upscaling branch) of OpenCV 5, which keeps the INTER_LINEAR / INTER_CUBIC source position
// in double (OpenCV 4.x rounds it to float: ~1e-5 relative differences in the weights). Pixel
// arithmetic is float32, so results agree with the reference (cv2.resize of the frame converted to
// float32) to float rounding, not bit for bit.
//
// Plan per frame:
//   * one tap table per axis (source index, weight) for the output window only; cached per thread,
//     so a stream of equal-sized frames builds them once;
//   * rows are processed in output order; each needed source row is resized horizontally once into a
//     small ring of float rows (3 planes, RGB order), then the output row is a weighted sum of ring
//     rows, scaled and offset into the (3, H, W) output: out = resized * scale / std - mean / std;
//   * pad_square's padding is virtual: taps past the frame's edge move their weight onto pad_value.
//   * output rows are split into bands over std::threads when the frame is big enough to pay off.

#include "resize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define EDGEVLP_SSE2 1
#endif

namespace edgevlp {

namespace {

using i64 = std::int64_t;

i64 floor_div2(i64 v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

// Taps of one axis for the resized indices [lo, lo + n).
struct Axis {
    i64 lo = 0, n = 0;
    int nt = 0;                  // taps per output index (area: the most any index needs)
    std::vector<std::int32_t> idx;  // n * nt source indices, all within the frame
    std::vector<float> w;        // n * nt weights (0 for padding taps)
    std::vector<float> padw;     // n weights of pad_value (taps past the frame's edge)
    bool has_pad = false;
};

// cv2's interpolateCubic (A = -0.75), in float as there.
void cubic_coeffs_f(float x, float* c) {
    const float A = -0.75f;
    c[0] = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
    c[1] = ((A + 2) * x - (A + 3)) * x * x + 1;
    c[2] = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
    c[3] = 1.f - c[0] - c[1] - c[2];
}

// The same in double, for OpenCV 5's double-precision source positions.
void cubic_coeffs(double x, float* c) {
    const double A = -0.75;
    const double c0 = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
    const double c1 = ((A + 2) * x - (A + 3)) * x * x + 1;
    const double c2 = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
    c[0] = static_cast<float>(c0);
    c[1] = static_cast<float>(c1);
    c[2] = static_cast<float>(c2);
    c[3] = static_cast<float>(1.0 - c0 - c1 - c2);
}

// cv2's interpolateLanczos4.
void lanczos_coeffs(float x, float* c) {
    static const double s45 = 0.70710678118654752440084436210485;
    static const double cs[][2] = {{1, 0}, {-s45, -s45}, {0, 1}, {s45, -s45}, {-1, 0}, {s45, s45}, {0, -1}, {-s45, s45}};
    if (x < 1.1920928955078125e-07f) {  // FLT_EPSILON
        for (int i = 0; i < 8; ++i) c[i] = 0;
        c[3] = 1;
        return;
    }
    const double pi = 3.1415926535897932384626433832795;
    float sum = 0;
    const double y0 = -(x + 3) * pi * 0.25, s0 = std::sin(y0), c0 = std::cos(y0);
    for (int i = 0; i < 8; ++i) {
        const double y = -(x + 3 - i) * pi * 0.25;
        c[i] = static_cast<float>((cs[i][0] * s0 + cs[i][1] * c0) / (y * y));
        sum += c[i];
    }
    sum = 1.f / sum;
    for (int i = 0; i < 8; ++i) c[i] *= sum;
}

// Builds the taps resizing `ssize` (virtual) source pixels to `dsize`, of which only the first `real`
// exist (the rest is padding), for output indices [lo, lo + n).
void build_axis(Interp interp, bool area_down, bool dpos, i64 ssize, i64 real, i64 dsize, i64 lo, i64 n, Axis* ax) {
    const double inv_scale = static_cast<double>(dsize) / static_cast<double>(ssize);
    const double scale = 1.0 / inv_scale;
    ax->lo = lo;
    ax->n = n;
    std::vector<std::vector<std::pair<i64, float>>> area;  // area downscaling: variable taps
    if (interp == Interp::Area && area_down) {
        // computeResizeAreaTab, one output index at a time.
        area.resize(static_cast<std::size_t>(n));
        int most = 1;
        for (i64 i = 0; i < n; ++i) {
            const i64 dx = lo + i;
            auto& t = area[static_cast<std::size_t>(i)];
            const double fsx1 = static_cast<double>(dx) * scale;
            const double fsx2 = fsx1 + scale;
            const double cell = std::min(scale, static_cast<double>(ssize) - fsx1);
            i64 sx1 = static_cast<i64>(std::ceil(fsx1)), sx2 = static_cast<i64>(std::floor(fsx2));
            sx2 = std::min(sx2, ssize - 1);
            sx1 = std::min(sx1, sx2);
            if (static_cast<double>(sx1) - fsx1 > 1e-3) {
                t.emplace_back(sx1 - 1, static_cast<float>((static_cast<double>(sx1) - fsx1) / cell));
            }
            for (i64 sx = sx1; sx < sx2; ++sx) t.emplace_back(sx, static_cast<float>(1.0 / cell));
            if (fsx2 - static_cast<double>(sx2) > 1e-3) {
                t.emplace_back(sx2, static_cast<float>(
                                        std::min(std::min(fsx2 - static_cast<double>(sx2), 1.), cell) / cell));
            }
            most = std::max(most, static_cast<int>(t.size()));
        }
        ax->nt = most;
    } else {
        ax->nt = interp == Interp::Nearest ? 1
                 : interp == Interp::Bicubic ? 4
                 : interp == Interp::Lanczos ? 8
                                             : 2;  // bilinear, area upscaling
    }
    const int nt = ax->nt;
    ax->idx.assign(static_cast<std::size_t>(n * nt), 0);
    ax->w.assign(static_cast<std::size_t>(n * nt), 0.0f);
    ax->padw.assign(static_cast<std::size_t>(n), 0.0f);
    ax->has_pad = false;
    float cbuf[8];
    for (i64 i = 0; i < n; ++i) {
        const i64 dx = lo + i;
        std::int32_t* id = &ax->idx[static_cast<std::size_t>(i * nt)];
        float* wt = &ax->w[static_cast<std::size_t>(i * nt)];
        i64 first = 0;  // source index of tap 0 (before clamping)
        if (interp == Interp::Area && area_down) {
            const auto& t = area[static_cast<std::size_t>(i)];
            for (std::size_t k = 0; k < t.size(); ++k) {
                id[k] = static_cast<std::int32_t>(t[k].first);
                wt[k] = t[k].second;
            }
            for (std::size_t k = t.size(); k < static_cast<std::size_t>(nt); ++k) id[k] = id[0];  // weight 0
        } else if (interp == Interp::Nearest) {
            // resizeNN: floor(dx / inv_scale), no half-pixel offset.
            const i64 sx = std::min(static_cast<i64>(std::floor(static_cast<double>(dx) * scale)), ssize - 1);
            id[0] = static_cast<std::int32_t>(sx);
            wt[0] = 1.0f;
        } else {
            float fx;
            double fxd = 0.0;
            i64 sx;
            if (interp == Interp::Area) {  // INTER_AREA when upscaling along some axis
                sx = static_cast<i64>(std::floor(static_cast<double>(dx) * scale));
                fx = static_cast<float>(static_cast<double>(dx + 1) - static_cast<double>(sx + 1) * inv_scale);
                fx = fx <= 0 ? 0.f : fx - std::floor(fx);
            } else if (interp == Interp::Lanczos || !dpos) {
                fx = static_cast<float>((static_cast<double>(dx) + 0.5) * scale - 0.5);
                sx = static_cast<i64>(std::floor(fx));
                fx -= static_cast<float>(sx);
            } else {
                // OpenCV 5 (source >= kernel size): position in double, its fraction rounded once.
                const double pos = (static_cast<double>(dx) + 0.5) * scale - 0.5;
                sx = static_cast<i64>(std::floor(pos));
                fxd = pos - static_cast<double>(sx);
                fx = static_cast<float>(fxd);
            }
            const int k2 = nt / 2;
            if (interp == Interp::Bilinear || interp == Interp::Area) {
                if (sx < 0) fx = 0, sx = 0;
                if (sx >= ssize - 1) fx = 0, sx = ssize - 1;
                cbuf[0] = 1.f - fx;
                cbuf[1] = fx;
            } else if (interp == Interp::Bicubic) {
                if (dpos) cubic_coeffs(fxd, cbuf);
                else cubic_coeffs_f(fx, cbuf);
            } else {
                lanczos_coeffs(fx, cbuf);
            }
            first = sx - k2 + 1;
            for (int k = 0; k < nt; ++k) {
                const i64 s = std::min(std::max(first + k, i64{0}), ssize - 1);  // BORDER_REPLICATE
                id[k] = static_cast<std::int32_t>(s);
                wt[k] = cbuf[k];
            }
        }
        // Taps past the frame (pad_square's padding) read pad_value instead.
        for (int k = 0; k < nt; ++k) {
            if (id[k] >= real) {
                ax->padw[static_cast<std::size_t>(i)] += wt[k];
                wt[k] = 0.0f;
                id[k] = 0;
                ax->has_pad = true;
            }
        }
    }
}

struct AxisKey {
    Interp interp;
    bool area_down, dpos;
    i64 ssize, real, dsize, lo, n;
    bool operator==(const AxisKey& o) const {
        return interp == o.interp && area_down == o.area_down && dpos == o.dpos && ssize == o.ssize && real == o.real &&
               dsize == o.dsize && lo == o.lo && n == o.n;
    }
};

// Per calling thread: the last tables built (a video stream keeps its frame size) and scratch rows.
struct Cache {
    bool valid_x = false, valid_y = false;
    AxisKey key_x{}, key_y{};
    Axis x, y;
    std::vector<i64> xoff;  // x.idx * pixel stride, in bytes
    i64 xoff_stride = 0;
    // Packed-pixel SIMD path (pixel stride 3 bytes): per column, the first tap's pixel (-1: scalar
    // column) and ceil(nt / 4) groups of 12 weights laid out like 4 interleaved pixels' bytes.
    std::vector<std::int32_t> simd_first;
    std::vector<float> simd_w;
    int simd_groups = 0;
    bool simd_valid = false;
    std::vector<float> rows;  // ring buffers of all workers
};

const Axis& cached_axis(Cache& c, bool is_x, const AxisKey& key) {
    bool& valid = is_x ? c.valid_x : c.valid_y;
    AxisKey& k = is_x ? c.key_x : c.key_y;
    Axis& ax = is_x ? c.x : c.y;
    if (!valid || !(k == key)) {
        valid = false;
        build_axis(key.interp, key.area_down, key.dpos, key.ssize, key.real, key.dsize, key.lo, key.n, &ax);
        k = key;
        valid = true;
        if (is_x) c.xoff_stride = 0, c.simd_valid = false;  // offsets follow the table
    }
    return ax;
}

// Horizontal pass over one source row: NT taps per output (0: ax.nt at run time).
template <int NT>
void hrow(const std::uint8_t* __restrict row, const i64* __restrict xo, const float* __restrict w, int nt_dyn,
          i64 j0, i64 j1, const i64* sc, float* __restrict d0, float* __restrict d1, float* __restrict d2) {
    const int nt = NT > 0 ? NT : nt_dyn;
    const i64 c0 = sc[0], c1 = sc[1], c2 = sc[2];
    for (i64 j = j0; j < j1; ++j) {
        const i64* o = xo + j * nt;
        const float* ww = w + j * nt;
        float s0 = 0.f, s1 = 0.f, s2 = 0.f;
        for (int k = 0; k < nt; ++k) {
            const std::uint8_t* p = row + o[k];
            const float wk = ww[k];
            s0 += wk * static_cast<float>(p[c0]);
            s1 += wk * static_cast<float>(p[c1]);
            s2 += wk * static_cast<float>(p[c2]);
        }
        d0[j] = s0;
        d1[j] = s1;
        d2[j] = s2;
    }
}

void hrow_scalar(const Axis& ax, const std::uint8_t* row, const i64* xo, const Frame& f, i64 j0, i64 j1,
                 float* d0, float* d1, float* d2) {
    const float* w = ax.w.data();
    switch (ax.nt) {
        case 1: hrow<1>(row, xo, w, 1, j0, j1, f.sc, d0, d1, d2); break;
        case 2: hrow<2>(row, xo, w, 2, j0, j1, f.sc, d0, d1, d2); break;
        case 4: hrow<4>(row, xo, w, 4, j0, j1, f.sc, d0, d1, d2); break;
        case 8: hrow<8>(row, xo, w, 8, j0, j1, f.sc, d0, d1, d2); break;
        default: hrow<0>(row, xo, w, ax.nt, j0, j1, f.sc, d0, d1, d2); break;
    }
}

#ifdef EDGEVLP_SSE2
// Tables of the packed path for the x axis of `c` (frame width `src_w` pixels).
void build_simd(Cache& c, i64 src_w) {
    const Axis& ax = c.x;
    const int nt = ax.nt, groups = (nt + 3) / 4;
    c.simd_groups = groups;
    c.simd_first.assign(static_cast<std::size_t>(ax.n), -1);
    c.simd_w.assign(static_cast<std::size_t>(ax.n * groups * 12), 0.0f);
    for (i64 j = 0; j < ax.n; ++j) {
        const std::int32_t* id = &ax.idx[static_cast<std::size_t>(j * nt)];
        const float* w = &ax.w[static_cast<std::size_t>(j * nt)];
        // Taps with a weight must be consecutive pixels from id[0]; the loads read 16 bytes per group.
        bool ok = 3 * (static_cast<i64>(id[0]) + 4 * (groups - 1)) + 16 <= 3 * src_w;
        for (int k = 0; ok && k < nt; ++k) ok = w[k] == 0.0f || id[k] == id[0] + k;
        if (!ok) continue;
        c.simd_first[static_cast<std::size_t>(j)] = id[0];
        float* sw = &c.simd_w[static_cast<std::size_t>(j * groups * 12)];
        for (int k = 0; k < nt; ++k) {
            for (int ch = 0; ch < 3; ++ch) sw[(k / 4) * 12 + (k % 4) * 3 + ch] = w[k];
        }
    }
    c.simd_valid = true;
}

// Horizontal pass for packed rows: `row` points at byte 0 of pixel 0, output channel ch reads byte
// lane[ch] of each pixel. Columns whose taps are not plain consecutive pixels fall back to `scalar`.
// Sum over `groups` groups of 4 consecutive packed pixels at p, weights laid out as build_simd's:
// lanes 0..2 of the result are the 3 bytes of a pixel, weighted and summed.
template <int Groups>
inline __m128 column_sum(const std::uint8_t* p, const float* w, int groups_dyn) {
    const int groups = Groups > 0 ? Groups : groups_dyn;
    const __m128i z = _mm_setzero_si128();
    __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps(), a2 = _mm_setzero_ps();
    for (int g = 0; g < groups; ++g, p += 12, w += 12) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i lo = _mm_unpacklo_epi8(v, z), hi = _mm_unpackhi_epi8(v, z);
        a0 = _mm_add_ps(a0, _mm_mul_ps(_mm_cvtepi32_ps(_mm_unpacklo_epi16(lo, z)), _mm_loadu_ps(w)));
        a1 = _mm_add_ps(a1, _mm_mul_ps(_mm_cvtepi32_ps(_mm_unpackhi_epi16(lo, z)), _mm_loadu_ps(w + 4)));
        a2 = _mm_add_ps(a2, _mm_mul_ps(_mm_cvtepi32_ps(_mm_unpacklo_epi16(hi, z)), _mm_loadu_ps(w + 8)));
    }
    // a0 a1 a2 hold 4 pixels x 3 bytes: [p0 p0 p0 p1 | p1 p1 p2 p2 | p2 p3 p3 p3]; sum the pixels.
    const __m128i i0 = _mm_castps_si128(a0), i1 = _mm_castps_si128(a1), i2 = _mm_castps_si128(a2);
    const __m128 t1 = _mm_castsi128_ps(_mm_or_si128(_mm_srli_si128(i0, 12), _mm_slli_si128(i1, 4)));
    const __m128 t2 = _mm_castsi128_ps(_mm_or_si128(_mm_srli_si128(i1, 8), _mm_slli_si128(i2, 8)));
    const __m128 t3 = _mm_castsi128_ps(_mm_srli_si128(i2, 4));
    return _mm_add_ps(_mm_add_ps(a0, t1), _mm_add_ps(t2, t3));
}

// Rev: output channel c reads byte 2 - c of a pixel (BGR -> RGB), else byte c; the only two orders
// a pixel stride of 3 with channel stride +-1 gives. Groups: taps / 4 rounded up (0: at run time).
template <bool Rev, int Groups, class Scalar>
void hrow_packed(const Cache& c, const std::uint8_t* row, float* d0, float* d1, float* d2, Scalar&& scalar) {
    const i64 n = c.x.n;
    const int groups = c.simd_groups;
    const i64 step = static_cast<i64>(groups) * 12;
    const std::int32_t* first = c.simd_first.data();
    const float* wts = c.simd_w.data();
    i64 j = 0;
    for (; j + 4 <= n; j += 4) {
        const std::int32_t f0 = first[j], f1 = first[j + 1], f2 = first[j + 2], f3 = first[j + 3];
        if ((f0 | f1 | f2 | f3) < 0) {
            scalar(j, j + 4);
            continue;
        }
        const float* w = wts + j * step;
        __m128 s0 = column_sum<Groups>(row + 3 * static_cast<i64>(f0), w, groups);
        __m128 s1 = column_sum<Groups>(row + 3 * static_cast<i64>(f1), w + step, groups);
        __m128 s2 = column_sum<Groups>(row + 3 * static_cast<i64>(f2), w + 2 * step, groups);
        __m128 s3 = column_sum<Groups>(row + 3 * static_cast<i64>(f3), w + 3 * step, groups);
        _MM_TRANSPOSE4_PS(s0, s1, s2, s3);  // s<b> = byte lane b of the 4 columns
        _mm_storeu_ps(d0 + j, Rev ? s2 : s0);
        _mm_storeu_ps(d1 + j, s1);
        _mm_storeu_ps(d2 + j, Rev ? s0 : s2);
    }
    if (j < n) scalar(j, n);
}
#endif

void fill(float* p, i64 n, float v) { std::fill(p, p + n, v); }

// Output rows [r_begin, r_end) of the y window; `ring` holds ay.nt rows of 3 * ax.n floats.
// packed: pixels are 3 bytes apart; `lane` is then the byte of a pixel each output channel reads,
// counted from `row + shift`.
struct Packing {
    bool packed = false;
    i64 shift = 0;
    int lane[3] = {0, 1, 2};
};

void run_band(const Geometry& g, const Cache& cache, const Packing& pk, const i64* xo, const Frame& f,
              i64 r_begin, i64 r_end, float* ring) {
    const Axis& ax = cache.x;
    const Axis& ay = cache.y;
    const int slots = ay.nt;
    // Small per-band scratch (a few bytes per tap): the source row each ring slot holds, the rows
    // and weights of the current output row.
    std::vector<i64> tag(static_cast<std::size_t>(slots), -1);
    std::vector<const float*> rowp(static_cast<std::size_t>(slots));
    std::vector<float> rw(static_cast<std::size_t>(slots));
    const i64 nx = ax.n;
    const i64 plane = g.out_h * g.out_w;
    const i64 ox0 = ax.lo + g.off_x;  // first output column of the window
    float pad_norm[3];
    for (int c = 0; c < 3; ++c) pad_norm[c] = f.pad_raw * f.a[c] + f.b[c];
    for (i64 i = r_begin; i < r_end; ++i) {
        const i64 oy = ay.lo + i + g.off_y;
        // Gather the source rows with a non-zero weight, resizing the ones not in the ring yet.
        int m = 0;
        for (int k = 0; k < ay.nt; ++k) {
            const float wk = ay.w[static_cast<std::size_t>(i * ay.nt + k)];
            if (wk == 0.0f) continue;
            const i64 sr = ay.idx[static_cast<std::size_t>(i * ay.nt + k)];
            const int slot = static_cast<int>(sr % slots);
            float* buf = ring + static_cast<i64>(slot) * 3 * nx;
            if (tag[static_cast<std::size_t>(slot)] != sr) {
                const std::uint8_t* row = f.base + sr * f.sy;
                float *d0 = buf, *d1 = buf + nx, *d2 = buf + 2 * nx;
                auto scalar = [&](i64 j0, i64 j1) { hrow_scalar(ax, row, xo, f, j0, j1, d0, d1, d2); };
#ifdef EDGEVLP_SSE2
                if (pk.packed) {
                    const std::uint8_t* r = row + pk.shift;
                    const bool rev = pk.lane[0] == 2, one = cache.simd_groups == 1;
                    if (rev && one) hrow_packed<true, 1>(cache, r, d0, d1, d2, scalar);
                    else if (rev) hrow_packed<true, 0>(cache, r, d0, d1, d2, scalar);
                    else if (one) hrow_packed<false, 1>(cache, r, d0, d1, d2, scalar);
                    else hrow_packed<false, 0>(cache, r, d0, d1, d2, scalar);
                } else {
                    scalar(0, nx);
                }
#else
                scalar(0, nx);
#endif
                if (ax.has_pad) {
                    for (i64 j = 0; j < nx; ++j) {
                        const float p = ax.padw[static_cast<std::size_t>(j)] * f.pad_raw;
                        d0[j] += p;
                        d1[j] += p;
                        d2[j] += p;
                    }
                }
                tag[static_cast<std::size_t>(slot)] = sr;
            }
            rowp[static_cast<std::size_t>(m)] = buf;
            rw[static_cast<std::size_t>(m)] = wk;
            ++m;
        }
        const float padw = ay.has_pad ? ay.padw[static_cast<std::size_t>(i)] : 0.0f;
        for (int c = 0; c < 3; ++c) {
            float* __restrict d = f.out + c * plane + oy * g.out_w;
            fill(d, ox0, pad_norm[c]);
            fill(d + ox0 + nx, g.out_w - ox0 - nx, pad_norm[c]);
            d += ox0;
            const float a = f.a[c];
            const float b = f.b[c] + padw * f.pad_raw * a;
            if (m == 0) {
                fill(d, nx, b);
                continue;
            }
            const i64 co = c * nx;
            if (m == 1) {
                const float* __restrict r0 = rowp[0] + co;
                const float w0 = rw[0] * a;
                for (i64 x = 0; x < nx; ++x) d[x] = r0[x] * w0 + b;
            } else if (m == 2) {
                const float* __restrict r0 = rowp[0] + co;
                const float* __restrict r1 = rowp[1] + co;
                const float w0 = rw[0], w1 = rw[1];
                for (i64 x = 0; x < nx; ++x) d[x] = (r0[x] * w0 + r1[x] * w1) * a + b;
            } else if (m == 4) {
                const float* __restrict r0 = rowp[0] + co;
                const float* __restrict r1 = rowp[1] + co;
                const float* __restrict r2 = rowp[2] + co;
                const float* __restrict r3 = rowp[3] + co;
                const float w0 = rw[0], w1 = rw[1], w2 = rw[2], w3 = rw[3];
                for (i64 x = 0; x < nx; ++x) d[x] = (r0[x] * w0 + r1[x] * w1 + r2[x] * w2 + r3[x] * w3) * a + b;
            } else {
                const float* __restrict r0 = rowp[0] + co;
                const float w0 = rw[0];
                for (i64 x = 0; x < nx; ++x) d[x] = r0[x] * w0;
                for (int k = 1; k < m; ++k) {
                    const float* __restrict rk = rowp[k] + co;
                    const float wk = rw[k];
                    for (i64 x = 0; x < nx; ++x) d[x] += rk[x] * wk;
                }
                for (i64 x = 0; x < nx; ++x) d[x] = d[x] * a + b;
            }
        }
    }
}

}  // namespace

std::string make_geometry(Mode mode, i64 src_h, i64 src_w, i64 out_h, i64 out_w, i64 crop_h, i64 crop_w,
                          i64 shortest_edge, Geometry* g) {
    g->src_h = src_h;
    g->src_w = src_w;
    g->virt_h = src_h;
    g->virt_w = src_w;
    i64 canvas_h = out_h, canvas_w = out_w, top = 0, left = 0;
    g->res_h = out_h;
    g->res_w = out_w;
    if (mode == Mode::Letterbox) {
        const double s = std::min(static_cast<double>(out_w) / static_cast<double>(src_w),
                                  static_cast<double>(out_h) / static_cast<double>(src_h));
        g->res_w = std::min(std::max(static_cast<i64>(std::floor(static_cast<double>(src_w) * s + 0.5)), i64{1}), out_w);
        g->res_h = std::min(std::max(static_cast<i64>(std::floor(static_cast<double>(src_h) * s + 0.5)), i64{1}), out_h);
        top = (out_h - g->res_h) / 2;
        left = (out_w - g->res_w) / 2;
    } else if (mode == Mode::PadSquare) {
        g->virt_h = g->virt_w = std::max(src_h, src_w);
    } else if (mode == Mode::ShortestEdge) {
        const i64 se = shortest_edge;
        if (src_w <= src_h) {
            g->res_w = se;
            g->res_h = static_cast<i64>(static_cast<double>(se * src_h) / static_cast<double>(src_w));
        } else {
            g->res_h = se;
            g->res_w = static_cast<i64>(static_cast<double>(se * src_w) / static_cast<double>(src_h));
        }
        if (g->res_h > kMaxSide || g->res_w > kMaxSide) {
            return "mode 'shortest_edge' would resize the " + std::to_string(src_h) + "x" + std::to_string(src_w) +
                   " frame to " + std::to_string(g->res_h) + "x" + std::to_string(g->res_w) + ", more than " +
                   std::to_string(kMaxSide) + " pixels on a side; lower shortest_edge or crop the frame first";
        }
        canvas_h = g->res_h;
        canvas_w = g->res_w;
    }
    g->out_h = crop_h > 0 ? crop_h : out_h;
    g->out_w = crop_w > 0 ? crop_w : out_w;
    g->off_y = top - floor_div2(canvas_h - g->out_h);
    g->off_x = left - floor_div2(canvas_w - g->out_w);
    return "";
}

void run_frame(const Geometry& g, Interp interp, const Frame& f, int threads) {
    thread_local Cache cache;
    const bool area_down = g.virt_w >= g.res_w && g.virt_h >= g.res_h;  // cv2: scale_x >= 1 && scale_y >= 1
    // Window of resized pixels that land in the output.
    const i64 ylo = std::max<i64>(0, -g.off_y), yhi = std::min<i64>(g.res_h, g.out_h - g.off_y);
    const i64 xlo = std::max<i64>(0, -g.off_x), xhi = std::min<i64>(g.res_w, g.out_w - g.off_x);
    const i64 plane = g.out_h * g.out_w;
    float pad_norm[3];
    for (int c = 0; c < 3; ++c) pad_norm[c] = f.pad_raw * f.a[c] + f.b[c];
    if (yhi <= ylo || xhi <= xlo) {
        for (int c = 0; c < 3; ++c) fill(f.out + c * plane, plane, pad_norm[c]);
        return;
    }
    // OpenCV 5 computes INTER_LINEAR / INTER_CUBIC source positions in double, but only when the
    // source is at least the kernel size (2 / 4) on both axes; below, its older float path runs.
    const i64 ksize = interp == Interp::Bicubic ? 4 : 2;
    const bool dpos = g.virt_h >= ksize && g.virt_w >= ksize;
    const Axis& ax = cached_axis(cache, true, {interp, area_down, dpos, g.virt_w, g.src_w, g.res_w, xlo, xhi - xlo});
    const Axis& ay = cached_axis(cache, false, {interp, area_down, dpos, g.virt_h, g.src_h, g.res_h, ylo, yhi - ylo});
    if (cache.xoff_stride != f.sx || cache.xoff.size() != ax.idx.size()) {
        cache.xoff.resize(ax.idx.size());
        for (std::size_t k = 0; k < ax.idx.size(); ++k) cache.xoff[k] = static_cast<i64>(ax.idx[k]) * f.sx;
        cache.xoff_stride = f.sx;
    }
    // Rows above and below the resized image: padding.
    const i64 oy_first = ylo + g.off_y, oy_end = yhi + g.off_y;
    for (int c = 0; c < 3; ++c) {
        fill(f.out + c * plane, oy_first * g.out_w, pad_norm[c]);
        fill(f.out + c * plane + oy_end * g.out_w, (g.out_h - oy_end) * g.out_w, pad_norm[c]);
    }

    const i64 ny = ay.n, nx = ax.n;
    // Work estimate in multiply-adds: horizontal taps over the source rows used + vertical taps.
    const double work = 3.0 * static_cast<double>(nx) *
                        (static_cast<double>(std::min<i64>(g.src_h, ny * ay.nt)) * ax.nt + static_cast<double>(ny) * ay.nt);
    int t = threads;
    if (t <= 0) {
        const unsigned hw = std::thread::hardware_concurrency();
        t = static_cast<int>(std::min(hw == 0 ? 1u : hw, 4u));
        if (work < 4.0e5) t = 1;  // a thread start costs ~20-50 us: not worth it below ~0.2 ms of work
    }
    t = static_cast<int>(std::min<i64>(t, std::max<i64>(1, ny / 8)));
    const std::size_t ring = static_cast<std::size_t>(ay.nt) * 3 * static_cast<std::size_t>(nx);
    if (cache.rows.size() < ring * static_cast<std::size_t>(t)) cache.rows.resize(ring * static_cast<std::size_t>(t));
    float* rows = cache.rows.data();
    const i64* xo = cache.xoff.data();
    Packing pk;
    const i64 sc_min = std::min({f.sc[0], f.sc[1], f.sc[2]}), sc_max = std::max({f.sc[0], f.sc[1], f.sc[2]});
#ifdef EDGEVLP_SSE2
    pk.packed = f.sx == 3 && sc_max - sc_min == 2 && (sc_min == 0 || sc_max == 0);  // channel stride +-1
    if (pk.packed && !cache.simd_valid) build_simd(cache, g.src_w);
#endif
    pk.shift = sc_min;
    for (int c = 0; c < 3; ++c) pk.lane[c] = static_cast<int>(f.sc[c] - sc_min);
    if (t == 1) {
        run_band(g, cache, pk, xo, f, 0, ny, rows);
        return;
    }
    // Bands of output rows; each worker re-resizes the few source rows its band shares with the
    // previous one. An exception in a worker (only std::bad_alloc is possible) is re-thrown here.
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(t - 1));
    std::vector<char> failed(static_cast<std::size_t>(t), 0);
    const Cache& shared = cache;  // a lambda naming `cache` would get the worker's own thread_local
    auto band = [&](int k) {
        try {
            run_band(g, shared, pk, xo, f, ny * k / t, ny * (k + 1) / t, rows + ring * static_cast<std::size_t>(k));
        } catch (...) {
            failed[static_cast<std::size_t>(k)] = 1;
        }
    };
    try {
        for (int k = 1; k < t; ++k) pool.emplace_back(band, k);
    } catch (...) {  // could not start a thread: do its band here
        for (int k = static_cast<int>(pool.size()) + 1; k < t; ++k) band(k);
    }
    band(0);
    for (auto& th : pool) th.join();
    for (char bad : failed) {
        if (bad) throw std::bad_alloc();
    }
}

}  // namespace edgevlp
