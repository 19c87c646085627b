// The fast paths of batch normalization: the _into variants (bad input, equality with the
// allocating API, no reallocation), and the fused kernels against the float64 reference on
// shapes that exercise what the small shapes of the catalog do not: several blocks of channels
// per thread (the software pipeline of detail::pipelined_channels), runs that are not a whole
// number of vectors (masked ends), and outputs large enough for streaming stores.
#include "gradproof/check/compare.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/parallel.hpp"

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <random>
#include <string>

using namespace gradproof;
using namespace gradproof::ops;

namespace {

template <class T>
Tensor<T> random_tensor(const Shape& s, std::uint64_t seed, double mean, double spread) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, spread);
  Tensor<T> t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<T>(dist(rng));
  return t;
}

Eigen::VectorXd as_f64(const TensorF& t) {
  Eigen::VectorXd v(t.size());
  for (Index i = 0; i < t.size(); ++i) v[i] = t[i];
  return v;
}

Eigen::VectorXd as_f64(const TensorD& t) { return Eigen::Map<const Eigen::VectorXd>(t.data(), t.size()); }

// The float32 policy of compare.hpp for a result computed in float32 against an exact float64
// reference (the oracle part is that of the exact oracles).
void check_close(const Eigen::VectorXd& a, const Eigen::VectorXd& ref, const std::string& what) {
  const double scale = ref.cwiseAbs().maxCoeff();
  const auto tol = check::tolerance_policy("float32", check::Oracle::complex_step, scale);
  const check::Comparison c = check::compare(a, ref, tol);
  BOOST_TEST_MESSAGE(what << ": max_abs_err=" << c.max_abs_err << " (atol=" << tol.atol << "), max_rel_err="
                          << c.max_rel_err);
  BOOST_TEST(c.passed, what << ": worst element " << c.worst << " analytic=" << c.analytic << " reference="
                            << c.numeric << " max_abs_err=" << c.max_abs_err << " atol=" << tol.atol);
}

// Fused float32 forward and backward against the reference forward and the staged backward in
// double, on the same inputs, with one thread and with all of them (the number of threads
// changes how the channels are blocked and which blocks are pipelined).
void fused_matches_reference_with(const Shape& shape, double mean) {
  const Index C = shape[1];
  const TensorF x = random_tensor<float>(shape, 11, mean, 2.0), dy = random_tensor<float>(shape, 12, 0.0, 1.0);
  const TensorF gamma = random_tensor<float>({C}, 13, 1.0, 0.3), beta = random_tensor<float>({C}, 14, 0.0, 0.5);
  const TensorD xd = x.cast<double>(), gd = gamma.cast<double>(), bd = beta.cast<double>();

  const auto f = batchnorm_forward_train<float>(x, &gamma, &beta, nullptr);
  TensorD yd(shape);
  BatchNormCache<double> cd;
  detail::shape_cache(cd, shape, ncl_view(shape, "test", "x"), true);
  detail::batchnorm_forward_train_reference<double>(xd, &gd, &bd, 1e-5, yd, cd);
  const std::string at = " at " + to_string(shape) + " with mean " + std::to_string(mean) + ", " +
                         std::to_string(parallel::max_threads()) + " thread(s)";
  check_close(as_f64(f.y), as_f64(yd), "y" + at);
  check_close(as_f64(f.cache.invstd), as_f64(cd.invstd), "invstd" + at);

  const auto g = batchnorm_backward<float>(dy, x, &gamma, f.cache);
  const auto gr = batchnorm_backward_staged<double>(dy.cast<double>(), xd, &gd, cd);
  check_close(as_f64(g.dx), as_f64(gr.dx), "dx" + at);
  check_close(as_f64(g.dgamma), as_f64(gr.dgamma), "dgamma" + at);
  check_close(as_f64(g.dbeta), as_f64(gr.dbeta), "dbeta" + at);
}

void fused_matches_reference(const Shape& shape, double mean) {
  const int threads = parallel::max_threads();
  parallel::set_threads(1);
  fused_matches_reference_with(shape, mean);
  parallel::set_threads(threads);
  fused_matches_reference_with(shape, mean);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(bn_fused)

BOOST_AUTO_TEST_CASE(into_variants_refuse_a_mis_shaped_output) {
  const TensorD x = random_tensor<double>({4, 3, 2}, 1, 0.0, 1.0);
  TensorD y({4, 3, 3});
  BatchNormCache<double> cache;
  const auto names_y = [](const InvalidArgument& e) {
    const std::string w = e.what();
    return w.find("y (output") != std::string::npos && w.find("(4, 3, 2)") != std::string::npos &&
           w.find("(4, 3, 3)") != std::string::npos;
  };
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train_into<double>(x, nullptr, nullptr, nullptr, {}, y, cache),
                        InvalidArgument, names_y);
  const auto running = BatchNormRunningStats<double>::fresh(3);
  BOOST_CHECK_EXCEPTION(batchnorm_forward_eval_into<double>(x, nullptr, nullptr, running, {}, y, cache),
                        InvalidArgument, names_y);
}

