/// \file
/// \brief Element-wise regression and binary-classification losses: forward, staged and fused
/// backward of `mse_loss`, `binary_cross_entropy_with_logits`, `huber_loss` and `smooth_l1_loss`.
///
/// Semantics, names and defaults of PyTorch's `torch.nn.functional` losses. With the difference
/// \f$d = x - t\f$ (`input` minus `target`) and an element-wise loss \f$\ell_i\f$,
/// \f[ y = \begin{cases} \ell & \texttt{reduction="none"} \\ \tfrac{1}{n}\sum_i \ell_i &
/// \texttt{"mean"}
///     \\ \sum_i \ell_i & \texttt{"sum"} \end{cases} \f]
/// - `mse_loss`: \f$\ell_i = d_i^2\f$;
/// - `huber_loss(delta=1)`: \f$\ell_i = \tfrac12 d_i^2\f$ if \f$|d_i| < \delta\f$, else
/// \f$\delta(|d_i| - \tfrac12\delta)\f$;
/// - `smooth_l1_loss(beta=1)`: \f$\ell_i = \tfrac12 d_i^2/\beta\f$ if \f$|d_i| < \beta\f$, else
/// \f$|d_i| - \tfrac12\beta\f$
///   (\f$|d_i|\f$ for \f$\beta = 0\f$);
/// - `binary_cross_entropy_with_logits(weight, pos_weight)`:
///   \f$\ell_i = w_i\,[(1 - t_i)x_i + l_i\,\mathrm{sp}(-x_i)]\f$ with \f$l_i = 1 + (p_i -
///   1)t_i\f$ and \f$\mathrm{sp}(-x) = \log(1+e^{-x}) = \max(-x, 0) + \log(1 + e^{-|x|})\f$,
///   PyTorch's stable form; without `pos_weight` it is \f$\max(x,0) - x t + \log(1+e^{-|x|})\f$.
///
/// Shape legend: `input`, `target`, `dx`, `dtarget`: any shape, the same for both (no
/// broadcasting of input against target: PyTorch's `mse_loss` broadcasts with a warning, the
/// others refuse; gradproof refuses for all four). `weight`, `pos_weight`: broadcastable to
/// `input` by PyTorch's rules (trailing axes aligned, each extent equal or 1). `y`, `dy`:
/// `input`'s shape for `reduction="none"`, else a scalar of shape `()`.
///
/// The gradients (derived in `derivations/losses.md`) come in both \f$x\f$ and \f$t\f$, as in
/// PyTorch; `weight` and `pos_weight` are constants (PyTorch's autograd gives them no gradient).
/// Results are a function of the inputs only (one thread, a fixed summation order).
#pragma once

#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>

