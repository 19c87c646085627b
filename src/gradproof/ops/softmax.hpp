/// \file
/// \brief Softmax over one axis `dim`: forward, staged and fused backward.
///
/// Semantics of PyTorch's `torch.softmax(x, dim)` (any `dim` in `[-rank, rank)`):
/// \f[ y_{r,j} = \frac{\exp(x_{r,j} - m_r)}{\sum_k \exp(x_{r,k} - m_r)},
///     \qquad m_r = \max_k x_{r,k}, \f]
/// per row \f$r\f$: the values of `x` along `dim` with every other index fixed. The shift \f$m_r\f$ changes no value of \f$y\f$ (it cancels
/// between numerator and denominator); it is there so that no \f$\exp\f$ overflows. Its gradient
/// term is zero (softmax.dshift, derived in `derivations/softmax.md`).
///
/// Shape legend:
/// - `x`, `y`, `dy`, `dx`: any rank ≥ 1, row-major; \f$M\f$ = extent of `dim` (values per row),
///   \f$R\f$ = `numel(x) / M` rows; element \f$j\f$ of row \f$r\f$ lies at AxisRows::at();
/// - statistics in the cache: `(R)`.
///
/// The fused backward reads the output `y`, as PyTorch's `_softmax_backward_data` does; the
/// staged backward rebuilds the graph's nodes from `x` and the cache, one term at a time.
#pragma once

#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>

#include <cmath>
#include <sstream>
#include <type_traits>

