// Bindings of edgevlp._preprocess.Params / preprocess / preprocess_batch, and the Mode / Interp enums.
//
// Every preprocessing option is validated once, by PreprocessSpec (edgevlp/spec.py); the runtime
// (edgevlp/runtime/preprocess.py) turns a spec into a Params in one place and passes it here. What is
// checked here is what memory safety needs, each raising a Python exception (never a crash) with the
// text of the numpy reference, preprocess_reference: the sizes that shape buffers (Params), the
// frame(s) and `out` (dtype, shape, strides, overlap), the resized side of shortest_edge, threads.
// The enums are exposed by name (Mode.__members__, Interp.__members__): Python maps spec strings to
// them by name, and checks on import that the names are the spec's.

#include "pyutil.h"
#include "resize.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

namespace edgevlp {

namespace {

namespace py = pybind11;
using namespace edgevlp_py;
using i64 = std::int64_t;

constexpr int kMaxThreads = 256;

// Everything a frame job needs but the frame: built once per spec, immutable from Python.
struct Params {
    i64 out_h = 0, out_w = 0, crop_h = 0, crop_w = 0, shortest_edge = 0;
    Mode mode = Mode::Stretch;
    Interp interp = Interp::Bilinear;
    bool swap_rb = true;
    float a[3] = {1, 1, 1}, b[3] = {0, 0, 0};  // out = resized * a + b, per output (RGB) channel
    float pad_raw = 0.0f;                      // pad_value / scale: the pad in raw pixel units
};

void check_side(i64 v, const char* name, i64 lo) {
    if (v < lo || v > kMaxSide) {
        throw py::value_error(std::string(name) + " must be in " + std::to_string(lo) + ".." +
                              std::to_string(kMaxSide) + ", got " + std::to_string(v));
    }
}

// Mode(7) builds an enum value no member has: refuse it, the pixel code handles the members only.
template <typename E>
void check_member(E value, const char* name, const char* type) {
    const py::object obj = py::cast(value);
    const py::dict members = py::type::of(obj).attr("__members__");
    for (const auto& item : members) {
        if (item.second.cast<E>() == value) return;
    }
    throw py::value_error(std::string(name) + " must be a member of " + type + " (" + repr_str(members) +
                          "), got " + std::to_string(static_cast<int>(value)));
}

// The sizes are checked (they shape the output and the resize tables) and the enums are members;
// the pixel math is taken as PreprocessSpec validated it.
Params make_params(i64 out_h, i64 out_w, Mode mode, Interp interp, const std::array<double, 3>& mean,
                   const std::array<double, 3>& stdv, double scale, bool swap_rb, double pad_value, i64 crop_h,
                   i64 crop_w, i64 shortest_edge) {
    check_member(mode, "mode", "Mode");
    check_member(interp, "interpolation", "Interp");
    check_side(out_h, "out_h", 1);
    check_side(out_w, "out_w", 1);
    check_side(crop_h, "crop_h", 0);
    check_side(crop_w, "crop_w", 0);
    if ((crop_h == 0) != (crop_w == 0)) {
        throw py::value_error("crop_h and crop_w must both be 0 (no crop) or both >= 1, got " +
                              std::to_string(crop_h) + " and " + std::to_string(crop_w));
    }
    check_side(shortest_edge, "shortest_edge", 0);
    if (mode == Mode::ShortestEdge && shortest_edge == 0) {
        throw py::value_error("mode 'shortest_edge' needs shortest_edge >= 1 (the short side after resizing)");
    }
    Params p;
    p.out_h = out_h;
    p.out_w = out_w;
    p.crop_h = crop_h;
    p.crop_w = crop_w;
    p.shortest_edge = shortest_edge;
    p.mode = mode;
    p.interp = interp;
    p.swap_rb = swap_rb;
    for (int c = 0; c < 3; ++c) {
        p.a[c] = static_cast<float>(scale / stdv[c]);
        p.b[c] = static_cast<float>(-mean[c] / stdv[c]);
    }
    p.pad_raw = static_cast<float>(pad_value / scale);
    return p;
}

int to_threads(const py::object& obj) {
    if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr())) {
        throw py::type_error("threads must be an int, got " + repr_str(obj));
    }
    const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
    if (!index) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow != 0 || v < 0 || v > kMaxThreads) {
        throw py::value_error("threads must be in 0..256 (0: auto), got " + repr_str(obj));
    }
    return static_cast<int>(v);
}

Frame frame_job(const Params& p, const py::array& image, float* out) {
    Frame f;
    f.base = static_cast<const std::uint8_t*>(image.data());
    f.sy = image.strides(0);
    f.sx = image.strides(1);
    for (int c = 0; c < 3; ++c) {  // c: output (RGB) channel
        f.sc[c] = static_cast<i64>(p.swap_rb ? 2 - c : c) * image.strides(2);
        f.a[c] = p.a[c];
        f.b[c] = p.b[c];
    }
    f.pad_raw = p.pad_raw;
    f.out = out;
    return f;
}

py::tuple transform_of(const Geometry& g) {
    return py::make_tuple(static_cast<double>(g.res_w) / static_cast<double>(g.virt_w),
                          static_cast<double>(g.res_h) / static_cast<double>(g.virt_h), static_cast<double>(g.off_x),
                          static_cast<double>(g.off_y));
}

