// NaN and Inf propagate as in PyTorch (issue 10, defect 4): every norm (bn, ln, gn, in, rms),
// forward and both backwards (staged and fused), float32 and float64, against the values that
// libtorch returns for the same inputs, element by element: the same NaN-ness, the same
// Inf-ness (with its sign), and finite values that agree within a tolerance.
//
// Built only when libtorch is found (Debian: libtorch-dev). The cases:
// - nan / pos_inf / neg_inf: one value of the first set is NaN, +Inf or −Inf;
// - huge: the first set is scaled so that its squares overflow the dtype (|x| ≈ 4e19 in float32,
//   1e160 in float64) — see the note at `huge` for where libtorch and the exact answer part;
// - dy_nan / dy_inf: one value of the upstream gradient is NaN or +Inf (backward only).
#define BOOST_TEST_MODULE gradproof_torch
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/rmsnorm.hpp"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/batch_norm.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/group_norm.h>
#include <ATen/ops/instance_norm.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace gradproof;
using namespace gradproof::ops;

namespace {

template <class T>
at::ScalarType dtype() {
  return std::is_same_v<T, float> ? at::kFloat : at::kDouble;
}

template <class T>
at::Tensor to_torch(const Tensor<T>& t) {
  return at::from_blob(const_cast<T*>(t.data()), std::vector<std::int64_t>(t.shape().begin(), t.shape().end()),
                       at::TensorOptions().dtype(dtype<T>()))
      .clone();
}

template <class T>
std::vector<double> values(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const T* p = c.data_ptr<T>();
  return std::vector<double>(p, p + c.numel());
}

template <class T>
std::vector<double> values(const Tensor<T>& t) {
  return std::vector<double>(t.data(), t.data() + t.size());
}

// Finite values agree when |a − b| <= atol·scale + rtol·|b|, with scale the largest finite |b|
// of the tensor. libtorch sums float32 in float32 (we sum in double), so float32 values differ
// by the rounding of those sums: about 1e-6 relative for these sizes; 1e-4 leaves room without
// hiding a wrong term (a dropped term changes dx by O(1) of its scale). float64: 1e-10.
// With `kind_only`, a NaN where libtorch has ±Inf (or the reverse) also agrees: see dy_inf below.
template <class T>
void expect_same_pattern(const std::string& what, const std::vector<double>& ours, const std::vector<double>& theirs,
                         bool kind_only = false) {
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  BOOST_TEST_CONTEXT(what) {
    BOOST_TEST_REQUIRE(ours.size() == theirs.size());
    double scale = 0;
    for (double v : theirs)
      if (std::isfinite(v)) scale = std::max(scale, std::abs(v));
    int reported = 0;
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < ours.size(); ++i) {
      const double a = ours[i], b = theirs[i];
      bool ok;
      if (kind_only && !std::isfinite(b)) ok = !std::isfinite(a);
      else if (std::isnan(b)) ok = std::isnan(a);
      else if (std::isinf(b)) ok = a == b;
      else ok = std::isfinite(a) && std::abs(a - b) <= tol * scale + tol * std::abs(b);
      if (!ok) {
        ++mismatches;
        if (reported++ < 4) BOOST_TEST_MESSAGE(what << "[" << i << "]: ours " << a << ", libtorch " << b);
      }
    }
    BOOST_TEST(mismatches == 0u, mismatches << " of " << ours.size() << " values differ in kind or value");
  }
}

enum class Case { nan, pos_inf, neg_inf, huge, dy_nan, dy_inf };
const char* name(Case c) {
  switch (c) {
    case Case::nan: return "nan";
    case Case::pos_inf: return "pos_inf";
    case Case::neg_inf: return "neg_inf";
    case Case::huge: return "huge";
    case Case::dy_nan: return "dy_nan";
    case Case::dy_inf: return "dy_inf";
  }
  return "?";
}

// Inputs: x, dy, gamma, beta of the op's shapes, with the case planted in the first set, whose
// flat indices `first_set` gives (bn: channel 0 of every sample; the others: the first row).
template <class T>
struct Inputs {
  Tensor<T> x, dy, gamma, beta;
};

