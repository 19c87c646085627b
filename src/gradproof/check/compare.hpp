/// \file
/// \brief The comparison metric, the tolerance policy and the result row of one check.
#pragma once

#include "gradproof/check/oracles.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace gradproof::check {

/// \brief An element-wise tolerance: pass when \f$|a - n| \le \mathrm{atol} + \mathrm{rtol}\,|n|\f$.
struct Tolerance {
  double atol = 0;  ///< absolute part, already multiplied by the scale of the compared values
  double rtol = 0;  ///< relative part
};

/// \brief One tolerance policy per (dtype of the analytic result, oracle).
///
/// The policy gives `rtol` and a factor `k` with `atol = k · scale`, where `scale` is the natural
/// magnitude of the compared quantity (by default \f$\max_i |n_i|\f$). A relative-only tolerance
/// fails on elements that are small only because of cancellation (a batch-norm `dx` element can be
/// near zero while its neighbours are large), so the absolute part is tied to the scale of the
/// whole vector, not to each element.
///
/// The numbers and their arguments (\f$u_{64} = 2^{-53} \approx 1.1\cdot10^{-16}\f$,
/// \f$u_{32} = 2^{-24} \approx 6\cdot10^{-8}\f$):
/// - float64 vs complex step or dual numbers: both sides are exact up to rounding. A reduction of
///   `M` terms costs at most about \f$\log_2(M)\,u\f$ with Eigen's blocked sums and \f$M u\f$
///   in the worst case of a plain loop; for the \f$M \le 10^4\f$ used here that is below
///   \f$10^{-12}\f$. Policy: `rtol = k = 1e-12`.
/// - float64 vs Richardson: oracle error \f$\approx \epsilon^{4/5} \approx 3\cdot10^{-13}\f$ times the
///   ratio of the function's size (or fifth derivative) to the derivative, which is O(10)–O(100)
///   for normalised data. Policy: `1e-9`.
/// - float64 vs central differences: oracle error \f$\approx \epsilon^{2/3} \approx 4\cdot10^{-11}\f$
///   times the same ratio. Policy: `1e-7`.
/// - float32: the analytic result carries float32 rounding of about ten operations per element
///   plus the reductions, \f$(10 + \log_2 M)\,u_{32} \lesssim 2\cdot10^{-6}\f$; the oracle runs in
///   float64 on the same (exactly representable) input. Policy: `1e-5` plus the float64 oracle's
///   own policy.
inline Tolerance tolerance_policy(const std::string& dtype, Oracle oracle, double scale);

/// Policy factor for (dtype, oracle): see tolerance_policy().
inline double policy_factor(const std::string& dtype, Oracle oracle) {
  double oracle_part = 1e-12;  // complex step and dual numbers
  if (oracle == Oracle::richardson) oracle_part = 1e-9;
  if (oracle == Oracle::central) oracle_part = 1e-7;
  if (dtype == "float32") return 1e-5 + oracle_part;
  return oracle_part;
}

inline Tolerance tolerance_policy(const std::string& dtype, Oracle oracle, double scale) {
  const double k = policy_factor(dtype, oracle);
  return {k * scale, k};
}

/// \brief The tolerance against libtorch's float64 autograd (tests/torch/oracle.test.cpp).
///
/// Both sides are float64 evaluations of the same exact derivative, by different formulas and
/// summation orders: each carries rounding of order \f$\log_2(M)\,u\f$ of the magnitude of the
/// terms that cancel (`scale`), as the exact oracles do, so the exact oracles' factor applies:
/// `rtol = k = 1e-12`, `atol = k·scale`. Where the two differ by more, neither is taken as the
/// answer: the long-double gradient decides (gradproof passes if it is within the exact-oracle
/// policy of it and no further from it than libtorch).
inline Tolerance libtorch_policy(double scale) { return tolerance_policy("float64", Oracle::complex_step, scale); }

