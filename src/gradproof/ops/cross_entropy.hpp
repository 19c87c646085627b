/// \file
/// \brief NLL loss and cross-entropy (class-index and class-probability targets): forward, staged
/// and fused backward.
///
/// Semantics of PyTorch's `torch.nn.functional.nll_loss(input, target, weight, ignore_index=-100,
/// reduction='mean')` and `cross_entropy(input, target, weight, ignore_index=-100,
/// reduction='mean', label_smoothing=0.0)`. Both are written with one weight per (sample, class),
/// \f$q_{r,c}\f$ (derived in `derivations/softmax.md`):
/// \f[ \ell_r = -\sum_c q_{r,c}\,\log p_{r,c}, \qquad
///     L = (\ell_r)_r \text{ (none)}, \quad \sum_r \ell_r \text{ (sum)}, \quad
///         \sum_r \ell_r / D \text{ (mean)} \f]
/// with, for a class index \f$t_r\f$ (none where \f$t_r\f$ = `ignore_index`),
/// \f$q_{r,c} = (1-\varepsilon)\,w_{t_r}[c = t_r] + \tfrac{\varepsilon}{C} w_c\f$ and
/// \f$D = \sum_{r \text{ not ignored}} w_{t_r}\f$; for probabilities \f$t_{r,c}\f$,
/// \f$q_{r,c} = w_c\big((1-\varepsilon)t_{r,c} + \tfrac{\varepsilon}{C}\big)\f$ and \f$D = R\f$.
/// NLL is the class-index case with \f$\varepsilon = 0\f$ and the input taken as \f$\log p\f$;
/// cross-entropy takes \f$\log p\f$ = log_softmax(input) over the class axis. \f$w = 1\f$ without
/// `weight`.
///
/// Shape legend:
/// - `input`, `dx`: `(N, C)`, `(N, C, d1, ...)` or `(C)`; the class axis is 1 (0 for rank 1);
///   \f$R\f$ = `numel / C` samples, laid out as AxisRows (dim 1) says;
/// - class-index `target`: `(N, d1, ...)` (`()` for rank 1), values in `[0, C)` or `ignore_index`;
/// - class-probability `target`: the shape of `input`;
/// - `weight`: `(C)`;
/// - the loss and `dy`: the shape of a class-index target for `none`, `()` for `mean` and `sum`.
#pragma once

#include "gradproof/ops/log_softmax.hpp"
#include "gradproof/ops/losses.hpp"

#include <cmath>
#include <limits>
#include <sstream>
#include <type_traits>

