/// \file
/// \brief Element-wise losses with a reduction: mean squared error and binary cross-entropy with
/// logits. Forward, staged and fused backward, with PyTorch's semantics, names and defaults.
///
/// Every loss here is \f$\ell_i = f(x_i, t_i)\f$ per element, then a reduction (`reduction`:
/// `none` keeps \f$\ell\f$, `sum` is \f$\sum_i \ell_i\f$, `mean` is \f$\frac1n\sum_i\ell_i\f$, the
/// default). Both the input and the target are differentiable, as in PyTorch.
///
/// - `mse_loss`: \f$\ell_i = (x_i - t_i)^2\f$ (`torch.nn.functional.mse_loss`);
/// - `binary_cross_entropy_with_logits`: \f$\ell_i = w_i\,[(1 - t_i)\,x_i + (1 + (p_i - 1)t_i)\,
///   \mathrm{softplus}(-x_i)]\f$ with an optional `weight` \f$w\f$ and `pos_weight` \f$p\f$, computed in the
///   stable form (`torch.nn.functional.binary_cross_entropy_with_logits`).
///
/// Shape legend:
/// - `input` (\f$x\f$), `target` (\f$t\f$), `dx`, `dtarget`: any shape, the same for all; \f$n\f$ =
///   their number of elements (0 is allowed: a `mean` over nothing is NaN, as in PyTorch);
/// - `weight`, `pos_weight`: a shape that broadcasts to the input's (PyTorch's rules: aligned at
///   the last axis, each extent equal or 1, rank at most the input's);
/// - `y`, `dy`: `()` (a 0-d tensor of one value) for `mean` and `sum`, the input's shape for `none`.
///
/// Where PyTorch's Python functions broadcast `input` against `target` (mse_loss does, with a
/// warning that the result is likely wrong), gradproof refuses shapes that differ.
#pragma once

#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"

#include <array>
#include <cmath>
#include <complex>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>