namespace gradproof::ops {

/// Hyper-parameters of softmax (PyTorch's names).
struct SoftmaxConfig {
  /// The axis normalized over, in `[-rank, rank)`; negative counts from the end (`-1`: the last).
  Index dim = -1;
};

/// \brief The rows of a row-major tensor along one axis: shape `(outer, M, inner)` around it.
///
/// Row \f$r\f$ is `(r / inner, ·, r % inner)`; its element \f$j\f$ lies at
/// `at(r, j) = (r / inner)·M·inner + r % inner + j·inner`. For the last axis `inner` is 1 and the
/// rows are contiguous.
struct AxisRows {
  Index outer = 0;  ///< product of the extents before the axis
  Index M = 0;      ///< extent of the axis: values per row
  Index inner = 1;  ///< product of the extents after it: the stride of a row
  /// Number of rows, \f$R = \text{outer}\cdot\text{inner}\f$.
  Index R() const noexcept { return outer * inner; }
  /// Offset of element 0 of row `r`.
  Index base(Index r) const noexcept { return (r / inner) * M * inner + r % inner; }
  /// Offset of element `j` of row `r`.
  Index at(Index r, Index j) const noexcept { return base(r) + j * inner; }
  /// The row of the element at offset `i`.
  Index row_of(Index i) const noexcept { return (i / (M * inner)) * inner + i % inner; }
};

/// \brief The rows of `shape` along `dim`, after checking the rank, the axis and that `shape` is
/// not empty.
/// \param shape  shape of the input, rank ≥ 1
/// \param dim    the axis, in `[-rank, rank)`
/// \param op     name of the operation, for the error message
/// \param what   name of the argument, for the error message
/// \throws InvalidArgument on rank 0, a `dim` out of range, or an empty shape.
inline AxisRows axis_rows(const Shape& shape, Index dim, const char* op, const char* what) {
  const Index rank = static_cast<Index>(shape.size());
  if (rank < 1)
    throw InvalidArgument(std::string(op) + ": " + what + " must have rank >= 1; got shape " + to_string(shape));
  if (dim < -rank || dim >= rank) {
    std::ostringstream msg;
    msg << op << ": dim must be in [" << -rank << ", " << rank - 1 << "] for " << what << " of shape "
        << to_string(shape) << "; got " << dim;
    throw InvalidArgument(msg.str());
  }
  const Index d = dim < 0 ? dim + rank : dim;
  if (numel(shape) == 0)
    throw InvalidArgument(std::string(op) + ": " + what + " must not be empty; got shape " + to_string(shape));
  AxisRows a;
  a.outer = 1;
  for (Index k = 0; k < d; ++k) a.outer *= shape[k];
  a.M = shape[d];
  for (Index k = d + 1; k < rank; ++k) a.inner *= shape[k];
  return a;
}

/// What the backward passes need from the forward pass.
template <class Scalar>
struct SoftmaxCache {
  Shape shape;          ///< shape of the forward input
  Index R = 0;          ///< rows
  Index M = 0;          ///< values per row (the extent of `dim`)
  AxisRows rows;        ///< where each row's values lie
  Tensor<Scalar> max;   ///< `(R)`: the shift \f$m_r = \max_k x_{r,k}\f$ (a constant of the graph)
  Tensor<Scalar> sum;   ///< `(R)`: \f$s_r = \sum_k \exp(x_{r,k} - m_r)\f$
  /// `(R)`: first index of the maximum in each row (the subgradient of \f$m\f$)
  Tensor<Index> argmax;
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar>
struct SoftmaxForward {
  Tensor<Scalar> y;             ///< shape of `x`
  SoftmaxCache<Scalar> cache;  ///< statistics of each row
};

/// Gradients of the loss with respect to the input of softmax.
template <class Scalar>
struct SoftmaxGrads {
  Tensor<Scalar> dx;  ///< shape of `x`
};

/// \brief Scales applied to each chain-rule term of the staged backward (1 is the derivation;
/// the negative controls drop (0) or flip (-1) one of them).
struct SoftmaxTermScales {
  double dl_de = 1;   ///< softmax.dl_de: the direct edge \f$e \to y\f$
  double dl_ds = 1;   ///< softmax.dl_ds: the edge through the row sum \f$s\f$
  double dshift = 1;  ///< softmax.dshift: the edge through the max shift \f$m\f$ (zero)
};

/// The intermediate terms of the staged backward, for term-by-term checks.
template <class Scalar>
struct SoftmaxStagedTrace {
  Tensor<Scalar> dl_de;   ///< shape of `x`: \f$\partial L/\partial e\f$ with \f$s\f$ held fixed
  Tensor<Scalar> dl_ds;   ///< `(R)`: \f$\partial L/\partial s_r\f$
  Tensor<Scalar> dl_dz;   ///< shape of `x`: \f$\partial L/\partial z\f$, \f$z = x - m\f$
  /// `(R)`: \f$\partial L/\partial m_r = -\sum_j \partial L/\partial z_{r,j}\f$
  Tensor<Scalar> dshift;
};

namespace detail::softmax {

constexpr const char* kSoftmax = "softmax";

/// The real value of a scalar of the oracles (`double`, `std::complex<double>`, a dual number).
template <class S>
double real_value(const S& v) {
  if constexpr (requires { v.value(); }) return real_value(v.value());
  else if constexpr (requires { v.real(); }) return static_cast<double>(v.real());
  else return static_cast<double>(v);
}

inline AxisRows rows_of(const Shape& shape, const SoftmaxConfig& cfg) {
  return axis_rows(shape, cfg.dim, kSoftmax, "x");
}

template <class Scalar>
void check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& other,
                    const SoftmaxCache<Scalar>& cache,
                    const char* other_name) {
  if (!same_shape(other.shape(), cache.shape) || cache.sum.size() != cache.R) {
    std::ostringstream msg;
    msg << "softmax: cache was made for an input of shape " << to_string(cache.shape) << " but "
        << other_name
        << " has shape " << to_string(other.shape());
    throw InvalidArgument(msg.str());
  }
  require_shape(dy, cache.shape, kSoftmax, "dy (must match x)");
}

}  // namespace detail::softmax

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
void softmax_forward_into(const Tensor<Scalar>& x, const SoftmaxConfig& cfg, Tensor<Scalar>& y,
                          SoftmaxCache<Scalar>& cache) {
  using namespace detail::softmax;
  using std::exp;
  const AxisRows rows = rows_of(x.shape(), cfg);
  const Index R = rows.R(), M = rows.M, st = rows.inner;
  require_shape(y, x.shape(), kSoftmax, "y (output)");
  if (!same_shape(cache.shape, x.shape())) cache.shape = x.shape();
  cache.R = R;
  cache.M = M;
  cache.rows = rows;
  if (!same_shape(cache.sum.shape(), vector_shape(R))) {
    cache.max = Tensor<Scalar>({R});
    cache.sum = Tensor<Scalar>({R});
    cache.argmax = Tensor<Index>({R});
  }
  for (Index r = 0; r < R; ++r) {
    const Scalar* xr = x.data() + rows.base(r);  // element j at xr[j·st]
    Scalar* yr = y.data() + rows.base(r);
    //! [softmax.forward]
    // The shift m = max x (first index on ties) is a constant: y does not depend on it.
    Index k = 0;
    for (Index j = 1; j < M; ++j)
      if (real_value(xr[j * st]) > real_value(xr[k * st])) k = j;
    const Scalar m = Scalar(real_value(xr[k * st]));
    Scalar s = Scalar(0);
    for (Index j = 0; j < M; ++j) s += (yr[j * st] = exp(xr[j * st] - m));  // e = exp(x − m) ≤ 1
    for (Index j = 0; j < M; ++j) yr[j * st] /= s;                           // y = e / s
    //! [softmax.forward]
    cache.max[r] = m;
    cache.sum[r] = s;
    cache.argmax[r] = k;
  }
}

/// \brief Forward pass (allocating wrapper of softmax_forward_into()).
/// \return `y` of the shape of `x`, and the cache for the backward pass.
template <class Scalar>
SoftmaxForward<Scalar> softmax_forward(const Tensor<Scalar>& x, const SoftmaxConfig& cfg = {}) {
  SoftmaxForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  softmax_forward_into(x, cfg, out.y, out.cache);
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
SoftmaxGrads<Scalar> softmax_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                             const SoftmaxCache<Scalar>& cache,
                                             const SoftmaxTermScales& scales = {},
                                             SoftmaxStagedTrace<Scalar>* trace = nullptr) {
  using std::exp;
  detail::softmax::check_backward(dy, x, cache, "x");
  const Index R = cache.R, M = cache.M;
  const AxisRows& rows = cache.rows;
  SoftmaxGrads<Scalar> g{Tensor<Scalar>(x.shape())};
  SoftmaxStagedTrace<Scalar> t{Tensor<Scalar>(x.shape()), Tensor<Scalar>({R}),
                               Tensor<Scalar>(x.shape()), Tensor<Scalar>({R})};
  for (Index r = 0; r < R; ++r) {
    const auto at = [&](Index j) { return rows.at(r, j); };
    const Scalar s = cache.sum[r];
    // Step 1. The direct edge e → y = e/s, with s held fixed.
    for (Index j = 0; j < M; ++j) {
      //! [softmax.dl_de]
      // ∂L/∂e_j (direct) = dy_j / s
      t.dl_de[at(j)] = Scalar(scales.dl_de) * dy[at(j)] / s;
      //! [softmax.dl_de]
    }
    // Step 2. The edge through the row sum s = Σ e.
    //! [softmax.dl_ds]
    // ∂L/∂s = −Σ_j dy_j e_j / s²
    Scalar acc = Scalar(0);
    for (Index j = 0; j < M; ++j) acc += dy[at(j)] * exp(x[at(j)] - cache.max[r]);
    t.dl_ds[r] = Scalar(scales.dl_ds) * -acc / (s * s);
    //! [softmax.dl_ds]
    // Step 3. z = x − m reaches L through e = exp(z), directly and through s (∂s/∂e_j = 1).
    for (Index j = 0; j < M; ++j) {
      //! [softmax.dl_dz]
      // ∂L/∂z_j = e_j (∂L/∂e_j + ∂L/∂s)
      t.dl_dz[at(j)] = exp(x[at(j)] - cache.max[r]) * (t.dl_de[at(j)] + t.dl_ds[r]);
      //! [softmax.dl_dz]
    }
    // Step 4. The max shift: m reaches every z_j = x_j − m, with ∂z_j/∂m = −1.
    //! [softmax.dshift]
    // ∂L/∂m = −Σ_j ∂L/∂z_j, which is 0: y does not depend on m
    Scalar dm = Scalar(0);
    for (Index j = 0; j < M; ++j) dm -= t.dl_dz[at(j)];
    t.dshift[r] = Scalar(scales.dshift) * dm;
    //! [softmax.dshift]
    // Step 5. Assemble: x_j reaches z_j (∂z_j/∂x_j = 1) and, at the argmax only, m
    // (∂m/∂x_k = 1).
    for (Index j = 0; j < M; ++j) {
      //! [softmax.dx]
      // ∂L/∂x_j = ∂L/∂z_j + ∂L/∂m · [j = argmax]
      g.dx[at(j)] = t.dl_dz[at(j)] + (j == cache.argmax[r] ? t.dshift[r] : Scalar(0));
      //! [softmax.dx]
    }
  }
  if (trace) *trace = std::move(t);
  return g;
}

/// \brief Fused backward pass writing into a caller-provided `dx`; allocates nothing.
///
/// \f[ dx_{r,j} = y_{r,j}\Big(dy_{r,j} - \sum_k dy_{r,k}\,y_{r,k}\Big). \f]
/// \param dy     upstream gradient, shape of `y`
/// \param y      the forward output
/// \param cache  from the forward pass
/// \param dx     output, preallocated with the shape of `y`
/// \throws InvalidArgument on mismatched shapes of any argument or output. `dx` may be the buffer
///         of `dy` or of `y`: each element is read before it is written.
template <class Scalar>
void softmax_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& y,
                           const SoftmaxCache<Scalar>& cache, Tensor<Scalar>& dx) {
  using namespace detail::softmax;
  check_backward(dy, y, cache, "y");
  require_shape(dx, cache.shape, kSoftmax, "dx (output)");
  // Float sums in double: the projection is a reduction of M products.
  using Acc = std::conditional_t<std::is_floating_point_v<Scalar>, double, Scalar>;
  const Index R = cache.R, M = cache.M, st = cache.rows.inner;
  for (Index r = 0; r < R; ++r) {
    const Index o = cache.rows.base(r);
    const Scalar *dyr = dy.data() + o, *yr = y.data() + o;
    Scalar* dxr = dx.data() + o;
    //! [softmax.dx_fused]
    // dx = y ⊙ (dy − ⟨dy, y⟩): one projection per row.
    Acc p = Acc(0);
    for (Index j = 0; j < M; ++j) p += Acc(dyr[j * st]) * Acc(yr[j * st]);
    const Scalar ps = Scalar(p);
    for (Index j = 0; j < M; ++j) dxr[j * st] = yr[j * st] * (dyr[j * st] - ps);
    //! [softmax.dx_fused]
  }
}

/// \brief Fused backward pass (allocating wrapper of softmax_backward_into()).
template <class Scalar>
SoftmaxGrads<Scalar> softmax_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& y,
                                      const SoftmaxCache<Scalar>& cache) {
  SoftmaxGrads<Scalar> g{Tensor<Scalar>(y.shape())};
  softmax_backward_into(dy, y, cache, g.dx);
  return g;
}

using SoftmaxForwardF = SoftmaxForward<float>;   ///< float alias
using SoftmaxForwardD = SoftmaxForward<double>;  ///< double alias

}  // namespace gradproof::ops