/// \brief The tolerance of `gradproof check`: a framework's gradients, in the dtype of its arrays,
/// against gradproof's float64 gradients on the same (exactly read) inputs.
///
/// `atol = k · scale`, `rtol = k`, where `scale` is the magnitude of the terms that cancel in the
/// gradient (as for the oracles) and `k` is one factor per dtype, with its argument (\f$u\f$ is the
/// unit roundoff of the dtype; a framework's backward carries about ten rounded operations per
/// element plus a reduction over the set, \f$(10 + \log_2 M)\,u\f$, which is at most \f$20u\f$ for
/// \f$M \le 2^{10}\f$ and grows only with \f$\log_2 M\f$; the float64 reference's own error,
/// \f$10^{-12}\f$, is added):
/// - float64, \f$u = 2^{-53}\f$: `k = 1e-12`, the exact oracles' and libtorch's factor (both sides
///   float64 evaluations of the same derivative by different summation orders).
/// - float32, \f$u = 2^{-24}\f$: `k = 1e-5`, the float32 policy of tolerance_policy().
/// - float16, \f$u = 2^{-11} \approx 4.9\cdot10^{-4}\f$: `k = 1e-2` (\f$20u\f$).
/// - bfloat16, \f$u = 2^{-8} \approx 3.9\cdot10^{-3}\f$: `k = 8e-2` (\f$20u\f$).
/// \param dtype  `float64`, `float32`, `float16` or `bfloat16`
/// \throws std::invalid_argument for another dtype.
inline double framework_factor(const std::string& dtype) {
  if (dtype == "float64") return 1e-12;
  if (dtype == "float32") return 1e-5 + 1e-12;
  if (dtype == "float16") return 1e-2 + 1e-12;
  if (dtype == "bfloat16") return 8e-2 + 1e-12;
  throw std::invalid_argument("framework_factor: no tolerance policy for dtype '" + dtype + "'");
}

/// The tolerance of framework_factor() for gradients whose terms have magnitude `scale`.
/// \param dtype  as framework_factor()
/// \param scale  the magnitude of the terms that cancel in the compared gradient
inline Tolerance framework_policy(const std::string& dtype, double scale) {
  const double k = framework_factor(dtype);
  return {k * scale, k};
}

/// The outcome of comparing an analytic vector with a numerical one.
struct Comparison {
  double max_abs_err = 0;  ///< \f$\max_i |a_i - n_i|\f$
  /// \f$\max_i |a_i - n_i| / |n_i|\f$ over the elements with \f$|n_i| > \mathrm{atol}\f$ (where a
  /// relative error means something); 0 if there are none.
  double max_rel_err = 0;
  /// Whether any element has \f$|n_i| > \mathrm{atol}\f$: if none does (a value that is 0, such
  /// as \f$\partial\sigma^2/\partial\mu\f$), there is no relative error, and max_rel_err's 0 means nothing.
  bool rel_defined = false;
  Eigen::Index worst = 0;  ///< element with the largest error relative to its allowance
  double analytic = 0;     ///< \f$a\f$ at the worst element
  double numeric = 0;      ///< \f$n\f$ at the worst element
  Tolerance tol;           ///< the tolerance used
  bool passed = true;      ///< every element within tolerance (and nothing is NaN)
};

/// \brief Element-wise comparison \f$|a - n| \le \mathrm{atol} + \mathrm{rtol}\,|n|\f$.
/// \param a    analytic values
/// \param n    numerical (reference) values, same size
/// \param tol  tolerance
/// \return the errors, the worst element and the verdict. NaN anywhere fails.
inline Comparison compare(const Eigen::Ref<const Eigen::VectorXd>& a, const Eigen::Ref<const Eigen::VectorXd>& n,
                          const Tolerance& tol) {
  if (a.size() != n.size()) {
    std::ostringstream msg;
    msg << "compare: analytic has " << a.size() << " values, numeric has " << n.size();
    throw std::invalid_argument(msg.str());
  }
  Comparison c;
  c.tol = tol;
  double worst_ratio = -1;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    const double err = std::abs(a[i] - n[i]);
    const double allow = tol.atol + tol.rtol * std::abs(n[i]);
    if (!(err <= allow)) c.passed = false;  // also catches NaN
    const double ratio = std::isnan(err) ? std::numeric_limits<double>::infinity()
                                         : (allow > 0 ? err / allow : (err > 0 ? std::numeric_limits<double>::infinity() : 0));
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      c.worst = i;
    }
    c.max_abs_err = std::isnan(err) ? err : std::max(c.max_abs_err, err);
    if (std::abs(n[i]) > tol.atol && std::abs(n[i]) > 0) {
      c.max_rel_err = std::max(c.max_rel_err, err / std::abs(n[i]));
      c.rel_defined = true;
    }
  }
  if (a.size()) {
    c.analytic = a[c.worst];
    c.numeric = n[c.worst];
  }
  return c;
}

