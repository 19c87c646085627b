/// \file
/// \brief Matrix product, 2-D and batched 3-D: forward, staged and fused backward.
///
/// Semantics of PyTorch's `torch.matmul(input, other)` for operands of rank 2 and 3 (here `a`
/// and `b`):
/// \f[ Y_t = A_t\,B_t, \qquad (Y_t)_{i,j} = \sum_p (A_t)_{i,p}\,(B_t)_{p,j}, \f]
/// for every batch index \f$t\f$. As in PyTorch, an operand of rank 2, or of batch extent 1, is
/// broadcast against the batch of the other: the same matrix multiplies every \f$B_t\f$ (or
/// \f$A_t\f$), and its gradient is the sum over the batch. Rank 1 operands (PyTorch's vector
/// cases) and ranks above 3 are refused.
///
/// Shape legend:
/// - `a`, `da`: `(n, k)` or `(Ba, n, k)`;
/// - `b`, `db`: `(k, m)` or `(Bb, k, m)`;
/// - `y`, `dy`: `(n, m)` when both are 2-D, else `(B, n, m)` with \f$B = \max(Ba, Bb)\f$ (a 2-D
///   operand counts as batch 1; `Ba` and `Bb` must be equal or one of them 1).
///
/// The gradients (`derivations/linear.md`, section matmul): \f$dA_t = dY_t\,B_t^T\f$,
/// \f$dB_t = A_t^T\,dY_t\f$, summed over \f$t\f$ for a broadcast operand.
#pragma once

#include "gradproof/ops/gemm.hpp"
#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"

#include <algorithm>
#include <array>
#include <sstream>

