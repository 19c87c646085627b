/// \file
/// \brief Building blocks for catalog checks: reproducible data, conversions, and the
/// comparison of an analytic result with an oracle that becomes one result row.
#pragma once

#include "gradproof/catalog/catalog.hpp"
#include "gradproof/check/compare.hpp"
#include "gradproof/check/oracles.hpp"
#include "gradproof/check/step_sweep.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <random>
#include <sstream>
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

/// \brief Sets the sample mean and the (biased) standard deviation of `t` at the flat indices
/// `idx` to exactly `mean` and `sd` (before the final rounding of each value to float).
///
/// Random data of a small set can be nearly constant by chance (two draws 0.03 apart, say), and
/// then the problem is ill-conditioned: float32 loses \f$\log_2(|\mu|/\sigma)\f$ bits when it
/// centres, and a difference step that is small against \f$|x|\f$ is not small against
/// \f$\sigma\f$. The tolerance policy assumes \f$|\mu|/\sigma\f$ of order 10 at most; this
/// makes the test data honour that assumption for every shape, including \f$M = 2\f$.
inline void set_moments(TensorD& t, const std::vector<Index>& idx, double mean, double sd) {
  double m = 0, v = 0;
  for (Index i : idx) m += t[i];
  m /= static_cast<double>(idx.size());
  for (Index i : idx) v += (t[i] - m) * (t[i] - m);
  const double s = std::sqrt(v / static_cast<double>(idx.size()));
  for (Index i : idx) t[i] = static_cast<double>(static_cast<float>(mean + sd * (t[i] - m) / s));
}

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

/// Per-set sums of a computed dx: Σᵢ dxᵢ and Σᵢ dxᵢ x̂ᵢ, accumulated in long double so that what
/// they show is dx's own error, and their natural sizes, the magnitudes of the terms dx is made of
/// summed over the set (times |x̂ᵢ| for the moment).
struct SetMoments {
  Eigen::VectorXd sum, moment, sum_scale, moment_scale;
};

/// \param sets     number of sets
/// \param dx       the computed dx (`size()`, `operator[]`)
/// \param terms    per element, the sum of the magnitudes of dx's terms
/// \param set_of   element index to its set
/// \param xhat_at  element index to x̂ (float64)
template <class DX, class SetOf, class XhatAt>
SetMoments set_moments(Eigen::Index sets, const DX& dx, const Eigen::VectorXd& terms, const SetOf& set_of,
                       const XhatAt& xhat_at) {
  std::vector<long double> a1(static_cast<std::size_t>(sets), 0), a2 = a1;
  SetMoments m{Eigen::VectorXd(sets), Eigen::VectorXd(sets), Eigen::VectorXd::Zero(sets), Eigen::VectorXd::Zero(sets)};
  for (Eigen::Index i = 0; i < dx.size(); ++i) {
    const auto r = static_cast<std::size_t>(set_of(i));
    const double xh = xhat_at(i);
    a1[r] += static_cast<long double>(dx[i]);
    a2[r] += static_cast<long double>(dx[i]) * xh;
    m.sum_scale[Eigen::Index(r)] += terms[i];
    m.moment_scale[Eigen::Index(r)] += terms[i] * std::abs(xh);
  }
  for (Eigen::Index r = 0; r < sets; ++r) {
    m.sum[r] = static_cast<double>(a1[static_cast<std::size_t>(r)]);
    m.moment[r] = static_cast<double>(a2[static_cast<std::size_t>(r)]);
  }
  return m;
}

/// \brief The pitfall row of the naive claim Σᵢ dxᵢ x̂ᵢ = 0 at one ε: it passes when the claim
/// fails by over 1000× the float64 rounding allowance of its terms, which shows that the moment is
/// an ε-term and not rounding.
/// \param moment  Σᵢ dxᵢ x̂ᵢ per set (channel)
/// \param mag     Σᵢ |terms of dxᵢ|·|x̂ᵢ| per set, the scale of the moment's rounding error
inline check::ResultRow naive_moment_zero_row(const std::string& formula, const std::string& test, const Shape& shape,
                                              double eps, const Eigen::VectorXd& moment, const Eigen::VectorXd& mag) {
  const check::Tolerance naive = check::tolerance_policy("float64", check::Oracle::complex_step, mag.maxCoeff());
  Eigen::Index worst = 0;
  const double dev = moment.cwiseAbs().maxCoeff(&worst);
  check::ResultRow row{formula, test, "exact_zero", "float64", "pitfall", i64(shape)};
  row.max_abs_err = dev;
  row.max_rel_err = dev / mag.maxCoeff();
  row.atol = naive.atol;
  row.rtol = naive.rtol;
  row.worst_index = {worst};
  row.analytic = moment[worst];
  row.numeric = 0;
  row.passed = dev > 1e3 * naive.atol;
  std::ostringstream note;
  note << "ε = " << eps << ": max over sets |Σᵢ dxᵢ x̂ᵢ| = " << dev << " against a rounding allowance of " << naive.atol
       << " for the naive claim Σ dx x̂ = 0 (this row passes when the naive claim fails by over 1000x; "
          "the exact ε-term is checked in the property tests)";
  row.note = note.str();
  return row;
}

