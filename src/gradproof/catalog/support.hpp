/// \file
/// \brief Building blocks for catalog checks: reproducible data, conversions, and the
/// comparison of an analytic result with an oracle that becomes one result row.
#pragma once

#include "gradproof/check/compare.hpp"
#include "gradproof/check/oracles.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace gradproof::catalog::support {

using check::Oracle;
using check::Vec;

/// The four oracles, in the order the report lists them.
inline const std::vector<Oracle>& all_oracles() {
  static const std::vector<Oracle> all = {Oracle::central, Oracle::richardson, Oracle::complex_step, Oracle::dual};
  return all;
}

/// Deterministic random numbers. Every value is rounded to float first, so the same input is
/// exactly representable in float32 and float64 and both dtypes are checked on identical data.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : gen_(seed) {}
  double normal(double mean = 0, double sd = 1) { return f32(std::normal_distribution<double>(mean, sd)(gen_)); }
  double uniform(double lo, double hi) { return f32(std::uniform_real_distribution<double>(lo, hi)(gen_)); }
  /// A value in ±[lo, hi]: bounded away from zero, random sign.
  double signed_uniform(double lo, double hi) { return (uniform(0, 1) < 0.5 ? -1 : 1) * uniform(lo, hi); }
  TensorD normal_tensor(const Shape& shape, double mean = 0, double sd = 1) {
    TensorD t(shape);
    for (Index i = 0; i < t.size(); ++i) t[i] = normal(mean, sd);
    return t;
  }

 private:
  static double f32(double v) { return static_cast<double>(static_cast<float>(v)); }
  std::mt19937_64 gen_;
};

/// Flattens a tensor into a `Vec<S>` (row-major order).
template <class S>
Vec<S> to_vec(const Tensor<S>& t) {
  return Eigen::Map<const Vec<S>>(t.data(), t.size());
}

/// Builds a tensor of `shape` from a `Vec<S>`.
template <class S>
Tensor<S> from_vec(const Shape& shape, const Vec<S>& v) {
  return Tensor<S>(shape, std::vector<S>(v.data(), v.data() + v.size()));
}

/// A float or double tensor as a double vector.
template <class T>
Eigen::VectorXd as_f64(const Tensor<T>& t) {
  Eigen::VectorXd v(t.size());
  for (Index i = 0; i < t.size(); ++i) v[i] = static_cast<double>(t[i]);
  return v;
}

/// `Shape` as the `int64` list that result rows carry.
inline std::vector<std::int64_t> i64(const Shape& s) { return {s.begin(), s.end()}; }

/// dtype name of a scalar type.
template <class T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

/// What a row is about, before its numbers are known.
struct RowMeta {
  std::string formula;
  std::string test;
  std::string oracle;
  std::string dtype;
  std::string kind;
  Shape shape;
  std::string note;
};

/// \brief Compares `analytic` with `numeric` under the policy for (dtype, oracle) and returns the row.
/// \param meta         what is compared
/// \param policy       the oracle whose tolerance applies
/// \param analytic     analytic values
/// \param numeric      reference values
/// \param value_shape  shape of the compared values (for the worst index)
/// \param scale        magnitude for the absolute tolerance; negative means \f$\max_i|n_i|\f$
inline check::ResultRow oracle_row(const RowMeta& meta, Oracle policy, const Eigen::VectorXd& analytic,
                                   const Eigen::VectorXd& numeric, const std::vector<std::int64_t>& value_shape,
                                   double scale = -1) {
  if (scale < 0) scale = numeric.size() ? numeric.cwiseAbs().maxCoeff() : 0.0;
  const auto cmp = check::compare(analytic, numeric, check::tolerance_policy(meta.dtype, policy, scale));
  check::ResultRow row{meta.formula, meta.test, meta.oracle, meta.dtype, meta.kind, i64(meta.shape)};
  row.note = meta.note;
  return check::fill(row, cmp, value_shape);
}

/// \brief Analytic Jacobian (m × n) of a map whose vector-Jacobian product is `vjp`:
/// row i is `vjp(e_i)`.
/// \param m    number of outputs
/// \param vjp  callable, `Eigen::VectorXd` (m) to `Eigen::VectorXd` (n)
template <class VJP>
Eigen::MatrixXd jacobian_from_vjp(Eigen::Index m, VJP&& vjp) {
  Eigen::MatrixXd J;
  Eigen::VectorXd e = Eigen::VectorXd::Zero(m);
  for (Eigen::Index i = 0; i < m; ++i) {
    e[i] = 1.0;
    const Eigen::VectorXd row = vjp(e);
    if (i == 0) J.resize(m, row.size());
    J.row(i) = row.transpose();
    e[i] = 0.0;
  }
  return J;
}

/// A matrix flattened row-major into a vector (so the worst index reads `(output, input)`).
inline Eigen::VectorXd flat_rowmajor(const Eigen::MatrixXd& J) {
  Eigen::VectorXd v(J.size());
  for (Eigen::Index i = 0; i < J.rows(); ++i) v.segment(i * J.cols(), J.cols()) = J.row(i).transpose();
  return v;
}

}  // namespace gradproof::catalog::support
