// The oracles checked on functions with known derivatives, including their convergence order.
#include "gradproof/check/compare.hpp"
#include "gradproof/check/oracles.hpp"

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <complex>
#include <limits>

using namespace gradproof::check;

namespace {

// f(x0, x1) = (sin(x0)·exp(x1), x0³ + x0·x1², log(1 + x1²)): analytic everywhere on the reals.
struct TestFunction {
  template <class V>
  V operator()(const V& x) const {
    using std::exp;
    using std::log;
    using std::sin;
    using S = typename V::Scalar;
    V y(3);
    y[0] = sin(x[0]) * exp(x[1]);
    y[1] = x[0] * x[0] * x[0] + x[0] * x[1] * x[1];
    y[2] = log(S(1) + x[1] * x[1]);
    return y;
  }
  static Eigen::MatrixXd jacobian(const Eigen::Vector2d& x) {
    Eigen::MatrixXd J(3, 2);
    J << std::cos(x[0]) * std::exp(x[1]), std::sin(x[0]) * std::exp(x[1]),  //
        3 * x[0] * x[0] + x[1] * x[1], 2 * x[0] * x[1],                      //
        0, 2 * x[1] / (1 + x[1] * x[1]);
    return J;
  }
};

Eigen::VectorXd point() { return Eigen::Vector2d(0.7, -0.4); }

// Error of the derivative of exp at 0.7 by an oracle with step h.
template <class Jvp>
double exp_error(Jvp&& jvp, double h) {
  const auto f = [](const auto& v) {
    using std::exp;
    auto y = v;
    y[0] = exp(v[0]);
    return y;
  };
  Eigen::VectorXd x(1), u(1);
  x << 0.7;
  u << 1.0;
  return std::abs(jvp(f, x, u, h)[0] - std::exp(0.7));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(oracles)

BOOST_AUTO_TEST_CASE(every_oracle_matches_a_known_jacobian) {
  const Eigen::MatrixXd J = TestFunction::jacobian(point());
  for (Oracle o : {Oracle::central, Oracle::richardson, Oracle::complex_step, Oracle::dual}) {
    const Eigen::MatrixXd N = jacobian(o, TestFunction{}, point());
    const Eigen::VectorXd a = Eigen::Map<const Eigen::VectorXd>(J.data(), J.size());
    const Eigen::VectorXd n = Eigen::Map<const Eigen::VectorXd>(N.data(), N.size());
    // Here the oracle is the thing under test: the exact Jacobian plays the analytic side.
    const Comparison c = compare(n, a, tolerance_policy("float64", o, a.cwiseAbs().maxCoeff()));
    BOOST_TEST(c.passed, name(o) << ": max abs err " << c.max_abs_err << ", max rel err " << c.max_rel_err);
  }
}

BOOST_AUTO_TEST_CASE(complex_step_and_dual_are_exact_to_rounding) {
  const Eigen::MatrixXd J = TestFunction::jacobian(point());
  for (Oracle o : {Oracle::complex_step, Oracle::dual}) {
    const Eigen::MatrixXd N = jacobian(o, TestFunction{}, point());
    const double err = (N - J).cwiseAbs().maxCoeff() / J.cwiseAbs().maxCoeff();
    BOOST_TEST(err <= 4 * std::numeric_limits<double>::epsilon(), name(o) << " relative error " << err);
  }
}

BOOST_AUTO_TEST_CASE(central_differences_converge_with_order_two) {
  // Halving h divides the truncation error h²·f'''/6 by 4 while it dominates rounding (h ≥ 2^-10).
  for (int k = 4; k < 10; ++k) {
    const double h = std::ldexp(1.0, -k);
    const double order = std::log2(exp_error([](auto&&... a) { return jvp_central(a...); }, h) /
                                   exp_error([](auto&&... a) { return jvp_central(a...); }, h / 2));
    BOOST_TEST(order == 2.0, boost::test_tools::tolerance(0.05));
  }
}

BOOST_AUTO_TEST_CASE(richardson_converges_with_order_four) {
  for (int k = 2; k < 5; ++k) {
    const double h = std::ldexp(1.0, -k);
    const double order = std::log2(exp_error([](auto&&... a) { return jvp_richardson(a...); }, h) /
                                   exp_error([](auto&&... a) { return jvp_richardson(a...); }, h / 2));
    BOOST_TEST(order == 4.0, boost::test_tools::tolerance(0.05));
  }
}

BOOST_AUTO_TEST_CASE(complex_step_has_no_cancellation_for_tiny_steps) {
  // A central difference with h = 1e-12 loses most digits; the complex step with 1e-12 … 1e-200 does not.
  for (double h : {1e-8, 1e-12, 1e-20, 1e-100, 1e-200}) {
    const double rel = exp_error([](auto&&... a) { return jvp_complex_step(a...); }, h) / std::exp(0.7);
    BOOST_TEST(rel <= 2 * std::numeric_limits<double>::epsilon(), "h = " << h << ": relative error " << rel);
  }
  const double central_rel = exp_error([](auto&&... a) { return jvp_central(a...); }, 1e-12) / std::exp(0.7);
  BOOST_TEST(central_rel > 1e-6, "central differences with h = 1e-12 should be ruined by rounding; error " << central_rel);
}

BOOST_AUTO_TEST_CASE(step_policy_scales_with_x_and_is_a_power_of_two) {
  Eigen::VectorXd x(2), u(2);
  x << 0.1, 1000.0;
  u << 1.0, 0.0;
  const double h_small = StepPolicy::step(StepPolicy::central_base(), x, u);  // |x| < 1: absolute step
  u << 0.0, 1.0;
  const double h_large = StepPolicy::step(StepPolicy::central_base(), x, u);  // scaled by |x| = 1000
  BOOST_TEST(h_small == std::exp2(std::round(std::log2(StepPolicy::central_base()))));
  BOOST_TEST(h_large / h_small == 1024.0);  // 1000 rounds to the power of two 1024
  BOOST_TEST(std::log2(h_large) == std::round(std::log2(h_large)));
  u << 0.0, 0.0;
  BOOST_CHECK_THROW(StepPolicy::step(1.0, x, u), std::invalid_argument);
}

BOOST_AUTO_TEST_SUITE_END()