// The frames (already checked by check_image) against p and `out`, then the pixel work without the
// GIL. batch: `out` has a leading N and messages name the frame ("images[3]: ...").
py::tuple run(const std::vector<py::array>& images, const Params& p, const py::object& out_obj, int threads,
              bool batch) {
    const auto prefix = [batch](std::size_t i, const char* sep) {
        return batch ? "images[" + std::to_string(i) + "]" + sep : std::string();
    };
    const std::size_t n = images.size();
    std::vector<Geometry> geoms(n);
    for (std::size_t i = 0; i < n; ++i) {
        const std::string err = make_geometry(p.mode, images[i].shape(0), images[i].shape(1), p.out_h, p.out_w,
                                              p.crop_h, p.crop_w, p.shortest_edge, &geoms[i]);
        if (!err.empty()) throw py::value_error(prefix(i, ": ") + err);
    }
    const i64 out_h = geoms[0].out_h, out_w = geoms[0].out_w;  // the same for every frame
    py::array out = check_out(out_obj, {batch ? static_cast<py::ssize_t>(n) : 1}, out_h, out_w);
    if (!out_obj.is_none()) {
        for (std::size_t i = 0; i < n; ++i) check_no_overlap(images[i], out, prefix(i, " "));
    }
    std::vector<Frame> jobs;
    float* dst = static_cast<float*>(out.mutable_data());
    for (std::size_t i = 0; i < n; ++i) jobs.push_back(frame_job(p, images[i], dst + static_cast<i64>(i) * 3 * out_h * out_w));
    {
        py::gil_scoped_release release;
        for (std::size_t i = 0; i < n; ++i) run_frame(geoms[i], p.interp, jobs[i], threads);
    }
    py::object tensor = out_obj.is_none() ? py::object(out) : out_obj;
    if (!batch) return py::make_tuple(tensor, transform_of(geoms[0]));
    py::list transforms;
    for (const Geometry& g : geoms) transforms.append(transform_of(g));
    return py::make_tuple(tensor, transforms);
}

py::tuple preprocess(const py::object& image_obj, const Params& p, const py::object& out_obj,
                     const py::object& threads) {
    const int t = to_threads(threads);
    return run({check_image(image_obj, p.swap_rb)}, p, out_obj, t, false);
}

py::tuple preprocess_batch(const py::object& images_obj, const Params& p, const py::object& out_obj,
                           const py::object& threads) {
    const int t = to_threads(threads);
    if (!PyList_Check(images_obj.ptr()) && !PyTuple_Check(images_obj.ptr())) {
        throw py::type_error("images must be a list or tuple of uint8 HxWx3 frames, got " + type_name(images_obj));
    }
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(images_obj);
    const std::size_t n = py::len(seq);
    if (n == 0) throw py::value_error("images is empty; pass at least one frame");
    std::vector<py::array> images;
    images.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        images.push_back(check_image(seq[i], p.swap_rb, "images[" + std::to_string(i) + "]: "));
    }
    return run(images, p, out_obj, t, true);
}

}  // namespace

void register_resize(py::module_& m) {
    // Names, not positions: edgevlp/runtime/preprocess.py looks members up by the spec's strings.
    py::enum_<Mode>(m, "Mode", "Resize modes by name (edgevlp.spec.RESIZE_MODES).")
        .value("stretch", Mode::Stretch)
        .value("letterbox", Mode::Letterbox)
        .value("pad_square", Mode::PadSquare)
        .value("shortest_edge", Mode::ShortestEdge);
    py::enum_<Interp>(m, "Interp", "Resize filters by name (edgevlp.spec.INTERPOLATIONS).")
        .value("nearest", Interp::Nearest)
        .value("bilinear", Interp::Bilinear)
        .value("bicubic", Interp::Bicubic)
        .value("area", Interp::Area)
        .value("lanczos", Interp::Lanczos);
    py::class_<Params>(m, "Params",
                       "A validated PreprocessSpec in C++ form; build it with "
                       "edgevlp.runtime.preprocess.extension_params(spec).")
        .def(py::init(&make_params), py::arg("out_h"), py::arg("out_w"), py::arg("mode"), py::arg("interpolation"),
             py::arg("mean"), py::arg("std"), py::arg("scale"), py::arg("swap_rb"), py::arg("pad_value"),
             py::arg("crop_h"), py::arg("crop_w"), py::arg("shortest_edge"))
        .def_readonly("mode", &Params::mode)
        .def_readonly("interpolation", &Params::interp)
        .def_property_readonly("out_shape", [](const Params& p) {
            return py::make_tuple(1, 3, p.crop_h > 0 ? p.crop_h : p.out_h, p.crop_w > 0 ? p.crop_w : p.out_w);
        });
    m.def("preprocess", &preprocess, py::arg("image"), py::arg("params"), py::arg("out") = py::none(),
          py::arg("threads") = 0,
          "preprocess(image, params, out=None, threads=0) -> (tensor, (scale_x, scale_y, offset_x, offset_y))\n\n"
          "uint8 HxWx3 frame -> resized, normalised float32 (1, 3, H, W); cv2.resize semantics on float32. "
          "See edgevlp.runtime.preprocess.preprocess_extension.");
    m.def("preprocess_batch", &preprocess_batch, py::arg("images"), py::arg("params"), py::arg("out") = py::none(),
          py::arg("threads") = 0,
          "preprocess_batch(images, params, out=None, threads=0) -> (tensor (N, 3, H, W), [transform, ...])");
}

}  // namespace edgevlp
