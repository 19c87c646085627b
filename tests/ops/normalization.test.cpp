// The normalization family (core, layer, group, instance and RMS norm): bad input, the PyTorch
// semantics we mirror (and where we had to decide), the allocation-free entry points, and the
// negative-control tables. The formula checks against the oracles come from the catalog
// (suites `norm`, `ln`, `gn`, `in`, `rms`).
#include "gradproof/catalog/catalog.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/normalization.hpp"
#include "gradproof/ops/rmsnorm.hpp"
#include "support/inputs.hpp"
#include "support/record.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace gradproof;
using namespace gradproof::ops;
namespace utf = boost::unit_test;
using gradproof::testing::iota;
using gradproof::testing::MessageHas;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

double max_abs(const TensorD& t) { return t.empty() ? 0.0 : t.flat().abs().maxCoeff(); }
double max_diff(const TensorD& a, const TensorD& b) { return (a.flat() - b.flat()).abs().maxCoeff(); }

}  // namespace

BOOST_AUTO_TEST_SUITE(norm_ops)

// ------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(bad_input)

BOOST_AUTO_TEST_CASE(layernorm_shapes_are_checked) {
  const LayerNormConfig cfg{{3, 4}};
  BOOST_CHECK_EXCEPTION(layernorm_forward<double>(iota({12}), nullptr, nullptr, {{12}}), InvalidArgument,
                        (MessageHas{{"layernorm", "x", "rank 2, 3 or 4", "rank 1", "(12,)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_forward<double>(iota({1, 2, 1, 3, 4}), nullptr, nullptr, cfg), InvalidArgument,
                        (MessageHas{{"rank 5", "(1, 2, 1, 3, 4)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_forward<double>(TensorD({0, 3, 4}), nullptr, nullptr, cfg), InvalidArgument,
                        (MessageHas{{"x", "must not be empty", "(0, 3, 4)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_forward<double>(iota({2, 3, 4}), nullptr, nullptr, {{}}), InvalidArgument,
                        (MessageHas{{"normalized_shape", "at least 1 axis"}}));
  BOOST_CHECK_EXCEPTION(layernorm_forward<double>(iota({2, 3, 5}), nullptr, nullptr, cfg), InvalidArgument,
                        (MessageHas{{"normalized_shape (3, 4)", "(*, 3, 4)", "got (2, 3, 5)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_forward<double>(iota({3, 4}), nullptr, nullptr, {{2, 3, 4}}), InvalidArgument,
                        (MessageHas{{"(*, 2, 3, 4)", "got (3, 4)"}}));
  const TensorD flat({12}, 1.0), ok({3, 4}, 1.0);
  BOOST_CHECK_EXCEPTION(layernorm_forward<double>(iota({2, 3, 4}), &flat, nullptr, cfg), InvalidArgument,
                        (MessageHas{{"gamma", "(3, 4)", "(12,)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_forward<double>(iota({2, 3, 4}), &ok, &flat, cfg), InvalidArgument,
                        (MessageHas{{"beta", "(3, 4)", "(12,)"}}));
  // The whole tensor as the normalized shape is one set (R = 1), as PyTorch allows.
  BOOST_CHECK_NO_THROW(layernorm_forward<double>(iota({3, 4}), &ok, &ok, cfg));
}

BOOST_AUTO_TEST_CASE(eps_must_be_finite_and_positive_everywhere) {
  const TensorD x = iota({2, 4, 3});
  for (double eps : {0.0, -1e-5, kNaN, kInf}) {
    BOOST_CHECK_EXCEPTION(layernorm_forward<double>(x, nullptr, nullptr, {{3}, eps}), InvalidArgument,
                          (MessageHas{{"layernorm", "eps", "> 0"}}));
    BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(x, nullptr, nullptr, {2, eps}), InvalidArgument,
                          (MessageHas{{"groupnorm", "eps", "> 0"}}));
    BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(x, nullptr, nullptr, nullptr, {eps, 0.1}),
                          InvalidArgument, (MessageHas{{"instancenorm", "eps", "> 0"}}));
    BOOST_CHECK_EXCEPTION(rmsnorm_forward<double>(x, nullptr, {{3}, eps}), InvalidArgument,
                          (MessageHas{{"rmsnorm", "eps", "> 0"}}));
    BOOST_CHECK_EXCEPTION(norm::forward<double>({8, 3, 1, 1}, x, nullptr, nullptr, eps), InvalidArgument,
                          (MessageHas{{"norm", "eps", "> 0"}}));
  }
}

BOOST_AUTO_TEST_CASE(groupnorm_groups_and_shapes_are_checked) {
  const TensorD x = iota({2, 6, 3});
  BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(iota({6}), nullptr, nullptr, {2}), InvalidArgument,
                        (MessageHas{{"groupnorm", "x", "rank 2, 3 or 4", "(6,)"}}));
  BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(TensorD({2, 6, 0}), nullptr, nullptr, {2}), InvalidArgument,
                        (MessageHas{{"must not be empty", "(2, 6, 0)"}}));
  for (Index g : {Index(0), Index(-2)}) {
    BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(x, nullptr, nullptr, {g}), InvalidArgument,
                          (MessageHas{{"num_groups must be > 0", "got " + std::to_string(g)}}));
  }
  BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(x, nullptr, nullptr, {4}), InvalidArgument,
                        (MessageHas{{"C = 6", "(2, 6, 3)", "divisible by num_groups = 4"}}));
  const TensorD four({4}, 1.0), six({6}, 1.0);
  BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(x, &four, &six, {3}), InvalidArgument,
                        (MessageHas{{"gamma", "(6,)", "(4,)"}}));
  BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(x, &six, &four, {3}), InvalidArgument,
                        (MessageHas{{"beta", "(6,)", "(4,)"}}));
}

// PyTorch's F.group_norm runs its batch-size check on the view (N·C/G, G, *spatial): it refuses
// exactly N·(C/G)·L = 1. Groups of one value with N > 1 pass there, and here.
BOOST_AUTO_TEST_CASE(groupnorm_refuses_what_pytorch_refuses) {
  BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(iota({1, 3}), nullptr, nullptr, {3}), InvalidArgument,
                        (MessageHas{{"more than 1 value per group", "(1, 3)", "num_groups = 3", "N*(C/G)*L = 1"}}));
  BOOST_CHECK_EXCEPTION(groupnorm_forward<double>(iota({1, 2, 1, 1}), nullptr, nullptr, {2}), InvalidArgument,
                        (MessageHas{{"(1, 2, 1, 1)"}}));
  BOOST_CHECK_NO_THROW(groupnorm_forward<double>(iota({2, 3}), nullptr, nullptr, {3}));
  BOOST_CHECK_NO_THROW(groupnorm_forward<double>(iota({1, 4}), nullptr, nullptr, {2}));
}

BOOST_AUTO_TEST_CASE(instancenorm_shapes_momentum_and_running_stats_are_checked) {
  const TensorD x = iota({2, 3, 4});
  BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(iota({3, 4}), nullptr, nullptr, nullptr), InvalidArgument,
                        (MessageHas{{"instancenorm", "rank 3 (N, C, L) or 4 (N, C, H, W)", "rank 2", "(3, 4)",
                                     "add a leading axis"}}));
  BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(iota({1, 2, 3, 4, 5}), nullptr, nullptr, nullptr),
                        InvalidArgument, (MessageHas{{"rank 5"}}));
  BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(TensorD({0, 3, 4}), nullptr, nullptr, nullptr),
                        InvalidArgument, (MessageHas{{"must not be empty", "(0, 3, 4)"}}));
  for (double m : {-0.1, 1.5, kNaN}) {
    BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(x, nullptr, nullptr, nullptr, {1e-5, m}),
                          InvalidArgument, (MessageHas{{"momentum", "[0, 1]"}}));
  }
  const TensorD two({2}, 1.0);
  BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(x, &two, nullptr, nullptr), InvalidArgument,
                        (MessageHas{{"gamma", "(3,)", "(2,)"}}));
  BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(x, nullptr, &two, nullptr), InvalidArgument,
                        (MessageHas{{"beta", "(3,)", "(2,)"}}));
  auto bad = InstanceNormRunningStats<double>::fresh(3);
  bad.mean = two;
  BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(x, nullptr, nullptr, &bad), InvalidArgument,
                        (MessageHas{{"running mean", "(3,)", "(2,)"}}));
  bad = InstanceNormRunningStats<double>::fresh(3);
  bad.var = TensorD({3, 1}, 1.0);
  BOOST_CHECK_EXCEPTION(instancenorm_forward_eval<double>(x, nullptr, nullptr, bad), InvalidArgument,
                        (MessageHas{{"running var", "(3,)", "(3, 1)"}}));
}

