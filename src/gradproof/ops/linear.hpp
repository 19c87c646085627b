/// \file
/// \brief Linear (fully connected) layer: forward, staged and fused backward.
///
/// Semantics of PyTorch's `torch.nn.functional.linear(input, weight, bias=None)` and
/// `torch.nn.Linear(in_features, out_features, bias=True)`:
/// \f[ y_{n,o} = \sum_i x_{n,i}\, W_{o,i} + b_o, \qquad y = x W^T + b, \f]
/// for every row \f$n\f$ of `x` read as an \f$N \times I\f$ matrix (all leading axes together).
///
/// Shape legend:
/// - `x`, `dx`: `(..., I)`, any rank ≥ 1; \f$I\f$ = `in_features`, \f$N\f$ = `numel(x) / I` rows;
/// - `weight`, `dweight`: `(O, I)`, \f$O\f$ = `out_features` (PyTorch's layout: one row per
/// output);
/// - `bias`, `dbias`: `(O)`;
/// - `y`, `dy`: `(..., O)`: the leading axes of `x`, then `out_features`.
///
/// The gradients (derived in `derivations/linear.md`): \f$dx = dy\,W\f$, \f$dW = dy^T x\f$ summed
/// over every row of the batch, \f$db = \sum_n dy_n\f$. The staged backward computes each with
/// plain loops, one named step per formula id (`linear.dx`, `linear.dweight`, `linear.dbias`);
/// the fused backward makes the first two one GEMM each (ops/gemm.hpp).
#pragma once

#include "gradproof/ops/gemm.hpp"
#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"

#include <optional>
#include <sstream>

