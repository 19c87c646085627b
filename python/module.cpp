// The Python module `gradproof`: the ops' forward and backward passes on NumPy arrays, `check`
// (the `gradproof check` command on arrays in memory) and the oracles for a user's own function.
//
// Arrays in: float32 or float64 (one dtype per call, the dtype of `input`); any layout. They are
// copied once into gradproof tensors, which own their storage (a std::vector): there is no
// non-owning tensor to view NumPy's buffer through. Arrays out: the tensor the op wrote is handed
// to NumPy without a copy (the array's base is a capsule that owns the tensor), C-contiguous.
// Bad input raises ValueError with the C++ message.
#include "gradproof/check/oracles.hpp"
#include "gradproof/cli/check.hpp"
#include "gradproof/ops/activations.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/cross_entropy.hpp"
#include "gradproof/ops/dropout.hpp"
#include "gradproof/ops/embedding.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/linear.hpp"
#include "gradproof/ops/log_softmax.hpp"
#include "gradproof/ops/losses.hpp"
#include "gradproof/ops/matmul.hpp"
#include "gradproof/ops/rmsnorm.hpp"
#include "gradproof/ops/softmax.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <regex>
#include <sstream>
#include <type_traits>
#include <utility>

namespace py = pybind11;
using namespace pybind11::literals;

namespace gradproof::python {
namespace {

// ---- Errors ------------------------------------------------------------------------------------

// A bad argument found here (before any C++ op sees it): a ValueError with this message.
[[noreturn]] void bad(const std::string& msg) { throw py::value_error(msg); }

// The C++ names of some arguments differ from PyTorch's (gamma is `weight`): the message of a
// C++ error is passed on unchanged, with a note of which Python argument each C++ name it
// contains is.
using Aliases = std::vector<std::pair<std::string, std::string>>;  // C++ name, Python name

template <class F>
auto guarded(const char* fn, const Aliases& aliases, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const InvalidArgument& e) {
    std::string msg = std::string(fn) + "(): " + e.what();
    std::string notes;
    for (const auto& [cpp, pyname] : aliases)
      if (std::regex_search(e.what(), std::regex("\\b" + cpp + "\\b")))
        notes += (notes.empty() ? "" : ", ") + cpp + " is the argument " + pyname;
    if (!notes.empty()) msg += " (" + notes + ")";
    throw py::value_error(msg);
  }
}

// ---- Arrays ------------------------------------------------------------------------------------

enum class DT { f32, f64 };

const char* dt_name(DT d) { return d == DT::f32 ? "float32" : "float64"; }

template <class T>
constexpr DT dt_of() {
  return std::is_same_v<T, float> ? DT::f32 : DT::f64;
}

py::array as_array(py::handle obj) {
  if (py::isinstance<py::array>(obj)) return py::reinterpret_borrow<py::array>(obj);
  return py::module_::import("numpy").attr("asarray")(obj);
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// The dtype of a floating-point argument; anything else is refused, naming the argument.
DT float_dtype(const py::array& a, const char* fn, const char* name) {
  if (a.dtype().is(py::dtype::of<float>())) return DT::f32;
  if (a.dtype().is(py::dtype::of<double>())) return DT::f64;
  bad(std::string(fn) + "(): " + name + " must be a float32 or float64 array; got dtype " + dtype_str(a));
}

Shape shape_of(const py::array& a) {
  Shape s;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s.push_back(static_cast<Index>(a.shape(d)));
  return s;
}

// A copy of `obj` as a tensor of T (row-major whatever the array's layout); its dtype must be T's.
template <class T>
Tensor<T> tensor_of(py::handle obj, const char* fn, const char* name) {
  const py::array a = as_array(obj);
  const DT d = float_dtype(a, fn, name);
  if (d != dt_of<T>())
    bad(std::string(fn) + "(): " + name + " has dtype " + dt_name(d) + " but input has dtype " + dt_name(dt_of<T>()) +
        " (one dtype per call)");
  const auto c = py::array_t<T, py::array::c_style>::ensure(a);  // a copy only when not C-contiguous
  Tensor<T> t(shape_of(a));
  if (t.size()) std::memcpy(t.data(), c.data(), static_cast<std::size_t>(t.size()) * sizeof(T));
  return t;
}

template <class T>
std::optional<Tensor<T>> opt_tensor_of(py::handle obj, const char* fn, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return tensor_of<T>(obj, fn, name);
}

// Integer targets and indices: any integer dtype, converted to int64.
Tensor<std::int64_t> index_tensor_of(py::handle obj, const char* fn, const char* name) {
  const py::array a = as_array(obj);
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u') bad(std::string(fn) + "(): " + name + " must be an integer array; got dtype " + dtype_str(a));
  const auto c = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  Tensor<std::int64_t> t(shape_of(a));
  if (t.size()) std::memcpy(t.data(), c.data(), static_cast<std::size_t>(t.size()) * sizeof(std::int64_t));
  return t;
}

// A tensor handed to NumPy without a copy: the array's base owns it.
template <class T>
py::array to_numpy(Tensor<T>&& t) {
  auto* owned = new Tensor<T>(std::move(t));
  py::capsule base(owned, [](void* p) { delete static_cast<Tensor<T>*>(p); });
  std::vector<py::ssize_t> shape(owned->shape().begin(), owned->shape().end());
  return py::array_t<T>(shape, owned->data(), base);
}

template <class T>
py::object to_numpy_or_none(Tensor<T>&& t, bool present) {
  if (!present) return py::none();
  return to_numpy(std::move(t));
}

py::object ns(py::kwargs kw) { return py::module_::import("types").attr("SimpleNamespace")(**kw); }

// Calls f(std::type_identity<float>{}) or f(std::type_identity<double>{}) by the dtype of `input`.
template <class F>
py::object by_dtype(py::handle input, const char* fn, F&& f) {
  const DT d = float_dtype(as_array(input), fn, "input");
  if (d == DT::f32) return f(std::type_identity<float>{});
  return f(std::type_identity<double>{});
}

// ---- The cache: what backward needs, opaque to Python ------------------------------------------

struct Cache {
  std::string op;               // the forward that made it
  DT dtype = DT::f64;
  std::shared_ptr<void> state;  // the op's State<T>
};

template <class State>
py::tuple result(const char* op, py::object y, State&& s) {
  using S = std::decay_t<State>;
  Cache c{op, dt_of<typename S::Scalar>(), std::make_shared<S>(std::forward<State>(s))};
  return py::make_tuple(std::move(y), py::cast(std::move(c)));
}

// The state of `cache` for a backward of `op` in the dtype of `dy`.
template <template <class> class State, class T>
const State<T>& state_of(const Cache& c, const char* op) {
  if (c.op != op) bad(std::string(op) + "_backward(): cache was made by " + c.op + "_forward, not " + op + "_forward");
  if (c.dtype != dt_of<T>())
    bad(std::string(op) + "_backward(): dy has dtype " + dt_name(dt_of<T>()) + " but the forward ran in " + dt_name(c.dtype));
  return *static_cast<const State<T>*>(c.state.get());
}

// Runs a backward: picks the dtype from dy, fetches the state, converts dy.
template <template <class> class State, class F>
py::object backward(const char* op, const Aliases& al, py::handle dy, const Cache& cache, F&& f) {
  const std::string fn = std::string(op) + "_backward";
  const DT d = float_dtype(as_array(dy), fn.c_str(), "dy");
  const auto run = [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    if (cache.dtype != d) bad(fn + "(): dy has dtype " + dt_name(d) + " but the forward ran in " + dt_name(cache.dtype));
    const State<T>& s = state_of<State, T>(cache, op);
    Tensor<T> g = tensor_of<T>(dy, fn.c_str(), "dy");
    return guarded(fn.c_str(), al, [&] { return f(s, g); });
  };
  if (d == DT::f32) return run(std::type_identity<float>{});
  return run(std::type_identity<double>{});
}

// ---- Normalizations ----------------------------------------------------------------------------

const Aliases kNormAliases = {{"x", "input"}, {"gamma", "weight"}, {"beta", "bias"}};

template <class T>
const Tensor<T>* ptr(const std::optional<Tensor<T>>& t) {
  return t ? &*t : nullptr;
}

// Writes updated running statistics back into the caller's arrays, as PyTorch updates its
// buffers in place.
template <class T>
void write_back(py::handle target, const Tensor<T>& t, const char* fn, const char* name) {
  py::array a = as_array(target);
  if (!a.writeable() || !(a.flags() & py::array::c_style) || !a.dtype().is(py::dtype::of<T>()) || a.size() != t.size())
    bad(std::string(fn) + "(): " + name + " must be a writable C-contiguous " + dt_name(dt_of<T>()) +
        " array to receive the updated running statistics");
  std::memcpy(a.mutable_data(), t.data(), static_cast<std::size_t>(t.size()) * sizeof(T));
}

template <class T>
struct BnState {
  using Scalar = T;
  Tensor<T> x;
  std::optional<Tensor<T>> gamma;
  ops::BatchNormCache<T> cache;
};

py::object batch_norm_forward(py::object input, py::object running_mean, py::object running_var, py::object weight,
                             py::object bias, bool training, double momentum, double eps) {
  const char* fn = "batch_norm_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    BnState<T> s{tensor_of<T>(input, fn, "input"), opt_tensor_of<T>(weight, fn, "weight"), {}};
    const auto beta = opt_tensor_of<T>(bias, fn, "bias");
    if (running_mean.is_none() != running_var.is_none())
      bad(std::string(fn) + "(): give both running_mean and running_var, or neither");
    std::optional<ops::BatchNormRunningStats<T>> run;
    if (!running_mean.is_none())
      run = ops::BatchNormRunningStats<T>{tensor_of<T>(running_mean, fn, "running_mean"),
                                          tensor_of<T>(running_var, fn, "running_var"), 0};
    if (!training && !run) bad(std::string(fn) + "(): training=False needs running_mean and running_var");
    ops::BatchNormConfig cfg{eps, momentum};
    auto f = guarded(fn, kNormAliases, [&] {
      return training ? ops::batchnorm_forward_train<T>(s.x, ptr(s.gamma), ptr(beta), run ? &*run : nullptr, cfg)
                      : ops::batchnorm_forward_eval<T>(s.x, ptr(s.gamma), ptr(beta), *run, cfg);
    });
    if (training && run) {
      write_back(running_mean, run->mean, fn, "running_mean");
      write_back(running_var, run->var, fn, "running_var");
    }
    s.cache = std::move(f.cache);
    return result("batch_norm", to_numpy(std::move(f.y)), std::move(s));
  });
}