namespace gradproof::ops {

/// A parameter type that takes no part in deducing `Scalar` (so that `nullptr` can be passed).
template <class T>
using NoDeduce = std::type_identity_t<T>;

/// PyTorch's `reduction` argument of its losses.
enum class Reduction {
  none,  ///< `'none'`: \f$y = \ell\f$, the input's shape
  mean,  ///< `'mean'` (the default): \f$y = \frac1n\sum_i\ell_i\f$, NaN when \f$n = 0\f$
  sum,   ///< `'sum'`: \f$y = \sum_i \ell_i\f$
};

/// PyTorch's name of a reduction (`"none"`, `"mean"`, `"sum"`).
inline const char* name(Reduction r) {
  switch (r) {
    case Reduction::none: return "none";
    case Reduction::mean: return "mean";
    case Reduction::sum: return "sum";
  }
  return "?";
}

/// \brief The reduction of PyTorch's name `s`.
/// \throws InvalidArgument for any other string (PyTorch: "avg is not a valid value for reduction").
inline Reduction reduction_from_string(std::string_view s) {
  if (s == "none") return Reduction::none;
  if (s == "mean") return Reduction::mean;
  if (s == "sum") return Reduction::sum;
  throw InvalidArgument("reduction must be 'none', 'mean' or 'sum'; got '" + std::string(s) + "'");
}

/// Hyper-parameters of mse_loss (PyTorch's names and defaults).
struct MSELossConfig {
  Reduction reduction = Reduction::mean;  ///< `none`, `mean` or `sum`
};

/// Hyper-parameters of binary_cross_entropy_with_logits (PyTorch's names and defaults); `weight`
/// and `pos_weight` are arguments of the functions, `nullptr` for PyTorch's `None`.
struct BCEWithLogitsConfig {
  Reduction reduction = Reduction::mean;  ///< `none`, `mean` or `sum`
};

/// What the backward passes need from the forward pass (the inputs themselves are arguments).
struct LossCache {
  Shape shape;                          ///< shape of the input and the target
  Index n = 0;                          ///< their number of elements
  Reduction reduction = Reduction::mean;  ///< the reduction of the forward
  bool has_weight = false;              ///< the forward had a `weight` (BCE)
  bool has_pos_weight = false;          ///< the forward had a `pos_weight` (BCE)
  Shape weight_shape;                   ///< its shape, if any
  Shape pos_weight_shape;               ///< its shape, if any
};

/// Output of a loss's forward pass: `y` and the cache for backward.
template <class Scalar>
struct LossForward {
  Tensor<Scalar> y;  ///< `()` for mean and sum, the input's shape for none
  LossCache cache;   ///< shapes and the reduction
};

/// Gradients of a loss: input and target.
template <class Scalar>
struct LossGrads {
  Tensor<Scalar> dx;       ///< shape of the input
  Tensor<Scalar> dtarget;  ///< shape of the target
};

/// \brief Scales of the chain-rule terms of mse_loss's staged backward (1 is the derivation; the
/// negative controls drop (0) or flip (−1) one of them).
struct MSELossTermScales {
  double dreduce = 1;  ///< mse_loss.dreduce: the reduction's scale \f$\partial L/\partial\ell_i\f$
  double dl_dd = 1;    ///< mse_loss.dl_dd: the square, \f$\partial\ell_i/\partial d_i = 2d_i\f$
};

/// The intermediate terms of mse_loss's staged backward.
template <class Scalar>
struct MSELossStagedTrace {
  Tensor<Scalar> dl_dl;  ///< shape of x: \f$\partial L/\partial\ell_i\f$
  Tensor<Scalar> dl_dd;  ///< shape of x: \f$\partial L/\partial d_i\f$, \f$d = x - t\f$
};

/// Scales of the chain-rule terms of binary_cross_entropy_with_logits's staged backward.
struct BCEWithLogitsTermScales {
  double dreduce = 1;  ///< bce_with_logits.dreduce: \f$\partial L/\partial\ell_i\f$
  double dl_dh = 1;    ///< bce_with_logits.dl_dh: the weight, \f$\partial L/\partial h_i = w_i\,\partial L/\partial\ell_i\f$
  double dl_du = 1;    ///< bce_with_logits.dl_du: the log weight, \f$\partial L/\partial u_i = l_i\,\partial L/\partial h_i\f$
  double du_dx = 1;    ///< bce_with_logits.du_dx: \f$\partial u_i/\partial x_i = -\sigma(-x_i)\f$
};

/// The intermediate terms of binary_cross_entropy_with_logits's staged backward (shape of x).
template <class Scalar>
struct BCEWithLogitsStagedTrace {
  Tensor<Scalar> dl_dl;  ///< \f$\partial L/\partial\ell_i\f$
  Tensor<Scalar> dl_dh;  ///< \f$\partial L/\partial h_i\f$
  Tensor<Scalar> dl_du;  ///< \f$\partial L/\partial u_i\f$, \f$u = \mathrm{softplus}(-x)\f$
  Tensor<Scalar> du_dx;  ///< \f$\partial u_i/\partial x_i\f$
};

namespace detail::losses {

/// The real value of a scalar of the oracles (`double`, complex, a dual number).
template <class S>
double real_value(const S& v) {
  if constexpr (requires { v.value(); }) return real_value(v.value());
  else if constexpr (requires { v.real(); }) return static_cast<double>(v.real());
  else return static_cast<double>(v);
}

/// \f$\log(1 + z)\f$: `std::log1p` for float and double (exact for tiny z), else the plain form.
template <class S>
S log1p_of(const S& z) {
  using std::log;
  if constexpr (std::is_floating_point_v<S>) return std::log1p(z);
  else return log(S(1) + z);
}

/// \f$u = \mathrm{softplus}(-x) = \log(1 + e^{-x}) = \max(-x, 0) + \log(1 + e^{-|x|})\f$: no
/// exponential of a positive number, so nothing overflows.
template <class S>
S softplus_neg(const S& x) {
  using std::exp;
  if (real_value(x) >= 0) return log1p_of(S(exp(S(-x))));
  return S(-x) + log1p_of(S(exp(x)));
}

/// \f$\sigma(x) = 1/(1 + e^{-x})\f$ without overflow: \f$e^{x}/(1 + e^{x})\f$ for \f$x < 0\f$.
template <class S>
S sigmoid(const S& x) {
  using std::exp;
  if (real_value(x) >= 0) return S(1) / (S(1) + exp(S(-x)));
  const S e = exp(x);
  return e / (S(1) + e);
}

/// Accumulator of a reduction: double for float input, the scalar itself otherwise.
template <class S>
using Acc = std::conditional_t<std::is_same_v<S, float>, double, S>;

/// Index map from the input's flat index to a broadcast operand's (`weight`, `pos_weight`).
struct Broadcast {
  static constexpr int kMaxRank = 8;  ///< highest rank of a general broadcast
  enum Kind { same, scalar, general } kind = same;
  int rank = 0;
  std::array<Index, kMaxRank> extent{}, inner{}, stride{};
  Index operator()(Index i) const {
    if (kind == same) return i;
    if (kind == scalar) return 0;
    Index k = 0;
    for (int d = 0; d < rank; ++d) k += (i / inner[d]) % extent[d] * stride[d];
    return k;
  }
};

/// The broadcast of an operand of shape `b` to the input's shape `s`.
/// \throws InvalidArgument naming `what`, both shapes and PyTorch's rule when `b` does not broadcast.
inline Broadcast broadcast(ShapeView b, ShapeView s, const char* op, const char* what) {
  Broadcast out;
  const auto refuse = [&](const char* why) {
    std::ostringstream msg;
    msg << op << ": " << what << " of shape " << to_string(b) << " does not broadcast to the input's shape "
        << to_string(s) << " (" << why << ")";
    throw InvalidArgument(msg.str());
  };
  if (b.size() > s.size()) refuse("it has more axes than the input");
  const std::size_t lead = s.size() - b.size();
  for (std::size_t d = 0; d < b.size(); ++d)
    if (b[d] != 1 && b[d] != s[lead + d]) refuse("each extent, aligned at the last axis, must equal the input's or be 1");
  if (same_shape(b, s)) return out;
  Index nb = 1;
  for (Index e : b) nb *= e;
  if (nb == 1) {
    out.kind = Broadcast::scalar;
    return out;
  }
  if (s.size() > static_cast<std::size_t>(Broadcast::kMaxRank)) refuse("a broadcast over more than 8 axes is not supported");
  out.kind = Broadcast::general;
  out.rank = static_cast<int>(s.size());
  Index inner = 1, bstride = 1;
  for (int d = out.rank - 1; d >= 0; --d) {
    const auto du = static_cast<std::size_t>(d);
    const Index be = du >= lead ? b[du - lead] : 1;
    out.extent[du] = s[du] > 0 ? s[du] : 1;
    out.inner[du] = inner;
    out.stride[du] = be == 1 ? 0 : bstride;
    inner *= out.extent[du];
    bstride *= be;
  }
  return out;
}

inline void check_reduction(Reduction r, const char* op) {
  if (r != Reduction::none && r != Reduction::mean && r != Reduction::sum) {
    std::ostringstream msg;
    msg << op << ": reduction must be none, mean or sum; got the value " << static_cast<int>(r);
    throw InvalidArgument(msg.str());
  }
}

/// Refuses a target whose shape is not the input's.
template <class S>
void check_pair(const Tensor<S>& input, const Tensor<S>& target, const char* op) {
  if (!same_shape(target.shape(), input.shape())) {
    std::ostringstream msg;
    msg << op << ": target must have the input's shape " << to_string(input.shape()) << "; got "
        << to_string(target.shape()) << " (PyTorch broadcasts mse_loss's target with a warning, and refuses a"
        << " BCE target of another size; gradproof refuses both)";
    throw InvalidArgument(msg.str());
  }
}

/// Sets the cache for a forward on `input` and checks `y`'s shape.
template <class S>
void begin_forward(const Tensor<S>& input, Reduction r, const Tensor<S>& y, LossCache& cache, const char* op) {
  check_reduction(r, op);
  if (r == Reduction::none) require_shape(y, input.shape(), op, "y (output, reduction none)");
  else if (y.rank() != 0) {
    std::ostringstream msg;
    msg << op << ": y (output, reduction " << name(r) << ") must have shape (); got " << to_string(y.shape());
    throw InvalidArgument(msg.str());
  }
  if (!same_shape(cache.shape, input.shape())) cache.shape = input.shape();
  cache.n = input.size();
  cache.reduction = r;
}

/// Allocates the output of a forward: `()` or the input's shape.
template <class S>
Tensor<S> output_for(const Tensor<S>& input, Reduction r) {
  return r == Reduction::none ? Tensor<S>(input.shape()) : Tensor<S>(Shape{});
}

/// Checks the arguments of a backward against the cache.
template <class S>
void check_backward(const Tensor<S>& dy, const Tensor<S>& input, const Tensor<S>& target, const LossCache& cache,
                    const char* op) {
  if (!same_shape(input.shape(), cache.shape)) {
    std::ostringstream msg;
    msg << op << ": cache was made for an input of shape " << to_string(cache.shape) << " but input has shape "
        << to_string(input.shape());
    throw InvalidArgument(msg.str());
  }
  check_pair(input, target, op);
  check_reduction(cache.reduction, op);
  if (cache.reduction == Reduction::none) require_shape(dy, cache.shape, op, "dy (must match y, reduction none)");
  else if (dy.rank() != 0) {
    std::ostringstream msg;
    msg << op << ": dy (must match y, reduction " << name(cache.reduction) << ") must have shape (); got "
        << to_string(dy.shape());
    throw InvalidArgument(msg.str());
  }
}

/// Checks an optional operand of a backward against what the forward had.
template <class S>
Broadcast check_operand(const Tensor<S>* t, bool had, const Shape& shape, const LossCache& cache, const char* op,
                        const char* what) {
  if (!t != !had) {
    std::ostringstream msg;
    msg << op << ": the forward had " << (had ? "a " : "no ") << what << " but the backward was given "
        << (t ? "one" : "none");
    throw InvalidArgument(msg.str());
  }
  if (!t) return {};
  if (!same_shape(t->shape(), shape)) {
    std::ostringstream msg;
    msg << op << ": " << what << " has shape " << to_string(t->shape()) << " but the forward's had shape "
        << to_string(shape);
    throw InvalidArgument(msg.str());
  }
  return broadcast(t->shape(), cache.shape, op, what);
}

/// \f$\partial L/\partial\ell_i = c\f$ for mean and sum, one value: \f$dy/n\f$ or \f$dy\f$.
template <class S>
S reduced_scale(const Tensor<S>& dy, const LossCache& cache) {
  if (cache.reduction == Reduction::none) return S(0);
  return cache.reduction == Reduction::mean ? S(dy[0] / S(static_cast<double>(cache.n))) : dy[0];
}

/// Writes the reduction of the per-element losses `ell(i)` into `y`.
template <class S, class Ell>
void reduce_into(Index n, Reduction r, Tensor<S>& y, const Ell& ell) {
  if (r == Reduction::none) {
    for (Index i = 0; i < n; ++i) y[i] = ell(i);
    return;
  }
  Acc<S> acc = Acc<S>(0);
  for (Index i = 0; i < n; ++i) acc += Acc<S>(ell(i));
  // A mean over n = 0 values is 0/0 = NaN, as PyTorch returns.
  y[0] = r == Reduction::mean ? S(acc / Acc<S>(static_cast<double>(n))) : S(acc);
}

constexpr const char* kMSE = "mse_loss";
constexpr const char* kBCE = "binary_cross_entropy_with_logits";

}  // namespace detail::losses

// ================================================================================================
// mse_loss

/// \brief mse_loss forward writing into caller-provided `y` and `cache`; allocates nothing when
/// the cache is reused.
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number.
/// \param input   \f$x\f$, any shape
/// \param target  \f$t\f$, shape of `input`
/// \param cfg     the reduction
/// \param y       output: `()` for mean and sum, the input's shape for none
/// \param cache   output: shapes and the reduction
/// \throws InvalidArgument if the shapes differ, `y` has the wrong shape, or the reduction is not one of the three.
template <class Scalar>
void mse_loss_forward_into(const Tensor<Scalar>& input, const Tensor<Scalar>& target, const MSELossConfig& cfg,
                           Tensor<Scalar>& y, LossCache& cache) {
  using namespace detail::losses;
  check_pair(input, target, kMSE);
  begin_forward(input, cfg.reduction, y, cache, kMSE);
  cache.has_weight = cache.has_pos_weight = false;
  reduce_into(input.size(), cfg.reduction, y, [&](Index i) {
    //! [mse_loss.forward]
    // ℓᵢ = (xᵢ − tᵢ)², then the reduction (reduce_into)
    const Scalar d = input[i] - target[i];
    return Scalar(d * d);
    //! [mse_loss.forward]
  });
}

/// \brief mse_loss forward (allocating wrapper of mse_loss_forward_into()).
/// \param input   \f$x\f$, any shape
/// \param target  \f$t\f$, shape of `input`
/// \param cfg     the reduction (default mean)
template <class Scalar>
LossForward<Scalar> mse_loss_forward(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                                     const MSELossConfig& cfg = {}) {
  detail::losses::check_reduction(cfg.reduction, detail::losses::kMSE);
  LossForward<Scalar> out{detail::losses::output_for(input, cfg.reduction), {}};
  mse_loss_forward_into(input, target, cfg, out.y, out.cache);
  return out;
}

/// \brief mse_loss staged backward: one named step per chain-rule term.
/// \param dy      upstream gradient, shape of `y`
/// \param input   the forward's input
/// \param target  the forward's target
/// \param cache   from the forward
/// \param scales  term scales for the negative controls; leave at the default
/// \param trace   if not `nullptr`, receives the intermediate terms
/// \throws InvalidArgument if an argument does not match the cache.
template <class Scalar>
LossGrads<Scalar> mse_loss_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                           const Tensor<Scalar>& target, const LossCache& cache,
                                           const MSELossTermScales& scales = {},
                                           MSELossStagedTrace<Scalar>* trace = nullptr) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kMSE);
  const Index n = cache.n;
  LossGrads<Scalar> g{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  MSELossStagedTrace<Scalar> t{Tensor<Scalar>(cache.shape), Tensor<Scalar>(cache.shape)};
  const bool none = cache.reduction == Reduction::none;
  const Scalar c = reduced_scale(dy, cache);
  for (Index i = 0; i < n; ++i) {
    // Step 1. The reduction: y = Σℓ (sum), Σℓ/n (mean) or ℓ (none).
    //! [mse_loss.dreduce]
    // ∂L/∂ℓᵢ = dy/n (mean), dy (sum), dyᵢ (none)
    t.dl_dl[i] = Scalar(scales.dreduce) * (none ? dy[i] : c);
    //! [mse_loss.dreduce]
    // Step 2. The square ℓ = d².
    //! [mse_loss.dl_dd]
    // ∂L/∂dᵢ = 2dᵢ · ∂L/∂ℓᵢ, d = x − t
    t.dl_dd[i] = Scalar(scales.dl_dd) * Scalar(2) * (input[i] - target[i]) * t.dl_dl[i];
    //! [mse_loss.dl_dd]
    // Step 3. d = x − t: ∂d/∂x = 1 and ∂d/∂t = −1.
    //! [mse_loss.dx]
    // ∂L/∂xᵢ = ∂L/∂dᵢ
    g.dx[i] = t.dl_dd[i];
    //! [mse_loss.dx]
    //! [mse_loss.dtarget]
    // ∂L/∂tᵢ = −∂L/∂dᵢ
    g.dtarget[i] = -t.dl_dd[i];
    //! [mse_loss.dtarget]
  }
  if (trace) *trace = std::move(t);
  return g;
}

