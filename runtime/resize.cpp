// Bindings of edgevlp._preprocess.preprocess / preprocess_batch: argument checks (same order and text
// as preprocess_reference in edgevlp/runtime/preprocess.py), then run_frame() without the GIL.

#include "pyutil.h"
#include "resize.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <string>
#include <vector>

namespace edgevlp {

namespace {

namespace py = pybind11;
using namespace edgevlp_py;
using i64 = std::int64_t;

constexpr const char* kModes[] = {"stretch", "letterbox", "pad_square", "shortest_edge"};
constexpr const char* kInterps[] = {"nearest", "bilinear", "bicubic", "area", "lanczos"};
constexpr int kMaxThreads = 256;

// An int (or numpy integer; not bool) in [lo, hi].
i64 to_int(const py::object& obj, const char* name, i64 lo, i64 hi, const char* range_text) {
    if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr())) {
        throw py::type_error(std::string(name) + " must be an int, got " + repr_str(obj));
    }
    const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
    if (!index) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow != 0 || v < lo || v > hi) {
        throw py::value_error(std::string(name) + " must be in " + range_text + ", got " + repr_str(obj));
    }
    return static_cast<i64>(v);
}

template <std::size_t N>
int to_choice(const py::object& obj, const char* name, const char* const (&choices)[N]) {
    std::string list;
    for (std::size_t i = 0; i < N; ++i) list += (i ? ", '" : "'") + std::string(choices[i]) + "'";
    if (!PyUnicode_Check(obj.ptr())) {
        throw py::type_error(std::string(name) + " must be a str (one of " + list + "), got " + repr_str(obj));
    }
    const std::string s = obj.cast<std::string>();
    for (std::size_t i = 0; i < N; ++i) {
        if (s == choices[i]) return static_cast<int>(i);
    }
    throw py::value_error(std::string(name) + " must be one of " + list + ", got " + repr_str(obj));
}

struct Params {
    i64 out_h = 0, out_w = 0, crop_h = 0, crop_w = 0, shortest_edge = 0;
    Mode mode = Mode::Stretch;
    Interp interp = Interp::Bilinear;
    double mean[3] = {0, 0, 0}, stdv[3] = {1, 1, 1}, scale = 1.0, pad_value = 0.0;
    int threads = 0;
};

// Everything but the image(s) and out, in the reference's order.
Params parse_params(const py::object& out_h, const py::object& out_w, const py::object& mode,
                    const py::object& interpolation, const py::object& mean, const py::object& stdv,
                    const py::object& scale, const py::object& pad_value, const py::object& crop_h,
                    const py::object& crop_w, const py::object& shortest_edge, const py::object& threads) {
    Params p;
    const std::string side = "1.." + std::to_string(kMaxSide), side0 = "0.." + std::to_string(kMaxSide);
    p.out_h = to_int(out_h, "out_h", 1, kMaxSide, side.c_str());
    p.out_w = to_int(out_w, "out_w", 1, kMaxSide, side.c_str());
    p.mode = static_cast<Mode>(to_choice(mode, "mode", kModes));
    p.interp = static_cast<Interp>(to_choice(interpolation, "interpolation", kInterps));
    p.crop_h = to_int(crop_h, "crop_h", 0, kMaxSide, side0.c_str());
    p.crop_w = to_int(crop_w, "crop_w", 0, kMaxSide, side0.c_str());
    if ((p.crop_h == 0) != (p.crop_w == 0)) {
        throw py::value_error("crop_h and crop_w must both be 0 (no crop) or both >= 1, got " +
                              std::to_string(p.crop_h) + " and " + std::to_string(p.crop_w));
    }
    p.shortest_edge = to_int(shortest_edge, "shortest_edge", 0, kMaxSide, side0.c_str());
    if (p.mode == Mode::ShortestEdge && p.shortest_edge == 0) {
        throw py::value_error("mode 'shortest_edge' needs shortest_edge >= 1 (the short side after resizing)");
    }
    if (p.mode != Mode::ShortestEdge && p.shortest_edge != 0) {
        throw py::value_error("shortest_edge=" + std::to_string(p.shortest_edge) + " is only used by mode "
                              "'shortest_edge'; pass 0 with mode " + repr_str(mode));
    }
    to_triplet(mean, "mean", p.mean);
    to_triplet(stdv, "std", p.stdv);
    for (double s : p.stdv) {
        if (!(s > 0.0)) throw py::value_error("std must be > 0 (it divides), got " + repr_str(stdv));
    }
    if (!to_real(scale, &p.scale)) throw py::type_error("scale must be a number, got " + repr_str(scale));
    if (!std::isfinite(p.scale) || !(p.scale > 0.0)) {
        throw py::value_error("scale must be finite and > 0, got " + repr_str(scale));
    }
    if (!to_real(pad_value, &p.pad_value)) {
        throw py::type_error("pad_value must be a number, got " + repr_str(pad_value));
    }
    if (!std::isfinite(p.pad_value)) throw py::value_error("pad_value must be finite, got " + repr_str(pad_value));
    p.threads = static_cast<int>(to_int(threads, "threads", 0, kMaxThreads, "0..256 (0: auto)"));
    return p;
}

