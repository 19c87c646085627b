// The comparison metric |a − n| ≤ atol + rtol·|n| and the tolerance policy.
#include "gradproof/check/compare.hpp"

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>

using namespace gradproof::check;

BOOST_AUTO_TEST_SUITE(metric)

BOOST_AUTO_TEST_CASE(passes_inside_and_fails_outside_the_allowance) {
  Eigen::VectorXd n(3), a(3);
  n << 1.0, -2.0, 0.0;
  a << 1.0 + 1e-9, -2.0, 5e-10;
  const Tolerance tol{1e-9, 1e-9};  // allowance: 2e-9, 3e-9, 1e-9
  BOOST_TEST(compare(a, n, tol).passed);
  a[2] = 2e-9;
  const Comparison c = compare(a, n, tol);
  BOOST_TEST(!c.passed);
  BOOST_TEST(c.worst == 2);
  BOOST_TEST(c.analytic == 2e-9);
  BOOST_TEST(c.numeric == 0.0);
  BOOST_TEST(c.max_abs_err == 2e-9);
  // The zero reference element has no meaningful relative error; the others do.
  BOOST_TEST(c.max_rel_err == 1e-9, boost::test_tools::tolerance(1e-6));
}

BOOST_AUTO_TEST_CASE(nan_always_fails) {
  Eigen::VectorXd n(2), a(2);
  n << 1.0, 1.0;
  a << 1.0, std::numeric_limits<double>::quiet_NaN();
  const Comparison c = compare(a, n, {1.0, 1.0});
  BOOST_TEST(!c.passed);
  BOOST_TEST(c.worst == 1);
}

BOOST_AUTO_TEST_CASE(size_mismatch_is_an_error) {
  BOOST_CHECK_THROW(compare(Eigen::VectorXd(2), Eigen::VectorXd(3), {}), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(policy_is_tighter_for_exact_oracles_and_float64) {
  const double cs = policy_factor("float64", Oracle::complex_step);
  BOOST_TEST(cs == policy_factor("float64", Oracle::dual));
  BOOST_TEST(cs < policy_factor("float64", Oracle::richardson));
  BOOST_TEST(policy_factor("float64", Oracle::richardson) < policy_factor("float64", Oracle::central));
  BOOST_TEST(policy_factor("float64", Oracle::central) < policy_factor("float32", Oracle::complex_step));
  const Tolerance t = tolerance_policy("float32", Oracle::dual, 10.0);
  BOOST_TEST(t.atol == 10.0 * t.rtol);
}

BOOST_AUTO_TEST_CASE(unravel_gives_row_major_indices) {
  const auto idx = unravel(23, {2, 3, 4});
  BOOST_TEST((idx == std::vector<std::int64_t>{1, 2, 3}));
}

BOOST_AUTO_TEST_SUITE_END()