/// \brief mse_loss fused backward into caller-provided buffers; allocates nothing.
///
/// \f$dx_i = 2(x_i - t_i)\,c_i\f$, \f$dt_i = -dx_i\f$, with \f$c_i = dy_i\f$ (none), \f$dy\f$ (sum), \f$dy/n\f$ (mean).
/// \param dy       upstream gradient, shape of `y`
/// \param input    the forward's input
/// \param target   the forward's target
/// \param cache    from the forward
/// \param dx       output, shape of `input`
/// \param dtarget  output, shape of `target`, or `nullptr` when the target's gradient is not wanted
/// \throws InvalidArgument on mismatched shapes of any argument or output.
template <class Scalar>
void mse_loss_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                            const LossCache& cache, Tensor<Scalar>& dx, NoDeduce<Tensor<Scalar>>* dtarget = nullptr) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kMSE);
  require_shape(dx, cache.shape, kMSE, "dx (output)");
  if (dtarget) require_shape(*dtarget, cache.shape, kMSE, "dtarget (output)");
  const bool none = cache.reduction == Reduction::none;
  const Scalar c = reduced_scale(dy, cache);
  for (Index i = 0; i < cache.n; ++i) {
    //! [mse_loss.dx_fused]
    // dx = 2(x − t)·c, dt = −dx
    const Scalar v = Scalar(2) * (input[i] - target[i]) * (none ? dy[i] : c);
    dx[i] = v;
    if (dtarget) (*dtarget)[i] = -v;
    //! [mse_loss.dx_fused]
  }
}