namespace gradproof::ops {

// Reduction (none, mean, sum: the values 0, 1, 2 of `at::Reduction`) is the losses' (ops/losses.hpp).

/// Hyper-parameters of nll_loss (PyTorch's names and defaults).
struct NllLossConfig {
  Index ignore_index = -100;             ///< a target of this value contributes nothing
  Reduction reduction = Reduction::mean;  ///< none, mean (over the summed weights) or sum
};

/// Hyper-parameters of cross_entropy (PyTorch's names and defaults).
struct CrossEntropyConfig {
  Index ignore_index = -100;             ///< a class-index target of this value contributes nothing
  Reduction reduction = Reduction::mean;  ///< none, mean or sum
  double label_smoothing = 0.0;           ///< \f$\varepsilon \in [0, 1]\f$: the target mixed with the uniform one
};

/// What the backward passes need from the forward pass (both losses).
template <class Scalar>
struct ClassLossCache {
  Shape shape;            ///< shape of the input
  AxisRows rows;          ///< the samples: rows along the class axis
  Tensor<Scalar> max;     ///< `(R)`: cross-entropy's shift \f$m_r\f$ (empty for NLL)
  Tensor<Scalar> sum;     ///< `(R)`: cross-entropy's \f$s_r = \sum_c \exp(x_{r,c} - m_r)\f$ (empty for NLL)
  Tensor<Index> argmax;   ///< `(R)`: first index of the maximum (empty for NLL)
  Tensor<Scalar> qsum;    ///< `(R)`: \f$Q_r = \sum_c q_{r,c}\f$
  Scalar divisor = Scalar(1);  ///< \f$D\f$ for mean (1 otherwise); 0 when every target is ignored
  Reduction reduction = Reduction::mean;  ///< the reduction of the forward
};

/// Output of a forward pass: the loss and the cache for backward.
template <class Scalar>
struct ClassLossForward {
  Tensor<Scalar> loss;      ///< `()` for mean and sum, the target's shape for none
  ClassLossCache<Scalar> cache;  ///< per-sample statistics
};

/// Gradient of the loss with respect to the input (targets and weights are constants).
template <class Scalar>
struct ClassLossGrads {
  Tensor<Scalar> dx;  ///< shape of the input
};

/// Term scales of NLL's staged backward (1 is the derivation; the negative controls drop or flip one).
struct NllLossTermScales {
  double dreduce = 1;  ///< nll_loss.dreduce: \f$\partial L/\partial \ell_r\f$
  double dpick = 1;    ///< nll_loss.dpick: \f$\partial \ell_r/\partial x_{r,c} = -q_{r,c}\f$
};

/// Term scales of cross-entropy's staged backward.
struct CrossEntropyTermScales {
  double dreduce = 1;  ///< cross_entropy.dreduce: \f$g_r = \partial L/\partial \ell_r\f$
  double dlogp = 1;    ///< cross_entropy.dlogp: the NLL edge \f$-g_r q_{r,c}\f$
  double dlse = 1;     ///< cross_entropy.dlse: the edge through the log-sum-exp
  double dshift = 1;   ///< cross_entropy.dshift: the max shift (zero)
};

/// The intermediate terms of cross-entropy's staged backward.
template <class Scalar>
struct CrossEntropyStagedTrace {
  Tensor<Scalar> g;       ///< `(R)`: \f$g_r = \partial L/\partial \ell_r\f$
  Tensor<Scalar> dlogp;   ///< shape of `x`: \f$\partial L/\partial \log p_{r,c}\f$
  Tensor<Scalar> dlse;    ///< `(R)`: \f$\partial L/\partial \lambda_r\f$, \f$\lambda_r = \log s_r\f$
  Tensor<Scalar> dz;      ///< shape of `x`: \f$\partial L/\partial z_{r,c}\f$
  Tensor<Scalar> dshift;  ///< `(R)`: \f$\partial L/\partial m_r\f$
};

namespace detail::xent {

/// The targets of one call, as the weights \f$q_{r,c}\f$ of the loss.
template <class Scalar>
struct Targets {
  AxisRows rows;
  const Index* index = nullptr;    // class indices (R), or
  const Scalar* prob = nullptr;    // probabilities, laid out like x
  const Scalar* weight = nullptr;  // (C) or none
  Index ignore_index = -100;
  double eps = 0;
  Scalar wsum = Scalar(0);  // Σ_c w_c
  Scalar w(Index c) const { return weight ? weight[c] : Scalar(1); }
  bool ignored(Index r) const { return index && index[r] == ignore_index; }
  /// q_{r,c}
  Scalar q(Index r, Index c) const {
    const Scalar b = Scalar(eps / static_cast<double>(rows.M));
    if (index) {
      const Index t = index[r];
      if (t == ignore_index) return Scalar(0);
      return (c == t ? Scalar(1 - eps) * w(t) : Scalar(0)) + (eps > 0 ? b * w(c) : Scalar(0));
    }
    return w(c) * (Scalar(1 - eps) * prob[rows.at(r, c)] + b);
  }
  /// Q_r = Σ_c q_{r,c}
  Scalar Q(Index r) const {
    if (index) {
      if (ignored(r)) return Scalar(0);
      return Scalar(1 - eps) * w(index[r]) + Scalar(eps / static_cast<double>(rows.M)) * wsum;
    }
    Scalar a = Scalar(0);
    for (Index c = 0; c < rows.M; ++c) a += q(r, c);
    return a;
  }
  /// The weight of sample r in the divisor of mean: w_{t_r} (0 if ignored), or 1 for probabilities.
  Scalar mean_weight(Index r) const {
    if (!index) return Scalar(1);
    return ignored(r) ? Scalar(0) : w(index[r]);
  }
};

inline AxisRows sample_rows(const Shape& shape, const char* op) {
  if (shape.empty()) throw InvalidArgument(std::string(op) + ": input must have rank >= 1 (C), (N, C) or (N, C, d1, ...); got shape ()");
  return axis_rows(shape, shape.size() == 1 ? 0 : 1, op, "input");
}

/// Whether `t` is the shape of a class-index target for an input of shape `in` (allocates nothing).
inline bool is_target_shape(const Shape& in, ShapeView t) {
  if (in.empty()) return false;
  const std::size_t cls = in.size() == 1 ? 0 : 1;
  if (t.size() + 1 != in.size()) return false;
  for (std::size_t k = 0, j = 0; k < in.size(); ++k)
    if (k != cls && in[k] != t[j++]) return false;
  return true;
}

/// The shape of a class-index target: the input's without the class axis.
inline Shape target_shape(const Shape& shape) {
  Shape t;
  for (std::size_t k = 0; k < shape.size(); ++k)
    if (k != (shape.size() == 1 ? 0u : 1u)) t.push_back(shape[k]);
  return t;
}

template <class Scalar>
Targets<Scalar> index_targets(const Shape& shape, const Tensor<Index>& target, Opt<const Tensor<Scalar>> weight,
                              Index ignore_index, double eps, const char* op) {
  Targets<Scalar> t;
  t.rows = sample_rows(shape, op);
  if (!is_target_shape(shape, target.shape())) {
    std::ostringstream msg;
    msg << op << ": target (class indices) must have shape " << to_string(target_shape(shape)) << " for input of shape "
        << to_string(shape) << "; got " << to_string(target.shape());
    throw InvalidArgument(msg.str());
  }
  const Index C = t.rows.M;
  for (Index r = 0; r < target.size(); ++r) {
    const Index v = target[r];
    if (v != ignore_index && (v < 0 || v >= C)) {
      std::ostringstream msg;
      msg << op << ": target value " << v << " at flat index " << r << " is out of range [0, " << C
          << ") (C = " << C << ", ignore_index = " << ignore_index << ")";
      throw InvalidArgument(msg.str());
    }
  }
  if (weight) require_shape(*weight, vector_shape(C), op, "weight (one per class, C)");
  t.index = target.data();
  t.weight = weight ? weight->data() : nullptr;
  t.ignore_index = ignore_index;
  t.eps = eps;
  for (Index c = 0; c < C; ++c) t.wsum += t.w(c);
  return t;
}

inline void check_smoothing(double eps) {
  if (!(eps >= 0.0 && eps <= 1.0)) {
    std::ostringstream msg;
    msg << "cross_entropy: label_smoothing must be in [0, 1]; got " << eps;
    throw InvalidArgument(msg.str());
  }
}

inline Shape loss_shape(const Shape& target_shape, Reduction red) {
  return red == Reduction::none ? target_shape : Shape{};
}

/// The reduction of the per-sample losses ℓ into `loss`, and the divisor D into the cache.
template <class Scalar, class Ell>
void reduce(const Targets<Scalar>& t, Reduction red, const Ell& ell, Tensor<Scalar>& loss, ClassLossCache<Scalar>& cache) {
  const Index R = t.rows.R();
  cache.reduction = red;
  if (red == Reduction::none) {
    for (Index r = 0; r < R; ++r) loss[r] = ell(r);
    cache.divisor = Scalar(1);
    return;
  }
  Scalar total = Scalar(0), D = Scalar(0);
  for (Index r = 0; r < R; ++r) total += ell(r), D += t.mean_weight(r);
  cache.divisor = red == Reduction::mean ? D : Scalar(1);
  // Every target ignored: D = 0 and mean is 0/0 = NaN, as PyTorch returns it.
  loss[0] = red == Reduction::mean ? total / D : total;
}

template <class Scalar>
void prepare_cache(ClassLossCache<Scalar>& cache, const Shape& shape, const AxisRows& rows, bool softmax) {
  const Index R = rows.R();
  if (!same_shape(cache.shape, shape)) cache.shape = shape;
  cache.rows = rows;
  if (!same_shape(cache.qsum.shape(), vector_shape(R))) cache.qsum = Tensor<Scalar>({R});
  if (softmax && !same_shape(cache.sum.shape(), vector_shape(R))) {
    cache.max = Tensor<Scalar>({R});
    cache.sum = Tensor<Scalar>({R});
    cache.argmax = Tensor<Index>({R});
  }
}

/// g_r = ∂L/∂ℓ_r: dy_r (none), dy (sum), dy / D (mean); 0 for an ignored sample (whose ℓ_r is a
/// constant 0, so that 0/0 at D = 0 gives a zero gradient, as PyTorch's).
template <class Scalar>
Scalar upstream(const Tensor<Scalar>& dy, const ClassLossCache<Scalar>& cache, const Targets<Scalar>& t, Index r) {
  if (t.ignored(r)) return Scalar(0);
  if (cache.reduction == Reduction::none) return dy[r];
  return cache.reduction == Reduction::mean ? dy[0] / cache.divisor : dy[0];
}

template <class Scalar>
void check_loss(const Tensor<Scalar>& loss, const Shape& in, Reduction red, const char* op) {
  const bool ok = red == Reduction::none ? is_target_shape(in, loss.shape()) : loss.shape().empty();
  if (!ok) require_shape(loss, loss_shape(target_shape(in), red), op, "loss (output)");
}

template <class Scalar>
void check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const ClassLossCache<Scalar>& cache, const char* op) {
  if (!same_shape(x.shape(), cache.shape) || cache.qsum.size() != cache.rows.R()) {
    std::ostringstream msg;
    msg << op << ": cache was made for an input of shape " << to_string(cache.shape) << " but input has shape "
        << to_string(x.shape());
    throw InvalidArgument(msg.str());
  }
  const bool ok = cache.reduction == Reduction::none ? is_target_shape(cache.shape, dy.shape()) : dy.shape().empty();
  if (!ok) require_shape(dy, loss_shape(target_shape(cache.shape), cache.reduction), op, "dy (must match the loss)");
}

}  // namespace detail::xent