namespace gradproof::ops {

/// How the element-wise losses are reduced (PyTorch's `reduction`).
enum class Reduction { none, mean, sum };

/// Hyper-parameters of mse_loss (PyTorch's names and defaults).
struct MSELossConfig {
  std::string reduction = "mean";  ///< `"none"`, `"mean"` or `"sum"`
};
/// Hyper-parameters of binary_cross_entropy_with_logits (`weight` and `pos_weight` are tensor
/// arguments).
struct BCEWithLogitsConfig {
  std::string reduction = "mean";  ///< `"none"`, `"mean"` or `"sum"`
};
/// Hyper-parameters of huber_loss (PyTorch's names and defaults).
struct HuberLossConfig {
  std::string reduction = "mean";  ///< `"none"`, `"mean"` or `"sum"`
  double delta = 1.0;              ///< \f$\delta > 0\f$: where the quadratic turns linear
};
/// Hyper-parameters of smooth_l1_loss (PyTorch's names and defaults).
struct SmoothL1LossConfig {
  std::string reduction = "mean";  ///< `"none"`, `"mean"` or `"sum"`
  double beta = 1.0;  ///< \f$\beta \ge 0\f$: where the quadratic turns linear (0: L1)
};

/// What the backward passes need from the forward pass (the inputs are passed to the backward
/// again, as PyTorch's autograd saves them).
template <class Scalar>
struct LossCache {
  Shape shape;                          ///< shape of `input` and `target`
  Shape y_shape;                        ///< `shape` for `"none"`, else `()`
  Reduction reduction = Reduction::mean;  ///< the parsed reduction
  Index n = 0;                          ///< number of elements
  double param = 0;                     ///< `delta` (huber) or `beta` (smooth L1)
  bool has_weight = false;              ///< BCE: a `weight` was given
  bool has_pos_weight = false;          ///< BCE: a `pos_weight` was given
  /// BCE: per axis of `input`, the stride of `weight` (0 where it is broadcast); empty when the
  /// shapes are equal
  std::vector<Index> weight_stride;
  std::vector<Index> pos_weight_stride;  ///< the same for `pos_weight`
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar>
struct LossForward {
  Tensor<Scalar> y;          ///< `input`'s shape (`"none"`) or `()`
  LossCache<Scalar> cache;  ///< shapes, the reduction, the broadcasts
};

/// Gradients of the loss with respect to `input` and `target`.
template <class Scalar>
struct LossGrads {
  Tensor<Scalar> dx;       ///< shape of `input`
  Tensor<Scalar> dtarget;  ///< shape of `target`
};

/// \brief Scales of the terms of the staged backward of mse_loss, huber_loss and smooth_l1_loss
/// (1 is the derivation; the negative controls drop (0) or flip (−1) one of them).
struct PointwiseLossTermScales {
  double dreduce = 1;  ///< `<op>.dreduce`: \f$\partial y/\partial \ell_i\f$ (1/n, 1, or dyᵢ)
  double dl_dd = 1;    ///< `<op>.dl_dd`: \f$\partial\ell_i/\partial d_i\f$
  double dx = 1;       ///< `<op>.dx`: \f$\partial d_i/\partial x_i = 1\f$
  double dtarget = 1;  ///< `<op>.dtarget`: \f$\partial d_i/\partial t_i = -1\f$
};

/// Scales of the terms of the staged backward of binary_cross_entropy_with_logits.
struct BCEWithLogitsTermScales {
  double dreduce = 1;    ///< `bce_with_logits.dreduce`: \f$\partial y/\partial \ell_i\f$
  double weighting =
      1;  ///< `bce_with_logits.weighting`: \f$\partial \ell_i/\partial u_i = w_i\f$
  double du_dx = 1;      ///< `bce_with_logits.du_dx`: \f$(1 - t) - l\,\sigma(-x)\f$
  double du_dt = 1;      ///< `bce_with_logits.du_dt`: \f$-x + (p - 1)\,\mathrm{sp}(-x)\f$
};

namespace detail::losses {

/// The real value of a scalar of the oracles (`double`, `std::complex`, a dual number): the
/// branches of |d| and max(x, 0) are taken on it, so each branch is analytic.
template <class S>
double real_value(const S& v) {
  if constexpr (requires { v.value(); }) return real_value(v.value());
  else if constexpr (requires { v.real(); }) return static_cast<double>(v.real());
  else return static_cast<double>(v);
}

/// \f$|v|\f$ by the sign of the real part (analytic on each side, for the complex step).
template <class S>
S re_abs(const S& v) {
  return real_value(v) < 0 ? S(-v) : v;
}

/// \f$\log(1 + e^{-a})\f$ for \f$\operatorname{Re} a \ge 0\f$: `log1p` on the real types, the
/// plain form on the oracles' scalars (no cancellation there: the step is in the imaginary part).
template <class S>
S log1p_exp_neg(const S& a) {
  using std::exp;
  using std::log;
  if constexpr (std::is_floating_point_v<S>) return std::log1p(std::exp(-a));
  else return log(S(1) + exp(S(-a)));
}

/// \f$\mathrm{sp}(-x) = \log(1 + e^{-x}) = \max(-x, 0) + \log(1 + e^{-|x|})\f$.
template <class S>
S softplus_neg(const S& x) {
  return real_value(x) >= 0 ? log1p_exp_neg(x) : S(S(-x) + log1p_exp_neg(S(-x)));
}

/// \f$\sigma(-x) = 1/(1 + e^{x})\f$, without overflow.
template <class S>
S sigmoid_neg(const S& x) {
  using std::exp;
  if (real_value(x) >= 0) {
    const S e = exp(S(-x));
    return e / (S(1) + e);
  }
  return S(1) / (S(1) + exp(x));
}

/// The accumulator of the reduction: double for float (a sum of many floats), else the scalar.
template <class S>
using Acc = std::conditional_t<std::is_same_v<S, float>, double, S>;

inline Reduction parse_reduction(const std::string& r, const char* op) {
  if (r == "none") return Reduction::none;
  if (r == "mean") return Reduction::mean;
  if (r == "sum") return Reduction::sum;
  throw InvalidArgument(std::string(op) +
                        ": reduction must be \"none\", \"mean\" or \"sum\"; got \"" + r + "\"");
}

/// Fills the shapes of the cache; allocates nothing when they are those of the last call.
template <class Scalar>
void shapes(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
            const std::string& reduction, const char* op, LossCache<Scalar>& c) {
  if (!same_shape(input.shape(), target.shape())) {
    std::ostringstream msg;
    msg << op << ": target must have the shape of input " << to_string(input.shape()) << "; got "
        << to_string(target.shape());
    throw InvalidArgument(msg.str());
  }
  c.reduction = parse_reduction(reduction, op);
  if (!same_shape(c.shape, input.shape())) c.shape = input.shape();
  if (c.reduction == Reduction::none) {
    if (!same_shape(c.y_shape, input.shape())) c.y_shape = input.shape();
  } else if (!c.y_shape.empty()) {
    c.y_shape.clear();
  }
  c.n = input.size();
}

/// The strides that broadcast `w` to `shape` (PyTorch's rules), or empty when the shapes are
/// equal.
template <class Scalar>
void broadcast(const Tensor<Scalar>& w, const Shape& shape, const char* op, const char* what,
               std::vector<Index>& stride) {
  stride.clear();
  if (same_shape(w.shape(), shape)) return;
  const Index r = static_cast<Index>(shape.size()), q = w.rank();
  bool ok = q <= r;
  stride.assign(shape.size(), 0);
  Index s = 1;
  for (Index a = r - 1; ok && a >= r - q; --a) {
    const Index e = w.shape()[static_cast<std::size_t>(a - (r - q))];
    if (e == shape[static_cast<std::size_t>(a)])
      stride[static_cast<std::size_t>(a)] = e == 1 ? 0 : s;
    else if (e != 1) ok = false;
    s *= e;
  }
  if (!ok) {
    std::ostringstream msg;
    msg << op << ": " << what << " of shape " << to_string(w.shape())
        << " cannot be broadcast to input of shape " << to_string(shape)
        << " (trailing axes aligned, each extent equal or 1)";
    throw InvalidArgument(msg.str());
  }
}

/// The offset in a broadcast tensor of element `i` of the input (strides from broadcast()).
inline Index offset(Index i, const Shape& shape, const std::vector<Index>& stride) {
  if (stride.empty()) return i;
  Index off = 0;
  for (std::size_t a = shape.size(); a-- > 0;) {
    off += (i % shape[a]) * stride[a];
    i /= shape[a];
  }
  return off;
}

/// Writes the reduction of the element-wise losses `ell(i)` into `y`.
template <class Scalar, class Ell>
void reduce(const LossCache<Scalar>& c, Tensor<Scalar>& y, const Ell& ell) {
  if (c.reduction == Reduction::none) {
    for (Index i = 0; i < c.n; ++i) y[i] = ell(i);
    return;
  }
  Acc<Scalar> acc = Acc<Scalar>(0);
  for (Index i = 0; i < c.n; ++i) acc += static_cast<Acc<Scalar>>(ell(i));
  // mean over no elements is 0/0 = NaN, as in PyTorch
  y[0] = static_cast<Scalar>(c.reduction == Reduction::mean
                                 ? Acc<Scalar>(acc / Acc<Scalar>(static_cast<double>(c.n)))
                                 : acc);
}

/// \f$\partial y/\partial\ell_i\f$ times the upstream gradient: dyᵢ, dy, or dy/n.
template <class Scalar>
Scalar upstream(const Tensor<Scalar>& dy, const LossCache<Scalar>& c, Index i) {
  if (c.reduction == Reduction::none) return dy[i];
  if (c.reduction == Reduction::sum) return dy[0];
  return dy[0] / Scalar(static_cast<double>(c.n));
}

template <class Scalar>
void check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                    const Tensor<Scalar>& target, const LossCache<Scalar>& c, const char* op) {
  if (!same_shape(input.shape(), c.shape) || !same_shape(target.shape(), c.shape)) {
    std::ostringstream msg;
    msg << op << ": cache was made for input of shape " << to_string(c.shape)
        << " but input has shape " << to_string(input.shape()) << " and target "
        << to_string(target.shape());
    throw InvalidArgument(msg.str());
  }
  require_shape(dy, c.y_shape, op, "dy (must match y)");
}

template <class Scalar>
void check_outputs(Opt<Tensor<Scalar>> dx, Opt<Tensor<Scalar>> dtarget,
                   const LossCache<Scalar>& c, const char* op) {
  if (dx) require_shape(*dx, c.shape, op, "dx (output)");
  if (dtarget) require_shape(*dtarget, c.shape, op, "dtarget (output)");
}

constexpr const char* kMse = "mse_loss";
constexpr const char* kHuber = "huber_loss";
constexpr const char* kSmoothL1 = "smooth_l1_loss";
constexpr const char* kBce = "binary_cross_entropy_with_logits";

}  // namespace detail::losses

// ================================================================================================
// mse_loss

/// \brief mse_loss forward writing into caller-provided `y` and `cache`; allocates nothing when
/// the cache is reused.
/// \param input   \f$x\f$, any shape
/// \param target  \f$t\f$, the shape of `input`
/// \param cfg     `reduction`
/// \param y       output: `input`'s shape for `"none"`, else `()`
/// \param cache   output
/// \throws InvalidArgument on a `target` of another shape, an unknown `reduction`, or `y` of
///         another shape.
template <class Scalar>
void mse_loss_forward_into(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                           const MSELossConfig& cfg, Tensor<Scalar>& y,
                           LossCache<Scalar>& cache) {
  using namespace detail::losses;
  shapes(input, target, cfg.reduction, kMse, cache);
  require_shape(y, cache.y_shape, kMse, "y (output)");
  //! [mse_loss.forward]
  // ℓᵢ = (xᵢ − tᵢ)², then the reduction
  reduce(cache, y, [&](Index i) {
    const Scalar d = input[i] - target[i];
    return Scalar(d * d);
  });
  //! [mse_loss.forward]
}

/// \brief mse_loss forward (allocating wrapper of mse_loss_forward_into()).
template <class Scalar>
LossForward<Scalar> mse_loss_forward(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                                     const MSELossConfig& cfg = {}) {
  LossForward<Scalar> out;
  detail::losses::shapes(input, target, cfg.reduction, detail::losses::kMse, out.cache);
  out.y = Tensor<Scalar>(out.cache.y_shape);
  mse_loss_forward_into(input, target, cfg, out.y, out.cache);
  return out;
}

/// \brief mse_loss staged backward: one named step per chain-rule term.
/// \param dy      shape of `y`
/// \param input   the forward's `input`
/// \param target  the forward's `target`
/// \param cache   from the forward pass
/// \param scales  term scales for the negative controls; leave at the default
/// \throws InvalidArgument if `dy`, `input` or `target` does not match the cache.
template <class Scalar>
LossGrads<Scalar> mse_loss_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                           const Tensor<Scalar>& target,
                                           const LossCache<Scalar>& cache,
                                           const PointwiseLossTermScales& scales = {}) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kMse);
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  for (Index i = 0; i < cache.n; ++i) {
    // Step 1. The reduction's scale: ∂y/∂ℓᵢ times dy.
    //! [mse_loss.dreduce]
    const Scalar dl = Scalar(scales.dreduce) * upstream(dy, cache, i);  // dyᵢ, dy, or dy/n
    //! [mse_loss.dreduce]
    // Step 2. ℓ = d²: ∂ℓ/∂d = 2d.
    //! [mse_loss.dl_dd]
    const Scalar dd = dl * Scalar(scales.dl_dd) * Scalar(2) * (input[i] - target[i]);
    //! [mse_loss.dl_dd]
    // Step 3. d = x − t: ∂d/∂x = 1, ∂d/∂t = −1.
    //! [mse_loss.dx]
    g.dx[i] = Scalar(scales.dx) * dd;
    //! [mse_loss.dx]
    //! [mse_loss.dtarget]
    g.dtarget[i] = -Scalar(scales.dtarget) * dd;
    //! [mse_loss.dtarget]
  }
  return g;
}