/// \brief mse_loss fused backward (allocating wrapper of mse_loss_backward_into()).
template <class Scalar>
LossGrads<Scalar> mse_loss_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                    const Tensor<Scalar>& target, const LossCache& cache) {
  LossGrads<Scalar> g{Tensor<Scalar>(input.shape()), Tensor<Scalar>(input.shape())};
  mse_loss_backward_into(dy, input, target, cache, g.dx, &g.dtarget);
  return g;
}

// ================================================================================================
// binary_cross_entropy_with_logits

/// \brief binary_cross_entropy_with_logits forward into caller-provided `y` and `cache`;
/// allocates nothing when the cache is reused.
///
/// Without `pos_weight`: \f$h_i = \max(x_i, 0) - x_i t_i + \log(1 + e^{-|x_i|})\f$; with it,
/// PyTorch's form \f$h_i = (1 - t_i)x_i + l_i\,u_i\f$, \f$l_i = 1 + (p_i - 1)t_i\f$,
/// \f$u_i = \max(-x_i, 0) + \log(1 + e^{-|x_i|})\f$; then \f$\ell_i = w_i h_i\f$ and the reduction.
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number.
/// \param input       logits \f$x\f$, any shape
/// \param target      \f$t\f$, shape of `input` (probabilities; any real value is accepted, as in PyTorch)
/// \param weight      `nullptr`, or \f$w\f$ of a shape that broadcasts to the input's
/// \param pos_weight  `nullptr`, or \f$p\f$ of a shape that broadcasts to the input's
/// \param cfg         the reduction
/// \param y           output: `()` for mean and sum, the input's shape for none
/// \param cache       output: shapes and the reduction
/// \throws InvalidArgument on a target of another shape, a weight or pos_weight that does not
///         broadcast, `y` of the wrong shape, or a reduction that is not one of the three.
template <class Scalar>
void binary_cross_entropy_with_logits_forward_into(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                                                   const NoDeduce<Tensor<Scalar>>* weight, const NoDeduce<Tensor<Scalar>>* pos_weight,
                                                   const BCEWithLogitsConfig& cfg, Tensor<Scalar>& y,
                                                   LossCache& cache) {
  using namespace detail::losses;
  using std::exp;
  check_pair(input, target, kBCE);
  const Broadcast bw = weight ? broadcast(weight->shape(), input.shape(), kBCE, "weight") : Broadcast{};
  const Broadcast bp = pos_weight ? broadcast(pos_weight->shape(), input.shape(), kBCE, "pos_weight") : Broadcast{};
  begin_forward(input, cfg.reduction, y, cache, kBCE);
  cache.has_weight = weight != nullptr;
  cache.has_pos_weight = pos_weight != nullptr;
  if (weight && !same_shape(cache.weight_shape, weight->shape())) cache.weight_shape = weight->shape();
  if (pos_weight && !same_shape(cache.pos_weight_shape, pos_weight->shape()))
    cache.pos_weight_shape = pos_weight->shape();
  reduce_into(input.size(), cfg.reduction, y, [&](Index i) {
    const Scalar& x = input[i];
    const Scalar& t = target[i];
    //! [bce_with_logits.forward]
    // Stable: no exp of a positive number. max(x, 0) and |x| branch on the real part.
    const bool pos = real_value(x) >= 0;
    const Scalar sp = log1p_of(Scalar(exp(pos ? Scalar(-x) : x)));  // log(1 + e^(−|x|))
    Scalar h;
    if (!pos_weight) {
      h = (pos ? x : Scalar(0)) - x * t + sp;  // max(x, 0) − x·t + log(1 + e^(−|x|))
    } else {  // (1 − t)·x + (1 + (p − 1)·t)·u,  u = softplus(−x) = max(−x, 0) + log(1 + e^(−|x|))
      const Scalar p = (*pos_weight)[bp(i)];
      h = (Scalar(1) - t) * x + (Scalar(1) + (p - Scalar(1)) * t) * ((pos ? Scalar(0) : Scalar(-x)) + sp);
    }
    return weight ? Scalar((*weight)[bw(i)] * h) : h;  // ℓ = w·h
    //! [bce_with_logits.forward]
  });
}