// ---- nll_loss ----------------------------------------------------------------------------------

/// \brief NLL forward into caller-provided `loss` and `cache`.
/// \param input   log-probabilities, `(N, C)`, `(N, C, d1, ...)` or `(C)`
/// \param target  class indices, `(N, d1, ...)` (or `()`), in `[0, C)` or `ignore_index`
/// \param weight  `(C)` or `nullptr`
/// \param cfg     `ignore_index`, `reduction`
/// \param loss    output: `()` for mean and sum, the target's shape for none
/// \param cache   output
/// \throws InvalidArgument on a target of the wrong shape, a class index out of range, a weight
///         not of shape `(C)`, or `loss` of the wrong shape.
template <class Scalar>
void nll_loss_forward_into(const Tensor<Scalar>& input, const Tensor<Index>& target, Opt<const Tensor<Scalar>> weight,
                           const NllLossConfig& cfg, Tensor<Scalar>& loss, ClassLossCache<Scalar>& cache) {
  const auto t = detail::xent::index_targets<Scalar>(input.shape(), target, weight, cfg.ignore_index, 0.0, "nll_loss");
  detail::xent::check_loss(loss, input.shape(), cfg.reduction, "nll_loss");
  detail::xent::prepare_cache(cache, input.shape(), t.rows, false);
  for (Index r = 0; r < t.rows.R(); ++r) cache.qsum[r] = t.Q(r);
  //! [nll_loss.forward]
  // ℓ_r = −w_t x_{r,t} (0 where t = ignore_index), then none / sum / mean over Σ w_t.
  const auto ell = [&](Index r) {
    return t.ignored(r) ? Scalar(0) : -t.w(t.index[r]) * input[t.rows.at(r, t.index[r])];
  };
  detail::xent::reduce(t, cfg.reduction, ell, loss, cache);
  //! [nll_loss.forward]
}