/// \brief mse_loss fused backward into caller-provided outputs (either may be `nullptr`).
/// \param dy       shape of `y`
/// \param input    the forward's `input`
/// \param target   the forward's `target`
/// \param cache    from the forward pass
/// \param dx       output, shape of `input`, or `nullptr`
/// \param dtarget  output, shape of `target`, or `nullptr`
/// \throws InvalidArgument on mismatched shapes.
template <class Scalar>
void mse_loss_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                            const Tensor<Scalar>& target, const LossCache<Scalar>& cache,
                            Opt<Tensor<Scalar>> dx, Opt<Tensor<Scalar>> dtarget) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kMse);
  check_outputs(dx, dtarget, cache, kMse);
  //! [mse_loss.dx_fused]
  // dx = 2 s (x − t), s = dyᵢ, dy or dy/n; dtarget = −dx
  for (Index i = 0; i < cache.n; ++i) {
    const Scalar g = Scalar(2) * upstream(dy, cache, i) * (input[i] - target[i]);
    if (dx) (*dx)[i] = g;
    if (dtarget) (*dtarget)[i] = -g;
  }
  //! [mse_loss.dx_fused]
}

/// \brief mse_loss fused backward (allocating wrapper of mse_loss_backward_into()).
template <class Scalar>
LossGrads<Scalar> mse_loss_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                    const Tensor<Scalar>& target,
                                    const LossCache<Scalar>& cache) {
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  mse_loss_backward_into(dy, input, target, cache, &g.dx, &g.dtarget);
  return g;
}