template <class T>
Inputs<T> make_inputs(const Shape& shape, const Shape& param_shape, Case c, const std::vector<Index>& first_set) {
  std::mt19937_64 rng(42);
  std::normal_distribution<double> nd(0.5, 1.0);
  Inputs<T> in{Tensor<T>(shape), Tensor<T>(shape), Tensor<T>(param_shape), Tensor<T>(param_shape)};
  for (Index i = 0; i < in.x.size(); ++i) in.x[i] = T(nd(rng)), in.dy[i] = T(nd(rng));
  for (Index i = 0; i < in.gamma.size(); ++i) in.gamma[i] = T(1 + 0.3 * nd(rng)), in.beta[i] = T(nd(rng));
  const Index k = first_set[first_set.size() / 2];  // not the first value: the shift K of the fused sums
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  switch (c) {
    case Case::nan: in.x[k] = nan; break;
    case Case::pos_inf: in.x[k] = inf; break;
    case Case::neg_inf: in.x[k] = -inf; break;
    case Case::huge: {
      const T big = std::is_same_v<T, float> ? T(4e19) : T(1e160);
      for (Index i : first_set) in.x[i] *= big;
      break;
    }
    case Case::dy_nan: in.dy[k] = nan; break;
    case Case::dy_inf: in.dy[k] = inf; break;
  }
  return in;
}

// What libtorch returns: y and, by autograd with the upstream gradient dy, dx, dgamma, dbeta;
// for bn and in, the running statistics after the batch.
struct TorchOut {
  std::vector<double> y, dx, dgamma, dbeta, running_mean, running_var;
  bool dx_kind_only = false;  // dy_inf: compare dx as finite / not finite only
};

// Where we part from libtorch on purpose, written into what libtorch returned.
//
// huge: the centred squares of the first set overflow the dtype although every value is finite.
// The exact y and dx are finite (x̂ is of order 1) but cannot be had from a variance that
// overflowed; we return σ² = +Inf and 1/√(σ²+ε) = NaN, so y, dx and the dγ the set contributes
// to are NaN (kernels::variance_and_invstd). libtorch is not consistent here: its layer and group
// norm return NaN as we do; its batch and instance norm return 1/√∞ = 0, hence y = β and dx = 0
// for the set, and its RMS norm (composed, y = x·rsqrt(mean(x²) + ε)) y = 0: finite values that
// are wrong and say nothing of the overflow. Everything else (σ² = +Inf in the running variance,
// dβ = Σdy, the other sets) is compared with libtorch as it is.
//
// dy_inf: one dy is +Inf, so Σdy and Σdy·x̂ are ±Inf and every dx of its set is the difference of
// infinite terms: ±Inf where they have the same sign, NaN where they do not. Which elements get
// which depends on the order in which the terms are combined, and libtorch is not consistent
// either (at the same dy, its batch norm gives −Inf where its layer norm gives NaN, and float32
// and float64 differ): there, dx is compared as "not finite" element by element.
void overflowed(TorchOut& t, const std::vector<Index>& set, const std::vector<Index>& params) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (Index i : set) t.y[static_cast<std::size_t>(i)] = t.dx[static_cast<std::size_t>(i)] = nan;
  for (Index p : params) t.dgamma[static_cast<std::size_t>(p)] = nan;
}

void part_from_libtorch(TorchOut& t, Case c, const std::vector<Index>& set, const std::vector<Index>& params) {
  if (c == Case::huge) overflowed(t, set, params);
  if (c == Case::dy_inf) t.dx_kind_only = true;
}

template <class T, class F>
TorchOut run_torch(const Inputs<T>& in, bool has_beta, const F& forward) {
  at::Tensor x = to_torch(in.x).requires_grad_(true), gamma = to_torch(in.gamma).requires_grad_(true);
  at::Tensor beta = to_torch(in.beta).requires_grad_(has_beta);
  at::Tensor rm, rv;
  const at::Tensor y = forward(x, gamma, beta, rm, rv);
  std::vector<at::Tensor> wrt{x, gamma};
  if (has_beta) wrt.push_back(beta);
  const auto g = torch::autograd::grad({y}, wrt, {to_torch(in.dy)});
  TorchOut o{values<T>(y.detach()), values<T>(g[0]), values<T>(g[1]), {}, {}, {}};
  if (has_beta) o.dbeta = values<T>(g[2]);
  if (rm.defined()) o.running_mean = values<T>(rm), o.running_var = values<T>(rv);
  return o;
}

