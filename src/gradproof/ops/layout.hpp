/// \file
/// \brief Channel-major views of NC... tensors and the input validation shared by the ops.
#pragma once

#include "gradproof/tensor.hpp"

#include <cmath>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>

namespace gradproof::ops {

/// A nullable pointer argument; `nullptr` means "absent". (The alias keeps the scalar type from
/// being deduced from it, so that a literal `nullptr` can be passed.)
template <class T>
using Opt = std::type_identity_t<T>*;

/// \brief An `(N, C, L)` view of a row-major tensor of shape `(N, C)`, `(N, C, L)` or `(N, C, H, W)`.
///
/// Element `(n, c, l)` lives at offset `(n·C + c)·L + l`; for one channel the data are `N`
/// contiguous chunks of `L` values, `C·L` apart. `L` is 1 for rank 2 and `H·W` for rank 4.
struct NCL {
  Index N = 0;  ///< batch
  Index C = 0;  ///< channels
  Index L = 0;  ///< spatial positions per (sample, channel)

  /// Values per channel statistic: \f$M = N \cdot L\f$.
  Index M() const noexcept { return N * L; }
  /// Offset of the first element of chunk `(n, c)`.
  Index offset(Index n, Index c) const noexcept { return (n * C + c) * L; }
};

/// Builds the `(N, C, L)` view of `shape` after checking that its rank is 2, 3 or 4.
/// \param shape  shape of the argument, rank 2, 3 or 4
/// \param what   name of the argument, for the error message
/// \param op     name of the operation, for the error message
/// \throws InvalidArgument for a rank outside [2, 4], an empty tensor, or extents whose product
///         overflows (numel()).
inline NCL ncl_view(const Shape& shape, const char* op, const char* what) {
  const auto rank = shape.size();
  if (rank < 2 || rank > 4) {
    std::ostringstream msg;
    msg << op << ": " << what << " must have rank 2, 3 or 4 (N, C[, L | H, W]); got rank " << rank
        << " with shape " << to_string(shape);
    throw InvalidArgument(msg.str());
  }
  const std::optional<Index> count = try_numel(shape);
  if (!count) {
    std::ostringstream msg;
    msg << op << ": " << what << " has shape " << to_string(shape)
        << ", with a negative extent or a product of extents that overflows the index type";
    throw InvalidArgument(msg.str());
  }
  if (*count == 0) {
    std::ostringstream msg;
    msg << op << ": " << what << " must not be empty; got shape " << to_string(shape);
    throw InvalidArgument(msg.str());
  }
  NCL v;
  v.N = shape[0];
  v.C = shape[1];
  v.L = 1;
  for (std::size_t a = 2; a < rank; ++a) v.L *= shape[a];
  return v;
}

/// Throws unless `t` has exactly `expected` shape.
template <class Scalar>
void require_shape(const Tensor<Scalar>& t, ShapeView expected, const char* op, const char* what) {
  if (!same_shape(t.shape(), expected)) {
    std::ostringstream msg;
    msg << op << ": " << what << " must have shape " << to_string(expected) << "; got "
        << to_string(t.shape());
    throw InvalidArgument(msg.str());
  }
}

/// \brief True when `a` and `b` share storage: the same tensor, or overlapping elements.
///
/// A Tensor owns its elements, so two distinct tensors never overlap today; the range test keeps
/// the answer right for views. Empty tensors share nothing.
template <class Scalar>
bool same_storage(const Tensor<Scalar>& a, const Tensor<Scalar>& b) noexcept {
  if (&a == &b) return true;
  if (a.empty() || b.empty()) return false;
  const std::less<const Scalar*> before;
  return before(a.data(), b.data() + b.size()) && before(b.data(), a.data() + a.size());
}

/// \brief Throws unless the output `out` (if given) and the tensor `other` (if given) are
/// distinct: two outputs written by one call, or an output and an input the call still reads.
///
/// The passes write an output in place of an input only where every element of the input is
/// read before its own output element is written (`y` over `x`, `dx` over `dy` or `x`, each
/// documented); everything else — `dgamma` and `dbeta` as one tensor, `dgamma` over `gamma`,
/// an output over a cache statistic — would silently lose or corrupt a result.
/// \param op          name of the operation, for the error message
/// \param out         an output, or `nullptr`
/// \param out_name    its name, e.g. "dgamma (output)"
/// \param other       another output or an input, or `nullptr`
/// \param other_name  its name
template <class Scalar>
void require_distinct(const char* op, const Tensor<Scalar>* out, const char* out_name, const Tensor<Scalar>* other,
                      const char* other_name) {
  if (out == nullptr || other == nullptr || !same_storage(*out, *other)) return;
  std::ostringstream msg;
  msg << op << ": " << out_name << " and " << other_name << " must be distinct tensors; got the same storage"
      << " (shape " << to_string(out->shape()) << ")";
  throw InvalidArgument(msg.str());
}

/// Throws unless `eps` is finite and positive (NaN fails both comparisons, so it is refused too).
inline void require_positive_eps(double eps, const char* op) {
  if (!(eps > 0.0) || !std::isfinite(eps)) {
    std::ostringstream msg;
    msg << op << ": eps must be a finite number > 0; got " << eps;
    throw InvalidArgument(msg.str());
  }
}

/// Throws unless the momentum is absent (cumulative average) or in [0, 1].
inline void require_momentum(const std::optional<double>& momentum, const char* op) {
  if (momentum && !(*momentum >= 0.0 && *momentum <= 1.0)) {
    std::ostringstream msg;
    msg << op << ": momentum must be in [0, 1] or none (cumulative average); got " << *momentum;
    throw InvalidArgument(msg.str());
  }
}

}  // namespace gradproof::ops