/// \brief NLL forward (allocating wrapper of nll_loss_forward_into()).
template <class Scalar>
ClassLossForward<Scalar> nll_loss_forward(const Tensor<Scalar>& input, const Tensor<Index>& target,
                                     Opt<const Tensor<Scalar>> weight = nullptr, const NllLossConfig& cfg = {}) {
  ClassLossForward<Scalar> out{Tensor<Scalar>(detail::xent::loss_shape(target.shape(), cfg.reduction)), {}};
  nll_loss_forward_into(input, target, weight, cfg, out.loss, out.cache);
  return out;
}

/// \brief NLL staged backward: the reduction's edge, then the pick of the target's entry.
/// \param dy      upstream gradient, the shape of the loss
/// \param input   the forward input (only its shape is read)
/// \param target  the forward's class indices
/// \param weight  the forward's weight or `nullptr`
/// \param cache   from the forward pass
/// \param ignore_index  the forward's ignore_index (its samples get no gradient)
/// \param scales  term scales for negative controls
/// \throws InvalidArgument if an argument does not match the forward's.
template <class Scalar>
ClassLossGrads<Scalar> nll_loss_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                           const Tensor<Index>& target, Opt<const Tensor<Scalar>> weight,
                                           const ClassLossCache<Scalar>& cache, Index ignore_index = -100,
                                           const NllLossTermScales& scales = {}) {
  detail::xent::check_backward(dy, input, cache, "nll_loss");
  const auto t = detail::xent::index_targets<Scalar>(input.shape(), target, weight, ignore_index, 0.0, "nll_loss");
  ClassLossGrads<Scalar> g{Tensor<Scalar>(input.shape(), Scalar(0))};
  for (Index r = 0; r < t.rows.R(); ++r) {
    // Step 1. The reduction: ℓ_r reaches L with weight 1 (none, sum) or 1/D (mean).
    //! [nll_loss.dreduce]
    // g_r = ∂L/∂ℓ_r = dy_r | dy | dy/D  (0 for an ignored sample)
    const Scalar gr = Scalar(scales.dreduce) * detail::xent::upstream(dy, cache, t, r);
    //! [nll_loss.dreduce]
    for (Index c = 0; c < t.rows.M; ++c) {
      // Step 2. ℓ_r = −Σ_c q_{r,c} x_{r,c}.
      //! [nll_loss.dpick]
      // ∂ℓ_r/∂x_{r,c} = −q_{r,c} (−w_t at c = t, else 0)
      const Scalar dpick = Scalar(scales.dpick) * -t.q(r, c);
      //! [nll_loss.dpick]
      //! [nll_loss.dx]
      // ∂L/∂x_{r,c} = g_r ∂ℓ_r/∂x_{r,c}
      g.dx[t.rows.at(r, c)] = gr * dpick;
      //! [nll_loss.dx]
    }
  }
  return g;
}