std::vector<Index> channel0(const Shape& shape) {  // (N, C, L...): channel 0 of every sample
  Index L = 1;
  for (std::size_t a = 2; a < shape.size(); ++a) L *= shape[a];
  std::vector<Index> idx;
  for (Index n = 0; n < shape[0]; ++n)
    for (Index l = 0; l < L; ++l) idx.push_back(n * shape[1] * L + l);
  return idx;
}

std::vector<Index> first(Index m) {
  std::vector<Index> idx;
  for (Index i = 0; i < m; ++i) idx.push_back(i);
  return idx;
}


const Case kCases[] = {Case::nan, Case::pos_inf, Case::neg_inf, Case::huge, Case::dy_nan, Case::dy_inf};

template <class T, class Grads>
void expect_grads(const std::string& what, const Grads& g, const TorchOut& t, bool has_beta) {
  expect_same_pattern<T>(what + " dx", values(g.dx), t.dx, t.dx_kind_only);
  expect_same_pattern<T>(what + " dgamma", values(g.dgamma), t.dgamma);
  if constexpr (requires { g.dbeta; })
    if (has_beta) expect_same_pattern<T>(what + " dbeta", values(g.dbeta), t.dbeta);
}

template <class T>
void batchnorm_cases() {
  const Shape shape{4, 3, 20};
  for (Case c : kCases) {
    const std::string what = std::string("bn ") + name(c) + (std::is_same_v<T, float> ? " float32" : " float64");
    const Inputs<T> in = make_inputs<T>(shape, {3}, c, channel0(shape));
    BatchNormConfig cfg;
    auto running = BatchNormRunningStats<T>::fresh(3);
    const auto fwd = batchnorm_forward_train<T>(in.x, &in.gamma, &in.beta, &running, cfg);
    TorchOut t = run_torch(in, true, [&](auto& x, auto& g, auto& b, at::Tensor& rm, at::Tensor& rv) {
      rm = at::zeros({3}, at::TensorOptions().dtype(dtype<T>()));
      rv = at::ones({3}, at::TensorOptions().dtype(dtype<T>()));
      return at::batch_norm(x, g, b, rm, rv, true, 0.1, cfg.eps, false);
    });
    part_from_libtorch(t, c, channel0(shape), {0});
    expect_same_pattern<T>(what + " y", values(fwd.y), t.y);
    expect_same_pattern<T>(what + " running_mean", values(running.mean), t.running_mean);
    expect_same_pattern<T>(what + " running_var", values(running.var), t.running_var);
    expect_grads<T>(what + " staged", batchnorm_backward_staged<T>(in.dy, in.x, &in.gamma, fwd.cache), t, true);
    expect_grads<T>(what + " fused", batchnorm_backward<T>(in.dy, in.x, &in.gamma, fwd.cache), t, true);
  }
}

template <class T>
void layernorm_cases() {
  const Shape shape{5, 3, 16};
  for (Case c : kCases) {
    const std::string what = std::string("ln ") + name(c) + (std::is_same_v<T, float> ? " float32" : " float64");
    const Inputs<T> in = make_inputs<T>(shape, {3, 16}, c, first(48));
    const LayerNormConfig cfg{{3, 16}};
    const auto fwd = layernorm_forward<T>(in.x, &in.gamma, &in.beta, cfg);
    TorchOut t = run_torch(in, true, [&](auto& x, auto& g, auto& b, at::Tensor&, at::Tensor&) {
      return at::layer_norm(x, {3, 16}, g, b, cfg.eps, false);
    });
    part_from_libtorch(t, c, first(48), first(48));
    expect_same_pattern<T>(what + " y", values(fwd.y), t.y);
    expect_grads<T>(what + " staged", layernorm_backward_staged<T>(in.dy, in.x, &in.gamma, fwd.cache), t, true);
    expect_grads<T>(what + " fused", layernorm_backward<T>(in.dy, in.x, &in.gamma, fwd.cache), t, true);
  }
}

template <class T>
void groupnorm_cases() {
  const Shape shape{3, 6, 10};
  for (Case c : kCases) {
    const std::string what = std::string("gn ") + name(c) + (std::is_same_v<T, float> ? " float32" : " float64");
    const Inputs<T> in = make_inputs<T>(shape, {6}, c, first(30));  // group 0 of sample 0: channels 0-2
    const GroupNormConfig cfg{2};
    const auto fwd = groupnorm_forward<T>(in.x, &in.gamma, &in.beta, cfg);
    TorchOut t = run_torch(in, true, [&](auto& x, auto& g, auto& b, at::Tensor&, at::Tensor&) {
      return at::group_norm(x, 2, g, b, cfg.eps, false);
    });
    part_from_libtorch(t, c, first(30), {0, 1, 2});
    expect_same_pattern<T>(what + " y", values(fwd.y), t.y);
    expect_grads<T>(what + " staged", groupnorm_backward_staged<T>(in.dy, in.x, &in.gamma, fwd.cache), t, true);
    expect_grads<T>(what + " fused", groupnorm_backward<T>(in.dy, in.x, &in.gamma, fwd.cache), t, true);
  }
}