// ================================================================================================
// binary_cross_entropy_with_logits

namespace detail::losses {
template <class Scalar>
void bce_shapes(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                Opt<const Tensor<Scalar>> weight, Opt<const Tensor<Scalar>> pos_weight,
                const BCEWithLogitsConfig& cfg, LossCache<Scalar>& c) {
  shapes(input, target, cfg.reduction, kBce, c);
  c.has_weight = weight != nullptr;
  c.has_pos_weight = pos_weight != nullptr;
  if (weight) broadcast(*weight, c.shape, kBce, "weight", c.weight_stride);
  if (pos_weight) broadcast(*pos_weight, c.shape, kBce, "pos_weight", c.pos_weight_stride);
}
template <class Scalar>
void bce_check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                        const Tensor<Scalar>& target, Opt<const Tensor<Scalar>> weight,
                        Opt<const Tensor<Scalar>> pos_weight, const LossCache<Scalar>& c) {
  check_backward(dy, input, target, c, kBce);
  if ((weight != nullptr) != c.has_weight || (pos_weight != nullptr) != c.has_pos_weight)
    throw InvalidArgument(
        std::string(kBce) +
        ": weight and pos_weight must be given to the backward as to the forward (" +
        "forward: weight " + (c.has_weight ? "given" : "None") + ", pos_weight " +
        (c.has_pos_weight ? "given" : "None") + ")");
}
/// wᵢ, or 1 without a weight.
template <class Scalar>
Scalar weight_at(Opt<const Tensor<Scalar>> w, const LossCache<Scalar>& c, Index i) {
  return w ? (*w)[offset(i, c.shape, c.weight_stride)] : Scalar(1);
}
/// pᵢ, or 1 without a pos_weight.
template <class Scalar>
Scalar pos_weight_at(Opt<const Tensor<Scalar>> p, const LossCache<Scalar>& c, Index i) {
  return p ? (*p)[offset(i, c.shape, c.pos_weight_stride)] : Scalar(1);
}
}  // namespace detail::losses

