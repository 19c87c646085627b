/// \file
/// \brief Numerical derivative oracles: central differences, Richardson extrapolation, complex
/// step and forward-mode dual numbers.
///
/// Each oracle computes a Jacobian-vector product \f$J(x)\,u\f$ of a vector function
/// \f$f:\mathbb{R}^n\to\mathbb{R}^m\f$. The function is a generic callable that accepts
/// `Vec<S>` for `S` = `double`, `std::complex<double>` and `Dual`, so one forward pass serves
/// every oracle. Nothing here knows about any op.
#pragma once

#include <Eigen/Core>
// After Eigen/Core: the AutoDiff module relies on it.
#include <unsupported/Eigen/AutoDiff>

#include <cmath>
#include <complex>
#include <limits>
#include <stdexcept>
#include <string>

namespace gradproof::check {

/// A column vector of `S`.
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

/// Forward-mode dual number carrying one directional derivative.
using Dual = Eigen::AutoDiffScalar<Eigen::Matrix<double, 1, 1>>;

/// The four oracles.
enum class Oracle { central, richardson, complex_step, dual };

/// Stable name of an oracle (`central`, `richardson`, `complex_step`, `dual`).
inline const char* name(Oracle o) {
  switch (o) {
    case Oracle::central: return "central";
    case Oracle::richardson: return "richardson";
    case Oracle::complex_step: return "complex_step";
    case Oracle::dual: return "dual";
  }
  return "?";
}

/// \brief Step policy for the difference oracles.
///
/// Central differences have truncation error \f$h^2 |f'''|/6\f$ and rounding error about
/// \f$\epsilon |f| / h\f$; the sum is smallest at \f$h \propto \epsilon^{1/3}\f$ (about 6e-6),
/// where both are near \f$\epsilon^{2/3} \approx 4\cdot10^{-11}\f$ relative. One Richardson step
/// cancels the \f$h^2\f$ term, leaving \f$h^4\f$ against \f$\epsilon/h\f$: \f$h \propto \epsilon^{1/5}\f$
/// (about 7e-4), error near \f$\epsilon^{4/5} \approx 3\cdot10^{-13}\f$. The step is scaled by
/// \f$\max(1, \|x\|_\infty)\f$ so that it stays a fixed fraction of large inputs (otherwise
/// \f$x + h\f$ rounds back to \f$x\f$) and an absolute size near zero. It is rounded to a power of
/// two so that \f$h\,u_j\f$ adds no rounding of its own for the unit directions of a full Jacobian.
struct StepPolicy {
  /// \f$\epsilon^{1/3}\f$ for central differences.
  static double central_base() { return std::cbrt(std::numeric_limits<double>::epsilon()); }
  /// \f$\epsilon^{1/5}\f$ for Richardson extrapolation.
  static double richardson_base() { return std::pow(std::numeric_limits<double>::epsilon(), 0.2); }
  /// Complex step: any tiny step works (no subtraction, so no cancellation).
  static constexpr double complex_step() { return 1e-20; }