/// \brief NLL fused backward into a caller-provided `dx`: zeros, and \f$-g_r w_{t_r}\f$ at each
/// target entry.
/// \param dy      upstream gradient, the shape of the loss
/// \param target  the forward's class indices
/// \param weight  the forward's weight or `nullptr`
/// \param cache   from the forward pass
/// \param dx      output, the shape of the input
/// \param ignore_index  the forward's
/// \throws InvalidArgument on mismatched shapes.
template <class Scalar>
void nll_loss_backward_into(const Tensor<Scalar>& dy, const Tensor<Index>& target, Opt<const Tensor<Scalar>> weight,
                            const ClassLossCache<Scalar>& cache, Tensor<Scalar>& dx, Index ignore_index = -100) {
  detail::xent::check_backward(dy, dx, cache, "nll_loss");
  const auto t = detail::xent::index_targets<Scalar>(cache.shape, target, weight, ignore_index, 0.0, "nll_loss");
  std::fill(dx.data(), dx.data() + dx.size(), Scalar(0));
  for (Index r = 0; r < t.rows.R(); ++r) {
    if (t.ignored(r)) continue;
    //! [nll_loss.dx_fused]
    const Index c = t.index[r];
    dx[t.rows.at(r, c)] = -t.w(c) * detail::xent::upstream(dy, cache, t, r);
    //! [nll_loss.dx_fused]
  }
}

/// \brief NLL fused backward (allocating wrapper of nll_loss_backward_into()).
template <class Scalar>
ClassLossGrads<Scalar> nll_loss_backward(const Tensor<Scalar>& dy, const Tensor<Index>& target,
                                    Opt<const Tensor<Scalar>> weight, const ClassLossCache<Scalar>& cache,
                                    Index ignore_index = -100) {
  ClassLossGrads<Scalar> g{Tensor<Scalar>(cache.shape)};
  nll_loss_backward_into(dy, target, weight, cache, g.dx, ignore_index);
  return g;
}

// ---- cross_entropy -----------------------------------------------------------------------------

