/// \file
/// \brief Log-softmax over one axis `dim`: forward, staged and fused backward.
///
/// Semantics of PyTorch's `torch.log_softmax(x, dim)` (any `dim` in `[-rank, rank)`):
/// \f[ y_{r,j} = x_{r,j} - m_r - \log \sum_k \exp(x_{r,k} - m_r),
///     \qquad m_r = \max_k x_{r,k}, \f]
/// per row \f$r\f$ (the values of `x` along `dim` with every other index fixed). As for softmax,
/// the shift \f$m_r\f$ changes no value of \f$y\f$ and its gradient term is zero
/// (log_softmax.dshift, derived in `derivations/softmax.md`); it keeps \f$\exp\f$ from
/// overflowing and \f$\log\f$ from seeing \f$\infty\f$.
///
/// Shape legend:
/// - `x`, `y`, `dy`, `dx`: any rank ≥ 1, row-major; \f$M\f$ = extent of `dim` (values per row),
///   \f$R\f$ = `numel(x) / M` rows, laid out as AxisRows says;
/// - statistics in the cache: `(R)`.
///
/// The fused backward reads the output `y`, as PyTorch's `_log_softmax_backward_data` does:
/// \f$dx = dy - \exp(y)\sum dy\f$.
#pragma once

#include "gradproof/ops/softmax.hpp"

#include <cmath>
#include <type_traits>

