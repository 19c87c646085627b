// Batch normalization: bad input, forward semantics, and the negative-control table.
// The formula checks against the oracles come from the catalog (suite `bn`).
#include "gradproof/catalog/catalog.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "support/inputs.hpp"
#include "support/record.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

using namespace gradproof;
using namespace gradproof::ops;
namespace utf = boost::unit_test;
using gradproof::testing::iota;
using gradproof::testing::MessageHas;

namespace {

struct Fixture {
  TensorD x = iota({4, 3, 2});
  TensorD gamma = TensorD({3}, 1.5), beta = TensorD({3}, 0.25);
  BatchNormRunningStats<double> running = BatchNormRunningStats<double>::fresh(3);
};

}  // namespace

BOOST_AUTO_TEST_SUITE(bn_ops)

BOOST_AUTO_TEST_SUITE(bad_input)

BOOST_FIXTURE_TEST_CASE(wrong_rank_is_refused, Fixture) {
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(iota({6}), nullptr, nullptr, nullptr), InvalidArgument,
                        (MessageHas{{"x", "rank 2, 3 or 4", "rank 1", "(6,)"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(iota({2, 3, 1, 1, 2}), nullptr, nullptr, nullptr),
                        InvalidArgument, (MessageHas{{"x", "rank 5", "(2, 3, 1, 1, 2)"}}));
}

BOOST_FIXTURE_TEST_CASE(parameter_lengths_must_equal_channels, Fixture) {
  const TensorD four({4}, 1.0);
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(x, &four, &beta, nullptr), InvalidArgument,
                        (MessageHas{{"gamma", "(3,)", "(4,)"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(x, &gamma, &four, nullptr), InvalidArgument,
                        (MessageHas{{"beta", "(3,)", "(4,)"}}));
  auto bad = running;
  bad.mean = four;
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(x, &gamma, &beta, &bad), InvalidArgument,
                        (MessageHas{{"running mean", "(3,)", "(4,)"}}));
  bad = running;
  bad.var = TensorD({3, 1}, 1.0);
  BOOST_CHECK_EXCEPTION(batchnorm_forward_eval<double>(x, &gamma, &beta, bad), InvalidArgument,
                        (MessageHas{{"running var", "(3,)", "(3, 1)"}}));
}

BOOST_FIXTURE_TEST_CASE(eps_must_be_finite_and_positive, Fixture) {
  for (double eps : {0.0, -1e-5, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    BatchNormConfig cfg;
    cfg.eps = eps;
    BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(x, &gamma, &beta, nullptr, cfg), InvalidArgument,
                          (MessageHas{{"eps", "> 0"}}));
    BOOST_CHECK_EXCEPTION(batchnorm_forward_eval<double>(x, &gamma, &beta, running, cfg), InvalidArgument,
                          (MessageHas{{"eps"}}));
  }
}

BOOST_FIXTURE_TEST_CASE(momentum_must_be_in_unit_interval_or_none, Fixture) {
  for (double m : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    BatchNormConfig cfg;
    cfg.momentum = m;
    BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(x, &gamma, &beta, &running, cfg), InvalidArgument,
                          (MessageHas{{"momentum", "[0, 1]"}}));
  }
  for (std::optional<double> m : {std::optional<double>(0.0), std::optional<double>(1.0), std::optional<double>()}) {
    BatchNormConfig cfg;
    cfg.momentum = m;
    BOOST_CHECK_NO_THROW(batchnorm_forward_train<double>(x, &gamma, &beta, &running, cfg));
  }
}

BOOST_FIXTURE_TEST_CASE(one_value_per_channel_is_refused_in_training_only, Fixture) {
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(iota({1, 3}), &gamma, &beta, nullptr), InvalidArgument,
                        (MessageHas{{"more than 1 value per channel", "(1, 3)", "M = N*L = 1"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(iota({1, 3, 1, 1}), &gamma, &beta, nullptr),
                        InvalidArgument, (MessageHas{{"(1, 3, 1, 1)"}}));
  BOOST_CHECK_NO_THROW(batchnorm_forward_eval<double>(iota({1, 3}), &gamma, &beta, running));
}

BOOST_FIXTURE_TEST_CASE(empty_tensors_are_refused, Fixture) {
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(TensorD({0, 3}), &gamma, &beta, nullptr), InvalidArgument,
                        (MessageHas{{"x", "must not be empty", "(0, 3)"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_forward_eval<double>(TensorD({2, 3, 0}), &gamma, &beta, running), InvalidArgument,
                        (MessageHas{{"(2, 3, 0)"}}));
}

BOOST_FIXTURE_TEST_CASE(backward_checks_dy_cache_and_outputs, Fixture) {
  const auto fwd = batchnorm_forward_train<double>(x, &gamma, &beta, nullptr);
  const TensorD dy_bad = iota({4, 3, 3});
  BOOST_CHECK_EXCEPTION(batchnorm_backward_staged(dy_bad, x, &gamma, fwd.cache), InvalidArgument,
                        (MessageHas{{"dy", "(4, 3, 2)", "(4, 3, 3)"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_backward(dy_bad, x, &gamma, fwd.cache), InvalidArgument,
                        (MessageHas{{"dy", "(4, 3, 2)", "(4, 3, 3)"}}));
  const TensorD other = iota({4, 3, 5});
  BOOST_CHECK_EXCEPTION(batchnorm_backward(other, other, &gamma, fwd.cache), InvalidArgument,
                        (MessageHas{{"cache", "(4, 3, 2)", "(4, 3, 5)"}}));
  TensorD dx({4, 3}), dgamma({3}), dbeta({3});
  BOOST_CHECK_EXCEPTION(batchnorm_backward_into(x, x, &gamma, fwd.cache, dx, &dgamma, &dbeta), InvalidArgument,
                        (MessageHas{{"dx (output)", "(4, 3, 2)", "(4, 3)"}}));
  TensorD dx_ok(x.shape());
  const auto plain = batchnorm_forward_train<double>(x, nullptr, nullptr, nullptr);
  BOOST_CHECK_EXCEPTION(batchnorm_backward_into(x, x, nullptr, plain.cache, dx_ok, &dgamma, nullptr), InvalidArgument,
                        (MessageHas{{"dgamma", "gamma is null"}}));
}

// Issue 15, §2: the backward passes follow the affine parameters the forward pass had. A bias
// without a weight gets its gradient, as PyTorch's F.batch_norm(weight=None, bias=b) gives b one
// (both allocating passes returned an empty dβ whenever γ was null); a null γ after a forward
// with γ is refused (it gave dx as if γ = 1, wrong by the factor γ), and so is a γ after a
// forward without one.
BOOST_FIXTURE_TEST_CASE(backward_follows_the_affine_parameters_of_the_forward, Fixture) {
  const TensorD dy = iota(x.shape());
  const auto channel_sum = [&](Index c) {  // Σ dy over channel c of x's (4, 3, 2)
    double s = 0;
    for (Index n = 0; n < 4; ++n)
      for (Index l = 0; l < 2; ++l) s += dy[n * 6 + c * 2 + l];
    return s;
  };
  const auto train = batchnorm_forward_train<double>(x, nullptr, &beta, nullptr);
  const auto eval = batchnorm_forward_eval<double>(x, nullptr, &beta, running);
  for (const auto* cache : {&train.cache, &eval.cache}) {
    for (const auto& g : {batchnorm_backward(dy, x, nullptr, *cache), batchnorm_backward_staged(dy, x, nullptr, *cache)}) {
      BOOST_TEST(g.dgamma.empty());
      BOOST_TEST_REQUIRE(g.dbeta.size() == 3);
      // The fused pass sums in another order than this loop: a few units of double rounding.
      for (Index c = 0; c < 3; ++c) BOOST_TEST(g.dbeta[c] == channel_sum(c), boost::test_tools::tolerance(1e-14));
    }
  }

  const auto affine = batchnorm_forward_train<double>(x, &gamma, &beta, nullptr);
  const MessageHas null_gamma{{"batchnorm: gamma is null but the forward pass had gamma"}};
  TensorD dx(x.shape()), db({3});
  BOOST_CHECK_EXCEPTION(batchnorm_backward(dy, x, nullptr, affine.cache), InvalidArgument, null_gamma);
  BOOST_CHECK_EXCEPTION(batchnorm_backward_staged(dy, x, nullptr, affine.cache), InvalidArgument, null_gamma);
  BOOST_CHECK_EXCEPTION(batchnorm_backward_into(dy, x, nullptr, affine.cache, dx, nullptr, &db), InvalidArgument,
                        null_gamma);
  const auto plain = batchnorm_forward_train<double>(x, nullptr, nullptr, nullptr);
  const MessageHas extra_gamma{{"batchnorm: gamma is given but the forward pass had none"}};
  BOOST_CHECK_EXCEPTION(batchnorm_backward(dy, x, &gamma, plain.cache), InvalidArgument, extra_gamma);
  BOOST_CHECK_EXCEPTION(batchnorm_backward_staged(dy, x, &gamma, plain.cache), InvalidArgument, extra_gamma);
}

// Issue 10, defect 7: outputs passed as one tensor, or over γ or a statistic the pass reads.
BOOST_FIXTURE_TEST_CASE(outputs_must_not_alias_each_other_gamma_or_the_cache, Fixture) {
  auto fwd = batchnorm_forward_train<double>(x, &gamma, &beta, nullptr);
  TensorD dx(x.shape()), dg({3}), db({3});
  BOOST_CHECK_EXCEPTION(batchnorm_backward_into(x, x, &gamma, fwd.cache, dx, &dg, &dg), InvalidArgument,
                        (MessageHas{{"batchnorm", "dgamma (output) and dbeta (output) must be distinct"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_backward_into(x, x, &gamma, fwd.cache, dx, &gamma, &db), InvalidArgument,
                        (MessageHas{{"dgamma (output) and gamma"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_backward_into(x, x, &gamma, fwd.cache, dx, &dg, &fwd.cache.invstd), InvalidArgument,
                        (MessageHas{{"dbeta (output) and cache invstd"}}));
  // The forward pass: y over a cache statistic it is about to resize, running statistics over γ.
  BatchNormCache<double> cache;
  cache.mean = TensorD(x.shape());
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train_into<double>(x, &gamma, &beta, nullptr, {}, cache.mean, cache),
                        InvalidArgument, (MessageHas{{"y (output) and cache mean (output)"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(x, &running.var, &beta, &running), InvalidArgument,
                        (MessageHas{{"running var and gamma"}}));
}

// Issue 10, defect 7: a cache made for another shape with the same (N, C, L) view, or with
// statistics of the wrong size, is refused.
BOOST_FIXTURE_TEST_CASE(a_cache_from_another_shape_or_with_other_statistics_is_refused, Fixture) {
  const auto fwd = batchnorm_forward_train<double>(x, &gamma, &beta, nullptr);
  const TensorD x4({4, 3, 1, 2}, std::vector<double>(x.data(), x.data() + x.size()));
  BOOST_CHECK_EXCEPTION(batchnorm_backward(x4, x4, &gamma, fwd.cache), InvalidArgument,
                        (MessageHas{{"cache was made for an input of shape (4, 3, 2)", "x has shape (4, 3, 1, 2)"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_backward_staged(x4, x4, &gamma, fwd.cache), InvalidArgument,
                        (MessageHas{{"(4, 3, 2)", "(4, 3, 1, 2)"}}));
  auto short_var = fwd.cache;
  short_var.var = TensorD({2});
  BOOST_CHECK_EXCEPTION(batchnorm_backward(x, x, &gamma, short_var), InvalidArgument,
                        (MessageHas{{"cache var", "(3,)", "(2,)"}}));
  // The residual of the mean (defect 6) may be absent, but one of the wrong size would be read as 0.
  auto short_residual = fwd.cache;
  short_residual.mean_residual = TensorD({2});
  BOOST_CHECK_EXCEPTION(batchnorm_backward(x, x, &gamma, short_residual), InvalidArgument,
                        (MessageHas{{"cache mean_residual", "(3,)", "(2,)"}}));
  BOOST_CHECK_EXCEPTION(batchnorm_backward_staged(x, x, &gamma, short_residual), InvalidArgument,
                        (MessageHas{{"cache mean_residual"}}));
}

// Issue 10, defect 7: the count of batches is incremented, and with momentum None divided by:
// -1 gave NaN running statistics and INT64_MAX overflowed (undefined behaviour).
BOOST_FIXTURE_TEST_CASE(num_batches_tracked_must_leave_room_for_one_more_batch, Fixture) {
  BatchNormConfig cumulative;
  cumulative.momentum = std::nullopt;
  for (std::int64_t n : {std::int64_t(-1), std::numeric_limits<std::int64_t>::min(),
                         std::numeric_limits<std::int64_t>::max()}) {
    auto r = running;
    r.num_batches_tracked = n;
    BOOST_CHECK_EXCEPTION(batchnorm_forward_train<double>(x, &gamma, &beta, &r, cumulative), InvalidArgument,
                          (MessageHas{{"num_batches_tracked", "[0, 9223372036854775806]", std::to_string(n)}}));
    BOOST_TEST(r.num_batches_tracked == n);  // refused before anything was updated
    BOOST_TEST(r.mean[0] == 0.0);
  }
  auto r = running;
  r.num_batches_tracked = std::numeric_limits<std::int64_t>::max() - 1;
  BOOST_CHECK_NO_THROW(batchnorm_forward_train<double>(x, &gamma, &beta, &r, cumulative));
  BOOST_TEST(r.num_batches_tracked == std::numeric_limits<std::int64_t>::max());
  BOOST_TEST(std::isfinite(r.mean[0]));
}

BOOST_AUTO_TEST_CASE(tensor_value_count_must_match_shape) {
  BOOST_CHECK_EXCEPTION(TensorD({2, 2}, std::vector<double>(3, 0.0)), InvalidArgument,
                        (MessageHas{{"3 values", "(2, 2)", "expected 4"}}));
  BOOST_CHECK_EXCEPTION(TensorD({2, -1}), InvalidArgument, (MessageHas{{"negative extent", "(2, -1)"}}));
}

BOOST_AUTO_TEST_SUITE_END()  // bad_input

BOOST_AUTO_TEST_SUITE(semantics)

BOOST_FIXTURE_TEST_CASE(training_output_has_zero_mean_and_unit_biased_variance, Fixture) {
  const TensorD ones({3}, 1.0), zeros({3}, 0.0);
  const auto fwd = batchnorm_forward_train<double>(x, &ones, &zeros, nullptr);
  const NCL d = fwd.cache.dims;
  for (Index c = 0; c < 3; ++c) {
    double s = 0, s2 = 0;
    for (Index n = 0; n < d.N; ++n)
      for (Index l = 0; l < d.L; ++l) {
        const double y = fwd.y[d.offset(n, c) + l];
        s += y;
        s2 += y * y;
      }
    BOOST_TEST(s / d.M() == 0.0, boost::test_tools::tolerance(1e-14));
    // Σx̂² / M = σ²/(σ² + ε), a hair under 1.
    const double v = fwd.cache.var[c];
    BOOST_TEST(s2 / d.M() == v / (v + 1e-5), boost::test_tools::tolerance(1e-13));
  }
}

BOOST_FIXTURE_TEST_CASE(no_affine_equals_unit_gamma_and_zero_beta, Fixture) {
  const TensorD ones({3}, 1.0), zeros({3}, 0.0);
  const auto plain = batchnorm_forward_train<double>(x, nullptr, nullptr, nullptr);
  const auto unit = batchnorm_forward_train<double>(x, &ones, &zeros, nullptr);
  BOOST_TEST(plain.y.flat().isApprox(unit.y.flat(), 0.0));
  const TensorD dy = iota(x.shape());
  const auto g0 = batchnorm_backward(dy, x, nullptr, plain.cache);
  const auto g1 = batchnorm_backward(dy, x, &ones, unit.cache);
  BOOST_TEST(g0.dgamma.empty());
  BOOST_TEST(g0.dbeta.empty());
  BOOST_TEST((g0.dx.flat() - g1.dx.flat()).abs().maxCoeff() == 0.0);
  const auto s0 = batchnorm_backward_staged(dy, x, nullptr, plain.cache);
  BOOST_TEST((s0.dx.flat() - g0.dx.flat()).abs().maxCoeff() < 1e-13);
}

BOOST_FIXTURE_TEST_CASE(eval_uses_running_statistics, Fixture) {
  running.mean = TensorD({3}, std::vector<double>{0.5, -1.0, 2.0});
  running.var = TensorD({3}, std::vector<double>{4.0, 0.25, 1.0});
  const auto fwd = batchnorm_forward_eval<double>(x, &gamma, &beta, running);
  const NCL d = fwd.cache.dims;
  for (Index i = 0; i < x.size(); ++i) {
    const Index c = (i / d.L) % d.C;
    const double want = 1.5 * (x[i] - running.mean[c]) / std::sqrt(running.var[c] + 1e-5) + 0.25;
    BOOST_TEST(fwd.y[i] == want, boost::test_tools::tolerance(1e-15));
  }
  BOOST_TEST(!fwd.cache.training);
}

BOOST_FIXTURE_TEST_CASE(momentum_none_is_a_cumulative_average, Fixture) {
  BatchNormConfig cfg;
  cfg.momentum = std::nullopt;
  // After the first batch the cumulative average is that batch's statistics alone.
  batchnorm_forward_train<double>(x, &gamma, &beta, &running, cfg);
  const auto fwd = batchnorm_forward_train<double>(x, &gamma, &beta, nullptr);
  BOOST_TEST(running.num_batches_tracked == 1);
  for (Index c = 0; c < 3; ++c) {
    BOOST_TEST(running.mean[c] == fwd.cache.mean[c], boost::test_tools::tolerance(1e-15));
    BOOST_TEST(running.var[c] == fwd.cache.var[c] * 8.0 / 7.0, boost::test_tools::tolerance(1e-14));  // M = 8
  }
}

// The aliasing the passes allow: y over x, dx over dy or over x (every value of a channel is
// read before its own output is written, and each thread writes only its own channels); in place
// gives the bits of out of place. A shape large enough for the pipelined kernel and both threads.
BOOST_AUTO_TEST_CASE(in_place_forward_and_backward_give_the_same_bits) {
  const auto same = [](const TensorF& a, const TensorF& b) {
    return a.shape() == b.shape() && std::equal(a.data(), a.data() + a.size(), b.data());
  };
  const Shape shape{4, 24, 33, 33};
  const TensorF x = iota(shape).cast<float>(), g = iota({24}).cast<float>(), b({24}, 0.5f);
  TensorF dy(shape);
  for (Index i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(std::cos(0.37 * static_cast<double>(i)));
  const auto ref = batchnorm_forward_train<float>(x, &g, &b, nullptr);
  TensorF over_x = x;
  BatchNormCache<float> c2;
  batchnorm_forward_train_into<float>(over_x, &g, &b, nullptr, {}, over_x, c2);
  BOOST_TEST(same(over_x, ref.y));
  const auto grads = batchnorm_backward<float>(dy, x, &g, ref.cache);
  TensorF over_dy = dy, dg({24}), db({24});
  batchnorm_backward_into<float>(over_dy, x, &g, ref.cache, over_dy, &dg, &db);
  BOOST_TEST((same(over_dy, grads.dx) && same(dg, grads.dgamma) && same(db, grads.dbeta)));
  TensorF over_x2 = x;
  batchnorm_backward_into<float>(dy, over_x2, &g, ref.cache, over_x2, &dg, &db);
  BOOST_TEST((same(over_x2, grads.dx) && same(dg, grads.dgamma) && same(db, grads.dbeta)));
  // Eval: y over x.
  const auto running = BatchNormRunningStats<float>::fresh(24);
  const auto eval = batchnorm_forward_eval<float>(x, &g, &b, running);
  TensorF over_x3 = x;
  batchnorm_forward_eval_into<float>(over_x3, &g, &b, running, {}, over_x3, c2);
  BOOST_TEST(same(over_x3, eval.y));
}

BOOST_AUTO_TEST_SUITE_END()  // semantics

// The negative controls: each term of the staged backward dropped or flipped in turn.
BOOST_AUTO_TEST_CASE(ablation_table_catches_every_term_but_dvar_dmu,
                     *utf::label("bn.dl_dxhat") * utf::label("bn.dl_dvar") * utf::label("bn.dvar_dmu") *
                         utf::label("bn.dl_dmu") * utf::label("bn.dvar_dx") * utf::label("bn.dmu_dx")) {
  const auto table = catalog::ablate("bn");
  BOOST_TEST(table.size() == 12u);
  for (const auto& row : table) {
    testing::record(row);
    BOOST_TEST(row.passed, row.term << " " << row.change << ": caught=" << row.caught
                                    << " expected=" << row.expected_caught << " — " << row.note);
    if (row.term == "bn.dvar_dmu") {
      BOOST_TEST(!row.caught, "removing ∂σ²/∂μ must change nothing");
    } else {
      BOOST_TEST(row.caught, row.term << " " << row.change << " must be caught");
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()  // bn_ops