py::object batch_norm_backward(py::object dy, const Cache& cache) {
  return backward<BnState>("batch_norm", kNormAliases, dy, cache, [](const auto& s, const auto& g) {
    auto r = ops::batchnorm_backward(g, s.x, ptr(s.gamma), s.cache);
    const bool p = s.gamma.has_value();
    return ns(py::dict("dx"_a = to_numpy(std::move(r.dx)), "dgamma"_a = to_numpy_or_none(std::move(r.dgamma), p),
                       "dbeta"_a = to_numpy_or_none(std::move(r.dbeta), r.dbeta.size() > 0)));
  });
}

// Layer, group and instance norm share NormCache and NormGrads.
template <class T>
struct NormState {
  using Scalar = T;
  Tensor<T> x;
  std::optional<Tensor<T>> gamma;
  ops::NormCache<T> cache;
};

template <class T>
py::object norm_grads(ops::NormGrads<T>&& r, bool gamma) {
  const bool b = r.dbeta.size() > 0;
  return ns(py::dict("dx"_a = to_numpy(std::move(r.dx)), "dgamma"_a = to_numpy_or_none(std::move(r.dgamma), gamma),
                     "dbeta"_a = to_numpy_or_none(std::move(r.dbeta), b)));
}

Shape shape_arg(py::handle obj, const char* fn, const char* name) {
  Shape s;
  if (py::isinstance<py::int_>(obj)) return {obj.cast<Index>()};
  try {
    for (auto v : obj) s.push_back(v.cast<Index>());
  } catch (const std::exception&) {
    bad(std::string(fn) + "(): " + name + " must be an int or a sequence of ints");
  }
  return s;
}

py::object layer_norm_forward(py::object input, py::object normalized_shape, py::object weight, py::object bias,
                             double eps) {
  const char* fn = "layer_norm_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    NormState<T> s{tensor_of<T>(input, fn, "input"), opt_tensor_of<T>(weight, fn, "weight"), {}};
    const auto beta = opt_tensor_of<T>(bias, fn, "bias");
    ops::LayerNormConfig cfg{shape_arg(normalized_shape, fn, "normalized_shape"), eps};
    auto f = guarded(fn, kNormAliases, [&] { return ops::layernorm_forward<T>(s.x, ptr(s.gamma), ptr(beta), cfg); });
    s.cache = std::move(f.cache);
    return result("layer_norm", to_numpy(std::move(f.y)), std::move(s));
  });
}

py::object group_norm_forward(py::object input, Index num_groups, py::object weight, py::object bias, double eps) {
  const char* fn = "group_norm_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    NormState<T> s{tensor_of<T>(input, fn, "input"), opt_tensor_of<T>(weight, fn, "weight"), {}};
    const auto beta = opt_tensor_of<T>(bias, fn, "bias");
    ops::GroupNormConfig cfg{num_groups, eps};
    auto f = guarded(fn, kNormAliases, [&] { return ops::groupnorm_forward<T>(s.x, ptr(s.gamma), ptr(beta), cfg); });
    s.cache = std::move(f.cache);
    return result("group_norm", to_numpy(std::move(f.y)), std::move(s));
  });
}