/// \brief binary_cross_entropy_with_logits forward into caller-provided `y` and `cache`.
/// \param input       the logits \f$x\f$, any shape
/// \param target      \f$t\f$, the shape of `input` (any real value; PyTorch does not check [0,
/// 1]) \param weight      \f$w\f$, broadcastable to `input`, or `nullptr` (PyTorch's `None`)
/// \param pos_weight  \f$p\f$, the weight of the positive term, broadcastable to `input`, or
/// `nullptr` \param cfg         `reduction` \param y           output: `input`'s shape for
/// `"none"`, else `()` \param cache       output \throws InvalidArgument on a `target` of another
/// shape, a `weight` or `pos_weight` that does
///         not broadcast, an unknown `reduction`, or `y` of another shape.
template <class Scalar>
void binary_cross_entropy_with_logits_forward_into(const Tensor<Scalar>& input,
                                                   const Tensor<Scalar>& target,
                                                   Opt<const Tensor<Scalar>> weight,
                                                   Opt<const Tensor<Scalar>> pos_weight,
                                                   const BCEWithLogitsConfig& cfg,
                                                   Tensor<Scalar>& y, LossCache<Scalar>& cache) {
  using namespace detail::losses;
  bce_shapes(input, target, weight, pos_weight, cfg, cache);
  require_shape(y, cache.y_shape, kBce, "y (output)");
  //! [bce_with_logits.forward]
  // ℓᵢ = wᵢ uᵢ. Without pos_weight uᵢ = max(x, 0) − x t + log(1 + e^{−|x|});
  // with it (PyTorch's form) uᵢ = (1 − t) x + l sp(−x), l = 1 + (p − 1) t, sp(−x) = log(1 +
  // e^{−x}).
  reduce(cache, y, [&](Index i) {
    const Scalar x = input[i], t = target[i];
    Scalar u;
    if (!pos_weight) {
      const Scalar ax = re_abs(x);
      u = (real_value(x) > 0 ? x : Scalar(0)) - x * t + log1p_exp_neg(ax);
    } else {
      const Scalar l = Scalar(1) + (pos_weight_at(pos_weight, cache, i) - Scalar(1)) * t;
      u = (Scalar(1) - t) * x + l * softplus_neg(x);
    }
    return Scalar(weight_at(weight, cache, i) * u);
  });
  //! [bce_with_logits.forward]
}

/// \brief binary_cross_entropy_with_logits forward (allocating wrapper).
template <class Scalar>
LossForward<Scalar> binary_cross_entropy_with_logits_forward(
    const Tensor<Scalar>& input, const Tensor<Scalar>& target,
    Opt<const Tensor<Scalar>> weight = nullptr, Opt<const Tensor<Scalar>> pos_weight = nullptr,
    const BCEWithLogitsConfig& cfg = {}) {
  LossForward<Scalar> out;
  detail::losses::bce_shapes(input, target, weight, pos_weight, cfg, out.cache);
  out.y = Tensor<Scalar>(out.cache.y_shape);
  binary_cross_entropy_with_logits_forward_into(input, target, weight, pos_weight, cfg, out.y,
                                                out.cache);
  return out;
}

/// \brief binary_cross_entropy_with_logits staged backward: one named step per term.
/// \param dy          shape of `y`
/// \param input       the forward's logits
/// \param target      the forward's target
/// \param weight      the forward's `weight` or `nullptr`
/// \param pos_weight  the forward's `pos_weight` or `nullptr`
/// \param cache       from the forward pass
/// \param scales      term scales for the negative controls; leave at the default
/// \throws InvalidArgument if an argument does not match the cache.
template <class Scalar>
LossGrads<Scalar> binary_cross_entropy_with_logits_backward_staged(
    const Tensor<Scalar>& dy, const Tensor<Scalar>& input, const Tensor<Scalar>& target,
    Opt<const Tensor<Scalar>> weight, Opt<const Tensor<Scalar>> pos_weight,
    const LossCache<Scalar>& cache, const BCEWithLogitsTermScales& scales = {}) {
  using namespace detail::losses;
  bce_check_backward(dy, input, target, weight, pos_weight, cache);
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  for (Index i = 0; i < cache.n; ++i) {
    const Scalar x = input[i], t = target[i], p = pos_weight_at(pos_weight, cache, i);
    // Step 1. The reduction's scale: ∂y/∂ℓᵢ times dy.
    //! [bce_with_logits.dreduce]
    const Scalar dl = Scalar(scales.dreduce) * upstream(dy, cache, i);  // dyᵢ, dy, or dy/n
    //! [bce_with_logits.dreduce]
    // Step 2. ℓ = w u: ∂ℓ/∂u = w.
    //! [bce_with_logits.weighting]
    const Scalar du = dl * Scalar(scales.weighting) * weight_at(weight, cache, i);
    //! [bce_with_logits.weighting]
    // Step 3. u = (1 − t) x + l sp(−x): ∂u/∂x = (1 − t) − l σ(−x) (σ(x) − t without pos_weight).
    //! [bce_with_logits.du_dx]
    const Scalar l = Scalar(1) + (p - Scalar(1)) * t;
    const Scalar du_dx = Scalar(scales.du_dx) * ((Scalar(1) - t) - l * sigmoid_neg(x));
    //! [bce_with_logits.du_dx]
    // Step 4. ∂u/∂t = −x + (p − 1) sp(−x) (= −x without pos_weight).
    //! [bce_with_logits.du_dt]
    const Scalar du_dt = Scalar(scales.du_dt) * (-x + (p - Scalar(1)) * softplus_neg(x));
    //! [bce_with_logits.du_dt]
    // Step 5. The chain: ∂L/∂x = ∂L/∂u · ∂u/∂x, ∂L/∂t = ∂L/∂u · ∂u/∂t.
    //! [bce_with_logits.dx]
    g.dx[i] = du * du_dx;
    //! [bce_with_logits.dx]
    //! [bce_with_logits.dtarget]
    g.dtarget[i] = du * du_dt;
    //! [bce_with_logits.dtarget]
  }
  return g;
}