/// \brief binary_cross_entropy_with_logits forward (allocating wrapper).
/// \param input       logits \f$x\f$, any shape
/// \param target      \f$t\f$, shape of `input`
/// \param weight      `nullptr`, or a shape that broadcasts to the input's
/// \param pos_weight  `nullptr`, or a shape that broadcasts to the input's
/// \param cfg         the reduction (default mean)
template <class Scalar>
LossForward<Scalar> binary_cross_entropy_with_logits_forward(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                                                             const NoDeduce<Tensor<Scalar>>* weight = nullptr,
                                                             const NoDeduce<Tensor<Scalar>>* pos_weight = nullptr,
                                                             const BCEWithLogitsConfig& cfg = {}) {
  detail::losses::check_reduction(cfg.reduction, detail::losses::kBCE);
  LossForward<Scalar> out{detail::losses::output_for(input, cfg.reduction), {}};
  binary_cross_entropy_with_logits_forward_into(input, target, weight, pos_weight, cfg, out.y, out.cache);
  return out;
}

/// \brief binary_cross_entropy_with_logits staged backward: one named step per chain-rule term
/// of the graph \f$x, t \to u = \mathrm{softplus}(-x),\ l = 1 + (p - 1)t \to h = (1 - t)x + l u
/// \to \ell = w h \to y\f$ (\f$p = 1\f$, \f$w = 1\f$ when absent).
/// \param dy          upstream gradient, shape of `y`
/// \param input       the forward's input
/// \param target      the forward's target
/// \param weight      the forward's weight (or `nullptr` if it had none)
/// \param pos_weight  the forward's pos_weight (or `nullptr` if it had none)
/// \param cache       from the forward
/// \param scales      term scales for the negative controls; leave at the default
/// \param trace       if not `nullptr`, receives the intermediate terms
/// \throws InvalidArgument if an argument does not match the cache.
template <class Scalar>
LossGrads<Scalar> binary_cross_entropy_with_logits_backward_staged(
    const Tensor<Scalar>& dy, const Tensor<Scalar>& input, const Tensor<Scalar>& target, const NoDeduce<Tensor<Scalar>>* weight,
    const NoDeduce<Tensor<Scalar>>* pos_weight, const LossCache& cache, const BCEWithLogitsTermScales& scales = {},
    BCEWithLogitsStagedTrace<Scalar>* trace = nullptr) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kBCE);
  const Broadcast bw = check_operand(weight, cache.has_weight, cache.weight_shape, cache, kBCE, "weight");
  const Broadcast bp = check_operand(pos_weight, cache.has_pos_weight, cache.pos_weight_shape, cache, kBCE, "pos_weight");
  const Shape& s = cache.shape;
  LossGrads<Scalar> g{Tensor<Scalar>(s), Tensor<Scalar>(s)};
  BCEWithLogitsStagedTrace<Scalar> tr{Tensor<Scalar>(s), Tensor<Scalar>(s), Tensor<Scalar>(s), Tensor<Scalar>(s)};
  const bool none = cache.reduction == Reduction::none;
  const Scalar c = reduced_scale(dy, cache);
  for (Index i = 0; i < cache.n; ++i) {
    const Scalar x = input[i], t = target[i];
    const Scalar w = weight ? (*weight)[bw(i)] : Scalar(1), p = pos_weight ? (*pos_weight)[bp(i)] : Scalar(1);
    // Step 1. The reduction.
    //! [bce_with_logits.dreduce]
    // ∂L/∂ℓᵢ = dy/n (mean), dy (sum), dyᵢ (none)
    tr.dl_dl[i] = Scalar(scales.dreduce) * (none ? dy[i] : c);
    //! [bce_with_logits.dreduce]
    // Step 2. The weight: ℓ = w·h.
    //! [bce_with_logits.dl_dh]
    // ∂L/∂hᵢ = wᵢ ∂L/∂ℓᵢ
    tr.dl_dh[i] = Scalar(scales.dl_dh) * w * tr.dl_dl[i];
    //! [bce_with_logits.dl_dh]
    // Step 3. The log weight l = 1 + (p − 1)t multiplies u in h = (1 − t)x + l·u.
    //! [bce_with_logits.dl_du]
    // ∂L/∂uᵢ = lᵢ ∂L/∂hᵢ
    const Scalar l = Scalar(1) + (p - Scalar(1)) * t;
    tr.dl_du[i] = Scalar(scales.dl_du) * l * tr.dl_dh[i];
    //! [bce_with_logits.dl_du]
    // Step 4. u = softplus(−x).
    //! [bce_with_logits.du_dx]
    // ∂uᵢ/∂xᵢ = −σ(−xᵢ)
    tr.du_dx[i] = Scalar(scales.du_dx) * -sigmoid(Scalar(-x));
    //! [bce_with_logits.du_dx]
    // Step 5. x reaches h directly (∂h/∂x = 1 − t) and through u.
    //! [bce_with_logits.dx]
    // ∂L/∂xᵢ = (1 − tᵢ) ∂L/∂hᵢ + ∂L/∂uᵢ · ∂uᵢ/∂xᵢ
    g.dx[i] = (Scalar(1) - t) * tr.dl_dh[i] + tr.dl_du[i] * tr.du_dx[i];
    //! [bce_with_logits.dx]
    // Step 6. t reaches h directly (∂h/∂t = −x) and through l (∂l/∂t = p − 1, ∂h/∂l = u).
    //! [bce_with_logits.dtarget]
    // ∂L/∂tᵢ = (−xᵢ + (pᵢ − 1) uᵢ) ∂L/∂hᵢ
    g.dtarget[i] = (-x + (p - Scalar(1)) * softplus_neg(x)) * tr.dl_dh[i];
    //! [bce_with_logits.dtarget]
  }
  if (trace) *trace = std::move(tr);
  return g;
}