  /// The step for a direction `u` at `x`: `base · max(1, max_j |x_j| over u_j ≠ 0) / max_j |u_j|`,
  /// rounded to a power of two.
  static double step(double base, const Vec<double>& x, const Vec<double>& u) {
    double xs = 1.0, us = 0.0;
    for (Eigen::Index j = 0; j < x.size(); ++j) {
      if (u[j] != 0.0) xs = std::max(xs, std::abs(x[j]));
      us = std::max(us, std::abs(u[j]));
    }
    if (us == 0.0) throw std::invalid_argument("StepPolicy: direction u is zero");
    return std::exp2(std::round(std::log2(base * xs / us)));
  }
};

namespace detail {
template <class F>
Vec<double> central_at(F& f, const Vec<double>& x, const Vec<double>& u, double h) {
  const Vec<double> xp = x + h * u;
  const Vec<double> xm = x - h * u;
  return (f(xp) - f(xm)) / (2.0 * h);
}
}  // namespace detail

/// \brief \f$J u \approx (f(x+hu) - f(x-hu)) / 2h\f$; error \f$O(h^2)\f$ plus rounding \f$O(\epsilon/h)\f$.
/// \param f  generic callable, `Vec<double>` (n) to `Vec<double>` (m)
/// \param x  point, n
/// \param u  direction, n
/// \param h  step; 0 selects StepPolicy
/// \return the m-vector \f$J(x)u\f$
template <class F>
Vec<double> jvp_central(F&& f, const Vec<double>& x, const Vec<double>& u, double h = 0) {
  if (h == 0) h = StepPolicy::step(StepPolicy::central_base(), x, u);
  return detail::central_at(f, x, u, h);
}

/// \brief One Richardson step on central differences: \f$(4D(h/2) - D(h))/3\f$, error \f$O(h^4)\f$.
/// \param f  generic callable, `Vec<double>` (n) to `Vec<double>` (m)
/// \param x  point, n
/// \param u  direction, n
/// \param h  step; 0 selects StepPolicy
/// \return the m-vector \f$J(x)u\f$
template <class F>
Vec<double> jvp_richardson(F&& f, const Vec<double>& x, const Vec<double>& u, double h = 0) {
  if (h == 0) h = StepPolicy::step(StepPolicy::richardson_base(), x, u);
  return (4.0 * detail::central_at(f, x, u, h / 2) - detail::central_at(f, x, u, h)) / 3.0;
}

/// \brief Complex step \f$J u = \operatorname{Im} f(x + i h u) / h\f$: no subtraction, so machine
/// precision with any tiny \f$h\f$. Valid only for functions analytic near real `x` that are real
/// on real inputs (no `abs`, no comparisons, no conjugation).
/// \param f  generic callable, `Vec<std::complex<double>>` (n) to the same (m)
/// \param x  point, n
/// \param u  direction, n
/// \param h  step
/// \return the m-vector \f$J(x)u\f$
template <class F>
Vec<double> jvp_complex_step(F&& f, const Vec<double>& x, const Vec<double>& u,
                             double h = StepPolicy::complex_step()) {
  using C = std::complex<double>;
  Vec<C> z(x.size());
  for (Eigen::Index j = 0; j < x.size(); ++j) z[j] = C(x[j], h * u[j]);
  const Vec<C> fz = f(z);
  return fz.imag() / h;
}

/// \brief Forward-mode dual numbers (Eigen's `AutoDiffScalar`): \f$f(x + \varepsilon u)\f$ with
/// \f$\varepsilon^2 = 0\f$ carries \f$J u\f$ exactly, up to the rounding of the chain-rule products.
/// \param f  generic callable, `Vec<Dual>` (n) to `Vec<Dual>` (m)
/// \param x  point, n
/// \param u  direction, n
/// \return the m-vector \f$J(x)u\f$
template <class F>
Vec<double> jvp_dual(F&& f, const Vec<double>& x, const Vec<double>& u) {
  Vec<Dual> z(x.size());
  for (Eigen::Index j = 0; j < x.size(); ++j) {
    z[j] = Dual(x[j], Eigen::Matrix<double, 1, 1>(u[j]));
  }
  const Vec<Dual> fz = f(z);
  Vec<double> out(fz.size());
  for (Eigen::Index i = 0; i < fz.size(); ++i) {
    // A result that does not depend on x has an empty derivative vector.
    out[i] = fz[i].derivatives().size() ? fz[i].derivatives()[0] : 0.0;
  }
  return out;
}

/// \brief \f$J(x)u\f$ by the chosen oracle, with the default step policy.
/// \param oracle  which oracle
/// \param f       generic callable over `Vec<S>` for every oracle's scalar `S`
/// \param x       point, n
/// \param u       direction, n
/// \return the m-vector \f$J(x)u\f$
template <class F>
Vec<double> jvp(Oracle oracle, F&& f, const Vec<double>& x, const Vec<double>& u) {
  switch (oracle) {
    case Oracle::central: return jvp_central(f, x, u);
    case Oracle::richardson: return jvp_richardson(f, x, u);
    case Oracle::complex_step: return jvp_complex_step(f, x, u);
    case Oracle::dual: return jvp_dual(f, x, u);
  }
  throw std::invalid_argument("jvp: unknown oracle");
}

/// \brief Full Jacobian (m × n) by the chosen oracle, one JVP per unit direction \f$e_j\f$.
/// \param oracle  which oracle
/// \param f       generic callable
/// \param x       point, n
/// \return \f$J(x)\f$, m × n
template <class F>
Eigen::MatrixXd jacobian(Oracle oracle, F&& f, const Vec<double>& x) {
  Eigen::MatrixXd J;
  Vec<double> e = Vec<double>::Zero(x.size());
  for (Eigen::Index j = 0; j < x.size(); ++j) {
    e[j] = 1.0;
    const Vec<double> col = jvp(oracle, f, x, e);
    if (j == 0) J.resize(col.size(), x.size());
    J.col(j) = col;
    e[j] = 0.0;
  }
  return J;
}

}  // namespace gradproof::check