/// \brief binary_cross_entropy_with_logits fused backward into caller-provided outputs.
/// \param dy          shape of `y`
/// \param input       the forward's logits
/// \param target      the forward's target
/// \param weight      the forward's `weight` or `nullptr`
/// \param pos_weight  the forward's `pos_weight` or `nullptr`
/// \param cache       from the forward pass
/// \param dx          output, shape of `input`, or `nullptr`
/// \param dtarget     output, shape of `target`, or `nullptr`
/// \throws InvalidArgument on mismatched shapes.
template <class Scalar>
void binary_cross_entropy_with_logits_backward_into(
    const Tensor<Scalar>& dy, const Tensor<Scalar>& input, const Tensor<Scalar>& target,
    Opt<const Tensor<Scalar>> weight, Opt<const Tensor<Scalar>> pos_weight,
    const LossCache<Scalar>& cache, Opt<Tensor<Scalar>> dx, Opt<Tensor<Scalar>> dtarget) {
  using namespace detail::losses;
  bce_check_backward(dy, input, target, weight, pos_weight, cache);
  check_outputs(dx, dtarget, cache, kBce);
  //! [bce_with_logits.dx_fused]
  // g = s w; dx = g (σ(x) − t) without pos_weight, g ((1 − t) − l σ(−x)) with it;
  // dtarget = g (−x + (p − 1) sp(−x))
  for (Index i = 0; i < cache.n; ++i) {
    const Scalar x = input[i], t = target[i];
    const Scalar g = upstream(dy, cache, i) * weight_at(weight, cache, i);
    if (!pos_weight) {
      if (dx) (*dx)[i] = g * (Scalar(1) - sigmoid_neg(x) - t);
      if (dtarget) (*dtarget)[i] = -g * x;
    } else {
      const Scalar pm1 = pos_weight_at(pos_weight, cache, i) - Scalar(1);
      if (dx) (*dx)[i] = g * ((Scalar(1) - t) - (Scalar(1) + pm1 * t) * sigmoid_neg(x));
      if (dtarget) (*dtarget)[i] = g * (pm1 * softplus_neg(x) - x);
    }
  }
  //! [bce_with_logits.dx_fused]
}

/// \brief binary_cross_entropy_with_logits fused backward (allocating wrapper).
template <class Scalar>
LossGrads<Scalar> binary_cross_entropy_with_logits_backward(const Tensor<Scalar>& dy,
                                                            const Tensor<Scalar>& input,
                                                            const Tensor<Scalar>& target,
                                                            Opt<const Tensor<Scalar>> weight,
                                                            Opt<const Tensor<Scalar>> pos_weight,
                                                            const LossCache<Scalar>& cache) {
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  binary_cross_entropy_with_logits_backward_into(dy, input, target, weight, pos_weight, cache,
                                                 &g.dx, &g.dtarget);
  return g;
}

// ================================================================================================
// huber_loss

namespace detail::losses {
inline void check_delta(double v) {
  if (!(v > 0)) {
    std::ostringstream msg;
    msg << kHuber << ": delta must be > 0; got " << v;
    throw InvalidArgument(msg.str());
  }
}
}  // namespace detail::losses

/// \brief huber_loss forward writing into caller-provided `y` and `cache`.
/// \param input   \f$x\f$, any shape
/// \param target  \f$t\f$, the shape of `input`
/// \param cfg     `reduction`, `delta`
/// \param y       output: `input`'s shape for `"none"`, else `()`
/// \param cache   output
/// \throws InvalidArgument on a `target` of another shape, an unknown `reduction`, `delta`
///         not > 0, or `y` of another shape.
template <class Scalar>
void huber_loss_forward_into(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                             const HuberLossConfig& cfg, Tensor<Scalar>& y,
                             LossCache<Scalar>& cache) {
  using namespace detail::losses;
  check_delta(cfg.delta);
  shapes(input, target, cfg.reduction, kHuber, cache);
  require_shape(y, cache.y_shape, kHuber, "y (output)");
  cache.param = cfg.delta;
  const Scalar b = Scalar(cfg.delta);
  //! [huber_loss.forward]
  // ℓᵢ = ½dᵢ² for |dᵢ| < δ, δ(|dᵢ| − ½δ) otherwise (the linear branch at |dᵢ| = δ, as PyTorch)
  reduce(cache, y, [&](Index i) {
    const Scalar d = input[i] - target[i], ad = re_abs(d);
    return real_value(ad) < real_value(b) ? Scalar(Scalar(0.5) * d * d)
                                          : Scalar(b * (ad - Scalar(0.5) * b));
  });
  //! [huber_loss.forward]
}

/// \brief huber_loss forward (allocating wrapper of huber_loss_forward_into()).
template <class Scalar>
LossForward<Scalar> huber_loss_forward(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                                       const HuberLossConfig& cfg = {}) {
  LossForward<Scalar> out;
  detail::losses::check_delta(cfg.delta);
  detail::losses::shapes(input, target, cfg.reduction, detail::losses::kHuber, out.cache);
  out.y = Tensor<Scalar>(out.cache.y_shape);
  huber_loss_forward_into(input, target, cfg, out.y, out.cache);
  return out;
}

