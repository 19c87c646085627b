/// \file
/// \brief The one matrix product of the ops (linear, matmul): row-major operands, Eigen's GEMM.
///
/// Every fused kernel that multiplies matrices calls gemm() here, so the choice of GEMM is made
/// in one place (`derivations/linear.md` says which one and why, with the measurement). The
/// operands are row-major, the layout of gradproof's tensors; a transposed operand is read in
/// place, never copied.
#pragma once

#include "gradproof/tensor.hpp"

#include <Eigen/Core>

#include <type_traits>

namespace gradproof::ops::detail {

/// Row-major dynamic matrix of `T`.
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Scalars the GEMM runs on; the other scalars of the oracles take the plain loops.
template <class T>
inline constexpr bool kGemmScalar = std::is_same_v<T, float> || std::is_same_v<T, double>;

/// \brief \f$C = \mathrm{op}(A)\,\mathrm{op}(B)\f$ (or \f$C \mathrel{+}= \f$ with `accumulate`),
/// all row-major and contiguous.
/// \param a        `(m, k)`, or `(k, m)` read as its transpose when `trans_a`
/// \param b        `(k, n)`, or `(n, k)` read as its transpose when `trans_b`
/// \param c        `(m, n)`, written (or added to)
template <class T>
void gemm(bool trans_a, bool trans_b, Index m, Index n, Index k, const T* a, const T* b, T* c,
          bool accumulate = false) {
  using Map = Eigen::Map<const RowMatrix<T>>;
  Eigen::Map<RowMatrix<T>> C(c, m, n);
  const Map A(a, trans_a ? k : m, trans_a ? m : k), B(b, trans_b ? n : k, trans_b ? k : n);
  if (!accumulate) C.setZero();
  if (m == 0 || n == 0 || k == 0) return;
  if (trans_a && trans_b) C.noalias() += A.transpose() * B.transpose();
  else if (trans_a) C.noalias() += A.transpose() * B;
  else if (trans_b) C.noalias() += A * B.transpose();
  else C.noalias() += A * B;
}

}  // namespace gradproof::ops::detail