// PyTorch refuses instance statistics over a single spatial value (in training, and in eval
// without running statistics, where instance statistics are used too); eval with running
// statistics normalises a single value fine.
BOOST_AUTO_TEST_CASE(instancenorm_refuses_one_spatial_value_with_instance_statistics_only) {
  BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(iota({2, 3, 1}), nullptr, nullptr, nullptr),
                        InvalidArgument, (MessageHas{{"more than 1 spatial value", "(2, 3, 1)", "L = 1"}}));
  BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(iota({2, 3, 1, 1}), nullptr, nullptr, nullptr),
                        InvalidArgument, (MessageHas{{"(2, 3, 1, 1)"}}));
  BOOST_CHECK_NO_THROW(
      instancenorm_forward_eval<double>(iota({2, 3, 1}), nullptr, nullptr, InstanceNormRunningStats<double>::fresh(3)));
}

BOOST_AUTO_TEST_CASE(rmsnorm_shapes_are_checked) {
  BOOST_CHECK_EXCEPTION(rmsnorm_forward<double>(iota({12}), nullptr, {{12}}), InvalidArgument,
                        (MessageHas{{"rmsnorm", "rank 2, 3 or 4", "(12,)"}}));
  BOOST_CHECK_EXCEPTION(rmsnorm_forward<double>(iota({2, 3, 5}), nullptr, {{4}}), InvalidArgument,
                        (MessageHas{{"rmsnorm", "normalized_shape (4,)", "(*, 4)", "(2, 3, 5)"}}));
  BOOST_CHECK_EXCEPTION(rmsnorm_forward<double>(iota({2, 3, 5}), nullptr, {{}}), InvalidArgument,
                        (MessageHas{{"rmsnorm", "normalized_shape", "at least 1 axis"}}));
  const TensorD g({3, 5}, 1.0);
  BOOST_CHECK_EXCEPTION(rmsnorm_forward<double>(iota({2, 3, 5}), &g, {{5}}), InvalidArgument,
                        (MessageHas{{"gamma", "(5,)", "(3, 5)"}}));
  BOOST_CHECK_NO_THROW(rmsnorm_forward<double>(iota({2, 3, 5}), &g, {{3, 5}, std::nullopt}));
}

BOOST_AUTO_TEST_CASE(core_sets_must_be_consistent) {
  const TensorD x = iota({4, 6});
  for (const NormSets& s : {NormSets{0, 6, 1, 1}, NormSets{4, 0, 1, 1}, NormSets{4, 6, 0, 1}, NormSets{4, 6, 1, 4}}) {
    BOOST_CHECK_EXCEPTION(norm::forward<double>(s, x, nullptr, nullptr), InvalidArgument,
                          (MessageHas{{"norm", "run >= 1 dividing M"}}));
  }
  BOOST_CHECK_EXCEPTION(norm::forward<double>({5, 6, 1, 1}, x, nullptr, nullptr), InvalidArgument,
                        (MessageHas{{"R*M = 30", "(4, 6)"}}));
  const TensorD five({5}, 1.0);
  BOOST_CHECK_EXCEPTION(norm::forward<double>({4, 6, 2, 2}, x, &five, nullptr), InvalidArgument,
                        (MessageHas{{"gamma", "(6,)", "(5,)"}}));
}

// Issue 10, defect 3: the sizes of the sets are products too. R·M = (2^62 + 2)·4 wraps around to
// 8, the size of x, and P = period·M/run = (2^62 + 1)·4 to 4, the size of γ; unchecked, the
// forward pass walked 2^62 sets past x, or read γ[4..7] of a 4-value γ.
BOOST_AUTO_TEST_CASE(core_set_sizes_that_overflow_are_refused) {
  const Index big = (Index(1) << 62) + 1;
  const TensorD x = iota({2, 4}), four({4}, 1.5);
  BOOST_CHECK_EXCEPTION(norm::forward<double>({big + 1, 4, 1, 1}, x, nullptr, nullptr), InvalidArgument,
                        (MessageHas{{"norm", "R = 4611686018427387906", "M = 4", "beyond the index type"}}));
  BOOST_CHECK_EXCEPTION(norm::forward<double>({2, 4, big, 1}, x, &four, nullptr), InvalidArgument,
                        (MessageHas{{"norm", "period = 4611686018427387905", "period*(M/run)", "beyond the index type"}}));
}