BOOST_AUTO_TEST_CASE(into_variants_equal_the_allocating_api_and_reuse_their_buffers) {
  const Shape shape{3, 5, 7};
  const TensorF x = random_tensor<float>(shape, 2, 0.5, 1.5);
  const TensorF gamma = random_tensor<float>({5}, 3, 1.0, 0.2), beta = random_tensor<float>({5}, 4, 0.0, 0.2);
  auto running = BatchNormRunningStats<float>::fresh(5);
  const auto ref = batchnorm_forward_train<float>(x, &gamma, &beta, nullptr);
  TensorF y(shape);
  BatchNormCache<float> cache;
  batchnorm_forward_train_into<float>(x, &gamma, &beta, nullptr, {}, y, cache);
  const float* mean_storage = cache.mean.data();
  batchnorm_forward_train_into<float>(x, &gamma, &beta, &running, {}, y, cache);  // second call: no reallocation
  BOOST_TEST(cache.mean.data() == mean_storage);
  BOOST_TEST(running.num_batches_tracked == 1);
  for (Index i = 0; i < x.size(); ++i) BOOST_TEST(y[i] == ref.y[i]);
  for (Index c = 0; c < 5; ++c) {
    BOOST_TEST(cache.mean[c] == ref.cache.mean[c]);
    BOOST_TEST(cache.invstd[c] == ref.cache.invstd[c]);
  }
  const auto eref = batchnorm_forward_eval<float>(x, &gamma, &beta, running);
  batchnorm_forward_eval_into<float>(x, &gamma, &beta, running, {}, y, cache);
  BOOST_TEST(!cache.training);
  for (Index i = 0; i < x.size(); ++i) BOOST_TEST(y[i] == eref.y[i]);
}

// Long runs (L = 16640, not a multiple of 16): one channel per block, so every thread pipelines
// many blocks, and a 4.3 MB output, written with streaming stores.
BOOST_AUTO_TEST_CASE(fused_matches_float64_reference_with_many_pipelined_blocks) {
  fused_matches_reference({2, 32, 128, 130}, 1.0);
}

// Short runs (L = 49): 256 channels per block, several blocks, masked ends on every run.
BOOST_AUTO_TEST_CASE(fused_matches_float64_reference_with_short_runs) {
  fused_matches_reference({4, 600, 7, 7}, 1.0);
}

// A mean 1000 standard deviations from zero: the forward's statistics come from shifted sums,
// which must not cancel (unshifted float32 sums of x and x² would lose all digits of σ² here:
// E[x²] ≈ 4e6 against σ² = 4). Only the forward is compared: the backward reads μ from a float32
// cache, whose rounding (up to 6e-5 at 2000) shifts Σdy·(x − μ) by that much times Σdy, an
// error of the float32 representation of these inputs, not of the kernels.
BOOST_AUTO_TEST_CASE(fused_statistics_survive_a_large_mean) {
  const Shape shape{2, 32, 128, 130};
  const TensorF x = random_tensor<float>(shape, 31, 2000.0, 2.0);
  const TensorD xd = x.cast<double>();
  const auto f = batchnorm_forward_train<float>(x, nullptr, nullptr, nullptr);
  TensorD yd(shape);
  BatchNormCache<double> cd;
  detail::shape_cache(cd, shape, ncl_view(shape, "test", "x"), true);
  detail::batchnorm_forward_train_reference<double>(xd, nullptr, nullptr, 1e-5, yd, cd);
  check_close(as_f64(f.cache.mean), as_f64(cd.mean), "mean at mean 2000");
  check_close(as_f64(f.cache.var), as_f64(cd.var), "var at mean 2000");
  check_close(as_f64(f.cache.invstd), as_f64(cd.invstd), "invstd at mean 2000");
  check_close(as_f64(f.y), as_f64(yd), "y at mean 2000");
}

BOOST_AUTO_TEST_SUITE_END()