py::object instance_norm_forward(py::object input, py::object running_mean, py::object running_var,
                                py::object weight, py::object bias, bool use_input_stats, double momentum,
                                double eps) {
  const char* fn = "instance_norm_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    NormState<T> s{tensor_of<T>(input, fn, "input"), opt_tensor_of<T>(weight, fn, "weight"), {}};
    const auto beta = opt_tensor_of<T>(bias, fn, "bias");
    if (running_mean.is_none() != running_var.is_none())
      bad(std::string(fn) + "(): give both running_mean and running_var, or neither");
    std::optional<ops::InstanceNormRunningStats<T>> run;
    if (!running_mean.is_none())
      run = ops::InstanceNormRunningStats<T>{tensor_of<T>(running_mean, fn, "running_mean"),
                                             tensor_of<T>(running_var, fn, "running_var")};
    if (!use_input_stats && !run) bad(std::string(fn) + "(): use_input_stats=False needs running_mean and running_var");
    ops::InstanceNormConfig cfg{eps, momentum};
    auto f = guarded(fn, kNormAliases, [&] {
      return use_input_stats
                 ? ops::instancenorm_forward_train<T>(s.x, ptr(s.gamma), ptr(beta), run ? &*run : nullptr, cfg)
                 : ops::instancenorm_forward_eval<T>(s.x, ptr(s.gamma), ptr(beta), *run, cfg);
    });
    if (use_input_stats && run) {
      write_back(running_mean, run->mean, fn, "running_mean");
      write_back(running_var, run->var, fn, "running_var");
    }
    s.cache = std::move(f.cache);
    return result("instance_norm", to_numpy(std::move(f.y)), std::move(s));
  });
}

template <class T>
struct RmsState {
  using Scalar = T;
  Tensor<T> x;
  std::optional<Tensor<T>> gamma;
  ops::RMSNormCache<T> cache;
};

py::object rms_norm_forward(py::object input, py::object normalized_shape, py::object weight,
                           std::optional<double> eps) {
  const char* fn = "rms_norm_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    RmsState<T> s{tensor_of<T>(input, fn, "input"), opt_tensor_of<T>(weight, fn, "weight"), {}};
    ops::RMSNormConfig cfg{shape_arg(normalized_shape, fn, "normalized_shape"), eps};
    auto f = guarded(fn, kNormAliases, [&] { return ops::rmsnorm_forward<T>(s.x, ptr(s.gamma), cfg); });
    s.cache = std::move(f.cache);
    return result("rms_norm", to_numpy(std::move(f.y)), std::move(s));
  });
}

// ---- Softmax and the class losses --------------------------------------------------------------

const Aliases kInputAliases = {{"x", "input"}};

template <class T>
struct SoftmaxState {
  using Scalar = T;
  Tensor<T> y;
  ops::SoftmaxCache<T> cache;
};

template <class T>
struct LogSoftmaxState {
  using Scalar = T;
  Tensor<T> y;
  ops::LogSoftmaxCache<T> cache;
};

py::object softmax_forward(py::object input, Index dim) {
  const char* fn = "softmax_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    const Tensor<T> x = tensor_of<T>(input, fn, "input");
    auto f = guarded(fn, kInputAliases, [&] { return ops::softmax_forward<T>(x, ops::SoftmaxConfig{dim}); });
    SoftmaxState<T> s{f.y, std::move(f.cache)};  // the backward reads y: kept apart from the array returned
    return result("softmax", to_numpy(std::move(f.y)), std::move(s));
  });
}

py::object log_softmax_forward(py::object input, Index dim) {
  const char* fn = "log_softmax_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    const Tensor<T> x = tensor_of<T>(input, fn, "input");
    auto f = guarded(fn, kInputAliases, [&] { return ops::log_softmax_forward<T>(x, ops::LogSoftmaxConfig{dim}); });
    LogSoftmaxState<T> s{f.y, std::move(f.cache)};
    return result("log_softmax", to_numpy(std::move(f.y)), std::move(s));
  });
}

ops::Reduction reduction_of(const std::string& r, const char* fn) {
  if (r == "none") return ops::Reduction::none;
  if (r == "mean") return ops::Reduction::mean;
  if (r == "sum") return ops::Reduction::sum;
  bad(std::string(fn) + "(): reduction must be 'none', 'mean' or 'sum'; got '" + r + "'");
}

template <class T>
struct NllState {
  using Scalar = T;
  Tensor<std::int64_t> target;
  std::optional<Tensor<T>> weight;
  Index ignore_index = -100;
  ops::ClassLossCache<T> cache;
};

py::object nll_loss_forward(py::object input, py::object target, py::object weight, Index ignore_index,
                           const std::string& reduction) {
  const char* fn = "nll_loss_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    const Tensor<T> x = tensor_of<T>(input, fn, "input");
    NllState<T> s{index_tensor_of(target, fn, "target"), opt_tensor_of<T>(weight, fn, "weight"), ignore_index, {}};
    const ops::NllLossConfig cfg{ignore_index, reduction_of(reduction, fn)};
    auto f = guarded(fn, {}, [&] { return ops::nll_loss_forward<T>(x, s.target, ptr(s.weight), cfg); });
    s.cache = std::move(f.cache);
    return result("nll_loss", to_numpy(std::move(f.loss)), std::move(s));
  });
}

template <class T>
struct CeState {
  using Scalar = T;
  Tensor<T> x;
  std::optional<Tensor<std::int64_t>> index_target;  // class indices, or
  std::optional<Tensor<T>> prob_target;               // class probabilities
  std::optional<Tensor<T>> weight;
  ops::CrossEntropyConfig cfg;
  ops::ClassLossCache<T> cache;
};

py::object cross_entropy_forward(py::object input, py::object target, py::object weight, Index ignore_index,
                                const std::string& reduction, double label_smoothing) {
  const char* fn = "cross_entropy_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    CeState<T> s{tensor_of<T>(input, fn, "input"), {}, {}, opt_tensor_of<T>(weight, fn, "weight"),
                 {ignore_index, reduction_of(reduction, fn), label_smoothing}, {}};
    const char kind = as_array(target).dtype().kind();
    if (kind == 'i' || kind == 'u') s.index_target = index_tensor_of(target, fn, "target");
    else s.prob_target = tensor_of<T>(target, fn, "target");
    auto f = guarded(fn, {}, [&] {
      return s.index_target ? ops::cross_entropy_forward<T>(s.x, *s.index_target, ptr(s.weight), s.cfg)
                            : ops::cross_entropy_forward<T>(s.x, *s.prob_target, ptr(s.weight), s.cfg);
    });
    s.cache = std::move(f.cache);
    return result("cross_entropy", to_numpy(std::move(f.loss)), std::move(s));
  });
}