namespace gradproof::ops {

/// Hyper-parameters of linear (PyTorch's names). The extents come from `weight`; when given here,
/// they are checked against it.
struct LinearConfig {
  std::optional<Index> in_features = std::nullopt;   ///< \f$I\f$, the last extent of `x`
  std::optional<Index> out_features = std::nullopt;  ///< \f$O\f$, the rows of `weight`
};

/// What the backward passes need from the forward pass (the inputs `x` and `weight` are passed
/// to the backward again, as PyTorch's autograd saves them).
template <class Scalar>
struct LinearCache {
  Shape x_shape;          ///< shape of the forward input
  Shape y_shape;          ///< shape of the output: `x_shape` with the last extent `O`
  Index N = 0;            ///< rows: `numel(x) / I`
  Index I = 0;            ///< `in_features`
  Index O = 0;            ///< `out_features`
  bool has_bias = false;  ///< the forward pass had a bias
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar>
struct LinearForward {
  Tensor<Scalar> y;            ///< `(..., O)`
  LinearCache<Scalar> cache;  ///< the shapes
};

/// Gradients of the loss with respect to the inputs of linear.
template <class Scalar>
struct LinearGrads {
  Tensor<Scalar> dx;       ///< shape of `x`
  Tensor<Scalar> dweight;  ///< `(O, I)`
  Tensor<Scalar> dbias;    ///< `(O)`; empty without a bias
};

/// \brief Scales applied to each term of the staged backward (1 is the derivation; the negative
/// controls drop (0) or flip (−1) one of them).
struct LinearTermScales {
  double dx = 1;       ///< linear.dx: \f$dy\,W\f$
  double dweight = 1;  ///< linear.dweight: \f$\sum_n dy_n^T x_n\f$
  double dbias = 1;    ///< linear.dbias: \f$\sum_n dy_n\f$
};

namespace detail::linear {

constexpr const char* kLinear = "linear";

template <class Scalar>
void shapes(const Shape& xs, const Tensor<Scalar>& weight, const Tensor<Scalar>* bias,
            const LinearConfig& cfg, LinearCache<Scalar>& c) {
  if (xs.empty())
    throw InvalidArgument("linear: x must have rank >= 1 (..., in_features); got shape " +
                          to_string(xs));
  if (weight.rank() != 2)
    throw InvalidArgument(
        "linear: weight must have rank 2 (out_features, in_features); got shape " +
        to_string(weight.shape()));
  const Index O = weight.shape()[0], I = weight.shape()[1];
  if (xs.back() != I) {
    std::ostringstream msg;
    msg << "linear: the last extent of x (in_features) must be " << I
        << ", that of weight of shape " << to_string(weight.shape()) << "; got x of shape "
        << to_string(xs);
    throw InvalidArgument(msg.str());
  }
  if ((cfg.in_features && *cfg.in_features != I) ||
      (cfg.out_features && *cfg.out_features != O)) {
    std::ostringstream msg;
    msg << "linear: weight of shape " << to_string(weight.shape())
        << " does not match in_features = "
        << (cfg.in_features ? std::to_string(*cfg.in_features) : "any")
        << ", out_features = " << (cfg.out_features ? std::to_string(*cfg.out_features) : "any");
    throw InvalidArgument(msg.str());
  }
  if (bias) require_shape(*bias, vector_shape(O), kLinear, "bias (out_features,)");
  if (!same_shape(c.x_shape, xs)) {
    c.x_shape = xs;
    c.y_shape = xs;
    c.y_shape.back() = O;
  } else if (c.y_shape.back() != O) {
    c.y_shape.back() = O;
  }
  c.I = I;
  c.O = O;
  c.N = I > 0 ? numel(xs) / I : numel(Shape(xs.begin(), xs.end() - 1));
  c.has_bias = bias != nullptr;
}

template <class Scalar>
void check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                    const Tensor<Scalar>& weight, const LinearCache<Scalar>& c) {
  if (!same_shape(x.shape(), c.x_shape)) {
    std::ostringstream msg;
    msg << "linear: cache was made for x of shape " << to_string(c.x_shape) << " but x has shape "
        << to_string(x.shape());
    throw InvalidArgument(msg.str());
  }
  const std::array<Index, 2> ws{c.O, c.I};
  require_shape(weight, ws, kLinear, "weight (must match the forward)");
  require_shape(dy, c.y_shape, kLinear, "dy (must match y)");
}

}  // namespace detail::linear

/// \brief Forward pass writing into caller-provided `y` and `cache`; allocates nothing when the
/// cache is reused.
/// \tparam Scalar `float`, `double` (one GEMM), or a scalar of the oracles (complex, dual:
/// loops). \param x       `(..., I)` \param weight  `(O, I)` \param bias    `(O)`, or `nullptr`
/// (PyTorch's `bias=None`) \param cfg     optional `in_features`, `out_features`, checked against
/// `weight` \param y       output, preallocated `(..., O)` \param cache   output: the shapes
/// \throws InvalidArgument on rank 0, a `weight` not of rank 2, `x`'s last extent not
///         `weight`'s second, a `bias` not `(O)`, or `y` of another shape.
template <class Scalar>
void linear_forward_into(const Tensor<Scalar>& x, const Tensor<Scalar>& weight,
                         Opt<const Tensor<Scalar>> bias, const LinearConfig& cfg,
                         Tensor<Scalar>& y, LinearCache<Scalar>& cache) {
  detail::linear::shapes(x.shape(), weight, bias, cfg, cache);
  require_shape(y, cache.y_shape, detail::linear::kLinear, "y (output)");
  const Index N = cache.N, I = cache.I, O = cache.O;
  //! [linear.forward]
  // y = x Wᵀ (+ b): row n of y is W x_n.
  if constexpr (detail::kGemmScalar<Scalar>) {
    detail::gemm(false, true, N, O, I, x.data(), weight.data(), y.data());
  } else {
    for (Index n = 0; n < N; ++n)
      for (Index o = 0; o < O; ++o) {
        Scalar acc = Scalar(0);
        for (Index i = 0; i < I; ++i) acc += x[n * I + i] * weight[o * I + i];
        y[n * O + o] = acc;
      }
  }
  if (bias)
    for (Index n = 0; n < N; ++n)
      for (Index o = 0; o < O; ++o) y[n * O + o] += (*bias)[o];
  //! [linear.forward]
}

/// \brief Forward pass (allocating wrapper of linear_forward_into()).
/// \return `y` of shape `(..., O)` and the cache.
template <class Scalar>
LinearForward<Scalar> linear_forward(const Tensor<Scalar>& x, const Tensor<Scalar>& weight,
                                     Opt<const Tensor<Scalar>> bias = nullptr,
                                     const LinearConfig& cfg = {}) {
  LinearForward<Scalar> out;
  detail::linear::shapes(x.shape(), weight, bias, cfg, out.cache);
  out.y = Tensor<Scalar>(out.cache.y_shape);
  linear_forward_into(x, weight, bias, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: one named step per term, each with its formula id, in plain
/// loops (no GEMM): the reference that the fused pass is checked against.
/// \param dy      `(..., O)`, shape of `y`
/// \param x       the forward input `(..., I)`
/// \param weight  `(O, I)`
/// \param cache   from the forward pass
/// \param scales  term scales for the negative controls; leave at the default
/// \return `dx`, `dweight`, and `dbias` when the forward had a bias.
/// \throws InvalidArgument if `dy`, `x` or `weight` does not match the cache.
template <class Scalar>
LinearGrads<Scalar> linear_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                           const Tensor<Scalar>& weight,
                                           const LinearCache<Scalar>& cache,
                                           const LinearTermScales& scales = {}) {
  detail::linear::check_backward(dy, x, weight, cache);
  const Index N = cache.N, I = cache.I, O = cache.O;
  LinearGrads<Scalar> g{Tensor<Scalar>(cache.x_shape), Tensor<Scalar>({O, I}), {}};
  // Step 1. x_{n,i} reaches every y_{n,o} with ∂y_{n,o}/∂x_{n,i} = W_{o,i}.
  //! [linear.dx]
  // dx_{n,i} = Σ_o dy_{n,o} W_{o,i}: dx = dy W (W as stored, (O, I); not Wᵀ)
  for (Index n = 0; n < N; ++n)
    for (Index i = 0; i < I; ++i) {
      Scalar acc = Scalar(0);
      for (Index o = 0; o < O; ++o) acc += dy[n * O + o] * weight[o * I + i];
      g.dx[n * I + i] = Scalar(scales.dx) * acc;
    }
  //! [linear.dx]
  // Step 2. W_{o,i} reaches y_{n,o} of every row n with ∂y_{n,o}/∂W_{o,i} = x_{n,i}.
  //! [linear.dweight]
  // dW = Σ_n dy_nᵀ x_n: one outer product per row of the batch, added up
  for (Index n = 0; n < N; ++n)
    for (Index o = 0; o < O; ++o)
      for (Index i = 0; i < I; ++i)
        g.dweight[o * I + i] += Scalar(scales.dweight) * dy[n * O + o] * x[n * I + i];
  //! [linear.dweight]
  if (cache.has_bias) {
    g.dbias = Tensor<Scalar>({O});
    // Step 3. b_o reaches y_{n,o} of every row n with derivative 1.
    //! [linear.dbias]
    // db_o = Σ_n dy_{n,o}
    for (Index n = 0; n < N; ++n)
      for (Index o = 0; o < O; ++o) g.dbias[o] += Scalar(scales.dbias) * dy[n * O + o];
    //! [linear.dbias]
  }
  return g;
}

/// \brief Fused backward pass writing into caller-provided outputs: two GEMMs and a column sum.
/// Allocates nothing itself (the GEMM's own packing buffers: see `derivations/linear.md`).
/// \param dy       `(..., O)`
/// \param x        the forward input `(..., I)`
/// \param weight   `(O, I)`
/// \param cache    from the forward pass
/// \param dx       output `(..., I)`, or `nullptr` if not wanted
/// \param dweight  output `(O, I)`, or `nullptr` if not wanted
/// \param dbias    output `(O)`, or `nullptr` (it must be `nullptr` when the forward had no bias)
/// \throws InvalidArgument on mismatched shapes of any argument or output, or a `dbias` for a
///         forward without a bias.
template <class Scalar>
void linear_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                          const Tensor<Scalar>& weight, const LinearCache<Scalar>& cache,
                          Opt<Tensor<Scalar>> dx, Opt<Tensor<Scalar>> dweight,
                          Opt<Tensor<Scalar>> dbias) {
  using namespace detail::linear;
  check_backward(dy, x, weight, cache);
  const Index N = cache.N, I = cache.I, O = cache.O;
  if (dx) require_shape(*dx, cache.x_shape, kLinear, "dx (output)");
  const std::array<Index, 2> ws{O, I};
  if (dweight) require_shape(*dweight, ws, kLinear, "dweight (output)");
  if (dbias && !cache.has_bias)
    throw InvalidArgument("linear: dbias was given but the forward pass had no bias (bias=None)");
  if (dbias) require_shape(*dbias, vector_shape(O), kLinear, "dbias (output)");
  //! [linear.dx_fused]
  // dx = dy W: (N, O)·(O, I), W read as stored; dW = dyᵀ x: (O, N)·(N, I), the batch sum is the
  // GEMM's inner dimension; db = Σ_n dy_n.
  if (dx) detail::gemm(false, false, N, I, O, dy.data(), weight.data(), dx->data());
  if (dweight) detail::gemm(true, false, O, I, N, dy.data(), x.data(), dweight->data());
  if (dbias) {
    Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>> db(dbias->data(), O);
    db.setZero();
    for (Index n = 0; n < N; ++n)
      db += Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>(dy.data() + n * O, O);
  }
  //! [linear.dx_fused]
}

/// \brief Fused backward pass (allocating wrapper of linear_backward_into()).
/// \return `dx`, `dweight`, and `dbias` when the forward had a bias.
template <class Scalar>
LinearGrads<Scalar> linear_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                    const Tensor<Scalar>& weight,
                                    const LinearCache<Scalar>& cache) {
  LinearGrads<Scalar> g{Tensor<Scalar>(cache.x_shape), Tensor<Scalar>({cache.O, cache.I}), {}};
  if (cache.has_bias) g.dbias = Tensor<Scalar>({cache.O});
  linear_backward_into(dy, x, weight, cache, &g.dx, &g.dweight,
                       cache.has_bias ? &g.dbias : nullptr);
  return g;
}

using LinearForwardF = LinearForward<float>;   ///< float alias
using LinearForwardD = LinearForward<double>;  ///< double alias

}  // namespace gradproof::ops