namespace detail::xent {

template <class Scalar>
Targets<Scalar> prob_targets(const Shape& shape, const Tensor<Scalar>& target, Opt<const Tensor<Scalar>> weight,
                             const CrossEntropyConfig& cfg) {
  Targets<Scalar> t;
  t.rows = sample_rows(shape, "cross_entropy");
  if (!same_shape(target.shape(), shape)) {
    std::ostringstream msg;
    msg << "cross_entropy: target (class probabilities) must have the shape of input " << to_string(shape)
        << "; got " << to_string(target.shape());
    throw InvalidArgument(msg.str());
  }
  if (cfg.ignore_index >= 0) {
    std::ostringstream msg;
    msg << "cross_entropy: ignore_index is not supported for class-probability targets (it must be negative); got "
        << cfg.ignore_index;
    throw InvalidArgument(msg.str());
  }
  check_smoothing(cfg.label_smoothing);
  if (weight) require_shape(*weight, vector_shape(t.rows.M), "cross_entropy", "weight (one per class, C)");
  t.prob = target.data();
  t.weight = weight ? weight->data() : nullptr;
  t.eps = cfg.label_smoothing;
  for (Index c = 0; c < t.rows.M; ++c) t.wsum += t.w(c);
  return t;
}

/// The forward of cross-entropy for either kind of target.
template <class Scalar>
void ce_forward(const Tensor<Scalar>& x, const Targets<Scalar>& t, Reduction red, Tensor<Scalar>& loss,
                ClassLossCache<Scalar>& cache) {
  using detail::softmax::real_value;
  using std::exp;
  using std::log;
  prepare_cache(cache, x.shape(), t.rows, true);
  const AxisRows& a = t.rows;
  const Index C = a.M, st = a.inner;
  const auto ell_of = [&](Index r) {
    const Scalar* xr = x.data() + a.base(r);
    //! [cross_entropy.forward]
    // log p = z − log s with z = x − m (log_softmax over the class axis), then
    // ℓ_r = −Σ_c q_{r,c} log p_{r,c}.
    Index k = 0;
    for (Index c = 1; c < C; ++c)
      if (real_value(xr[c * st]) > real_value(xr[k * st])) k = c;
    const Scalar m = Scalar(real_value(xr[k * st]));
    Scalar s = Scalar(0);
    for (Index c = 0; c < C; ++c) s += exp(xr[c * st] - m);
    const Scalar lse = log(s);
    Scalar ell = Scalar(0);
    if (t.index && t.eps == 0) {  // one-hot q: one term
      if (!t.ignored(r)) ell = -t.w(t.index[r]) * ((xr[t.index[r] * st] - m) - lse);
    } else if (!t.ignored(r)) {
      for (Index c = 0; c < C; ++c) ell -= t.q(r, c) * ((xr[c * st] - m) - lse);
    }
    //! [cross_entropy.forward]
    cache.max[r] = m;
    cache.sum[r] = s;
    cache.argmax[r] = k;
    cache.qsum[r] = t.Q(r);
    return ell;
  };
  reduce(t, red, ell_of, loss, cache);
}

template <class Scalar>
ClassLossGrads<Scalar> ce_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const Targets<Scalar>& t,
                                     const ClassLossCache<Scalar>& cache, const CrossEntropyTermScales& scales,
                                     CrossEntropyStagedTrace<Scalar>* trace) {
  using std::exp;
  check_backward(dy, x, cache, "cross_entropy");
  const AxisRows& a = cache.rows;
  const Index R = a.R(), C = a.M;
  ClassLossGrads<Scalar> g{Tensor<Scalar>(x.shape())};
  CrossEntropyStagedTrace<Scalar> tr{Tensor<Scalar>({R}), Tensor<Scalar>(x.shape()), Tensor<Scalar>({R}),
                                     Tensor<Scalar>(x.shape()), Tensor<Scalar>({R})};
  for (Index r = 0; r < R; ++r) {
    const auto at = [&](Index c) { return a.at(r, c); };
    // Step 1. The reduction.
    //! [cross_entropy.dreduce]
    // g_r = ∂L/∂ℓ_r = dy_r | dy | dy/D  (0 for an ignored sample)
    tr.g[r] = Scalar(scales.dreduce) * upstream(dy, cache, t, r);
    //! [cross_entropy.dreduce]
    // Step 2. NLL: ℓ_r = −Σ_c q_{r,c} log p_{r,c}.
    for (Index c = 0; c < C; ++c) {
      //! [cross_entropy.dlogp]
      // ∂L/∂log p_{r,c} = −g_r q_{r,c}
      tr.dlogp[at(c)] = Scalar(scales.dlogp) * -tr.g[r] * t.q(r, c);
      //! [cross_entropy.dlogp]
    }
    // Step 3. log p_c = z_c − λ, λ = log Σ exp z: λ reaches every log p_c with −1.
    //! [cross_entropy.dlse]
    // ∂L/∂λ_r = −Σ_c ∂L/∂log p_{r,c}  (= g_r Q_r)
    Scalar acc = Scalar(0);
    for (Index c = 0; c < C; ++c) acc += tr.dlogp[at(c)];
    tr.dlse[r] = Scalar(scales.dlse) * -acc;
    //! [cross_entropy.dlse]
    // Step 4. z_c reaches log p_c directly and λ through exp: ∂λ/∂z_c = e_c / s = p_c.
    for (Index c = 0; c < C; ++c) {
      //! [cross_entropy.dz]
      // ∂L/∂z_c = ∂L/∂log p_c + p_c ∂L/∂λ
      const Scalar p = exp(x[at(c)] - cache.max[r]) / cache.sum[r];
      tr.dz[at(c)] = tr.dlogp[at(c)] + p * tr.dlse[r];
      //! [cross_entropy.dz]
    }
    // Step 5. The max shift.
    //! [cross_entropy.dshift]
    // ∂L/∂m = −Σ_c ∂L/∂z_c, which is 0
    Scalar dm = Scalar(0);
    for (Index c = 0; c < C; ++c) dm -= tr.dz[at(c)];
    tr.dshift[r] = Scalar(scales.dshift) * dm;
    //! [cross_entropy.dshift]
    for (Index c = 0; c < C; ++c) {
      //! [cross_entropy.dx]
      // ∂L/∂x_c = ∂L/∂z_c + ∂L/∂m · [c = argmax]
      g.dx[at(c)] = tr.dz[at(c)] + (c == cache.argmax[r] ? tr.dshift[r] : Scalar(0));
      //! [cross_entropy.dx]
    }
  }
  if (trace) *trace = std::move(tr);
  return g;
}