// ---- Linear and matmul -------------------------------------------------------------------------

template <class T>
struct LinearState {
  using Scalar = T;
  Tensor<T> x, weight;
  ops::LinearCache<T> cache;
};

py::object linear_forward(py::object input, py::object weight, py::object bias) {
  const char* fn = "linear_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    LinearState<T> s{tensor_of<T>(input, fn, "input"), tensor_of<T>(weight, fn, "weight"), {}};
    const auto b = opt_tensor_of<T>(bias, fn, "bias");
    auto f = guarded(fn, kInputAliases, [&] { return ops::linear_forward<T>(s.x, s.weight, ptr(b)); });
    s.cache = std::move(f.cache);
    return result("linear", to_numpy(std::move(f.y)), std::move(s));
  });
}

template <class T>
struct MatmulState {
  using Scalar = T;
  Tensor<T> a, b;
  ops::MatmulCache<T> cache;
};

py::object matmul_forward(py::object input, py::object other) {
  const char* fn = "matmul_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    MatmulState<T> s{tensor_of<T>(input, fn, "input"), tensor_of<T>(other, fn, "other"), {}};
    auto f = guarded(fn, {{"a", "input"}, {"b", "other"}}, [&] { return ops::matmul_forward<T>(s.a, s.b); });
    s.cache = std::move(f.cache);
    return result("matmul", to_numpy(std::move(f.y)), std::move(s));
  });
}

// ---- Activations -------------------------------------------------------------------------------

template <class Config>
struct Act {
  template <class T>
  struct State {
    using Scalar = T;
    Tensor<T> saved;  // y when the fused backward reads the output, else x
    ops::ActivationCache<Config> cache;
  };
};

template <class Config>
py::object activation_forward(const char* op, py::object input, const Config& cfg) {
  const std::string fn = std::string(op) + "_forward";
  return by_dtype(input, fn.c_str(), [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    Tensor<T> x = tensor_of<T>(input, fn.c_str(), "input");
    auto f = guarded(fn.c_str(), kInputAliases, [&] { return ops::activation_forward<T>(x, cfg); });
    typename Act<Config>::template State<T> s{Config::saves_output ? f.y : std::move(x), std::move(f.cache)};
    return result(op, to_numpy(std::move(f.y)), std::move(s));
  });
}

template <class Config>
py::object activation_backward(const char* op, py::object dy, const Cache& cache) {
  return backward<Act<Config>::template State>(op, kInputAliases, dy, cache, [](const auto& s, const auto& g) {
    return ns(py::dict("dx"_a = to_numpy(ops::activation_backward(g, s.saved, s.cache).dx)));
  });
}

// ---- Pointwise losses --------------------------------------------------------------------------

template <class T>
struct LossState {
  using Scalar = T;
  Tensor<T> input, target;
  std::optional<Tensor<T>> weight, pos_weight;
  ops::LossCache<T> cache;
};

template <class T>
py::object loss_grads(ops::LossGrads<T>&& g) {
  return ns(py::dict("dx"_a = to_numpy(std::move(g.dx)), "dtarget"_a = to_numpy(std::move(g.dtarget))));
}

template <class Fwd>
py::object loss_forward(const char* op, py::object input, py::object target, py::object weight, py::object pos_weight,
                       Fwd&& fwd) {
  const std::string fn = std::string(op) + "_forward";
  return by_dtype(input, fn.c_str(), [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    LossState<T> s{tensor_of<T>(input, fn.c_str(), "input"), tensor_of<T>(target, fn.c_str(), "target"),
                   opt_tensor_of<T>(weight, fn.c_str(), "weight"), opt_tensor_of<T>(pos_weight, fn.c_str(), "pos_weight"),
                   {}};
    auto f = guarded(fn.c_str(), {}, [&] { return fwd(s); });
    s.cache = std::move(f.cache);
    return result(op, to_numpy(std::move(f.y)), std::move(s));
  });
}

// ---- Dropout and embedding ---------------------------------------------------------------------

template <class T>
struct DropoutState {
  using Scalar = T;
  ops::DropoutCache<T> cache;
};

py::object dropout_forward(py::object input, double p, bool training, std::uint64_t seed) {
  const char* fn = "dropout_forward";
  return by_dtype(input, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    const Tensor<T> x = tensor_of<T>(input, fn, "input");
    auto f = guarded(fn, kInputAliases, [&] { return ops::dropout_forward<T>(x, ops::DropoutConfig{p, training, seed}); });
    return result("dropout", to_numpy(std::move(f.y)), DropoutState<T>{std::move(f.cache)});
  });
}

template <class T>
struct EmbeddingState {
  using Scalar = T;
  Tensor<std::int64_t> indices;
  ops::EmbeddingCache<T> cache;
};

py::object embedding_forward(py::object input, py::object weight, std::optional<Index> padding_idx) {
  const char* fn = "embedding_forward";
  return by_dtype(weight, fn, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    const Tensor<T> w = tensor_of<T>(weight, fn, "weight");
    if (w.rank() != 2) bad(std::string(fn) + "(): weight must have rank 2 (num_embeddings, embedding_dim); got shape " + to_string(w.shape()));
    EmbeddingState<T> s{index_tensor_of(input, fn, "input"), {}};
    const ops::EmbeddingConfig cfg{w.shape()[0], w.shape()[1], padding_idx};
    auto f = guarded(fn, {{"indices", "input"}}, [&] { return ops::embedding_forward<T>(s.indices, w, cfg); });
    s.cache = std::move(f.cache);
    return result("embedding", to_numpy(std::move(f.y)), std::move(s));
  });
}

// ---- check: the command's check on arrays in memory --------------------------------------------