namespace gradproof::ops {

/// Hyper-parameters of matmul: none (PyTorch's `torch.matmul` has none); kept for the one API
/// pattern of every op.
struct MatmulConfig {};

/// What the backward passes need from the forward pass (the operands are passed again).
template <class Scalar>
struct MatmulCache {
  Shape a_shape;  ///< shape of `a`
  Shape b_shape;  ///< shape of `b`
  Shape y_shape;  ///< shape of the output
  Index B = 1;    ///< batch of the output (1 when both operands are 2-D)
  Index Ba = 1;   ///< batch of `a` (1 when 2-D or broadcast)
  Index Bb = 1;   ///< batch of `b` (1 when 2-D or broadcast)
  Index n = 0;    ///< rows of each `A_t`
  Index k = 0;    ///< the inner extent
  Index m = 0;    ///< columns of each `B_t`
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar>
struct MatmulForward {
  Tensor<Scalar> y;            ///< `(n, m)` or `(B, n, m)`
  MatmulCache<Scalar> cache;  ///< the shapes
};

/// Gradients of the loss with respect to both operands.
template <class Scalar>
struct MatmulGrads {
  Tensor<Scalar> da;  ///< shape of `a`
  Tensor<Scalar> db;  ///< shape of `b`
};

/// \brief Scales applied to each term of the staged backward (1 is the derivation; the negative
/// controls drop (0) or flip (−1) one of them).
struct MatmulTermScales {
  double da = 1;  ///< matmul.da: \f$dY\,B^T\f$
  double db = 1;  ///< matmul.db: \f$A^T dY\f$
};

namespace detail::matmul {

constexpr const char* kMatmul = "matmul";

template <class Scalar>
void shapes(const Shape& as, const Shape& bs, MatmulCache<Scalar>& c) {
  const auto rank_ok = [](const Shape& s, const char* name, const char* legend) {
    if (s.size() != 2 && s.size() != 3) {
      std::ostringstream msg;
      msg << "matmul: " << name << " must have rank 2 " << legend << "; got shape "
          << to_string(s);
      throw InvalidArgument(msg.str());
    }
  };
  rank_ok(as, "a", "(n, k) or 3 (batch, n, k)");
  rank_ok(bs, "b", "(k, m) or 3 (batch, k, m)");
  const Index ka = as.back(), kb = bs[bs.size() - 2];
  if (ka != kb) {
    std::ostringstream msg;
    msg << "matmul: the inner extents must agree: a of shape " << to_string(as)
        << " has k = " << ka << ", b of shape " << to_string(bs) << " has k = " << kb;
    throw InvalidArgument(msg.str());
  }
  const Index Ba = as.size() == 3 ? as[0] : 1, Bb = bs.size() == 3 ? bs[0] : 1;
  if (Ba != Bb && Ba != 1 && Bb != 1) {
    std::ostringstream msg;
    msg << "matmul: the batch extents of a of shape " << to_string(as) << " and b of shape "
        << to_string(bs) << " do not broadcast: " << Ba << " and " << Bb
        << " (they must be equal or one of them 1)";
    throw InvalidArgument(msg.str());
  }
  c.n = as[as.size() - 2];
  c.k = ka;
  c.m = bs.back();
  c.Ba = Ba;
  c.Bb = Bb;
  c.B = std::max(Ba, Bb);
  if (!same_shape(c.a_shape, as)) c.a_shape = as;
  if (!same_shape(c.b_shape, bs)) c.b_shape = bs;
  const bool batched = as.size() == 3 || bs.size() == 3;
  const std::array<Index, 3> y3{c.B, c.n, c.m};
  const std::array<Index, 2> y2{c.n, c.m};
  if (batched ? !same_shape(c.y_shape, y3) : !same_shape(c.y_shape, y2))
    c.y_shape = batched ? Shape{c.B, c.n, c.m} : Shape{c.n, c.m};
}

template <class Scalar>
void check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& a, const Tensor<Scalar>& b,
                    const MatmulCache<Scalar>& c) {
  if (!same_shape(a.shape(), c.a_shape) || !same_shape(b.shape(), c.b_shape)) {
    std::ostringstream msg;
    msg << "matmul: cache was made for a of shape " << to_string(c.a_shape) << " and b of shape "
        << to_string(c.b_shape) << " but a has shape " << to_string(a.shape()) << " and b "
        << to_string(b.shape());
    throw InvalidArgument(msg.str());
  }
  require_shape(dy, c.y_shape, kMatmul, "dy (must match y)");
}

}  // namespace detail::matmul

/// \brief Forward pass writing into caller-provided `y` and `cache`.
/// \tparam Scalar `float`, `double` (GEMM per batch), or a scalar of the oracles (loops).
/// \param a      `(n, k)` or `(Ba, n, k)`
/// \param b      `(k, m)` or `(Bb, k, m)`
/// \param cfg    none
/// \param y      output, preallocated `(n, m)` or `(B, n, m)`
/// \param cache  output: the shapes
/// \throws InvalidArgument for a rank other than 2 or 3, inner extents that differ, batch extents
///         that do not broadcast, or `y` of another shape.
template <class Scalar>
void matmul_forward_into(const Tensor<Scalar>& a, const Tensor<Scalar>& b,
                         const MatmulConfig& cfg, Tensor<Scalar>& y, MatmulCache<Scalar>& cache) {
  (void)cfg;
  detail::matmul::shapes(a.shape(), b.shape(), cache);
  require_shape(y, cache.y_shape, detail::matmul::kMatmul, "y (output)");
  const Index n = cache.n, k = cache.k, m = cache.m;
  for (Index t = 0; t < cache.B; ++t) {
    const Scalar* at = a.data() + (cache.Ba == 1 ? 0 : t) * n * k;
    const Scalar* bt = b.data() + (cache.Bb == 1 ? 0 : t) * k * m;
    Scalar* yt = y.data() + t * n * m;
    //! [matmul.forward]
    // Y_t = A_t B_t; a broadcast operand is the same matrix for every t.
    if constexpr (detail::kGemmScalar<Scalar>) {
      detail::gemm(false, false, n, m, k, at, bt, yt);
    } else {
      for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < m; ++j) {
          Scalar acc = Scalar(0);
          for (Index p = 0; p < k; ++p) acc += at[i * k + p] * bt[p * m + j];
          yt[i * m + j] = acc;
        }
    }
    //! [matmul.forward]
  }
}

