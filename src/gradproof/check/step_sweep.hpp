/// \file
/// \brief Error against step size: the measurement behind the step policy.
///
/// For one entry \f$\partial L/\partial x_k\f$ of a scalar loss, the relative error of central
/// differences and of one Richardson step over a log-spaced sweep of steps \f$h\f$, next to the
/// errors of the complex step and of dual numbers (which have no step to choose) and the steps
/// StepPolicy picks. Knows no op: the catalog hands in the loss and the analytic value.
#pragma once

#include "gradproof/check/oracles.hpp"
#include "gradproof/check/results.hpp"

#include <cmath>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

namespace gradproof::check {

/// What one sweep measured; every error is relative to |analytic| (absolute if it is 0).
struct StepSweep {
  std::string op;             ///< op family, e.g. `bn`
  std::string entry;          ///< which gradient entry, in words
  std::vector<std::int64_t> shape{};  ///< shape of the input
  double analytic = 0;        ///< the backward pass's value (float64, staged)
  double h_central = 0;       ///< StepPolicy's step for central differences
  double h_richardson = 0;    ///< StepPolicy's step for Richardson extrapolation
  std::vector<double> h{};    ///< the steps swept
  std::vector<double> central{};     ///< relative error of central differences at each h
  std::vector<double> richardson{};  ///< relative error of Richardson at each h
  double central_at_policy = 0;      ///< relative error of central differences at the policy's step
  double richardson_at_policy = 0;  ///< the same for Richardson at its step
  double complex_step = 0;  ///< relative error of the complex step (h = 1e-20)
  double dual = 0;          ///< relative error of dual numbers
};

/// \brief Sweeps h = 2^(-e/2), e = 2 … 90, for the entry k of the gradient of `loss` at `x`.
/// \param loss      generic callable, `Vec<S>` (n) to `Vec<S>` (1), for double, complex and Dual
/// \param x         point, n
/// \param k         index of the entry, 0 ≤ k < n
/// \param analytic  the analytic value of ∂L/∂x_k
template <class F>
StepSweep step_sweep(F&& loss, const Vec<double>& x, Eigen::Index k, double analytic) {
  Vec<double> u = Vec<double>::Zero(x.size());
  u[k] = 1.0;
  const double scale = analytic != 0 ? std::abs(analytic) : 1.0;
  const auto err = [&](const Vec<double>& v) { return std::abs(v[0] - analytic) / scale; };
  StepSweep s;
  s.analytic = analytic;
  for (int e = 2; e <= 90; ++e) {
    const double h = std::exp2(-0.5 * e);
    s.h.push_back(h);
    s.central.push_back(err(jvp_central(loss, x, u, h)));
    s.richardson.push_back(err(jvp_richardson(loss, x, u, h)));
  }
  s.h_central = StepPolicy::step(StepPolicy::central_base(), x, u);
  s.h_richardson = StepPolicy::step(StepPolicy::richardson_base(), x, u);
  s.central_at_policy = err(jvp_central(loss, x, u, s.h_central));
  s.richardson_at_policy = err(jvp_richardson(loss, x, u, s.h_richardson));
  s.complex_step = err(jvp_complex_step(loss, x, u));
  s.dual = err(jvp_dual(loss, x, u));
  return s;
}

/// Writes one sweep as a JSON object.
inline void write_json(std::ostream& out, const StepSweep& s) {
  const auto numbers = [&out](const std::vector<double>& v) {
    out << '[';
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i) out << ',';
      json::number(out, v[i]);
    }
    out << ']';
  };
  out << "{\"op\": ";
  json::string(out, s.op);
  out << ", \"entry\": ";
  json::string(out, s.entry);
  out << ", \"shape\": ";
  json::ints(out, s.shape);
  out << ", \"analytic\": ";
  json::number(out, s.analytic);
  out << ", \"h_central\": ";
  json::number(out, s.h_central);
  out << ", \"h_richardson\": ";
  json::number(out, s.h_richardson);
  out << ", \"central_at_policy\": ";
  json::number(out, s.central_at_policy);
  out << ", \"richardson_at_policy\": ";
  json::number(out, s.richardson_at_policy);
  out << ", \"complex_step\": ";
  json::number(out, s.complex_step);
  out << ", \"dual\": ";
  json::number(out, s.dual);
  out << ", \"h\": ";
  numbers(s.h);
  out << ", \"central\": ";
  numbers(s.central);
  out << ", \"richardson\": ";
  numbers(s.richardson);
  out << "}";
}

}  // namespace gradproof::check