template <class Scalar>
void ce_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const Targets<Scalar>& t,
                      const ClassLossCache<Scalar>& cache, Tensor<Scalar>& dx) {
  using std::exp;
  check_backward(dy, x, cache, "cross_entropy");
  require_shape(dx, cache.shape, "cross_entropy", "dx (output)");
  const AxisRows& a = cache.rows;
  const Index C = a.M, st = a.inner;
  for (Index r = 0; r < a.R(); ++r) {
    const Scalar* xr = x.data() + a.base(r);
    Scalar* dxr = dx.data() + a.base(r);
    const Scalar gr = upstream(dy, cache, t, r);
    const Scalar m = cache.max[r], inv_s = Scalar(1) / cache.sum[r];
    //! [cross_entropy.dx_fused]
    // dx = g (Q p − q): with one-hot q (class index, no smoothing, Q = w_t) it is
    // g w_t (p − onehot(t)), the softmax minus the target.
    const Scalar gQ = gr * cache.qsum[r];
    if (t.index && t.eps == 0) {
      for (Index c = 0; c < C; ++c) dxr[c * st] = gQ * (exp(xr[c * st] - m) * inv_s);
      if (!t.ignored(r)) dxr[t.index[r] * st] -= gQ;
    } else {
      for (Index c = 0; c < C; ++c) dxr[c * st] = gQ * (exp(xr[c * st] - m) * inv_s) - gr * t.q(r, c);
    }
    //! [cross_entropy.dx_fused]
  }
}

}  // namespace detail::xent

/// \brief Cross-entropy forward with class-index targets, into caller-provided `loss` and `cache`.
/// \param input   logits, `(N, C)`, `(N, C, d1, ...)` or `(C)`
/// \param target  class indices, `(N, d1, ...)` (or `()`), in `[0, C)` or `ignore_index`
/// \param weight  `(C)` or `nullptr`
/// \param cfg     `ignore_index`, `reduction`, `label_smoothing`
/// \param loss    output: `()` for mean and sum, the target's shape for none
/// \param cache   output
/// \throws InvalidArgument on a target of the wrong shape, a class index out of range, a weight
///         not of shape `(C)`, `label_smoothing` outside `[0, 1]`, or `loss` of the wrong shape.
template <class Scalar>
void cross_entropy_forward_into(const Tensor<Scalar>& input, const Tensor<Index>& target,
                                Opt<const Tensor<Scalar>> weight, const CrossEntropyConfig& cfg,
                                Tensor<Scalar>& loss, ClassLossCache<Scalar>& cache) {
  detail::xent::check_smoothing(cfg.label_smoothing);
  const auto t = detail::xent::index_targets<Scalar>(input.shape(), target, weight, cfg.ignore_index,
                                                     cfg.label_smoothing, "cross_entropy");
  detail::xent::check_loss(loss, input.shape(), cfg.reduction, "cross_entropy");
  detail::xent::ce_forward(input, t, cfg.reduction, loss, cache);
}

/// \brief Cross-entropy forward with class-probability targets (the shape of `input`).
/// \param input   logits, `(N, C)`, `(N, C, d1, ...)` or `(C)`
/// \param target  class probabilities, the shape of `input`
/// \param weight  `(C)` or `nullptr`
/// \param cfg     `reduction`, `label_smoothing`; `ignore_index` must be negative
/// \param loss    output: `()` for mean and sum, `(N, d1, ...)` for none
/// \param cache   output
/// \throws InvalidArgument on a target not of the input's shape, a non-negative `ignore_index`,
///         a weight not of shape `(C)`, `label_smoothing` outside `[0, 1]`, or `loss` of the wrong shape.
template <class Scalar>
void cross_entropy_forward_into(const Tensor<Scalar>& input, const Tensor<Scalar>& target,
                                Opt<const Tensor<Scalar>> weight, const CrossEntropyConfig& cfg,
                                Tensor<Scalar>& loss, ClassLossCache<Scalar>& cache) {
  const auto t = detail::xent::prob_targets<Scalar>(input.shape(), target, weight, cfg);
  detail::xent::check_loss(loss, input.shape(), cfg.reduction, "cross_entropy");
  detail::xent::ce_forward(input, t, cfg.reduction, loss, cache);
}