/// \brief huber_loss staged backward: one named step per chain-rule term.
/// \param dy      shape of `y`
/// \param input   the forward's `input`
/// \param target  the forward's `target`
/// \param cache   from the forward pass (it holds `delta`)
/// \param scales  term scales for the negative controls; leave at the default
/// \throws InvalidArgument if `dy`, `input` or `target` does not match the cache.
template <class Scalar>
LossGrads<Scalar> huber_loss_backward_staged(const Tensor<Scalar>& dy,
                                             const Tensor<Scalar>& input,
                                             const Tensor<Scalar>& target,
                                             const LossCache<Scalar>& cache,
                                             const PointwiseLossTermScales& scales = {}) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kHuber);
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  const Scalar b = Scalar(cache.param);
  for (Index i = 0; i < cache.n; ++i) {
    // Step 1. The reduction's scale: ∂y/∂ℓᵢ times dy.
    //! [huber_loss.dreduce]
    const Scalar dl = Scalar(scales.dreduce) * upstream(dy, cache, i);  // dyᵢ, dy, or dy/n
    //! [huber_loss.dreduce]
    // Step 2. ℓ = ½d² inside, δ(|d| − ½δ) outside: ∂ℓ/∂d = d inside, ±δ outside (PyTorch: ±δ at
    // |d| = δ).
    const Scalar d = input[i] - target[i];
    //! [huber_loss.dl_dd]
    const Scalar slope = real_value(d) <= -real_value(b)  ? Scalar(-b)
                         : real_value(d) >= real_value(b) ? b
                                                          : d;
    const Scalar dd = dl * Scalar(scales.dl_dd) * slope;
    //! [huber_loss.dl_dd]
    // Step 3. d = x − t: ∂d/∂x = 1, ∂d/∂t = −1.
    //! [huber_loss.dx]
    g.dx[i] = Scalar(scales.dx) * dd;
    //! [huber_loss.dx]
    //! [huber_loss.dtarget]
    g.dtarget[i] = -Scalar(scales.dtarget) * dd;
    //! [huber_loss.dtarget]
  }
  return g;
}

/// \brief huber_loss fused backward into caller-provided outputs (either may be `nullptr`).
/// \param dy       shape of `y`
/// \param input    the forward's `input`
/// \param target   the forward's `target`
/// \param cache    from the forward pass
/// \param dx       output, shape of `input`, or `nullptr`
/// \param dtarget  output, shape of `target`, or `nullptr`
/// \throws InvalidArgument on mismatched shapes.
template <class Scalar>
void huber_loss_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                              const Tensor<Scalar>& target, const LossCache<Scalar>& cache,
                              Opt<Tensor<Scalar>> dx, Opt<Tensor<Scalar>> dtarget) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kHuber);
  check_outputs(dx, dtarget, cache, kHuber);
  const Scalar b = Scalar(cache.param);
  //! [huber_loss.dx_fused]
  // dx = s·clamp(d, −δ, δ), dtarget = −dx
  for (Index i = 0; i < cache.n; ++i) {
    const Scalar d = input[i] - target[i];
    const Scalar gi = upstream(dy, cache, i) * (real_value(d) <= -real_value(b)  ? Scalar(-b)
                                                : real_value(d) >= real_value(b) ? b
                                                                                 : d);
    if (dx) (*dx)[i] = gi;
    if (dtarget) (*dtarget)[i] = -gi;
  }
  //! [huber_loss.dx_fused]
}

/// \brief huber_loss fused backward (allocating wrapper of huber_loss_backward_into()).
template <class Scalar>
LossGrads<Scalar> huber_loss_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                      const Tensor<Scalar>& target,
                                      const LossCache<Scalar>& cache) {
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  huber_loss_backward_into(dy, input, target, cache, &g.dx, &g.dtarget);
  return g;
}

// ================================================================================================
// smooth_l1_loss

namespace detail::losses {
/// ∂ℓ/∂d of smooth L1: d/β inside, ±1 outside and at |d| = β (PyTorch's choice); for β = 0
/// PyTorch computes l1_loss, whose gradient is sign(d), 0 at d = 0.
template <class Scalar>
Scalar smooth_l1_slope(const Scalar& d, const Scalar& b) {
  const double dr = real_value(d), br = real_value(b);
  if (br == 0) return Scalar(dr > 0 ? 1 : dr < 0 ? -1 : 0);
  return dr <= -br ? Scalar(-1) : dr >= br ? Scalar(1) : Scalar(d / b);
}
inline void check_beta(double v) {
  if (!(v >= 0)) {
    std::ostringstream msg;
    msg << kSmoothL1 << ": beta must be >= 0; got " << v;
    throw InvalidArgument(msg.str());
  }
}
}  // namespace detail::losses

/// \brief smooth_l1_loss forward writing into caller-provided `y` and `cache`.
/// \param input   \f$x\f$, any shape
/// \param target  \f$t\f$, the shape of `input`
/// \param cfg     `reduction`, `beta`
/// \param y       output: `input`'s shape for `"none"`, else `()`
/// \param cache   output
/// \throws InvalidArgument on a `target` of another shape, an unknown `reduction`, `beta`
///         not >= 0, or `y` of another shape.
template <class Scalar>
void smooth_l1_loss_forward_into(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                                 const SmoothL1LossConfig& cfg, Tensor<Scalar>& y,
                                 LossCache<Scalar>& cache) {
  using namespace detail::losses;
  check_beta(cfg.beta);
  shapes(input, target, cfg.reduction, kSmoothL1, cache);
  require_shape(y, cache.y_shape, kSmoothL1, "y (output)");
  cache.param = cfg.beta;
  const Scalar b = Scalar(cfg.beta);
  //! [smooth_l1_loss.forward]
  // ℓᵢ = ½dᵢ²/β for |dᵢ| < β, |dᵢ| − ½β otherwise; |dᵢ| for β = 0 (PyTorch: l1_loss)
  reduce(cache, y, [&](Index i) {
    const Scalar d = input[i] - target[i], ad = re_abs(d);
    return real_value(ad) < real_value(b) ? Scalar(Scalar(0.5) * d * d / b)
                                          : Scalar(ad - Scalar(0.5) * b);
  });
  //! [smooth_l1_loss.forward]
}