Geometry geometry(const Params& p, const py::array& image, const std::string& prefix) {
    Geometry g;
    const std::string err = make_geometry(p.mode, image.shape(0), image.shape(1), p.out_h, p.out_w, p.crop_h,
                                          p.crop_w, p.shortest_edge, &g);
    if (!err.empty()) throw py::value_error(prefix + err);
    return g;
}

Frame frame_job(const Params& p, const py::array& image, bool swap_rb, float* out) {
    Frame f;
    f.base = static_cast<const std::uint8_t*>(image.data());
    f.sy = image.strides(0);
    f.sx = image.strides(1);
    for (int c = 0; c < 3; ++c) {  // c: output (RGB) channel
        f.sc[c] = static_cast<i64>(swap_rb ? 2 - c : c) * image.strides(2);
        f.a[c] = static_cast<float>(p.scale / p.stdv[c]);
        f.b[c] = static_cast<float>(-p.mean[c] / p.stdv[c]);
    }
    f.pad_raw = static_cast<float>(p.pad_value / p.scale);
    f.out = out;
    return f;
}

py::tuple transform_of(const Geometry& g) {
    return py::make_tuple(static_cast<double>(g.res_w) / static_cast<double>(g.virt_w),
                          static_cast<double>(g.res_h) / static_cast<double>(g.virt_h), static_cast<double>(g.off_x),
                          static_cast<double>(g.off_y));
}

bool check_swap(const py::object& swap_obj) {
    if (!is_bool(swap_obj)) throw py::type_error("swap_rb must be True or False, got " + repr_str(swap_obj));
    return py::cast<bool>(swap_obj);
}

py::tuple preprocess(const py::object& image_obj, const py::object& out_h, const py::object& out_w,
                     const py::object& mode, const py::object& interpolation, const py::object& mean,
                     const py::object& stdv, const py::object& scale, const py::object& swap_obj,
                     const py::object& pad_value, const py::object& crop_h, const py::object& crop_w,
                     const py::object& shortest_edge, const py::object& out_obj, const py::object& threads) {
    const bool swap_rb = check_swap(swap_obj);
    const py::array image = check_image(image_obj, swap_rb);
    const Params p = parse_params(out_h, out_w, mode, interpolation, mean, stdv, scale, pad_value, crop_h, crop_w,
                                  shortest_edge, threads);
    const Geometry g = geometry(p, image, "");
    py::array out = check_out(out_obj, {1}, g.out_h, g.out_w);
    if (!out_obj.is_none()) check_no_overlap(image, out);
    const Frame f = frame_job(p, image, swap_rb, static_cast<float*>(out.mutable_data()));
    {
        py::gil_scoped_release release;
        run_frame(g, p.interp, f, p.threads);
    }
    return py::make_tuple(out_obj.is_none() ? py::object(out) : out_obj, transform_of(g));
}