std::string number_text(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

cli::CheckReport check_arrays(const std::string& op, py::kwargs kw) {
  cli::CheckArgs args;
  args.op = op;
  args.python = true;
  for (const auto& [key, value] : kw) {
    std::string name = key.cast<std::string>();
    if (value.is_none()) continue;
    if (name == "training") {
      args.flags.insert(value.cast<bool>() ? "training" : "eval");
      continue;
    }
    if (name == "num_groups") name = "groups";  // PyTorch's name of the command's --groups
    std::replace(name.begin(), name.end(), '_', '-');
    if (py::isinstance<py::array>(value)) {
      const py::array a = py::reinterpret_borrow<py::array>(value);
      io::NpyArray arr;
      const std::string dt = dtype_str(a);
      if (dt == "float16") arr.dtype = io::NpyDtype::float16;
      else if (dt == "float32") arr.dtype = io::NpyDtype::float32;
      else if (dt == "float64") arr.dtype = io::NpyDtype::float64;
      else if (dt == "int32") arr.dtype = io::NpyDtype::int32;  // indices: check decides
      else if (dt == "int64") arr.dtype = io::NpyDtype::int64;
      else bad("check " + op + ": " + key.cast<std::string>() + "= holds " + dt + "; expected floating point (float16, float32, float64)");
      const auto c = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
      arr.values = TensorD(shape_of(a));
      if (arr.values.size()) std::memcpy(arr.values.data(), c.data(), static_cast<std::size_t>(arr.values.size()) * sizeof(double));
      arr.fortran_order = !(a.flags() & py::array::c_style) && (a.flags() & py::array::f_style);
      args.arrays.emplace(name, std::move(arr));
    } else if (py::isinstance<py::bool_>(value)) {
      bad("check " + op + ": " + key.cast<std::string>() + "= takes a number, not a bool");
    } else if (py::isinstance<py::int_>(value) || py::isinstance<py::float_>(value)) {
      args.values.emplace(name, number_text(value.cast<double>()));
    } else if (py::isinstance<py::str>(value)) {
      args.values.emplace(name, value.cast<std::string>());
    } else {
      // a sequence: normalized_shape=(3, 4) is the command's --normalized-shape 3,4
      std::string text;
      for (auto v : value) text += (text.empty() ? "" : ",") + std::to_string(v.cast<long long>());
      args.values.emplace(name, text);
    }
  }
  try {
    return cli::run_check(args);
  } catch (const InvalidArgument& e) {
    throw py::value_error("check " + op + ": " + e.what());
  }
}

// ---- Oracles on a user's NumPy function ----------------------------------------------------------

using check::Vec;

// f(x) for the oracles: x reshaped to the user's shape, the result flattened.
struct UserFunction {
  py::object f;
  std::vector<py::ssize_t> shape;
  Index m = -1;  // the size of f(x), fixed by the first call

  Vec<double> real_result(const py::object& out) {
    const py::array a = as_array(out);
    if (a.dtype().kind() == 'c')
      bad("the function returned a complex array for a real input (central and Richardson differences need real values)");
    const auto c = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!c) bad("the function must return an array of numbers");
    size_check(c.size());
    return Eigen::Map<const Vec<double>>(c.data(), c.size());
  }

  void size_check(py::ssize_t n) {
    if (m < 0) m = static_cast<Index>(n);
    if (m != static_cast<Index>(n))
      bad("the function returned " + std::to_string(n) + " values, and " + std::to_string(m) + " at another point");
  }

  Vec<double> operator()(const Vec<double>& x) {
    py::array_t<double> in(shape);
    std::memcpy(in.mutable_data(), x.data(), static_cast<std::size_t>(x.size()) * sizeof(double));
    return real_result(f(in));
  }

  Vec<std::complex<double>> operator()(const Vec<std::complex<double>>& x) {
    using C = std::complex<double>;
    py::array_t<C> in(shape);
    std::memcpy(static_cast<void*>(in.mutable_data()), x.data(), static_cast<std::size_t>(x.size()) * sizeof(C));
    const py::array a = as_array(f(in));
    if (a.dtype().kind() != 'c')
      bad("the complex step needs a function that accepts complex arrays and returns them; it returned dtype " +
          dtype_str(a) + " (the imaginary part was dropped: no abs, comparisons, or casts to float)");
    const auto c = py::array_t<C, py::array::c_style | py::array::forcecast>::ensure(a);
    size_check(c.size());
    return Eigen::Map<const Vec<C>>(c.data(), c.size());
  }
};

check::Oracle oracle_of(const std::string& name) {
  if (name == "central") return check::Oracle::central;
  if (name == "richardson") return check::Oracle::richardson;
  if (name == "complex_step") return check::Oracle::complex_step;
  bad("oracle must be 'central', 'richardson' or 'complex_step'; got '" + name + "'");
}

Vec<double> vec_of(py::handle obj, const char* fn, const char* name, py::ssize_t expected = -1) {
  const py::array a = as_array(obj);
  const char k = a.dtype().kind();
  if (k != 'f' && k != 'i' && k != 'u') bad(std::string(fn) + "(): " + name + " must be a real array; got dtype " + dtype_str(a));
  if (expected >= 0 && a.size() != expected)
    bad(std::string(fn) + "(): " + name + " must have the size of x (" + std::to_string(expected) + "); got " + std::to_string(a.size()));
  const auto c = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
  return Eigen::Map<const Vec<double>>(c.data(), c.size());
}

Vec<double> run_jvp(check::Oracle o, UserFunction& uf, const Vec<double>& x, const Vec<double>& u,
                    std::optional<double> h) {
  if (h && !(*h > 0 && std::isfinite(*h))) bad("h must be a positive finite step; got " + number_text(*h));
  if (u.cwiseAbs().maxCoeff() == 0) bad("the direction u is zero");
  switch (o) {
    case check::Oracle::central: return check::jvp_central(uf, x, u, h.value_or(0));
    case check::Oracle::richardson: return check::jvp_richardson(uf, x, u, h.value_or(0));
    default: return check::jvp_complex_step(uf, x, u, h.value_or(check::StepPolicy::complex_step()));
  }
}

py::array jvp(py::object f, py::object x, py::object u, const std::string& oracle, std::optional<double> h) {
  const py::array xa = as_array(x);
  const Vec<double> xv = vec_of(xa, "jvp", "x"), uv = vec_of(u, "jvp", "u", xa.size());
  if (xv.size() == 0) bad("jvp(): x is empty");
  UserFunction uf{f, std::vector<py::ssize_t>(xa.shape(), xa.shape() + xa.ndim())};
  Vec<double> r = run_jvp(oracle_of(oracle), uf, xv, uv, h);
  py::array_t<double> out(r.size());
  std::memcpy(out.mutable_data(), r.data(), static_cast<std::size_t>(r.size()) * sizeof(double));
  return out;
}

// The full Jacobian (m, n), one JVP per unit direction, as check::jacobian does.
Eigen::MatrixXd jacobian_of(py::object f, const py::array& xa, const std::string& oracle, std::optional<double> h,
                            const char* fn) {
  const Vec<double> xv = vec_of(xa, fn, "x");
  if (xv.size() == 0) bad(std::string(fn) + "(): x is empty");
  UserFunction uf{f, std::vector<py::ssize_t>(xa.shape(), xa.shape() + xa.ndim())};
  const check::Oracle o = oracle_of(oracle);
  Eigen::MatrixXd J;
  Vec<double> e = Vec<double>::Zero(xv.size());
  for (Index j = 0; j < xv.size(); ++j) {
    e[j] = 1;
    const Vec<double> col = run_jvp(o, uf, xv, e, h);
    if (j == 0) J.resize(col.size(), xv.size());
    J.col(j) = col;
    e[j] = 0;
  }
  return J;
}