/// \brief smooth_l1_loss forward (allocating wrapper of smooth_l1_loss_forward_into()).
template <class Scalar>
LossForward<Scalar> smooth_l1_loss_forward(const Tensor<Scalar>& input,
                                           const Tensor<Scalar>& target,
                                           const SmoothL1LossConfig& cfg = {}) {
  LossForward<Scalar> out;
  detail::losses::check_beta(cfg.beta);
  detail::losses::shapes(input, target, cfg.reduction, detail::losses::kSmoothL1, out.cache);
  out.y = Tensor<Scalar>(out.cache.y_shape);
  smooth_l1_loss_forward_into(input, target, cfg, out.y, out.cache);
  return out;
}

/// \brief smooth_l1_loss staged backward: one named step per chain-rule term.
/// \param dy      shape of `y`
/// \param input   the forward's `input`
/// \param target  the forward's `target`
/// \param cache   from the forward pass (it holds `beta`)
/// \param scales  term scales for the negative controls; leave at the default
/// \throws InvalidArgument if `dy`, `input` or `target` does not match the cache.
template <class Scalar>
LossGrads<Scalar> smooth_l1_loss_backward_staged(const Tensor<Scalar>& dy,
                                                 const Tensor<Scalar>& input,
                                                 const Tensor<Scalar>& target,
                                                 const LossCache<Scalar>& cache,
                                                 const PointwiseLossTermScales& scales = {}) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kSmoothL1);
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  const Scalar b = Scalar(cache.param);
  for (Index i = 0; i < cache.n; ++i) {
    // Step 1. The reduction's scale: ∂y/∂ℓᵢ times dy.
    //! [smooth_l1_loss.dreduce]
    const Scalar dl = Scalar(scales.dreduce) * upstream(dy, cache, i);  // dyᵢ, dy, or dy/n
    //! [smooth_l1_loss.dreduce]
    // Step 2. ℓ = ½d²/β inside, |d| − ½β outside: ∂ℓ/∂d = d/β inside, ±1 outside (PyTorch: ±1 at
    // |d| = β, +1 at d = 0 for β = 0).
    const Scalar d = input[i] - target[i];
    //! [smooth_l1_loss.dl_dd]
    const Scalar slope = smooth_l1_slope(d, b);
    const Scalar dd = dl * Scalar(scales.dl_dd) * slope;
    //! [smooth_l1_loss.dl_dd]
    // Step 3. d = x − t: ∂d/∂x = 1, ∂d/∂t = −1.
    //! [smooth_l1_loss.dx]
    g.dx[i] = Scalar(scales.dx) * dd;
    //! [smooth_l1_loss.dx]
    //! [smooth_l1_loss.dtarget]
    g.dtarget[i] = -Scalar(scales.dtarget) * dd;
    //! [smooth_l1_loss.dtarget]
  }
  return g;
}

/// \brief smooth_l1_loss fused backward into caller-provided outputs (either may be `nullptr`).
/// \param dy       shape of `y`
/// \param input    the forward's `input`
/// \param target   the forward's `target`
/// \param cache    from the forward pass
/// \param dx       output, shape of `input`, or `nullptr`
/// \param dtarget  output, shape of `target`, or `nullptr`
/// \throws InvalidArgument on mismatched shapes.
template <class Scalar>
void smooth_l1_loss_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                  const Tensor<Scalar>& target, const LossCache<Scalar>& cache,
                                  Opt<Tensor<Scalar>> dx, Opt<Tensor<Scalar>> dtarget) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kSmoothL1);
  check_outputs(dx, dtarget, cache, kSmoothL1);
  const Scalar b = Scalar(cache.param);
  //! [smooth_l1_loss.dx_fused]
  // dx = s·clamp(d/β, −1, 1), dtarget = −dx
  for (Index i = 0; i < cache.n; ++i) {
    const Scalar d = input[i] - target[i];
    const Scalar slope = smooth_l1_slope(d, b);
    const Scalar gi = upstream(dy, cache, i) * slope;
    if (dx) (*dx)[i] = gi;
    if (dtarget) (*dtarget)[i] = -gi;
  }
  //! [smooth_l1_loss.dx_fused]
}

/// \brief smooth_l1_loss fused backward (allocating wrapper of smooth_l1_loss_backward_into()).
template <class Scalar>
LossGrads<Scalar> smooth_l1_loss_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                          const Tensor<Scalar>& target,
                                          const LossCache<Scalar>& cache) {
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  smooth_l1_loss_backward_into(dy, input, target, cache, &g.dx, &g.dtarget);
  return g;
}

using LossForwardF = LossForward<float>;   ///< float alias
using LossForwardD = LossForward<double>;  ///< double alias

}  // namespace gradproof::ops