py::tuple preprocess_batch(const py::object& images_obj, const py::object& out_h, const py::object& out_w,
                           const py::object& mode, const py::object& interpolation, const py::object& mean,
                           const py::object& stdv, const py::object& scale, const py::object& swap_obj,
                           const py::object& pad_value, const py::object& crop_h, const py::object& crop_w,
                           const py::object& shortest_edge, const py::object& out_obj, const py::object& threads) {
    const bool swap_rb = check_swap(swap_obj);
    if (!PyList_Check(images_obj.ptr()) && !PyTuple_Check(images_obj.ptr())) {
        throw py::type_error("images must be a list or tuple of uint8 HxWx3 frames, got " + type_name(images_obj));
    }
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(images_obj);
    const py::ssize_t n = static_cast<py::ssize_t>(py::len(seq));
    if (n == 0) throw py::value_error("images is empty; pass at least one frame");
    std::vector<py::array> images;
    images.reserve(static_cast<std::size_t>(n));
    for (py::ssize_t i = 0; i < n; ++i) {
        images.push_back(check_image(seq[static_cast<std::size_t>(i)], swap_rb, "images[" + std::to_string(i) + "]: "));
    }
    const Params p = parse_params(out_h, out_w, mode, interpolation, mean, stdv, scale, pad_value, crop_h, crop_w,
                                  shortest_edge, threads);
    std::vector<Geometry> geoms;
    for (py::ssize_t i = 0; i < n; ++i) {
        geoms.push_back(geometry(p, images[static_cast<std::size_t>(i)], "images[" + std::to_string(i) + "]: "));
    }
    const Geometry& g0 = geoms[0];
    py::array out = check_out(out_obj, {n}, g0.out_h, g0.out_w);
    if (!out_obj.is_none()) {
        for (py::ssize_t i = 0; i < n; ++i) {
            check_no_overlap(images[static_cast<std::size_t>(i)], out, "images[" + std::to_string(i) + "] ");
        }
    }
    std::vector<Frame> jobs;
    float* dst = static_cast<float*>(out.mutable_data());
    const i64 per = 3 * g0.out_h * g0.out_w;
    for (py::ssize_t i = 0; i < n; ++i) jobs.push_back(frame_job(p, images[static_cast<std::size_t>(i)], swap_rb, dst + i * per));
    {
        py::gil_scoped_release release;
        for (py::ssize_t i = 0; i < n; ++i) {
            run_frame(geoms[static_cast<std::size_t>(i)], p.interp, jobs[static_cast<std::size_t>(i)], p.threads);
        }
    }
    py::list transforms;
    for (const Geometry& g : geoms) transforms.append(transform_of(g));
    return py::make_tuple(out_obj.is_none() ? py::object(out) : out_obj, transforms);
}

}  // namespace

void register_resize(py::module_& m) {
    const auto args = [] {
        return std::make_tuple(py::arg("out_h"), py::arg("out_w"), py::arg("mode"), py::arg("interpolation"),
                               py::arg("mean"), py::arg("std"), py::arg("scale") = 1.0 / 255.0,
                               py::arg("swap_rb") = true, py::arg("pad_value") = 0.0, py::arg("crop_h") = 0,
                               py::arg("crop_w") = 0, py::arg("shortest_edge") = 0, py::arg("out") = py::none(),
                               py::arg("threads") = 0);
    };
    const auto a = args();
    m.def("preprocess", &preprocess, py::arg("image"), std::get<0>(a), std::get<1>(a), std::get<2>(a),
          std::get<3>(a), std::get<4>(a), std::get<5>(a), std::get<6>(a), std::get<7>(a), std::get<8>(a),
          std::get<9>(a), std::get<10>(a), std::get<11>(a), std::get<12>(a), std::get<13>(a),
          "preprocess(image, out_h, out_w, mode, interpolation, mean, std, scale=1/255, swap_rb=True, "
          "pad_value=0.0, crop_h=0, crop_w=0, shortest_edge=0, out=None, threads=0) -> (tensor, "
          "(scale_x, scale_y, offset_x, offset_y))\n\nuint8 HxWx3 frame -> resized, normalised float32 "
          "(1, 3, H, W); cv2.resize semantics on float32. See edgevlp.runtime.preprocess.");
    const auto b = args();
    m.def("preprocess_batch", &preprocess_batch, py::arg("images"), std::get<0>(b), std::get<1>(b), std::get<2>(b),
          std::get<3>(b), std::get<4>(b), std::get<5>(b), std::get<6>(b), std::get<7>(b), std::get<8>(b),
          std::get<9>(b), std::get<10>(b), std::get<11>(b), std::get<12>(b), std::get<13>(b),
          "preprocess_batch(images, ...same as preprocess...) -> (tensor (N, 3, H, W), [transform, ...])");
}

}  // namespace edgevlp
