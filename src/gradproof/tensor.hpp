/// \file
/// \brief Dense row-major tensors, shape helpers and the error type for bad input.
///
/// A gradproof tensor is a C-contiguous (row-major) block of scalars with a runtime shape, the
/// layout PyTorch uses by default (NCHW for images). Ops view it through fixed-rank Eigen maps
/// where they need arithmetic; the tensor itself only owns memory and knows its shape.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace gradproof {

/// Index type used for sizes and offsets (signed, as in Eigen).
using Index = Eigen::Index;

/// A tensor shape: one extent per axis, outermost first.
using Shape = std::vector<Index>;

/// Thrown for invalid arguments: wrong rank, mismatched shapes, out-of-range hyper-parameters,
/// empty tensors. The message names the argument, the expected and the actual value.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A shape to compare with, without allocating: a Shape (a `std::vector`), or a `std::array`
/// such as vector_shape() returns on the hot paths of the `*_into` functions.
using ShapeView = std::span<const Index>;

/// The shape `(n,)` of a vector of `n` values, as an array: checking a parameter's shape with it
/// allocates nothing, where `Shape{n}` would allocate on every call.
inline std::array<Index, 1> vector_shape(Index n) noexcept { return {n}; }

/// True when `shape` and `expected` have the same rank and extents.
inline bool same_shape(ShapeView shape, ShapeView expected) noexcept {
  return std::ranges::equal(shape, expected);
}

/// Formats a shape as `(2, 3, 4)`.
std::string to_string(ShapeView shape);

/// \brief Product of the extents (1 for rank 0), checked.
///
/// Every extent must be >= 0, and the product of the non-zero extents must fit in Index: then
/// every partial product of extents (a row length, a set size \f$M\f$, an offset) fits too, so
/// code that multiplies extents of a valid shape cannot overflow. (A shape with a zero extent
/// has no elements, but its other extents still obey the bound.)
/// \param shape  the extents
/// \param what   name of the argument, for the error message
/// \throws InvalidArgument naming `what` and the extents, for a negative extent or a product
///         that overflows Index (`(2^62 + 1, 4)` would otherwise wrap around to 4 values).
Index numel(ShapeView shape, const char* what = "shape");

/// numel() without the exception: `std::nullopt` for a negative extent or an overflow.
std::optional<Index> try_numel(ShapeView shape) noexcept;

/// \brief Owning, row-major tensor of `Scalar` with a runtime shape.
///
/// \tparam Scalar `float`, `double`, `std::complex<double>` or an automatic-differentiation
///         scalar: everything the forward passes are instantiated for.
template <class Scalar>
class Tensor {
 public:
  Tensor() = default;

  /// Allocates a tensor of `shape`, value-initialised.
  explicit Tensor(Shape shape) : shape_(std::move(shape)), data_(checked_numel(shape_)) {}

  /// Allocates a tensor of `shape` filled with `value`.
  Tensor(Shape shape, const Scalar& value)
      : shape_(std::move(shape)), data_(checked_numel(shape_), value) {}

  /// Takes `values` (row-major) for a tensor of `shape`.
  /// \throws InvalidArgument if the number of values does not match the shape.
  Tensor(Shape shape, std::vector<Scalar> values) : shape_(std::move(shape)), data_(std::move(values)) {
    if (static_cast<Index>(data_.size()) != checked_numel(shape_)) {
      std::ostringstream msg;
      msg << "Tensor: " << data_.size() << " values given for shape " << to_string(shape_)
          << " (expected " << numel(shape_) << ")";
      throw InvalidArgument(msg.str());
    }
  }

  /// The extents, outermost first.
  const Shape& shape() const noexcept { return shape_; }
  /// Number of axes.
  Index rank() const noexcept { return static_cast<Index>(shape_.size()); }
  /// Number of elements, the product of the extents.
  Index size() const noexcept { return static_cast<Index>(data_.size()); }
  /// True when some extent is 0.
  bool empty() const noexcept { return data_.empty(); }

  /// The elements, row-major.
  Scalar* data() noexcept { return data_.data(); }
  /// The elements, row-major (read only).
  const Scalar* data() const noexcept { return data_.data(); }
  /// Element `i` in row-major order (unchecked).
  Scalar& operator[](Index i) { return data_[static_cast<std::size_t>(i)]; }
  /// Element `i` in row-major order (unchecked, read only).
  const Scalar& operator[](Index i) const { return data_[static_cast<std::size_t>(i)]; }

  /// A flat Eigen view of all elements (row-major order).
  Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>> flat() { return {data(), size()}; }
  /// A flat read-only Eigen view of all elements (row-major order).
  Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>> flat() const { return {data(), size()}; }

  /// Element-wise conversion to another scalar type (e.g. float to double for an oracle).
  template <class Other>
  Tensor<Other> cast() const {
    std::vector<Other> out;
    out.reserve(data_.size());
    for (const Scalar& v : data_) out.push_back(static_cast<Other>(v));
    return Tensor<Other>(shape_, std::move(out));
  }

 private:
  // The element count of `shape`, refused before anything is allocated when an extent is
  // negative, the product overflows, or the bytes would exceed what a std::vector can hold.
  static Index checked_numel(const Shape& shape) {
    const Index n = numel(shape, "Tensor: shape");
    if (static_cast<std::size_t>(n) > std::vector<Scalar>().max_size()) {
      std::ostringstream msg;
      msg << "Tensor: shape " << to_string(shape) << " has " << n << " elements of " << sizeof(Scalar)
          << " bytes, more than can be allocated (at most " << std::vector<Scalar>().max_size() << ")";
      throw InvalidArgument(msg.str());
    }
    return n;
  }

  Shape shape_;
  std::vector<Scalar> data_;
};

inline std::string to_string(ShapeView shape) {
  std::ostringstream out;
  out << '(';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) out << ',';
  out << ')';
  return out.str();
}

inline std::optional<Index> try_numel(ShapeView shape) noexcept {
  Index nonzero = 1;
  bool zero = false;
  for (Index d : shape) {
    if (d < 0 || (d != 0 && __builtin_mul_overflow(nonzero, d, &nonzero))) return std::nullopt;
    zero = zero || d == 0;
  }
  return zero ? 0 : nonzero;
}

inline Index numel(ShapeView shape, const char* what) {
  if (const auto n = try_numel(shape)) return *n;
  std::ostringstream msg;
  msg << what << " " << to_string(shape);
  if (std::ranges::any_of(shape, [](Index d) { return d < 0; })) {
    msg << " has a negative extent";
  } else {
    msg << ": the product of the extents overflows the index type (at most " << std::numeric_limits<Index>::max()
        << ")";
  }
  throw InvalidArgument(msg.str());
}

/// \brief `a * b` for non-negative sizes, checked: the product of two extents or counts that
/// may not be extents of one valid shape (a set size times a count of sets, say).
/// \throws InvalidArgument naming `what` and both factors when the product overflows Index.
inline Index checked_product(Index a, Index b, const char* what) {
  Index p = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &p)) {
    std::ostringstream msg;
    msg << what << " = " << a << " * " << b << " is negative or overflows the index type (at most "
        << std::numeric_limits<Index>::max() << ")";
    throw InvalidArgument(msg.str());
  }
  return p;
}

using TensorF = Tensor<float>;   ///< The float alias, as published for every op.
using TensorD = Tensor<double>;  ///< The double alias, as published for every op.

}  // namespace gradproof