py::array jacobian(py::object f, py::object x, const std::string& oracle, std::optional<double> h) {
  const py::array xa = as_array(x);
  const Eigen::MatrixXd J = jacobian_of(f, xa, oracle, h, "jacobian");
  py::array_t<double> out({static_cast<py::ssize_t>(J.rows()), static_cast<py::ssize_t>(J.cols())});
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(out.mutable_data(), J.rows(),
                                                                                     J.cols()) = J;
  return out;
}

py::array gradient(py::object f, py::object x, const std::string& oracle, std::optional<double> h) {
  const py::array xa = as_array(x);
  const Eigen::MatrixXd J = jacobian_of(f, xa, oracle, h, "gradient");
  if (J.rows() != 1)
    bad("gradient(): f must return one value (a scalar loss); it returned " + std::to_string(J.rows()) +
        " (use jacobian or jvp)");
  py::array_t<double> out(std::vector<py::ssize_t>(xa.shape(), xa.shape() + xa.ndim()));
  std::memcpy(out.mutable_data(), J.data(), static_cast<std::size_t>(J.cols()) * sizeof(double));
  return out;
}

double step(py::object x, py::object u, const std::string& oracle) {
  const py::array xa = as_array(x);
  const Vec<double> xv = vec_of(xa, "step", "x"), uv = vec_of(u, "step", "u", xa.size());
  if (uv.size() == 0 || uv.cwiseAbs().maxCoeff() == 0) bad("step(): the direction u is zero");
  switch (oracle_of(oracle)) {
    case check::Oracle::central: return check::StepPolicy::step(check::StepPolicy::central_base(), xv, uv);
    case check::Oracle::richardson: return check::StepPolicy::step(check::StepPolicy::richardson_base(), xv, uv);
    default: return check::StepPolicy::complex_step();
  }
}

std::string report_text(const cli::CheckReport& r) {
  std::ostringstream out;
  cli::print_report(out, r);
  return out.str();
}

}  // namespace
}  // namespace gradproof::python