/// \brief Forward pass (allocating wrapper of matmul_forward_into()).
template <class Scalar>
MatmulForward<Scalar> matmul_forward(const Tensor<Scalar>& a, const Tensor<Scalar>& b,
                                     const MatmulConfig& cfg = {}) {
  MatmulForward<Scalar> out;
  detail::matmul::shapes(a.shape(), b.shape(), out.cache);
  out.y = Tensor<Scalar>(out.cache.y_shape);
  matmul_forward_into(a, b, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: one named step per term, plain loops.
/// \param dy      shape of `y`
/// \param a       the forward's `a`
/// \param b       the forward's `b`
/// \param cache   from the forward pass
/// \param scales  term scales for the negative controls; leave at the default
/// \throws InvalidArgument if `dy`, `a` or `b` does not match the cache.
template <class Scalar>
MatmulGrads<Scalar> matmul_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& a,
                                           const Tensor<Scalar>& b,
                                           const MatmulCache<Scalar>& cache,
                                           const MatmulTermScales& scales = {}) {
  detail::matmul::check_backward(dy, a, b, cache);
  const Index n = cache.n, k = cache.k, m = cache.m;
  MatmulGrads<Scalar> g{Tensor<Scalar>(cache.a_shape), Tensor<Scalar>(cache.b_shape)};
  for (Index t = 0; t < cache.B; ++t) {
    const Index ta = cache.Ba == 1 ? 0 : t, tb = cache.Bb == 1 ? 0 : t;
    const Scalar *at = a.data() + ta * n * k, *bt = b.data() + tb * k * m,
                 *dyt = dy.data() + t * n * m;
    Scalar *dat = g.da.data() + ta * n * k, *dbt = g.db.data() + tb * k * m;
    // Step 1. (A_t)_{i,p} reaches (Y_t)_{i,j} for every j, with derivative (B_t)_{p,j}.
    //! [matmul.da]
    // dA_t += dY_t B_tᵀ: (dA_t)_{i,p} = Σ_j (dY_t)_{i,j} (B_t)_{p,j}; summed over t when a is
    // broadcast
    for (Index i = 0; i < n; ++i)
      for (Index p = 0; p < k; ++p) {
        Scalar acc = Scalar(0);
        for (Index j = 0; j < m; ++j) acc += dyt[i * m + j] * bt[p * m + j];
        dat[i * k + p] += Scalar(scales.da) * acc;
      }
    //! [matmul.da]
    // Step 2. (B_t)_{p,j} reaches (Y_t)_{i,j} for every i, with derivative (A_t)_{i,p}.
    //! [matmul.db]
    // dB_t += A_tᵀ dY_t: (dB_t)_{p,j} = Σ_i (A_t)_{i,p} (dY_t)_{i,j}; summed over t when b is
    // broadcast
    for (Index p = 0; p < k; ++p)
      for (Index j = 0; j < m; ++j) {
        Scalar acc = Scalar(0);
        for (Index i = 0; i < n; ++i) acc += at[i * k + p] * dyt[i * m + j];
        dbt[p * m + j] += Scalar(scales.db) * acc;
      }
    //! [matmul.db]
  }
  return g;
}

/// \brief Fused backward pass writing into caller-provided outputs: one GEMM per batch and
/// operand, accumulated over the batch for a broadcast operand.
/// \param dy     shape of `y`
/// \param a      the forward's `a`
/// \param b      the forward's `b`
/// \param cache  from the forward pass
/// \param da     output, shape of `a`, or `nullptr` if not wanted
/// \param db     output, shape of `b`, or `nullptr` if not wanted
/// \throws InvalidArgument on mismatched shapes of any argument or output.
template <class Scalar>
void matmul_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& a,
                          const Tensor<Scalar>& b, const MatmulCache<Scalar>& cache,
                          Opt<Tensor<Scalar>> da, Opt<Tensor<Scalar>> db) {
  using namespace detail::matmul;
  check_backward(dy, a, b, cache);
  if (da) require_shape(*da, cache.a_shape, kMatmul, "da (output)");
  if (db) require_shape(*db, cache.b_shape, kMatmul, "db (output)");
  const Index n = cache.n, k = cache.k, m = cache.m;
  //! [matmul.da_fused]
  // dA_t = dY_t B_tᵀ and dB_t = A_tᵀ dY_t, each one GEMM; a broadcast operand's GEMMs add up in
  // the order of t. With a of rank 3 and b of rank 2, dB = Σ_t A_tᵀ dY_t is one GEMM whose inner
  // dimension runs over the whole batch.
  for (Index t = 0; t < cache.B; ++t) {
    const Index ta = cache.Ba == 1 ? 0 : t, tb = cache.Bb == 1 ? 0 : t;
    const Scalar *at = a.data() + ta * n * k, *bt = b.data() + tb * k * m,
                 *dyt = dy.data() + t * n * m;
    if (da)
      detail::gemm(false, true, n, k, m, dyt, bt, da->data() + ta * n * k,
                   cache.Ba == 1 && t > 0);
    if (db && !(cache.Bb == 1 && cache.Ba == cache.B && cache.B > 1))
      detail::gemm(true, false, k, m, n, at, dyt, db->data() + tb * k * m,
                   cache.Bb == 1 && t > 0);
  }
  if (db && cache.Bb == 1 && cache.Ba == cache.B && cache.B > 1)
    detail::gemm(true, false, k, m, cache.B * n, a.data(), dy.data(), db->data());
  //! [matmul.da_fused]
}

/// \brief Fused backward pass (allocating wrapper of matmul_backward_into()).
template <class Scalar>
MatmulGrads<Scalar> matmul_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& a,
                                    const Tensor<Scalar>& b, const MatmulCache<Scalar>& cache) {
  MatmulGrads<Scalar> g{Tensor<Scalar>(cache.a_shape), Tensor<Scalar>(cache.b_shape)};
  matmul_backward_into(dy, a, b, cache, &g.da, &g.db);
  return g;
}

using MatmulForwardF = MatmulForward<float>;   ///< float alias
using MatmulForwardD = MatmulForward<double>;  ///< double alias

}  // namespace gradproof::ops