/// Converts a flat row-major index into a multi-index for `shape`.
inline std::vector<std::int64_t> unravel(Eigen::Index flat, const std::vector<std::int64_t>& shape) {
  std::vector<std::int64_t> idx(shape.size(), 0);
  for (std::size_t k = shape.size(); k-- > 0;) {
    if (shape[k] > 0) {
      idx[k] = flat % shape[k];
      flat /= shape[k];
    }
  }
  return idx;
}

/// \brief One row of the verification results: one check of one formula with one oracle and dtype.
struct ResultRow {
  std::string formula{};              ///< formula id, e.g. `bn.dx`
  std::string test{};                 ///< test name, e.g. `bn/dx_matches_oracles_f64`
  std::string oracle{};               ///< `central`, `richardson`, `complex_step`, `dual`, `identity`, `staged_f64`, ...
  std::string dtype{};                ///< dtype of the analytic result: `float64` or `float32`
  std::string kind{};                 ///< `oracle`, `property`, `agreement`, `pitfall`, `reference`, ...
  std::vector<std::int64_t> shape{};  ///< shape of the input the check ran on
  double max_abs_err = 0;  ///< as in Comparison::max_abs_err
  double max_rel_err = 0;  ///< as in Comparison::max_rel_err
  bool rel_defined = true; ///< as in Comparison::rel_defined (rows built by hand say so themselves)
  double atol = 0;         ///< absolute tolerance used
  double rtol = 0;         ///< relative tolerance used
  bool passed = false;     ///< every element within \f$\mathrm{atol} + \mathrm{rtol}\,|n_i|\f$
  std::vector<std::int64_t> worst_index{};  ///< index of the worst element in `value_shape`
  double analytic = 0;                    ///< analytic value at the worst element
  double numeric = 0;                     ///< reference value at the worst element
  std::string note{};                       ///< what was compared, in a few words
};

/// Fills the numeric fields of `row` from a comparison; `value_shape` locates the worst element.
inline ResultRow& fill(ResultRow& row, const Comparison& c, const std::vector<std::int64_t>& value_shape) {
  row.max_abs_err = c.max_abs_err;
  row.max_rel_err = c.max_rel_err;
  row.rel_defined = c.rel_defined;
  row.atol = c.tol.atol;
  row.rtol = c.tol.rtol;
  row.passed = c.passed;
  row.worst_index = unravel(c.worst, value_shape);
  row.analytic = c.analytic;
  row.numeric = c.numeric;
  return row;
}

/// A failure message naming the formula id, oracle, dtype, shape, worst element and both values.
inline std::string describe(const ResultRow& r) {
  std::ostringstream out;
  out.precision(6);
  const auto vec = [&](const std::vector<std::int64_t>& v) {
    std::ostringstream s;
    s << '(';
    for (std::size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
    s << ')';
    return s.str();
  };
  out << (r.passed ? "PASS " : "FAIL ") << r.formula << " [" << r.test << "] oracle=" << r.oracle
      << " dtype=" << r.dtype << " shape=" << vec(r.shape) << " max_abs_err=" << r.max_abs_err
      << " max_rel_err=" << r.max_rel_err << " (atol=" << r.atol << ", rtol=" << r.rtol << ")"
      << " worst at " << vec(r.worst_index) << ": analytic=" << r.analytic << " numeric=" << r.numeric;
  if (!r.note.empty()) out << " — " << r.note;
  return out.str();
}

}  // namespace gradproof::check