PYBIND11_MODULE(gradproof, m) {
  using namespace gradproof;
  using namespace gradproof::python;
  namespace ops = gradproof::ops;
  m.doc() = "gradproof: verified forward and backward passes on NumPy arrays, check(), and the oracles";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const cli::UsageError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  py::class_<Cache>(m, "Cache", "What a backward pass needs from its forward pass (opaque).")
      .def_property_readonly("op", [](const Cache& c) { return c.op; })
      .def_property_readonly("dtype", [](const Cache& c) { return std::string(dt_name(c.dtype)); })
      .def("__repr__", [](const Cache& c) { return "<gradproof.Cache of " + c.op + "_forward, " + dt_name(c.dtype) + ">"; });

  const auto none = py::none();
  // Normalizations (PyTorch's torch.nn.functional signatures)
  m.def("batch_norm_forward", &batch_norm_forward, "input"_a, "running_mean"_a = none, "running_var"_a = none,
        "weight"_a = none, "bias"_a = none, "training"_a = false, "momentum"_a = 0.1, "eps"_a = 1e-5,
        "Batch norm; returns (y, cache). Updates running_mean and running_var in place when training.");
  m.def("batch_norm_backward", &batch_norm_backward, "dy"_a, "cache"_a, "Returns dx, dgamma, dbeta.");
  m.def("layer_norm_forward", &layer_norm_forward, "input"_a, "normalized_shape"_a, "weight"_a = none,
        "bias"_a = none, "eps"_a = 1e-5);
  m.def("layer_norm_backward", [](py::object dy, const Cache& c) {
    return backward<NormState>("layer_norm", kNormAliases, dy, c, [](const auto& s, const auto& g) {
      return norm_grads(ops::layernorm_backward(g, s.x, ptr(s.gamma), s.cache), s.gamma.has_value());
    });
  }, "dy"_a, "cache"_a);
  m.def("group_norm_forward", &group_norm_forward, "input"_a, "num_groups"_a, "weight"_a = none, "bias"_a = none,
        "eps"_a = 1e-5);
  m.def("group_norm_backward", [](py::object dy, const Cache& c) {
    return backward<NormState>("group_norm", kNormAliases, dy, c, [](const auto& s, const auto& g) {
      return norm_grads(ops::groupnorm_backward(g, s.x, ptr(s.gamma), s.cache), s.gamma.has_value());
    });
  }, "dy"_a, "cache"_a);
  m.def("instance_norm_forward", &instance_norm_forward, "input"_a, "running_mean"_a = none, "running_var"_a = none,
        "weight"_a = none, "bias"_a = none, "use_input_stats"_a = true, "momentum"_a = 0.1, "eps"_a = 1e-5);
  m.def("instance_norm_backward", [](py::object dy, const Cache& c) {
    return backward<NormState>("instance_norm", kNormAliases, dy, c, [](const auto& s, const auto& g) {
      return norm_grads(ops::instancenorm_backward(g, s.x, ptr(s.gamma), s.cache), s.gamma.has_value());
    });
  }, "dy"_a, "cache"_a);
  m.def("rms_norm_forward", &rms_norm_forward, "input"_a, "normalized_shape"_a, "weight"_a = none, "eps"_a = none);
  m.def("rms_norm_backward", [](py::object dy, const Cache& c) {
    return backward<RmsState>("rms_norm", kNormAliases, dy, c, [](const auto& s, const auto& g) {
      auto r = ops::rmsnorm_backward(g, s.x, ptr(s.gamma), s.cache);
      return ns(py::dict("dx"_a = to_numpy(std::move(r.dx)),
                         "dgamma"_a = to_numpy_or_none(std::move(r.dgamma), s.gamma.has_value())));
    });
  }, "dy"_a, "cache"_a);

  // Softmax, log-softmax, the class losses
  m.def("softmax_forward", &softmax_forward, "input"_a, "dim"_a = -1);
  m.def("softmax_backward", [](py::object dy, const Cache& c) {
    return backward<SoftmaxState>("softmax", kInputAliases, dy, c, [](const auto& s, const auto& g) {
      return ns(py::dict("dx"_a = to_numpy(ops::softmax_backward(g, s.y, s.cache).dx)));
    });
  }, "dy"_a, "cache"_a);
  m.def("log_softmax_forward", &log_softmax_forward, "input"_a, "dim"_a = -1);
  m.def("log_softmax_backward", [](py::object dy, const Cache& c) {
    return backward<LogSoftmaxState>("log_softmax", kInputAliases, dy, c, [](const auto& s, const auto& g) {
      return ns(py::dict("dx"_a = to_numpy(ops::log_softmax_backward(g, s.y, s.cache).dx)));
    });
  }, "dy"_a, "cache"_a);
  m.def("nll_loss_forward", &nll_loss_forward, "input"_a, "target"_a, "weight"_a = none, "ignore_index"_a = -100,
        "reduction"_a = "mean");
  m.def("nll_loss_backward", [](py::object dy, const Cache& c) {
    return backward<NllState>("nll_loss", {}, dy, c, [](const auto& s, const auto& g) {
      return ns(py::dict("dx"_a = to_numpy(ops::nll_loss_backward(g, s.target, ptr(s.weight), s.cache, s.ignore_index).dx)));
    });
  }, "dy"_a, "cache"_a);
  m.def("cross_entropy_forward", &cross_entropy_forward, "input"_a, "target"_a, "weight"_a = none,
        "ignore_index"_a = -100, "reduction"_a = "mean", "label_smoothing"_a = 0.0,
        "Cross-entropy; target holds class indices (an integer array) or class probabilities (float).");
  m.def("cross_entropy_backward", [](py::object dy, const Cache& c) {
    return backward<CeState>("cross_entropy", {}, dy, c, [](const auto& s, const auto& g) {
      auto r = s.index_target ? ops::cross_entropy_backward(g, s.x, *s.index_target, ptr(s.weight), s.cfg, s.cache)
                              : ops::cross_entropy_backward(g, s.x, *s.prob_target, ptr(s.weight), s.cfg, s.cache);
      return ns(py::dict("dx"_a = to_numpy(std::move(r.dx))));
    });
  }, "dy"_a, "cache"_a);

  // Linear and matmul
  m.def("linear_forward", &linear_forward, "input"_a, "weight"_a, "bias"_a = none);
  m.def("linear_backward", [](py::object dy, const Cache& c) {
    return backward<LinearState>("linear", kInputAliases, dy, c, [](const auto& s, const auto& g) {
      auto r = ops::linear_backward(g, s.x, s.weight, s.cache);
      const bool b = s.cache.has_bias;
      return ns(py::dict("dx"_a = to_numpy(std::move(r.dx)), "dweight"_a = to_numpy(std::move(r.dweight)),
                         "dbias"_a = to_numpy_or_none(std::move(r.dbias), b)));
    });
  }, "dy"_a, "cache"_a);
  m.def("matmul_forward", &matmul_forward, "input"_a, "other"_a);
  m.def("matmul_backward", [](py::object dy, const Cache& c) {
    return backward<MatmulState>("matmul", {{"a", "input"}, {"b", "other"}}, dy, c, [](const auto& s, const auto& g) {
      auto r = ops::matmul_backward(g, s.a, s.b, s.cache);
      return ns(py::dict("da"_a = to_numpy(std::move(r.da)), "db"_a = to_numpy(std::move(r.db))));
    });
  }, "dy"_a, "cache"_a);

  // Activations
  m.def("relu_forward", [](py::object x) { return activation_forward("relu", x, ops::ReluConfig{}); }, "input"_a);
  m.def("sigmoid_forward", [](py::object x) { return activation_forward("sigmoid", x, ops::SigmoidConfig{}); }, "input"_a);
  m.def("tanh_forward", [](py::object x) { return activation_forward("tanh", x, ops::TanhConfig{}); }, "input"_a);
  m.def("leaky_relu_forward", [](py::object x, double s) {
    return activation_forward("leaky_relu", x, ops::LeakyReluConfig{s});
  }, "input"_a, "negative_slope"_a = 0.01);
  m.def("elu_forward", [](py::object x, double a) { return activation_forward("elu", x, ops::EluConfig{a}); },
        "input"_a, "alpha"_a = 1.0);
  m.def("gelu_forward", [](py::object x, const std::string& a) {
    return activation_forward("gelu", x, ops::GeluConfig{a});
  }, "input"_a, "approximate"_a = "none");
  m.def("silu_forward", [](py::object x) { return activation_forward("silu", x, ops::SiluConfig{}); }, "input"_a);
  m.def("softplus_forward", [](py::object x, double beta, double threshold) {
    return activation_forward("softplus", x, ops::SoftplusConfig{beta, threshold});
  }, "input"_a, "beta"_a = 1.0, "threshold"_a = 20.0);

  const auto act_backward = [&m](auto tag, const char* op) {
    using C = typename decltype(tag)::type;
    m.def((std::string(op) + "_backward").c_str(),
          [op](py::object dy, const Cache& c) { return activation_backward<C>(op, dy, c); }, "dy"_a, "cache"_a,
          "Returns dx.");
  };
  act_backward(std::type_identity<ops::ReluConfig>{}, "relu");
  act_backward(std::type_identity<ops::SigmoidConfig>{}, "sigmoid");
  act_backward(std::type_identity<ops::TanhConfig>{}, "tanh");
  act_backward(std::type_identity<ops::LeakyReluConfig>{}, "leaky_relu");
  act_backward(std::type_identity<ops::EluConfig>{}, "elu");
  act_backward(std::type_identity<ops::GeluConfig>{}, "gelu");
  act_backward(std::type_identity<ops::SiluConfig>{}, "silu");
  act_backward(std::type_identity<ops::SoftplusConfig>{}, "softplus");

  // Losses
  m.def("mse_loss_forward", [](py::object input, py::object target, const std::string& reduction) {
    return loss_forward("mse_loss", input, target, py::none(), py::none(), [&](const auto& s) {
      return ops::mse_loss_forward(s.input, s.target, ops::MSELossConfig{reduction});
    });
  }, "input"_a, "target"_a, "reduction"_a = "mean");
  m.def("mse_loss_backward", [](py::object dy, const Cache& c) {
    return backward<LossState>("mse_loss", {}, dy, c, [](const auto& s, const auto& g) {
      return loss_grads(ops::mse_loss_backward(g, s.input, s.target, s.cache));
    });
  }, "dy"_a, "cache"_a);
  m.def("binary_cross_entropy_with_logits_forward",
        [](py::object input, py::object target, py::object weight, const std::string& reduction, py::object pos_weight) {
          return loss_forward("binary_cross_entropy_with_logits", input, target, weight, pos_weight, [&](const auto& s) {
            return ops::binary_cross_entropy_with_logits_forward(s.input, s.target, ptr(s.weight), ptr(s.pos_weight),
                                                                 ops::BCEWithLogitsConfig{reduction});
          });
        }, "input"_a, "target"_a, "weight"_a = none, "reduction"_a = "mean", "pos_weight"_a = none);
  m.def("binary_cross_entropy_with_logits_backward", [](py::object dy, const Cache& c) {
    return backward<LossState>("binary_cross_entropy_with_logits", {}, dy, c, [](const auto& s, const auto& g) {
      return loss_grads(ops::binary_cross_entropy_with_logits_backward(g, s.input, s.target, ptr(s.weight),
                                                                       ptr(s.pos_weight), s.cache));
    });
  }, "dy"_a, "cache"_a);
  m.def("huber_loss_forward", [](py::object input, py::object target, const std::string& reduction, double delta) {
    return loss_forward("huber_loss", input, target, py::none(), py::none(), [&](const auto& s) {
      return ops::huber_loss_forward(s.input, s.target, ops::HuberLossConfig{reduction, delta});
    });
  }, "input"_a, "target"_a, "reduction"_a = "mean", "delta"_a = 1.0);
  m.def("huber_loss_backward", [](py::object dy, const Cache& c) {
    return backward<LossState>("huber_loss", {}, dy, c, [](const auto& s, const auto& g) {
      return loss_grads(ops::huber_loss_backward(g, s.input, s.target, s.cache));
    });
  }, "dy"_a, "cache"_a);
  m.def("smooth_l1_loss_forward", [](py::object input, py::object target, const std::string& reduction, double beta) {
    return loss_forward("smooth_l1_loss", input, target, py::none(), py::none(), [&](const auto& s) {
      return ops::smooth_l1_loss_forward(s.input, s.target, ops::SmoothL1LossConfig{reduction, beta});
    });
  }, "input"_a, "target"_a, "reduction"_a = "mean", "beta"_a = 1.0);
  m.def("smooth_l1_loss_backward", [](py::object dy, const Cache& c) {
    return backward<LossState>("smooth_l1_loss", {}, dy, c, [](const auto& s, const auto& g) {
      return loss_grads(ops::smooth_l1_loss_backward(g, s.input, s.target, s.cache));
    });
  }, "dy"_a, "cache"_a);

  // Dropout and embedding
  m.def("dropout_forward", &dropout_forward, "input"_a, "p"_a = 0.5, "training"_a = true, "seed"_a = 0);
  m.def("dropout_backward", [](py::object dy, const Cache& c) {
    return backward<DropoutState>("dropout", kInputAliases, dy, c, [](const auto& s, const auto& g) {
      return ns(py::dict("dx"_a = to_numpy(ops::dropout_backward(g, s.cache).dx)));
    });
  }, "dy"_a, "cache"_a);
  m.def("embedding_forward", &embedding_forward, "input"_a, "weight"_a, "padding_idx"_a = py::none());
  m.def("embedding_backward", [](py::object dy, const Cache& c) {
    return backward<EmbeddingState>("embedding", {{"indices", "input"}}, dy, c, [](const auto& s, const auto& g) {
      return ns(py::dict("dweight"_a = to_numpy(ops::embedding_backward(g, s.indices, s.cache).dweight)));
    });
  }, "dy"_a, "cache"_a);

  // check
  py::class_<cli::Diagnosis>(m, "Diagnosis", "What a wrong dx of a normalization looks like.")
      .def_readonly("kind", &cli::Diagnosis::kind)
      .def_readonly("text", &cli::Diagnosis::text)
      .def_readonly("in_span", &cli::Diagnosis::in_span)
      .def_readonly("fit", &cli::Diagnosis::fit)
      .def("__repr__", [](const cli::Diagnosis& d) { return "<gradproof.Diagnosis " + d.kind + ">"; });
  py::class_<cli::OutputCheck>(m, "OutputCheck", "The verdict on one gradient.")
      .def_readonly("name", &cli::OutputCheck::name)
      .def_property_readonly("passed", [](const cli::OutputCheck& o) { return o.cmp.passed; })
      .def_property_readonly("worst_index", [](const cli::OutputCheck& o) { return py::tuple(py::cast(o.worst)); })
      .def_property_readonly("yours", [](const cli::OutputCheck& o) { return o.cmp.analytic; })
      .def_property_readonly("reference", [](const cli::OutputCheck& o) { return o.cmp.numeric; })
      .def_readonly("fraction_of_allowance", &cli::OutputCheck::fraction)
      .def_property_readonly("atol", [](const cli::OutputCheck& o) { return o.cmp.tol.atol; })
      .def_property_readonly("rtol", [](const cli::OutputCheck& o) { return o.cmp.tol.rtol; })
      .def_readonly("scale", &cli::OutputCheck::scale)
      .def_property_readonly("max_abs_err", [](const cli::OutputCheck& o) { return o.cmp.max_abs_err; })
      .def("__repr__", [](const cli::OutputCheck& o) {
        return "<gradproof.OutputCheck " + o.name + (o.cmp.passed ? " pass>" : " FAIL>");
      });
  py::class_<cli::CheckReport>(m, "CheckReport", "The result of check(): as `gradproof check` prints it in str().")
      .def_readonly("op", &cli::CheckReport::op)
      .def_readonly("setting", &cli::CheckReport::setting)
      .def_readonly("dtype", &cli::CheckReport::dtype)
      .def_property_readonly("passed", &cli::CheckReport::passed)
      .def_readonly("outputs", &cli::CheckReport::outputs)
      .def_property_readonly("diagnosis", [](const cli::CheckReport& r) -> py::object {
        return r.diagnosis ? py::cast(*r.diagnosis) : py::none();
      })
      .def_readonly("diagnosis_note", &cli::CheckReport::diagnosis_note)
      .def("json", [](const cli::CheckReport& r) {
        std::ostringstream out;
        cli::write_report_json(out, r);
        return out.str();
      }, "The report as `gradproof check --json` writes it.")
      .def("__str__", &report_text)
      .def("__repr__", [](const cli::CheckReport& r) {
        return "<gradproof.CheckReport " + r.op + (r.passed() ? " pass>" : " FAIL>");
      });
  m.def("check", &check_arrays, "op"_a,
        "Compares your gradients with gradproof's float64 ones, as the command `gradproof check OP` does: "
        "check('bn', x=x, dy=dy, dx=dx, gamma=g, dgamma=dg, training=True, eps=1e-5, ...).");
  m.def("check_ops", [] {
    // The ops check knows, from the command's usage text (its first word per entry).
    std::vector<std::string> out;
    std::istringstream in(cli::check_usage());
    for (std::string line; std::getline(in, line);)
      if (line.rfind("  ", 0) == 0 && line.size() > 2 && line[2] != ' ') out.push_back(line.substr(2, line.find(' ', 2) - 2));
    return out;
  }, "The ops that check() knows.");

  // Oracles
  m.def("jvp", &jvp, "f"_a, "x"_a, "u"_a, "oracle"_a = "central", "h"_a = py::none(),
        "J(x) u of f (NumPy array to NumPy array) by central differences, Richardson or the complex step; "
        "h=None: the step policy of the C++ oracles.");
  m.def("jacobian", &jacobian, "f"_a, "x"_a, "oracle"_a = "central", "h"_a = py::none(),
        "The Jacobian (f.size, x.size) of f at x, one JVP per unit direction.");
  m.def("gradient", &gradient, "f"_a, "x"_a, "oracle"_a = "central", "h"_a = py::none(),
        "The gradient of a scalar function f at x, in the shape of x.");
  m.def("step", &step, "x"_a, "u"_a, "oracle"_a = "central",
        "The step the oracle takes for direction u at x (StepPolicy of gradproof/check/oracles.hpp).");
}