// The backward passes of every layer check dy, the cache, γ against the forward pass, and the
// caller's outputs. The checks are shared (norm::detail), so they are exercised through each
// layer's entry point once.
BOOST_AUTO_TEST_CASE(backward_checks_dy_cache_gamma_and_outputs) {
  const TensorD x = iota({4, 2, 3}), g({2, 3}, 1.5), b({2, 3}, 0.5);
  const auto fwd = layernorm_forward<double>(x, &g, &b, {{2, 3}});
  const TensorD dy_bad = iota({4, 2, 4});
  BOOST_CHECK_EXCEPTION(layernorm_backward_staged(dy_bad, x, &g, fwd.cache), InvalidArgument,
                        (MessageHas{{"layernorm", "dy", "(4, 2, 3)", "(4, 2, 4)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_backward(dy_bad, x, &g, fwd.cache), InvalidArgument,
                        (MessageHas{{"dy", "(4, 2, 3)", "(4, 2, 4)"}}));
  const TensorD other = iota({3, 2, 3});
  BOOST_CHECK_EXCEPTION(layernorm_backward(other, other, &g, fwd.cache), InvalidArgument,
                        (MessageHas{{"cache", "(4, 2, 3)", "(3, 2, 3)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_backward(x, x, nullptr, fwd.cache), InvalidArgument,
                        (MessageHas{{"gamma is null", "forward pass had gamma"}}));
  const auto plain = layernorm_forward<double>(x, nullptr, nullptr, {{2, 3}});
  BOOST_CHECK_EXCEPTION(layernorm_backward_staged(x, x, &g, plain.cache), InvalidArgument,
                        (MessageHas{{"gamma is given", "forward pass had none"}}));
  TensorD dx(x.shape()), dx_bad({4, 6}), dg({2, 3}), dg_bad({6}), db({2, 3});
  BOOST_CHECK_EXCEPTION(layernorm_backward_into(x, x, &g, fwd.cache, dx_bad, &dg, &db), InvalidArgument,
                        (MessageHas{{"dx (output)", "(4, 2, 3)", "(4, 6)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_backward_into(x, x, &g, fwd.cache, dx, &dg_bad, &db), InvalidArgument,
                        (MessageHas{{"dgamma (output)", "(2, 3)", "(6,)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_backward_into(x, x, nullptr, plain.cache, dx, &dg, nullptr), InvalidArgument,
                        (MessageHas{{"dgamma requested", "gamma is null"}}));
  const auto no_bias = layernorm_forward<double>(x, &g, nullptr, {{2, 3}});
  BOOST_CHECK_EXCEPTION(layernorm_backward_into(x, x, &g, no_bias.cache, dx, &dg, &db), InvalidArgument,
                        (MessageHas{{"dbeta requested", "no beta"}}));
  TensorD y_bad({4, 6});
  NormCache<double> cache;
  BOOST_CHECK_EXCEPTION(layernorm_forward_into(x, &g, &b, {{2, 3}}, y_bad, cache), InvalidArgument,
                        (MessageHas{{"y (output)", "(4, 2, 3)", "(4, 6)"}}));

  // The other layers name themselves in the same messages.
  const TensorD gc({2}, 1.0);
  const auto gfwd = groupnorm_forward<double>(x, &gc, nullptr, {1});
  BOOST_CHECK_EXCEPTION(groupnorm_backward(dy_bad, x, &gc, gfwd.cache), InvalidArgument,
                        (MessageHas{{"groupnorm", "dy", "(4, 2, 3)"}}));
  BOOST_CHECK_EXCEPTION(groupnorm_backward_staged(other, other, &gc, gfwd.cache), InvalidArgument,
                        (MessageHas{{"groupnorm", "cache", "(4, 2, 3)", "(3, 2, 3)"}}));
  const auto ifwd = instancenorm_forward_train<double>(x, &gc, nullptr, nullptr);
  BOOST_CHECK_EXCEPTION(instancenorm_backward(x, x, nullptr, ifwd.cache), InvalidArgument,
                        (MessageHas{{"instancenorm", "gamma is null"}}));
  TensorD dgc({3});
  BOOST_CHECK_EXCEPTION(instancenorm_backward_into(x, x, &gc, ifwd.cache, dx, &dgc, nullptr), InvalidArgument,
                        (MessageHas{{"instancenorm", "dgamma (output)", "(2,)", "(3,)"}}));
  const auto nfwd = norm::forward<double>({8, 3, 1, 1}, x, nullptr, nullptr);
  BOOST_CHECK_EXCEPTION(norm::backward_staged(dy_bad, x, nullptr, nfwd.cache), InvalidArgument,
                        (MessageHas{{"norm", "dy"}}));

  const TensorD gr({3}, 1.0);
  const auto rfwd = rmsnorm_forward<double>(x, &gr, {{3}});
  BOOST_CHECK_EXCEPTION(rmsnorm_backward(dy_bad, x, &gr, rfwd.cache), InvalidArgument,
                        (MessageHas{{"rmsnorm", "dy", "(4, 2, 3)", "(4, 2, 4)"}}));
  BOOST_CHECK_EXCEPTION(rmsnorm_backward_staged(other, other, &gr, rfwd.cache), InvalidArgument,
                        (MessageHas{{"rmsnorm", "cache", "(4, 2, 3)", "(3, 2, 3)"}}));
  BOOST_CHECK_EXCEPTION(rmsnorm_backward(x, x, nullptr, rfwd.cache), InvalidArgument,
                        (MessageHas{{"rmsnorm", "gamma is null", "forward pass had gamma"}}));
  TensorD dgr({2, 3});
  BOOST_CHECK_EXCEPTION(rmsnorm_backward_into(x, x, &gr, rfwd.cache, dx_bad, &dgr), InvalidArgument,
                        (MessageHas{{"rmsnorm", "dx (output)", "(4, 2, 3)", "(4, 6)"}}));
  BOOST_CHECK_EXCEPTION(rmsnorm_backward_into(x, x, &gr, rfwd.cache, dx, &dgr), InvalidArgument,
                        (MessageHas{{"rmsnorm", "dgamma (output)", "(3,)", "(2, 3)"}}));
  const auto rplain = rmsnorm_forward<double>(x, nullptr, {{3}});
  BOOST_CHECK_EXCEPTION(rmsnorm_backward_into(x, x, nullptr, rplain.cache, dx, &dgr), InvalidArgument,
                        (MessageHas{{"rmsnorm", "dgamma requested", "gamma is null"}}));
  TensorF yf({4, 6});
  RMSNormCache<float> rc;
  BOOST_CHECK_EXCEPTION(rmsnorm_forward_into(x.cast<float>(), nullptr, {{3}}, yf, rc), InvalidArgument,
                        (MessageHas{{"rmsnorm", "y (output)", "(4, 2, 3)", "(4, 6)"}}));
}

// Issue 10, defect 7: two outputs passed as one tensor, or an output over an input the pass
// still reads, are refused. (dγ and dβ as one tensor used to lose one of the two gradients.)
BOOST_AUTO_TEST_CASE(outputs_must_not_alias_each_other_gamma_or_the_cache) {
  const TensorD x = iota({4, 2, 3}), dy = iota({4, 2, 3});
  TensorD dx(x.shape());
  const MessageHas one_tensor{{"dgamma (output) and dbeta (output) must be distinct", "same storage"}};
  {
    TensorD g({3}, 1.5), b({3}, 0.5), dg({3});
    auto f = layernorm_forward<double>(x, &g, &b, {{3}});
    BOOST_CHECK_EXCEPTION(layernorm_backward_into(dy, x, &g, f.cache, dx, &dg, &dg), InvalidArgument, one_tensor);
    BOOST_CHECK_EXCEPTION(layernorm_backward_into(dy, x, &g, f.cache, dx, &g, &dg), InvalidArgument,
                          (MessageHas{{"layernorm", "dgamma (output) and gamma"}}));
    BOOST_CHECK_EXCEPTION(layernorm_backward_into(dy, x, &g, f.cache, dx, &dg, &g), InvalidArgument,
                          (MessageHas{{"dbeta (output) and gamma"}}));
    // y over γ (one row: x, γ and y all (2, 3)), and y over a statistic of the cache it fills.
    const TensorD x1 = iota({2, 3});
    TensorD g1({2, 3}, 1.5);
    NormCache<double> c1;
    BOOST_CHECK_EXCEPTION(layernorm_forward_into(x1, &g1, nullptr, {{2, 3}}, g1, c1), InvalidArgument,
                          (MessageHas{{"layernorm", "y (output) and gamma"}}));
    c1.mean = TensorD({2, 3});  // sized like y: the forward pass would resize it under y's feet
    BOOST_CHECK_EXCEPTION(layernorm_forward_into(x1, &g1, nullptr, {{2, 3}}, c1.mean, c1), InvalidArgument,
                          (MessageHas{{"layernorm", "y (output) and cache mean (output)"}}));
    // dx over γ or over dγ (one row again, where they have one shape).
    auto f1 = layernorm_forward<double>(x1, &g1, nullptr, {{2, 3}});
    TensorD dg1({2, 3}), dx1({2, 3});
    BOOST_CHECK_EXCEPTION(layernorm_backward_into(x1, x1, &g1, f1.cache, g1, &dg1, nullptr), InvalidArgument,
                          (MessageHas{{"dx (output) and gamma"}}));
    BOOST_CHECK_EXCEPTION(layernorm_backward_into(x1, x1, &g1, f1.cache, dx1, &dx1, nullptr), InvalidArgument,
                          (MessageHas{{"dgamma (output) and dx (output)"}}));
    TensorD dy1 = x1;  // dγ over dy or over x: both still read while dγ accumulates
    BOOST_CHECK_EXCEPTION(layernorm_backward_into(dy1, x1, &g1, f1.cache, dx1, &dy1, nullptr), InvalidArgument,
                          (MessageHas{{"dgamma (output) and dy"}}));
    auto fr = rmsnorm_forward<double>(x1, &g1, {{2, 3}});
    TensorD x1c = x1;
    BOOST_CHECK_EXCEPTION(rmsnorm_backward_into(x1, x1c, &g1, fr.cache, dx1, &x1c), InvalidArgument,
                          (MessageHas{{"rmsnorm", "dgamma (output) and x"}}));
  }
  {
    TensorD g({2}, 1.5), b({2}, 0.5), dg({2});
    const auto f = groupnorm_forward<double>(x, &g, &b, {1});
    BOOST_CHECK_EXCEPTION(groupnorm_backward_into(dy, x, &g, f.cache, dx, &dg, &dg), InvalidArgument,
                          (MessageHas{{"groupnorm", "dgamma (output) and dbeta (output)"}}));
    const auto fi = instancenorm_forward_train<double>(x, &g, &b, nullptr);
    BOOST_CHECK_EXCEPTION(instancenorm_backward_into(dy, x, &g, fi.cache, dx, &dg, &dg), InvalidArgument,
                          (MessageHas{{"instancenorm", "dgamma (output) and dbeta (output)"}}));
    // Running statistics are written: not over γ or β.
    InstanceNormRunningStats<double> running{g, TensorD({2}, 1.0)};
    BOOST_CHECK_EXCEPTION(instancenorm_forward_train<double>(x, &running.mean, &b, &running), InvalidArgument,
                          (MessageHas{{"instancenorm", "running mean and gamma"}}));
  }
  {
    TensorD g({6}, 1.5), b({6}, 0.5), dg({6});
    auto f = norm::forward<double>({4, 6, 1, 1}, x, &g, &b);
    BOOST_CHECK_EXCEPTION(norm::backward_into(dy, x, &g, f.cache, dx, &dg, &dg), InvalidArgument,
                          (MessageHas{{"norm", "dgamma (output) and dbeta (output)"}}));
  }
  {
    TensorD g({3}, 1.5);
    auto f = rmsnorm_forward<double>(x, &g, {{3}});
    BOOST_CHECK_EXCEPTION(rmsnorm_backward_into(dy, x, &g, f.cache, dx, &g), InvalidArgument,
                          (MessageHas{{"rmsnorm", "dgamma (output) and gamma"}}));
    // dγ over a statistic the pass reads (3 rows of 3: both are (3)).
    const TensorD x3 = iota({3, 3});
    TensorD dx3(x3.shape());
    auto f3 = rmsnorm_forward<double>(x3, &g, {{3}});
    BOOST_CHECK_EXCEPTION(rmsnorm_backward_into(x3, x3, &g, f3.cache, dx3, &f3.cache.invrms), InvalidArgument,
                          (MessageHas{{"rmsnorm", "dgamma (output) and cache invrms"}}));
  }
}

// Issue 10, defect 7: a backward pass takes only a cache of its own op, made for an input of the
// shape of its x, with the sets and parameter shape that forward pass makes. A group-norm cache
// used to be accepted by the layer-norm backward (which then computed group norm's dx).
BOOST_AUTO_TEST_CASE(a_cache_from_another_op_or_shape_is_refused) {
  const TensorD x = iota({2, 4, 3}), dy = iota({2, 4, 3});
  const TensorD g4({4}, 1.5), b4({4}, 0.5), g3({3}, 1.5);
  TensorD dx(x.shape()), dg4({4}), db4({4});
  const auto gn = groupnorm_forward<double>(x, &g4, &b4, {2});
  const MessageHas from_gn{{"layernorm: cache was made by the forward pass of groupnorm, not of layernorm"}};
  // γ of shape (4) matches the group-norm cache's parameter shape, so nothing else catches it.
  BOOST_CHECK_EXCEPTION(layernorm_backward(dy, x, &g4, gn.cache), InvalidArgument, from_gn);
  BOOST_CHECK_EXCEPTION(layernorm_backward_staged(dy, x, &g4, gn.cache), InvalidArgument, from_gn);
  BOOST_CHECK_EXCEPTION(layernorm_backward_into(dy, x, &g4, gn.cache, dx, &dg4, &db4), InvalidArgument, from_gn);
  const auto in = instancenorm_forward_train<double>(x, &g4, &b4, nullptr);
  BOOST_CHECK_EXCEPTION(groupnorm_backward(dy, x, &g4, in.cache), InvalidArgument,
                        (MessageHas{{"groupnorm", "forward pass of instancenorm"}}));
  BOOST_CHECK_EXCEPTION(instancenorm_backward_into(dy, x, &g4, gn.cache, dx, &dg4, &db4), InvalidArgument,
                        (MessageHas{{"instancenorm", "forward pass of groupnorm"}}));
  const auto ln = layernorm_forward<double>(x, &g3, nullptr, {{3}});
  BOOST_CHECK_EXCEPTION(norm::backward_staged(dy, x, &g3, ln.cache), InvalidArgument,
                        (MessageHas{{"norm", "forward pass of layernorm"}}));
  BOOST_CHECK_EXCEPTION(layernorm_backward(dy, x, nullptr, NormCache<double>{}), InvalidArgument,
                        (MessageHas{{"layernorm", "no op (a default-constructed cache)"}}));

  // A cache of the right op whose sets, parameter shape or statistics were changed: the old check
  // looked at the shape of x and the sizes only.
  auto not_trailing = ln.cache;
  not_trailing.param_shape = {2, 3};  // γ of that shape used to pass, and the pass read 3 of its 6 values
  const TensorD g23({2, 3}, 1.5), g43({4, 3}, 1.5);
  BOOST_CHECK_EXCEPTION(layernorm_backward(dy, x, &g23, not_trailing), InvalidArgument,
                        (MessageHas{{"layernorm", "cache has normalized_shape (2, 3)", "(2, 4, 3)", "does not end in"}}));
  auto bad_sets = ln.cache;
  bad_sets.sets = {4, 6, 1, 1};
  BOOST_CHECK_EXCEPTION(layernorm_backward(dy, x, &g3, bad_sets), InvalidArgument,
                        (MessageHas{{"cache is inconsistent", "(4, 6, 1, 1)", "(8, 3, 1, 1)"}}));
  auto eval = ln.cache;
  eval.training = false;  // only instance norm's eval pass makes such caches
  BOOST_CHECK_EXCEPTION(layernorm_backward(dy, x, &g3, eval), InvalidArgument, (MessageHas{{"running (eval)"}}));
  auto short_var = ln.cache;
  short_var.var = TensorD({3});
  BOOST_CHECK_EXCEPTION(layernorm_backward(dy, x, &g3, short_var), InvalidArgument,
                        (MessageHas{{"cache var", "(8,)", "(3,)"}}));
  // The residual of the mean (defect 6) may be absent, but one of the wrong size would be read as 0.
  auto short_residual = ln.cache;
  short_residual.mean_residual = TensorD({3});
  BOOST_CHECK_EXCEPTION(layernorm_backward(dy, x, &g3, short_residual), InvalidArgument,
                        (MessageHas{{"cache mean_residual", "(8,)", "(3,)"}}));
  BOOST_CHECK_EXCEPTION(layernorm_backward_staged(dy, x, &g3, short_residual), InvalidArgument,
                        (MessageHas{{"cache mean_residual"}}));
  auto groups = gn.cache;
  groups.sets.period = 3;  // 3 groups do not divide 4 channels
  BOOST_CHECK_EXCEPTION(groupnorm_backward(dy, x, &g4, groups), InvalidArgument,
                        (MessageHas{{"groupnorm", "num_groups = 3"}}));
  auto rms = rmsnorm_forward<double>(x, &g3, {{3}}).cache;
  rms.param_shape = {4, 3};
  BOOST_CHECK_EXCEPTION(rmsnorm_backward(dy, x, &g43, rms), InvalidArgument, (MessageHas{{"rmsnorm"}}));
  auto rms_sets = rmsnorm_forward<double>(x, &g3, {{3}}).cache;
  rms_sets.sets = {4, 6, 1, 1};
  BOOST_CHECK_EXCEPTION(rmsnorm_backward_staged(dy, x, &g3, rms_sets), InvalidArgument,
                        (MessageHas{{"rmsnorm", "cache is inconsistent"}}));
}

BOOST_AUTO_TEST_SUITE_END()  // bad_input

// ------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(semantics)

// Training output per set: mean 0 and biased variance σ²/(σ² + ε), a hair under 1.
BOOST_AUTO_TEST_CASE(every_set_is_normalised_to_zero_mean_and_unit_variance) {
  const TensorD x = iota({3, 4, 5});
  const auto check = [](const NormForward<double>& f, const char* what) {
    const NormSets& s = f.cache.sets;
    for (Index r = 0; r < s.R; ++r) {
      double sum = 0, sq = 0;
      for (Index i = s.offset(r); i < s.offset(r) + s.M; ++i) sum += f.y[i], sq += f.y[i] * f.y[i];
      const double v = f.cache.var[r];
      BOOST_TEST(sum / static_cast<double>(s.M) == 0.0, what << " set " << r << boost::test_tools::tolerance(1e-14));
      BOOST_TEST(sq / static_cast<double>(s.M) == v / (v + 1e-5), what << " set " << r << boost::test_tools::tolerance(1e-13));
    }
  };
  check(layernorm_forward<double>(x, nullptr, nullptr, {{4, 5}}), "layernorm");
  check(groupnorm_forward<double>(x, nullptr, nullptr, {2}), "groupnorm");
  check(instancenorm_forward_train<double>(x, nullptr, nullptr, nullptr), "instancenorm");
  // The sets are the documented contiguous blocks.
  BOOST_TEST((layernorm_forward<double>(x, nullptr, nullptr, {{5}}).cache.sets == NormSets{12, 5, 1, 1}));
  BOOST_TEST((groupnorm_forward<double>(x, nullptr, nullptr, {2}).cache.sets == NormSets{6, 10, 2, 5}));
  BOOST_TEST((instancenorm_forward_train<double>(x, nullptr, nullptr, nullptr).cache.sets == NormSets{12, 5, 4, 5}));
}

BOOST_AUTO_TEST_CASE(no_affine_equals_unit_gamma_and_zero_beta) {
  const TensorD x = iota({3, 4, 5}), dy = iota({3, 4, 5}).cast<double>();
  const TensorD ln1({5}, 1.0), ln0({5}, 0.0), c1({4}, 1.0), c0({4}, 0.0);
  const auto compare = [&](const NormForward<double>& plain, const NormForward<double>& unit, auto backward,
                           const TensorD& ones) {
    BOOST_TEST(max_diff(plain.y, unit.y) == 0.0);
    const auto g0 = backward(plain.cache, nullptr);
    const auto g1 = backward(unit.cache, &ones);
    BOOST_TEST(g0.dgamma.empty());
    BOOST_TEST(g0.dbeta.empty());
    BOOST_TEST(max_diff(g0.dx, g1.dx) < 1e-14);
  };
  compare(layernorm_forward<double>(x, nullptr, nullptr, {{5}}), layernorm_forward<double>(x, &ln1, &ln0, {{5}}),
          [&](const NormCache<double>& c, const TensorD* g) { return layernorm_backward(dy, x, g, c); }, ln1);
  compare(groupnorm_forward<double>(x, nullptr, nullptr, {2}), groupnorm_forward<double>(x, &c1, &c0, {2}),
          [&](const NormCache<double>& c, const TensorD* g) { return groupnorm_backward_staged(dy, x, g, c); }, c1);
  compare(instancenorm_forward_train<double>(x, nullptr, nullptr, nullptr),
          instancenorm_forward_train<double>(x, &c1, &c0, nullptr),
          [&](const NormCache<double>& c, const TensorD* g) { return instancenorm_backward(dy, x, g, c); }, c1);
}

// LayerNorm(bias=False): γ without β. dβ is not produced; dγ and dx are those of β = 0.
BOOST_AUTO_TEST_CASE(layernorm_without_bias_has_no_dbeta) {
  const TensorD x = iota({4, 6}), dy = iota({4, 6}), g = iota({6}), zero({6}, 0.0);
  const auto f0 = layernorm_forward<double>(x, &g, nullptr, {{6}});
  const auto f1 = layernorm_forward<double>(x, &g, &zero, {{6}});
  BOOST_TEST(max_diff(f0.y, f1.y) == 0.0);
  for (const auto& grads : {layernorm_backward(dy, x, &g, f0.cache), layernorm_backward_staged(dy, x, &g, f0.cache)}) {
    BOOST_TEST(grads.dbeta.empty());
    BOOST_TEST(max_diff(grads.dgamma, layernorm_backward(dy, x, &g, f1.cache).dgamma) < 1e-14);
  }
}

// Layer norm at row mean 1e4, std 1e-2 (issue 15 §2): dγ and dx of both passes against a
// recomputation with the mean in __float128 (113 bits), error ÷ the scale of the terms Σ|dy x̂|.
// A mean rounded to float64 is off by up to ulp(1e4)/2 = 9e-13, i.e. 9e-11 of σ in every x̂ of
// the row: before the forward kept the rounding of μ in float64 too (mean_residual, TwoSum),
// dγ was off by 2.2e-11 of its scale here (libtorch, which rounds μ the same way: 4.4e-11 in
// the case); now by 1e-16.
struct LargeMeanAccuracy {
  double dgamma_fused = 0, dgamma_staged = 0;
};
LargeMeanAccuracy large_mean_accuracy() {
  const Index N = 64, C = 128;
  std::mt19937_64 gen(15);
  std::normal_distribution<double> nd;
  TensorD x({N, C}), dy({N, C}), g({C}), b({C});
  for (Index i = 0; i < x.size(); ++i) x[i] = 1e4 + 1e-2 * nd(gen), dy[i] = nd(gen);
  for (Index j = 0; j < C; ++j) g[j] = 1 + 0.5 * nd(gen), b[j] = nd(gen);
  const double eps = 1e-5;
  // The exact x̂: μ in __float128 (the deviations x − μ are then exact to ~1e-30), σ² in long double.
  std::vector<long double> xh(static_cast<std::size_t>(x.size()));
  for (Index r = 0; r < N; ++r) {
    __float128 mu = 0;
    for (Index j = 0; j < C; ++j) mu += x[r * C + j];
    mu /= C;
    long double var = 0;
    for (Index j = 0; j < C; ++j) {
      const long double d = static_cast<long double>(x[r * C + j] - mu);
      xh[static_cast<std::size_t>(r * C + j)] = d;
      var += d * d;
    }
    var /= C;
    const long double is = 1 / std::sqrt(var + eps);
    for (Index j = 0; j < C; ++j) xh[static_cast<std::size_t>(r * C + j)] *= is;
  }
  std::vector<long double> dg(C, 0), dgs(C, 0);
  for (Index i = 0; i < x.size(); ++i) {
    dg[static_cast<std::size_t>(i % C)] += dy[i] * xh[static_cast<std::size_t>(i)];
    dgs[static_cast<std::size_t>(i % C)] += std::abs(dy[i] * xh[static_cast<std::size_t>(i)]);
  }
  const double scale = static_cast<double>(*std::max_element(dgs.begin(), dgs.end()));
  const auto f = ops::layernorm_forward<double>(x, &g, &b, {{C}, eps});
  const auto err = [&](const TensorD& got) {
    double e = 0;
    for (Index j = 0; j < C; ++j) e = std::max(e, static_cast<double>(std::abs(got[j] - dg[static_cast<std::size_t>(j)])));
    return e / scale;
  };
  LargeMeanAccuracy a;
  a.dgamma_fused = err(ops::layernorm_backward(dy, x, &g, f.cache).dgamma);
  a.dgamma_staged = err(ops::layernorm_backward_staged(dy, x, &g, f.cache).dgamma);
  return a;
}

BOOST_AUTO_TEST_CASE(layernorm_dgamma_at_mean_1e4_and_std_1e_2_is_exact_to_rounding, *utf::label("ln.dgamma")) {
  const LargeMeanAccuracy a = large_mean_accuracy();
  // A few units of float64 rounding of the terms (the sum over 64 rows): 1e-14.
  BOOST_TEST(a.dgamma_fused < 1e-14);
  BOOST_TEST(a.dgamma_staged < 1e-14);
}

// LayerNorm over one element is allowed (PyTorch allows it): σ² = 0, x̂ = 0, so y = β exactly
// and the exact gradient in x is 0. Group norm with groups of one value (N > 1) likewise.
// A set of one value: μ = x exactly, so x̂ = 0 and y = β exactly. The true dx is 0 as well, but
// the fused kernel computes it as the cancellation (M·g − Σg)/√ε with M = 1, and when the compiler
// contracts M·g − Σg into a fused multiply-add (release, -march=native) the result is the
// rounding error of γ·dy times 1/√ε: zero only up to a few ulps of the terms. That bound is asserted.
BOOST_AUTO_TEST_CASE(sets_of_one_value_give_beta_and_zero_gradient) {
  const double eps = 1e-5, u = std::numeric_limits<double>::epsilon();
  const TensorD x = iota({4, 1}), dy = iota({4, 1}), g({1}, 1.5), b({1}, 0.25);
  const auto f = layernorm_forward<double>(x, &g, &b, {{1}});
  for (Index i = 0; i < 4; ++i) BOOST_TEST(f.y[i] == 0.25);
  const double terms = 1.5 * max_abs(dy) / std::sqrt(eps);  // |γ dy| / √(0 + ε)
  BOOST_TEST(max_abs(layernorm_backward(dy, x, &g, f.cache).dx) <= 4 * u * terms);
  BOOST_TEST(max_abs(layernorm_backward_staged(dy, x, &g, f.cache).dx) <= 4 * u * terms);
  BOOST_TEST(max_abs(layernorm_backward(dy, x, &g, f.cache).dgamma) == 0.0);  // dγ = Σ dy x̂, x̂ = 0 exactly

  const TensorD xg = iota({2, 3}), dyg = iota({2, 3}), gc({3}, 2.0), bc = iota({3});
  const auto fg = groupnorm_forward<double>(xg, &gc, &bc, {3});
  for (Index i = 0; i < 6; ++i) BOOST_TEST(fg.y[i] == bc[i % 3]);
  const double terms_g = 2.0 * max_abs(dyg) / std::sqrt(eps);
  BOOST_TEST(max_abs(groupnorm_backward(dyg, xg, &gc, fg.cache).dx) <= 4 * u * terms_g);
  BOOST_TEST(max_abs(groupnorm_backward_staged(dyg, xg, &gc, fg.cache).dx) <= 4 * u * terms_g);
}

// The aliasing the passes allow, and document: `y` over `x` in a forward pass, `dx` over `dy`
// or over `x` in a fused backward pass. Every value of a set is read before its own output is
// written, so in place gives the same bits as out of place (the results do not depend on the
// buffers' alignment). Shapes large enough for the vectorised kernels and both threads.
BOOST_AUTO_TEST_CASE(in_place_forward_and_backward_give_the_same_bits) {
  const auto same = [](const TensorF& a, const TensorF& b) {
    return a.shape() == b.shape() && std::equal(a.data(), a.data() + a.size(), b.data());
  };
  const Shape shape{4, 8, 30, 30};
  const TensorF x = iota(shape).cast<float>();
  TensorF dy(shape);
  for (Index i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(std::cos(0.37 * static_cast<double>(i)));
  const TensorF g8 = iota({8}).cast<float>(), b8({8}, 0.5f);
  const TensorF g900 = iota({900}).cast<float>(), b900({900}, 0.5f);
  // forward(x, y, cache) and backward_into(dy, x, cache, dx, dgamma, dbeta) of one layer.
  const auto check = [&](const char* what, const TensorF& gamma, const auto& forward_into, const auto& backward_into) {
    BOOST_TEST_CONTEXT(what) {
      TensorF y(shape);
      NormCache<float> cache;
      forward_into(x, y, cache);
      TensorF over_x = x;
      NormCache<float> c2;
      forward_into(over_x, over_x, c2);
      BOOST_TEST(same(over_x, y));
      TensorF dx(shape), dg(gamma.shape()), db(gamma.shape());
      backward_into(dy, x, cache, dx, dg, db);
      TensorF over_dy = dy, dg2(gamma.shape()), db2(gamma.shape());
      backward_into(over_dy, x, cache, over_dy, dg2, db2);
      BOOST_TEST(same(over_dy, dx));
      BOOST_TEST((same(dg2, dg) && same(db2, db)));
      TensorF over_x2 = x;
      backward_into(dy, over_x2, cache, over_x2, dg2, db2);
      BOOST_TEST(same(over_x2, dx));
      BOOST_TEST((same(dg2, dg) && same(db2, db)));
    }
  };
  const Shape row{30, 30};
  const TensorF g_row = iota(row).cast<float>(), b_row(row, 0.5f);
  check("layernorm", g_row,
        [&](const TensorF& in, TensorF& y, NormCache<float>& c) { layernorm_forward_into(in, &g_row, &b_row, {row}, y, c); },
        [&](const TensorF& d, const TensorF& in, const NormCache<float>& c, TensorF& dx, TensorF& dg, TensorF& db) {
          layernorm_backward_into(d, in, &g_row, c, dx, &dg, &db);
        });
  check("groupnorm", g8,
        [&](const TensorF& in, TensorF& y, NormCache<float>& c) { groupnorm_forward_into(in, &g8, &b8, {2}, y, c); },
        [&](const TensorF& d, const TensorF& in, const NormCache<float>& c, TensorF& dx, TensorF& dg, TensorF& db) {
          groupnorm_backward_into(d, in, &g8, c, dx, &dg, &db);
        });
  check("instancenorm", g8,
        [&](const TensorF& in, TensorF& y, NormCache<float>& c) {
          instancenorm_forward_train_into(in, &g8, &b8, nullptr, {}, y, c);
        },
        [&](const TensorF& d, const TensorF& in, const NormCache<float>& c, TensorF& dx, TensorF& dg, TensorF& db) {
          instancenorm_backward_into(d, in, &g8, c, dx, &dg, &db);
        });
  check("norm", g900,
        [&](const TensorF& in, TensorF& y, NormCache<float>& c) { norm::forward_into({32, 900, 1, 1}, in, &g900, &b900, 1e-5, y, c); },
        [&](const TensorF& d, const TensorF& in, const NormCache<float>& c, TensorF& dx, TensorF& dg, TensorF& db) {
          norm::backward_into(d, in, &g900, c, dx, &dg, &db);
        });
  // RMS norm (no β, its own cache).
  const RMSNormConfig rcfg{row, std::nullopt};
  TensorF y(shape), dx(shape), dg(row);
  RMSNormCache<float> rc, rc2;
  rmsnorm_forward_into(x, &g_row, rcfg, y, rc);
  TensorF over_x = x;
  rmsnorm_forward_into(over_x, &g_row, rcfg, over_x, rc2);
  BOOST_TEST(same(over_x, y));
  rmsnorm_backward_into(dy, x, &g_row, rc, dx, &dg);
  TensorF over_dy = dy, dg2(row);
  rmsnorm_backward_into(over_dy, x, &g_row, rc, over_dy, &dg2);
  BOOST_TEST((same(over_dy, dx) && same(dg2, dg)));
}

BOOST_AUTO_TEST_CASE(instancenorm_eval_uses_running_statistics) {
  const TensorD x = iota({2, 3, 4}), g = iota({3}), b({3}, 0.25);
  InstanceNormRunningStats<double> run{TensorD({3}, std::vector<double>{0.5, -1.0, 2.0}),
                                       TensorD({3}, std::vector<double>{4.0, 0.25, 1.0})};
  const auto f = instancenorm_forward_eval<double>(x, &g, &b, run);
  BOOST_TEST(!f.cache.training);
  for (Index i = 0; i < x.size(); ++i) {
    // y = γ x̂ + β can cancel (here down to 0.02 from terms near 0.27), so the bound is a few
    // ulps of the terms |γ x̂| + |β|, not of y.
    const Index c = (i / 4) % 3;
    const double gxh = g[c] * (x[i] - run.mean[c]) / std::sqrt(run.var[c] + 1e-5);
    BOOST_TEST(std::abs(f.y[i] - (gxh + 0.25)) <= 4 * std::numeric_limits<double>::epsilon() * (std::abs(gxh) + 0.25));
  }
  // Eval backward: y is affine in x.
  const TensorD dy = iota({2, 3, 4});
  for (const auto& grads : {instancenorm_backward(dy, x, &g, f.cache), instancenorm_backward_staged(dy, x, &g, f.cache)}) {
    for (Index i = 0; i < x.size(); ++i) {
      const Index c = (i / 4) % 3;
      BOOST_TEST(grads.dx[i] == dy[i] * g[c] / std::sqrt(run.var[c] + 1e-5), boost::test_tools::tolerance(1e-14));
    }
  }
}

// Training with running statistics: after one batch with momentum 1 the running statistics are
// the batch averages of the instance mean and unbiased instance variance; momentum 0 (what
// PyTorch's InstanceNorm does for momentum=None) leaves them untouched.
BOOST_AUTO_TEST_CASE(instancenorm_running_statistics_average_the_instances) {
  const TensorD x = iota({2, 3, 4});
  auto run = InstanceNormRunningStats<double>::fresh(3);
  const auto f = instancenorm_forward_train<double>(x, nullptr, nullptr, &run, {1e-5, 1.0});
  for (Index c = 0; c < 3; ++c) {
    const double mean = (f.cache.mean[c] + f.cache.mean[3 + c]) / 2;
    const double var = (f.cache.var[c] + f.cache.var[3 + c]) / 2 * 4.0 / 3.0;
    BOOST_TEST(run.mean[c] == mean, boost::test_tools::tolerance(1e-15));
    BOOST_TEST(run.var[c] == var, boost::test_tools::tolerance(1e-14));
  }
  auto frozen = InstanceNormRunningStats<double>::fresh(3);
  instancenorm_forward_train<double>(x, nullptr, nullptr, &frozen, {1e-5, 0.0});
  for (Index c = 0; c < 3; ++c) {
    BOOST_TEST(frozen.mean[c] == 0.0);
    BOOST_TEST(frozen.var[c] == 1.0);
  }
}

// eps = None is torch.finfo(dtype).eps: 2^-23 for float32, 2^-52 for float64.
BOOST_AUTO_TEST_CASE(rmsnorm_default_eps_is_the_machine_epsilon_of_the_dtype) {
  const RMSNormConfig none{{5}, std::nullopt};
  BOOST_TEST(rmsnorm_eps<float>(none) == std::ldexp(1.0, -23));
  BOOST_TEST(rmsnorm_eps<double>(none) == std::ldexp(1.0, -52));
  BOOST_TEST(rmsnorm_eps<double>({{5}, 1e-6}) == 1e-6);
  const TensorD x = iota({3, 5});
  const auto fd = rmsnorm_forward<double>(x, nullptr, none);
  const auto ff = rmsnorm_forward<float>(x.cast<float>(), nullptr, none);
  BOOST_TEST(fd.cache.eps == std::ldexp(1.0, -52));
  BOOST_TEST(ff.cache.eps == std::ldexp(1.0, -23));
  for (Index r = 0; r < 3; ++r) {
    double ms = 0;
    for (Index j = 0; j < 5; ++j) ms += x[r * 5 + j] * x[r * 5 + j] / 5;
    for (Index j = 0; j < 5; ++j)
      BOOST_TEST(fd.y[r * 5 + j] == x[r * 5 + j] / std::sqrt(ms + std::ldexp(1.0, -52)),
                 boost::test_tools::tolerance(1e-15));
  }
}

// The _into entry points write into the caller's buffers and reuse the cache's statistics
// without reallocating them; their results equal the allocating wrappers'.
BOOST_AUTO_TEST_CASE(into_entry_points_reuse_the_callers_buffers) {
  const TensorF x = iota({8, 16}).cast<float>(), dy = iota({8, 16}).cast<float>(), g = iota({16}).cast<float>(),
                b = iota({16}).cast<float>();
  TensorF y(x.shape()), dx(x.shape()), dg({16}), db({16});
  NormCache<float> cache;
  layernorm_forward_into(x, &g, &b, {{16}}, y, cache);
  const float* stats = cache.mean.data();
  for (int pass = 0; pass < 3; ++pass) {
    layernorm_forward_into(x, &g, &b, {{16}}, y, cache);
    layernorm_backward_into(dy, x, &g, cache, dx, &dg, &db);
  }
  BOOST_TEST(cache.mean.data() == stats);  // no reallocation
  const auto ref = layernorm_forward<float>(x, &g, &b, {{16}});
  const auto refg = layernorm_backward(dy, x, &g, ref.cache);
  BOOST_TEST((y.flat() - ref.y.flat()).abs().maxCoeff() == 0.0f);
  BOOST_TEST((dx.flat() - refg.dx.flat()).abs().maxCoeff() == 0.0f);
  BOOST_TEST((dg.flat() - refg.dgamma.flat()).abs().maxCoeff() == 0.0f);
  BOOST_TEST((db.flat() - refg.dbeta.flat()).abs().maxCoeff() == 0.0f);

  RMSNormCache<float> rc;
  rmsnorm_forward_into(x, &g, {{16}, 1e-5}, y, rc);
  const float* rstats = rc.invrms.data();
  rmsnorm_forward_into(x, &g, {{16}, 1e-5}, y, rc);
  rmsnorm_backward_into(dy, x, &g, rc, dx, &dg);
  BOOST_TEST(rc.invrms.data() == rstats);
  const auto rref = rmsnorm_forward<float>(x, &g, {{16}, 1e-5});
  BOOST_TEST((y.flat() - rref.y.flat()).abs().maxCoeff() == 0.0f);
  BOOST_TEST((dx.flat() - rmsnorm_backward(dy, x, &g, rref.cache).dx.flat()).abs().maxCoeff() == 0.0f);
}

BOOST_AUTO_TEST_SUITE_END()  // semantics

// ------------------------------------------------------------------------------------------------
// The negative controls: each term of each staged backward dropped or flipped in turn.

namespace {
void check_table(const std::string& op, std::size_t rows, const std::string& zero_term) {
  const auto table = catalog::ablate(op);
  BOOST_TEST(table.size() == rows);
  for (const auto& row : table) {
    testing::record(row);
    BOOST_TEST(row.passed, row.term << " " << row.change << ": caught=" << row.caught
                                    << " expected=" << row.expected_caught << " — " << row.note);
    if (row.term == zero_term) {
      BOOST_TEST(!row.caught, "removing " << zero_term << " must change nothing");
    } else {
      BOOST_TEST(row.caught, row.term << " " << row.change << " must be caught");
    }
  }
}
}  // namespace

BOOST_AUTO_TEST_CASE(norm_ablation_catches_every_term_but_dvar_dmu,
                     *utf::label("norm.dl_dxhat") * utf::label("norm.dl_dvar") * utf::label("norm.dvar_dmu") *
                         utf::label("norm.dl_dmu") * utf::label("norm.dvar_dx") * utf::label("norm.dmu_dx")) {
  check_table("norm", 12, "norm.dvar_dmu");
}

BOOST_AUTO_TEST_CASE(ln_ablation_catches_every_term_but_dvar_dmu,
                     *utf::label("ln.dl_dxhat") * utf::label("ln.dl_dvar") * utf::label("ln.dvar_dmu") *
                         utf::label("ln.dl_dmu") * utf::label("ln.dvar_dx") * utf::label("ln.dmu_dx")) {
  check_table("ln", 12, "ln.dvar_dmu");
}

BOOST_AUTO_TEST_CASE(gn_ablation_catches_every_term_but_dvar_dmu,
                     *utf::label("gn.dl_dxhat") * utf::label("gn.dl_dvar") * utf::label("gn.dvar_dmu") *
                         utf::label("gn.dl_dmu") * utf::label("gn.dvar_dx") * utf::label("gn.dmu_dx")) {
  check_table("gn", 12, "gn.dvar_dmu");
}

BOOST_AUTO_TEST_CASE(in_ablation_catches_every_term_but_dvar_dmu,
                     *utf::label("in.dl_dxhat") * utf::label("in.dl_dvar") * utf::label("in.dvar_dmu") *
                         utf::label("in.dl_dmu") * utf::label("in.dvar_dx") * utf::label("in.dmu_dx")) {
  check_table("in", 12, "in.dvar_dmu");
}

// The RMS-norm table is made by the harness (rms/negative_controls/table_is_as_derived).

BOOST_AUTO_TEST_SUITE_END()  // norm_ops