/// \brief binary_cross_entropy_with_logits fused backward into caller-provided buffers;
/// allocates nothing.
///
/// PyTorch's form: \f$dx_i = c_i w_i\,\big((1 + (p_i - 1)t_i)\,\sigma(x_i) - p_i t_i\big)\f$ and
/// \f$dt_i = c_i w_i\,\big((p_i - 1)\,\mathrm{softplus}(-x_i) - x_i\big)\f$.
/// \param dy          upstream gradient, shape of `y`
/// \param input       the forward's input
/// \param target      the forward's target
/// \param weight      the forward's weight (or `nullptr`)
/// \param pos_weight  the forward's pos_weight (or `nullptr`)
/// \param cache       from the forward
/// \param dx          output, shape of `input`
/// \param dtarget     output, shape of `target`, or `nullptr` when not wanted
/// \throws InvalidArgument on mismatched shapes of any argument or output.
template <class Scalar>
void binary_cross_entropy_with_logits_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                                    const Tensor<Scalar>& target, const NoDeduce<Tensor<Scalar>>* weight,
                                                    const NoDeduce<Tensor<Scalar>>* pos_weight, const LossCache& cache,
                                                    Tensor<Scalar>& dx, NoDeduce<Tensor<Scalar>>* dtarget = nullptr) {
  using namespace detail::losses;
  check_backward(dy, input, target, cache, kBCE);
  const Broadcast bw = check_operand(weight, cache.has_weight, cache.weight_shape, cache, kBCE, "weight");
  const Broadcast bp = check_operand(pos_weight, cache.has_pos_weight, cache.pos_weight_shape, cache, kBCE, "pos_weight");
  require_shape(dx, cache.shape, kBCE, "dx (output)");
  if (dtarget) require_shape(*dtarget, cache.shape, kBCE, "dtarget (output)");
  const bool none = cache.reduction == Reduction::none;
  const Scalar c = reduced_scale(dy, cache);
  for (Index i = 0; i < cache.n; ++i) {
    const Scalar x = input[i], t = target[i];
    const Scalar cw = (none ? dy[i] : c) * (weight ? (*weight)[bw(i)] : Scalar(1));
    //! [bce_with_logits.dx_fused]
    // dx = c·w·((1 + (p − 1)t)·σ(x) − p·t); without pos_weight c·w·(σ(x) − t)
    if (!pos_weight) {
      dx[i] = cw * (sigmoid(x) - t);
      if (dtarget) (*dtarget)[i] = -cw * x;
    } else {
      const Scalar p = (*pos_weight)[bp(i)];
      dx[i] = cw * ((Scalar(1) + (p - Scalar(1)) * t) * sigmoid(x) - p * t);
      if (dtarget) (*dtarget)[i] = cw * ((p - Scalar(1)) * softplus_neg(x) - x);
    }
    //! [bce_with_logits.dx_fused]
  }
}

/// \brief binary_cross_entropy_with_logits fused backward (allocating wrapper).
template <class Scalar>
LossGrads<Scalar> binary_cross_entropy_with_logits_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                                            const Tensor<Scalar>& target, const NoDeduce<Tensor<Scalar>>* weight,
                                                            const NoDeduce<Tensor<Scalar>>* pos_weight, const LossCache& cache) {
  LossGrads<Scalar> g{Tensor<Scalar>(input.shape()), Tensor<Scalar>(input.shape())};
  binary_cross_entropy_with_logits_backward_into(dy, input, target, weight, pos_weight, cache, g.dx, &g.dtarget);
  return g;
}

using LossForwardF = LossForward<float>;   ///< float alias
using LossForwardD = LossForward<double>;  ///< double alias

}  // namespace gradproof::ops