/// \brief Cross-entropy forward (allocating wrapper); `Target` is `Tensor<Index>` (class indices)
/// or `Tensor<Scalar>` (class probabilities).
template <class Scalar, class Target>
ClassLossForward<Scalar> cross_entropy_forward(const Tensor<Scalar>& input, const Target& target,
                                          Opt<const Tensor<Scalar>> weight = nullptr,
                                          const CrossEntropyConfig& cfg = {}) {
  ClassLossForward<Scalar> out{Tensor<Scalar>(detail::xent::loss_shape(detail::xent::target_shape(input.shape()), cfg.reduction)), {}};
  cross_entropy_forward_into(input, target, weight, cfg, out.loss, out.cache);
  return out;
}

namespace detail::xent {
template <class Scalar>
Targets<Scalar> targets_of(const Tensor<Scalar>& input, const Tensor<Index>& target, Opt<const Tensor<Scalar>> weight,
                           const CrossEntropyConfig& cfg) {
  check_smoothing(cfg.label_smoothing);
  return index_targets<Scalar>(input.shape(), target, weight, cfg.ignore_index, cfg.label_smoothing, "cross_entropy");
}
template <class Scalar>
Targets<Scalar> targets_of(const Tensor<Scalar>& input, const Tensor<Scalar>& target, Opt<const Tensor<Scalar>> weight,
                           const CrossEntropyConfig& cfg) {
  return prob_targets<Scalar>(input.shape(), target, weight, cfg);
}
}  // namespace detail::xent

/// \brief Cross-entropy staged backward: the chain log_softmax then NLL, one named step per term.
/// \param dy      upstream gradient, the shape of the loss
/// \param input   the forward's logits
/// \param target  the forward's targets (`Tensor<Index>` or `Tensor<Scalar>`)
/// \param weight  the forward's weight or `nullptr`
/// \param cfg     the forward's configuration
/// \param cache   from the forward pass
/// \param scales  term scales for negative controls
/// \param trace   if not `nullptr`, receives the intermediate terms
/// \throws InvalidArgument if an argument does not match the forward's.
template <class Scalar, class Target>
ClassLossGrads<Scalar> cross_entropy_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& input,
                                                const Target& target, Opt<const Tensor<Scalar>> weight,
                                                const CrossEntropyConfig& cfg, const ClassLossCache<Scalar>& cache,
                                                const CrossEntropyTermScales& scales = {},
                                                CrossEntropyStagedTrace<Scalar>* trace = nullptr) {
  return detail::xent::ce_backward_staged(dy, input, detail::xent::targets_of(input, target, weight, cfg), cache,
                                          scales, trace);
}

/// \brief Cross-entropy fused backward into a caller-provided `dx`:
/// \f$dx_{r,c} = g_r\,(Q_r\,p_{r,c} - q_{r,c})\f$, the softmax minus the target, scaled.
/// \param dy      upstream gradient, the shape of the loss
/// \param input   the forward's logits
/// \param target  the forward's targets
/// \param weight  the forward's weight or `nullptr`
/// \param cfg     the forward's configuration
/// \param cache   from the forward pass
/// \param dx      output, the shape of `input`
/// \throws InvalidArgument on mismatched shapes.
template <class Scalar, class Target>
void cross_entropy_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& input, const Target& target,
                                 Opt<const Tensor<Scalar>> weight, const CrossEntropyConfig& cfg,
                                 const ClassLossCache<Scalar>& cache, Tensor<Scalar>& dx) {
  detail::xent::ce_backward_into(dy, input, detail::xent::targets_of(input, target, weight, cfg), cache, dx);
}

/// \brief Cross-entropy fused backward (allocating wrapper of cross_entropy_backward_into()).
template <class Scalar, class Target>
ClassLossGrads<Scalar> cross_entropy_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& input, const Target& target,
                                         Opt<const Tensor<Scalar>> weight, const CrossEntropyConfig& cfg,
                                         const ClassLossCache<Scalar>& cache) {
  ClassLossGrads<Scalar> g{Tensor<Scalar>(input.shape())};
  cross_entropy_backward_into(dy, input, target, weight, cfg, cache, g.dx);
  return g;
}

}  // namespace gradproof::ops
