// The diagnosis of `gradproof check` (cli/diagnose.hpp): each named pattern on a batch-norm
// backward broken on purpose in that way. The broken backward is the textbook staged one (dx̂,
// dσ², dμ, then dx), written out here per channel, independent of the closed form the diagnosis
// predicts from; the reference is gradproof's batchnorm_backward. Also `check` end to end on .npy
// files (cli/check.hpp): a layer norm whose γ is missing, and the verdicts and exit statuses.
#include "gradproof/cli/check.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "support/inputs.hpp"

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>

using namespace gradproof;
using namespace gradproof::cli;

namespace {

enum class Bug { none, mean_path_wrong, variance_path_wrong, sign, gamma_missing, unbiased_variance, stats_constant };

// The textbook batch-norm backward of x (N, C, L), with one bug.
TensorD broken_bn_dx(const TensorD& x, const TensorD& dy, const TensorD& gamma, double eps, Bug bug) {
  const Index N = x.shape()[0], C = x.shape()[1], L = x.shape()[2];
  const double M = static_cast<double>(N * L);
  TensorD dx(x.shape());
  for (Index c = 0; c < C; ++c) {
    const auto at = [&](Index n, Index l) { return (n * C + c) * L + l; };
    double mu = 0, var = 0;
    for (Index n = 0; n < N; ++n)
      for (Index l = 0; l < L; ++l) mu += x[at(n, l)];
    mu /= M;
    for (Index n = 0; n < N; ++n)
      for (Index l = 0; l < L; ++l) var += (x[at(n, l)] - mu) * (x[at(n, l)] - mu);
    var /= bug == Bug::unbiased_variance ? M - 1 : M;
    const double invstd = 1 / std::sqrt(var + eps);
    double dvar = 0, dmu = 0, sum_centered = 0;
    for (Index n = 0; n < N; ++n)
      for (Index l = 0; l < L; ++l) {
        const Index i = at(n, l);
        const double dxhat = dy[i] * (bug == Bug::gamma_missing ? 1.0 : gamma[c]);
        dvar += dxhat * (x[i] - mu) * -0.5 * std::pow(var + eps, -1.5);
        dmu += -dxhat * invstd;
        sum_centered += x[i] - mu;
      }
    dmu += dvar * -2 * sum_centered / M;
    for (Index n = 0; n < N; ++n)
      for (Index l = 0; l < L; ++l) {
        const Index i = at(n, l);
        const double dxhat = dy[i] * (bug == Bug::gamma_missing ? 1.0 : gamma[c]);
        double v = dxhat * invstd;
        if (bug != Bug::stats_constant) {
          v += (bug == Bug::variance_path_wrong ? -1 : 1) * dvar * 2 * (x[i] - mu) / M;
          v += (bug == Bug::mean_path_wrong ? 0.5 : 1) * dmu / M;
        }
        dx[i] = bug == Bug::sign ? -v : v;
      }
  }
  return dx;
}

struct BnProblem {
  TensorD x, dy, gamma, ref;
  DiagSets sets;
  explicit BnProblem(Shape shape = {4, 3, 5}) : x(shape), dy(shape), gamma({shape[1]}) {
    std::mt19937_64 rng(14);
    std::normal_distribution<double> nd;
    for (Index i = 0; i < x.size(); ++i) x[i] = 2 + 1.5 * nd(rng), dy[i] = nd(rng);
    for (Index c = 0; c < gamma.size(); ++c) gamma[c] = 0.5 + 0.4 * static_cast<double>(c);
    const auto f = ops::batchnorm_forward_train<double>(x, &gamma, nullptr, nullptr, {});
    ref = ops::batchnorm_backward<double>(dy, x, &gamma, f.cache).dx;
    const Index C = shape[1], L = shape[2];
    sets = DiagSets{x, dy, {}, C, {}, 1e-5};
    for (Index i = 0; i < x.size(); ++i) sets.set_of.push_back((i / L) % C), sets.gamma.push_back(gamma[(i / L) % C]);
  }
  Diagnosis diagnose(Bug bug) const { return diagnose_norm_dx(sets, ref, broken_bn_dx(x, dy, gamma, 1e-5, bug)); }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(diagnose)

BOOST_AUTO_TEST_CASE(the_broken_backward_without_a_bug_is_right) {
  // The test's own backward, unbroken, agrees with gradproof's: the bugs below are the only difference.
  const BnProblem p;
  const TensorD dx = broken_bn_dx(p.x, p.dy, p.gamma, 1e-5, Bug::none);
  for (Index i = 0; i < dx.size(); ++i) BOOST_TEST(std::abs(dx[i] - p.ref[i]) < 1e-12);
  BOOST_TEST(diagnose_norm_dx(p.sets, p.ref, p.ref).kind == "none");
}

BOOST_AUTO_TEST_CASE(stats_treated_as_constants_is_named) {
  const Diagnosis d = BnProblem().diagnose(Bug::stats_constant);
  BOOST_TEST(d.kind == "stats_constant", d.text);
  BOOST_TEST(d.text.find("μ and σ² treated as constants") != std::string::npos);
  BOOST_TEST(d.in_span > 0.999, "the dropped paths are exactly a + b x̂: " << d.in_span);
}

BOOST_AUTO_TEST_CASE(a_sign_error_is_named) {
  const Diagnosis d = BnProblem().diagnose(Bug::sign);
  BOOST_TEST(d.kind == "sign", d.text);
  BOOST_TEST(d.fit < 1e-9);
}

BOOST_AUTO_TEST_CASE(gamma_missing_is_named) {
  const Diagnosis d = BnProblem().diagnose(Bug::gamma_missing);
  BOOST_TEST(d.kind == "gamma_missing", d.text);
}

BOOST_AUTO_TEST_CASE(biased_and_unbiased_variance_swapped_is_named) {
  const Diagnosis d = BnProblem().diagnose(Bug::unbiased_variance);
  BOOST_TEST(d.kind == "variance_bias", d.text);
  BOOST_TEST(d.text.find("unbiased") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_wrong_mean_path_is_a_constant_offset) {
  const Diagnosis d = BnProblem().diagnose(Bug::mean_path_wrong);
  BOOST_TEST(d.kind == "mean_path", d.text);
  BOOST_TEST(d.text.find("constant offset") != std::string::npos);
  BOOST_TEST(d.in_span > 0.999);
}

BOOST_AUTO_TEST_CASE(a_wrong_variance_path_is_a_multiple_of_xhat) {
  const Diagnosis d = BnProblem().diagnose(Bug::variance_path_wrong);
  BOOST_TEST(d.kind == "variance_path", d.text);
  BOOST_TEST(d.text.find("multiple of x̂") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(an_error_outside_the_patterns_is_said_to_be_so) {
  BnProblem p;
  TensorD dx = p.ref;
  for (Index i = 0; i < dx.size(); i += 7) dx[i] += 0.1 * static_cast<double>(i % 5 + 1);  // scattered errors
  const Diagnosis d = diagnose_norm_dx(p.sets, p.ref, dx);
  BOOST_TEST(d.kind == "other", d.text);
  BOOST_TEST(d.in_span < 0.9);
}

// ---- check end to end, on .npy files --------------------------------------------------------

namespace {

std::filesystem::path scratch(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("gradproof_check_test_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

BOOST_AUTO_TEST_CASE(check_bn_passes_the_right_gradients_and_names_the_wrong_one) {
  const BnProblem p;
  const auto dir = scratch("bn");
  const auto path = [&](const char* n) { return (dir / n).string(); };
  io::write_npy(path("x.npy"), p.x);
  io::write_npy(path("dy.npy"), p.dy);
  io::write_npy(path("g.npy"), p.gamma);
  io::write_npy(path("dx.npy"), p.ref);
  io::write_npy(path("bad.npy"), broken_bn_dx(p.x, p.dy, p.gamma, 1e-5, Bug::stats_constant));
  CheckArgs args{"bn", {{"x", path("x.npy")}, {"dy", path("dy.npy")}, {"gamma", path("g.npy")}, {"dx", path("dx.npy")}}, {}, {}, {}, false};
  const CheckReport good = run_check(args);
  BOOST_TEST(good.passed());
  BOOST_TEST(good.dtype == "float64");
  BOOST_TEST(!good.diagnosis.has_value());
  args.values["dx"] = path("bad.npy");
  const CheckReport bad = run_check(args);
  BOOST_TEST(!bad.passed());
  BOOST_REQUIRE(bad.diagnosis.has_value());
  BOOST_TEST(bad.diagnosis->kind == "stats_constant");
  std::filesystem::remove_all(dir);
}

BOOST_AUTO_TEST_CASE(check_ln_names_a_missing_gamma) {
  // Layer norm over the last axis of (6, 8), γ per element of the normalized axis; the user's dx
  // is layer norm's with γ = 1 (γ forgotten).
  const TensorD x = gradproof::testing::iota({6, 8});
  TensorD dy(x.shape()), gamma({8});
  for (Index i = 0; i < dy.size(); ++i) dy[i] = std::cos(0.7 * static_cast<double>(i));
  for (Index j = 0; j < 8; ++j) gamma[j] = 0.3 + 0.2 * static_cast<double>(j);
  const ops::LayerNormConfig cfg{{8}, 1e-5};
  const TensorD ones({8}, 1.0);
  const auto f = ops::layernorm_forward<double>(x, &ones, nullptr, cfg);
  const TensorD wrong = ops::layernorm_backward<double>(dy, x, &ones, f.cache).dx;
  const auto dir = scratch("ln");
  const auto path = [&](const char* n) { return (dir / n).string(); };
  io::write_npy(path("x.npy"), x, io::NpyDtype::float32);
  io::write_npy(path("dy.npy"), dy, io::NpyDtype::float32);
  io::write_npy(path("g.npy"), gamma, io::NpyDtype::float32);
  io::write_npy(path("dx.npy"), wrong, io::NpyDtype::float32);
  const CheckReport r = run_check({"ln", {{"x", path("x.npy")}, {"dy", path("dy.npy")}, {"gamma", path("g.npy")},
                                          {"dx", path("dx.npy")}, {"normalized-shape", "8"}}, {}, {}, {}, false});
  BOOST_TEST(r.dtype == "float32");
  BOOST_TEST(!r.passed());
  BOOST_REQUIRE(r.diagnosis.has_value());
  BOOST_TEST(r.diagnosis->kind == "gamma_missing", r.diagnosis->text);
  std::filesystem::remove_all(dir);
}

BOOST_AUTO_TEST_SUITE_END()