/// One unit of float32 rounding, \f$u_{32} = 2^{-24}\f$: the allowances of the float32 rows below.
inline constexpr double kU32 = 0x1p-24;

/// \brief A float32 result on data with a large mean (the float32 mean kept as value + residual)
/// against float64 on the same float32 input, within `units`·u32 of `scale`.
/// \param got, want  the float32 result (as float64) and the float64 one, flat
/// \param scale      the magnitude the allowance is a fraction of (max|y|, or dx's term scale)
/// \param what       what is compared and on what data, e.g. "fused dx ... set means 1e4, ..."
inline check::ResultRow large_mean_row(const std::string& formula, const std::string& test, const Shape& shape,
                                       const Eigen::VectorXd& got, const Eigen::VectorXd& want, double scale,
                                       double units, const std::string& what) {
  check::ResultRow row{formula, test, "reference", "float32", "pitfall", i64(shape)};
  check::fill(row, check::compare(got, want, check::Tolerance{units * kU32 * scale, 0.0}), {got.size()});
  std::ostringstream note;
  note << what << ": max abs error " << row.max_abs_err << " (scale " << scale
       << "); the mean is kept as float32 value + residual";
  row.note = note.str();
  return row;
}

/// \brief The summary row of an ε-moment pitfall: `per_eps[k]` is \f$\max_c|\sum_i dx_i\hat x_i|/\varepsilon\f$
/// for \f$\varepsilon = 10^{-1}, 10^{-3}, 10^{-5}\f$. The moment is proportional to ε while ε ≪ σ²
/// (the test data have σ² ≥ 0.25), so the last two ratios agree within 1%; the first, where ε is
/// no longer small, is reported but not compared.
inline check::ResultRow moment_linear_in_eps_row(const std::string& formula, const std::string& test, const Shape& shape,
                                                 const std::vector<double>& per_eps) {
  check::ResultRow row{formula, test, "closed_form", "float64", "pitfall", i64(shape)};
  row.max_rel_err = std::abs(per_eps.at(1) - per_eps.at(2)) / per_eps.at(2);
  row.rtol = 0.01;
  row.passed = row.max_rel_err < 0.01;
  std::ostringstream note;
  note << "max |Σ dx x̂| / ε for ε = 1e-1, 1e-3, 1e-5: " << per_eps[0] << ", " << per_eps[1] << ", " << per_eps[2]
       << ": the moment vanishes linearly as ε → 0 (ratio for 1e-3 vs 1e-5 agrees within 1%)";
  row.note = note.str();
  return row;
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

/// An analytic result in one dtype, laid out like the oracle's values it is compared with.
struct Analytic {
  std::string dtype;       ///< `float64` or `float32`
  Eigen::VectorXd values;  ///< the analytic values, widened to double
};

/// \brief One row per (oracle, analytic dtype): the oracle's full Jacobian of `f` at `at`
/// against each analytic Jacobian (flattened row-major, or a gradient when `f` is scalar).
/// \param scale  natural magnitude of the compared entries, for the absolute tolerance (see
///               check::tolerance_policy()); negative means \f$\max_i|n_i|\f$
template <class F>
void jacobian_rows(std::vector<check::ResultRow>& rows, RowMeta meta, F&& f, const Eigen::VectorXd& at,
                   const std::vector<Analytic>& analytic, double scale) {
  for (Oracle o : all_oracles()) {
    const Eigen::MatrixXd J = check::jacobian(o, f, at);
    const Eigen::VectorXd numeric = flat_rowmajor(J);
    for (const Analytic& a : analytic) {
      meta.oracle = check::name(o);
      meta.dtype = a.dtype;
      rows.push_back(oracle_row(meta, o, a.values, numeric, {J.rows(), J.cols()}, scale));
    }
  }
}

/// A vector-Jacobian product \f$v \mapsto J^T v\f$ (m to n), as computed by a backward pass.
using Vjp = std::function<Eigen::VectorXd(const Eigen::VectorXd&)>;

/// The natural magnitude of \f$v^T J u\f$: the sum of the magnitudes of the terms it is made of.
using ProjectionScale = std::function<double(const Eigen::VectorXd& v, const Eigen::VectorXd& u)>;

/// \brief Random projections for shapes too large for full Jacobians: `K` pairs \f$(u, v)\f$
/// of standard normal vectors, and per oracle and analytic dtype one row comparing
/// \f$\langle \mathrm{vjp}(v), u\rangle\f$ with \f$\langle v, J u\rangle\f$ from the oracle's JVP.
/// \param m       number of outputs of `f`
/// \param vjps    (dtype, backward pass) pairs
/// \param scale   natural magnitude of one projection; the largest over the `K` pairs is used
template <class F>
void projection_rows(std::vector<check::ResultRow>& rows, RowMeta meta, F&& f, const Eigen::VectorXd& at,
                     Eigen::Index m, const std::vector<std::pair<std::string, Vjp>>& vjps, int K, std::uint64_t seed,
                     const ProjectionScale& scale) {
  Rng rng(seed);
  std::vector<Eigen::VectorXd> us, vs;
  double magnitude = 0;
  for (int k = 0; k < K; ++k) {
    Eigen::VectorXd u(at.size()), v(m);
    for (Eigen::Index j = 0; j < u.size(); ++j) u[j] = rng.normal();
    for (Eigen::Index i = 0; i < m; ++i) v[i] = rng.normal();
    magnitude = std::max(magnitude, scale(v, u));
    us.push_back(std::move(u));
    vs.push_back(std::move(v));
  }
  std::vector<Eigen::VectorXd> analytic;
  for (const auto& [dtype, vjp] : vjps) {
    Eigen::VectorXd a(K);
    for (int k = 0; k < K; ++k) a[k] = vjp(vs[static_cast<std::size_t>(k)]).dot(us[static_cast<std::size_t>(k)]);
    analytic.push_back(std::move(a));
  }
  for (Oracle o : all_oracles()) {
    Eigen::VectorXd numeric(K);
    for (int k = 0; k < K; ++k)
      numeric[k] = vs[static_cast<std::size_t>(k)].dot(check::jvp(o, f, at, us[static_cast<std::size_t>(k)]));
    for (std::size_t a = 0; a < vjps.size(); ++a) {
      meta.oracle = check::name(o);
      meta.dtype = vjps[a].first;
      rows.push_back(oracle_row(meta, o, analytic[a], numeric, {K}, magnitude));
    }
  }
}

/// \brief The error-against-step sweep of an op for L = <w, y(x)>, at the entry of the analytic
/// dx (float64, staged) that is largest in magnitude, so that a relative error is meaningful.
/// \param y_of_x  generic callable, `Vec<S>` to `Vec<S>`: the forward pass
/// \param x       the input
/// \param w       the upstream weight, same shape
/// \param dx      the analytic gradient of L in x, flat
template <class F>
check::StepSweep sweep_of(F&& y_of_x, const TensorD& x, const TensorD& w, const Eigen::VectorXd& dx) {
  const Eigen::VectorXd wv = to_vec(w);
  const auto loss = [&y_of_x, &wv](const auto& xv) {
    using S = typename std::decay_t<decltype(xv)>::Scalar;
    const Vec<S> y = y_of_x(xv);
    Vec<S> out(1);
    out[0] = S(0);
    for (Eigen::Index i = 0; i < y.size(); ++i) out[0] += S(wv[i]) * y[i];
    return out;
  };
  Eigen::Index k = 0;
  dx.cwiseAbs().maxCoeff(&k);
  check::StepSweep s = check::step_sweep(loss, to_vec(x), k, dx[k]);
  std::ostringstream what;
  what << "∂L/∂x at flat index " << k << " (the largest |dx|), L = <w, y> with a random w, input "
       << to_string(x.shape());
  s.entry = what.str();
  s.shape = i64(x.shape());
  return s;
}

/// \brief `gradproof check`: the user's arrays and options as one declaration's `from_arrays`
/// reads them, with PyTorch's names and defaults. Each refusal is an InvalidArgument that names
/// the op and the argument, what was expected and what was given.
class UserInput {
 public:
  /// \param op  the op, first word of every message
  /// \param ua  the arrays and options given
  UserInput(std::string op, const catalog::UserArrays& ua) : op_(std::move(op)), ua_(ua) {}

  /// The k-th differentiable input (in `inputs()` order).
  const TensorD& input(std::size_t k) const { return ua_.inputs.at(k); }
  /// The upstream gradient.
  const TensorD& dy() const { return ua_.dy; }
  /// Whether the option `name` was given.
  bool given(const std::string& name) const { return text(name) != nullptr; }

  /// A finite number (`fallback` when not given).
  double number(const std::string& name, double fallback) const {
    const std::string* t = text(name);
    if (!t) return fallback;
    char* end = nullptr;
    const double v = std::strtod(t->c_str(), &end);
    if (t->empty() || *end != '\0' || !std::isfinite(v))
      fail(name + " must be a finite number", "'" + *t + "'");
    return v;
  }
  /// A number in [lo, hi].
  double number_in(const std::string& name, double fallback, double lo, double hi) const {
    const double v = number(name, fallback);
    if (v < lo || v > hi) fail(name + " must be in [" + num(lo) + ", " + num(hi) + "]", num(v));
    return v;
  }
  /// An integer (`fallback` when not given).
  Index integer(const std::string& name, Index fallback) const {
    const double v = number(name, static_cast<double>(fallback));
    if (v != std::floor(v) || std::abs(v) > 9.0e15) fail(name + " must be an integer", num(v));
    return static_cast<Index>(v);
  }
  /// One of the words `allowed` (`fallback` when not given).
  std::string word(const std::string& name, const std::string& fallback,
                   std::initializer_list<const char*> allowed) const {
    const std::string* t = text(name);
    if (!t) return fallback;
    std::string list;
    for (const char* a : allowed) {
      if (*t == a) return *t;
      list += (list.empty() ? "'" : ", '") + std::string(a) + "'";
    }
    fail(name + " must be one of " + list, "'" + *t + "'");
  }
  /// PyTorch's `reduction` of a loss: 'none', 'mean' (the default) or 'sum'.
  std::string reduction() const { return word("reduction", "mean", {"none", "mean", "sum"}); }

  /// The other array `name`, or nullptr when it was not given.
  const catalog::UserArray* array(const std::string& name) const {
    const auto it = ua_.arrays.find(name);
    return it == ua_.arrays.end() ? nullptr : &it->second;
  }
  /// The other array `name`, which must be given (`what` says what it is, for the message).
  const catalog::UserArray& required(const std::string& name, const std::string& what) const {
    const catalog::UserArray* a = array(name);
    if (!a) throw InvalidArgument(op_ + ": " + name + " (" + what + ") is required");
    return *a;
  }
  /// Refuses an array `name` whose shape is not `want` (`what` says what that shape is).
  void shape(const std::string& name, ShapeView got, ShapeView want,
             const std::string& what) const {
    if (Shape(got.begin(), got.end()) != Shape(want.begin(), want.end()))
      fail(name + " must have " + what + " " + to_string(want), to_string(got));
  }
  /// Refuses an empty array `name`.
  void not_empty(const std::string& name, const TensorD& t) const {
    if (t.rank() < 1 || t.empty())
      fail(name + " must not be empty", "shape " + to_string(t.shape()));
  }
  /// The input x of an op whose y has the shape of x: refused when empty or when dy's shape
  /// differs.
  const TensorD& x_shaped_like_dy() const {
    not_empty("x", input(0));
    shape("dy", dy().shape(), input(0).shape(), "the shape of x");
    return input(0);
  }
  /// Refuses an array `name` that is not stored as integers, or holds a value outside [lo, hi].
  void indices(const std::string& name, const catalog::UserArray& a, double lo, double hi,
               const std::string& range) const {
    if (!a.integer) fail(name + " must be an integer array (int64 or int32)", "floating point");
    for (Index i = 0; i < a.values.size(); ++i)
      if (a.values[i] < lo || a.values[i] > hi)
        fail(name + " must hold " + range,
             num(a.values[i]) + " at flat index " + std::to_string(i));
  }
  /// Throws the InvalidArgument "<op>: <what>; got <got>".
  [[noreturn]] void fail(const std::string& what, const std::string& got) const {
    throw InvalidArgument(op_ + ": " + what + "; got " + got);
  }
  /// A number as the messages print it (shortest form, %g).
  static std::string num(double v) {
    std::ostringstream o;
    o << v;
    return o.str();
  }

 private:
  const std::string* text(const std::string& name) const {
    for (const auto& [k, v] : ua_.options)
      if (k == name) return &v;
    return nullptr;
  }
  std::string op_;
  const catalog::UserArrays& ua_;
};

}  // namespace gradproof::catalog::support