template <class T>
void instancenorm_cases() {
  const Shape shape{3, 4, 24};
  for (Case c : kCases) {
    const std::string what = std::string("in ") + name(c) + (std::is_same_v<T, float> ? " float32" : " float64");
    const Inputs<T> in = make_inputs<T>(shape, {4}, c, first(24));
    const InstanceNormConfig cfg;
    auto running = InstanceNormRunningStats<T>::fresh(4);
    const auto fwd = instancenorm_forward_train<T>(in.x, &in.gamma, &in.beta, &running, cfg);
    TorchOut t = run_torch(in, true, [&](auto& x, auto& g, auto& b, at::Tensor& rm, at::Tensor& rv) {
      rm = at::zeros({4}, at::TensorOptions().dtype(dtype<T>()));
      rv = at::ones({4}, at::TensorOptions().dtype(dtype<T>()));
      return at::instance_norm(x, g, b, rm, rv, true, cfg.momentum, cfg.eps, false);
    });
    part_from_libtorch(t, c, first(24), {0});
    expect_same_pattern<T>(what + " y", values(fwd.y), t.y);
    expect_same_pattern<T>(what + " running_mean", values(running.mean), t.running_mean);
    expect_same_pattern<T>(what + " running_var", values(running.var), t.running_var);
    expect_grads<T>(what + " staged", instancenorm_backward_staged<T>(in.dy, in.x, &in.gamma, fwd.cache), t, true);
    expect_grads<T>(what + " fused", instancenorm_backward<T>(in.dy, in.x, &in.gamma, fwd.cache), t, true);
  }
}

template <class T>
void rmsnorm_cases() {
  const Shape shape{5, 40};
  for (Case c : kCases) {
    const std::string what = std::string("rms ") + name(c) + (std::is_same_v<T, float> ? " float32" : " float64");
    const Inputs<T> in = make_inputs<T>(shape, {40}, c, first(40));
    const RMSNormConfig cfg{{40}, 1e-6};
    const auto fwd = rmsnorm_forward<T>(in.x, &in.gamma, cfg);
    // libtorch 1.13 has no rms_norm: the composition a user writes (as bench/libtorch.cpp does).
    TorchOut t = run_torch(in, false, [&](auto& x, auto& g, auto&, at::Tensor&, at::Tensor&) {
      return x * at::rsqrt(at::mean(x * x, {-1}, true) + *cfg.eps) * g;
    });
    part_from_libtorch(t, c, first(40), first(40));
    expect_same_pattern<T>(what + " y", values(fwd.y), t.y);
    expect_grads<T>(what + " staged", rmsnorm_backward_staged<T>(in.dy, in.x, &in.gamma, fwd.cache), t, false);
    expect_grads<T>(what + " fused", rmsnorm_backward<T>(in.dy, in.x, &in.gamma, fwd.cache), t, false);
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nonfinite)

BOOST_AUTO_TEST_CASE(batchnorm_propagates_nan_and_inf_as_libtorch) {
  batchnorm_cases<float>();
  batchnorm_cases<double>();
}
BOOST_AUTO_TEST_CASE(layernorm_propagates_nan_and_inf_as_libtorch) {
  layernorm_cases<float>();
  layernorm_cases<double>();
}
BOOST_AUTO_TEST_CASE(groupnorm_propagates_nan_and_inf_as_libtorch) {
  groupnorm_cases<float>();
  groupnorm_cases<double>();
}
BOOST_AUTO_TEST_CASE(instancenorm_propagates_nan_and_inf_as_libtorch) {
  instancenorm_cases<float>();
  instancenorm_cases<double>();
}
BOOST_AUTO_TEST_CASE(rmsnorm_propagates_nan_and_inf_as_libtorch) {
  rmsnorm_cases<float>();
  rmsnorm_cases<double>();
}

BOOST_AUTO_TEST_SUITE_END()