namespace gradproof::ops {

/// Hyper-parameters of log-softmax (PyTorch's names).
struct LogSoftmaxConfig {
  /// The axis normalized over, in `[-rank, rank)`; negative counts from the end (`-1`: the last).
  Index dim = -1;
};

/// What the backward passes need from the forward pass.
template <class Scalar>
struct LogSoftmaxCache {
  Shape shape;          ///< shape of the forward input
  AxisRows rows;        ///< where each row's values lie
  Tensor<Scalar> max;   ///< `(R)`: the shift \f$m_r = \max_k x_{r,k}\f$ (a constant of the graph)
  Tensor<Scalar> sum;   ///< `(R)`: \f$s_r = \sum_k \exp(x_{r,k} - m_r)\f$
  Tensor<Index> argmax; ///< `(R)`: first index of the maximum in each row (the subgradient of \f$m\f$)
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar>
struct LogSoftmaxForward {
  Tensor<Scalar> y;                ///< shape of `x`
  LogSoftmaxCache<Scalar> cache;  ///< statistics of each row
};

/// Gradients of the loss with respect to the input of log-softmax.
template <class Scalar>
struct LogSoftmaxGrads {
  Tensor<Scalar> dx;  ///< shape of `x`
};

/// \brief Scales applied to each chain-rule term of the staged backward (1 is the derivation;
/// the negative controls drop (0) or flip (-1) one of them).
struct LogSoftmaxTermScales {
  double dl_dz = 1;    ///< log_softmax.dl_dz: the direct edge \f$z \to y\f$ (∂yⱼ/∂zⱼ = 1)
  double dl_dlse = 1;  ///< log_softmax.dl_dlse: the edge through the log-sum-exp \f$\ell\f$
  double dl_ds = 1;    ///< log_softmax.dl_ds: the edge \f$s \to \ell = \log s\f$
  double dshift = 1;   ///< log_softmax.dshift: the edge through the max shift \f$m\f$ (zero)
};

/// The intermediate terms of the staged backward, for term-by-term checks.
template <class Scalar>
struct LogSoftmaxStagedTrace {
  Tensor<Scalar> dl_dlse;  ///< `(R)`: \f$\partial L/\partial \ell_r = -\sum_j dy_{r,j}\f$
  Tensor<Scalar> dl_ds;    ///< `(R)`: \f$\partial L/\partial s_r\f$
  Tensor<Scalar> dl_dz;    ///< shape of `x`: \f$\partial L/\partial z\f$, \f$z = x - m\f$
  Tensor<Scalar> dshift;   ///< `(R)`: \f$\partial L/\partial m_r = -\sum_j \partial L/\partial z_{r,j}\f$
};

namespace detail::log_softmax {

constexpr const char* kOp = "log_softmax";

template <class Scalar>
void check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& other, const LogSoftmaxCache<Scalar>& cache,
                    const char* other_name) {
  if (!same_shape(other.shape(), cache.shape) || cache.sum.size() != cache.rows.R()) {
    std::ostringstream msg;
    msg << "log_softmax: cache was made for an input of shape " << to_string(cache.shape) << " but " << other_name
        << " has shape " << to_string(other.shape());
    throw InvalidArgument(msg.str());
  }
  require_shape(dy, cache.shape, kOp, "dy (must match x)");
}

}  // namespace detail::log_softmax

/// \brief Forward pass writing into caller-provided `y` and `cache`; allocation-free when the
/// cache is reused.
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number.
/// \param x      input of any rank ≥ 1, not empty
/// \param cfg    `dim`, the axis normalized over
/// \param y      output, preallocated with the shape of `x`
/// \param cache  output: per row the shift, the sum and the argmax
/// \throws InvalidArgument on rank 0, an empty `x`, a `dim` outside `[-rank, rank)`, or `y` not
///         of the shape of `x`.
template <class Scalar>
void log_softmax_forward_into(const Tensor<Scalar>& x, const LogSoftmaxConfig& cfg, Tensor<Scalar>& y,
                              LogSoftmaxCache<Scalar>& cache) {
  using detail::softmax::real_value;
  using std::exp;
  using std::log;
  const AxisRows rows = axis_rows(x.shape(), cfg.dim, detail::log_softmax::kOp, "x");
  const Index R = rows.R(), M = rows.M, st = rows.inner;
  require_shape(y, x.shape(), detail::log_softmax::kOp, "y (output)");
  if (!same_shape(cache.shape, x.shape())) cache.shape = x.shape();
  cache.rows = rows;
  if (!same_shape(cache.sum.shape(), vector_shape(R))) {
    cache.max = Tensor<Scalar>({R});
    cache.sum = Tensor<Scalar>({R});
    cache.argmax = Tensor<Index>({R});
  }
  for (Index r = 0; r < R; ++r) {
    const Scalar* xr = x.data() + rows.base(r);  // element j at xr[j·st]
    Scalar* yr = y.data() + rows.base(r);
    //! [log_softmax.forward]
    // The shift m = max x (first index on ties) is a constant: y does not depend on it.
    Index k = 0;
    for (Index j = 1; j < M; ++j)
      if (real_value(xr[j * st]) > real_value(xr[k * st])) k = j;
    const Scalar m = Scalar(real_value(xr[k * st]));
    Scalar s = Scalar(0);
    for (Index j = 0; j < M; ++j) s += exp(xr[j * st] - m);  // s = Σ exp(x − m) ∈ [1, M]
    const Scalar lse = log(s);                                // ℓ = log s ∈ [0, log M]
    for (Index j = 0; j < M; ++j) yr[j * st] = (xr[j * st] - m) - lse;  // y = z − ℓ
    //! [log_softmax.forward]
    cache.max[r] = m;
    cache.sum[r] = s;
    cache.argmax[r] = k;
  }
}

/// \brief Forward pass (allocating wrapper of log_softmax_forward_into()).
/// \return `y` of the shape of `x`, and the cache for the backward pass.
template <class Scalar>
LogSoftmaxForward<Scalar> log_softmax_forward(const Tensor<Scalar>& x, const LogSoftmaxConfig& cfg = {}) {
  LogSoftmaxForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  log_softmax_forward_into(x, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: one named step per chain-rule term, each marked with its
/// formula id.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param cache   from the forward pass on `x`
/// \param scales  term scales for negative controls; leave at the default
/// \param trace   if not `nullptr`, receives the intermediate terms
/// \throws InvalidArgument if `dy` or `x` does not match the cache.
template <class Scalar>
LogSoftmaxGrads<Scalar> log_softmax_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                                    const LogSoftmaxCache<Scalar>& cache,
                                                    const LogSoftmaxTermScales& scales = {},
                                                    LogSoftmaxStagedTrace<Scalar>* trace = nullptr) {
  using std::exp;
  detail::log_softmax::check_backward(dy, x, cache, "x");
  const AxisRows& rows = cache.rows;
  const Index R = rows.R(), M = rows.M;
  LogSoftmaxGrads<Scalar> g{Tensor<Scalar>(x.shape())};
  LogSoftmaxStagedTrace<Scalar> t{Tensor<Scalar>({R}), Tensor<Scalar>({R}), Tensor<Scalar>(x.shape()),
                                  Tensor<Scalar>({R})};
  for (Index r = 0; r < R; ++r) {
    const auto at = [&](Index j) { return rows.at(r, j); };
    const Scalar s = cache.sum[r];
    // Step 1. The log-sum-exp ℓ reaches every yⱼ = zⱼ − ℓ with ∂yⱼ/∂ℓ = −1.
    //! [log_softmax.dl_dlse]
    // ∂L/∂ℓ = −Σ_j dy_j
    Scalar acc = Scalar(0);
    for (Index j = 0; j < M; ++j) acc += dy[at(j)];
    t.dl_dlse[r] = Scalar(scales.dl_dlse) * -acc;
    //! [log_softmax.dl_dlse]
    // Step 2. ℓ = log s.
    //! [log_softmax.dl_ds]
    // ∂L/∂s = ∂L/∂ℓ / s
    t.dl_ds[r] = Scalar(scales.dl_ds) * t.dl_dlse[r] / s;
    //! [log_softmax.dl_ds]
    // Step 3. z = x − m reaches L directly (yⱼ = zⱼ − ℓ) and through eⱼ = exp(zⱼ) and s = Σ e.
    for (Index j = 0; j < M; ++j) {
      //! [log_softmax.dl_dz]
      // ∂L/∂z_j = dy_j + e_j ∂L/∂s
      t.dl_dz[at(j)] = Scalar(scales.dl_dz) * dy[at(j)] + exp(x[at(j)] - cache.max[r]) * t.dl_ds[r];
      //! [log_softmax.dl_dz]
    }
    // Step 4. The max shift: m reaches every z_j = x_j − m, with ∂z_j/∂m = −1.
    //! [log_softmax.dshift]
    // ∂L/∂m = −Σ_j ∂L/∂z_j, which is 0: y does not depend on m
    Scalar dm = Scalar(0);
    for (Index j = 0; j < M; ++j) dm -= t.dl_dz[at(j)];
    t.dshift[r] = Scalar(scales.dshift) * dm;
    //! [log_softmax.dshift]
    // Step 5. Assemble: x_j reaches z_j and, at the argmax only, m.
    for (Index j = 0; j < M; ++j) {
      //! [log_softmax.dx]
      // ∂L/∂x_j = ∂L/∂z_j + ∂L/∂m · [j = argmax]
      g.dx[at(j)] = t.dl_dz[at(j)] + (j == cache.argmax[r] ? t.dshift[r] : Scalar(0));
      //! [log_softmax.dx]
    }
  }
  if (trace) *trace = std::move(t);
  return g;
}

/// \brief Fused backward pass writing into a caller-provided `dx`; allocates nothing.
///
/// \f[ dx_{r,j} = dy_{r,j} - \exp(y_{r,j}) \sum_k dy_{r,k}. \f]
/// \param dy     upstream gradient, shape of `y`
/// \param y      the forward output
/// \param cache  from the forward pass
/// \param dx     output, preallocated with the shape of `y`
/// \throws InvalidArgument on mismatched shapes of any argument or output. `dx` may be the buffer
///         of `dy` or of `y`: each element is read before it is written.
template <class Scalar>
void log_softmax_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& y,
                               const LogSoftmaxCache<Scalar>& cache, Tensor<Scalar>& dx) {
  using std::exp;
  detail::log_softmax::check_backward(dy, y, cache, "y");
  require_shape(dx, cache.shape, detail::log_softmax::kOp, "dx (output)");
  using Acc = std::conditional_t<std::is_floating_point_v<Scalar>, double, Scalar>;
  const Index R = cache.rows.R(), M = cache.rows.M, st = cache.rows.inner;
  for (Index r = 0; r < R; ++r) {
    const Index o = cache.rows.base(r);
    const Scalar *dyr = dy.data() + o, *yr = y.data() + o;
    Scalar* dxr = dx.data() + o;
    //! [log_softmax.dx_fused]
    // dx = dy − softmax(x) Σ dy, with softmax(x) = exp(y): one sum per row.
    Acc a = Acc(0);
    for (Index j = 0; j < M; ++j) a += Acc(dyr[j * st]);
    const Scalar sdy = Scalar(a);
    for (Index j = 0; j < M; ++j) dxr[j * st] = dyr[j * st] - exp(yr[j * st]) * sdy;
    //! [log_softmax.dx_fused]
  }
}

/// \brief Fused backward pass (allocating wrapper of log_softmax_backward_into()).
template <class Scalar>
LogSoftmaxGrads<Scalar> log_softmax_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& y,
                                             const LogSoftmaxCache<Scalar>& cache) {
  LogSoftmaxGrads<Scalar> g{Tensor<Scalar>(y.shape())};
  log_softmax_backward_into(dy, y, cache, g.dx);
  return g;
}

using LogSoftmaxForwardF = LogSoftmaxForward<float>;   ///< float alias
using LogSoftmaxForwardD = LogSoftmaxForward<double>;  ///< double alias

}  // namespace gradproof::ops
