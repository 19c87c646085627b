// nn::Sgd and nn::Adam (nn/optim.hpp) against their updates computed by hand, in double from the
// formulas of derivations/training.md: the first steps of each, with momentum, Nesterov and
// weight decay, and the refusal of bad options. (tests/torch/optim.test.cpp compares Adam and
// SGD with libtorch's torch::optim over many steps.)
#include "gradproof/nn/optim.hpp"

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace gradproof;
using namespace gradproof::nn;

namespace {

// The smallest "network" an optimizer steps: two parameters with gradients set by the test.
template <class S>
struct TwoParams {
  using Scalar = S;
  Parameter<S> a{"a", Tensor<S>({3}, std::vector<S>{S(0.5), S(-1.25), S(2)}), Tensor<S>({3}, S(0))};
  Parameter<S> b{"b", Tensor<S>({1, 2}, std::vector<S>{S(-0.75), S(0.1)}), Tensor<S>({1, 2}, S(0))};
  template <class F>
  void for_each_parameter(F&& f) {
    f(a);
    f(b);
  }
  void set_grads(const std::vector<double>& g) {
    for (Index i = 0; i < 3; ++i) a.grad[i] = S(g[std::size_t(i)]);
    for (Index i = 0; i < 2; ++i) b.grad[i] = S(g[std::size_t(3 + i)]);
  }
  std::vector<double> values() const {
    return {double(a.value[0]), double(a.value[1]), double(a.value[2]), double(b.value[0]), double(b.value[1])};
  }
};

const std::vector<std::vector<double>> kGrads = {
    {0.3, -0.02, 1.5, -4.0, 1e-3}, {-0.1, 0.05, 1.0, -2.0, 2e-3}, {0.2, 0.0, -0.5, 3.0, -1e-3}};

// Adam in double, straight from the formulas (Kingma and Ba, Algorithm 1, PyTorch's ε placement).
std::vector<double> adam_by_hand(std::vector<double> theta, int steps, const AdamConfig& c) {
  std::vector<double> m(theta.size(), 0), v(theta.size(), 0);
  for (int t = 1; t <= steps; ++t)
    for (std::size_t i = 0; i < theta.size(); ++i) {
      const double g = kGrads[std::size_t(t - 1)][i] + c.weight_decay * theta[i];
      m[i] = c.beta1 * m[i] + (1 - c.beta1) * g;
      v[i] = c.beta2 * v[i] + (1 - c.beta2) * g * g;
      const double mhat = m[i] / (1 - std::pow(c.beta1, t)), vhat = v[i] / (1 - std::pow(c.beta2, t));
      theta[i] -= c.lr * mhat / (std::sqrt(vhat) + c.eps);
    }
  return theta;
}

// SGD in double (PyTorch's momentum buffer: b₁ = g₁, then b = μ b + (1 − τ) g).
std::vector<double> sgd_by_hand(std::vector<double> theta, int steps, const SgdConfig& c) {
  std::vector<double> b(theta.size(), 0);
  for (int t = 1; t <= steps; ++t)
    for (std::size_t i = 0; i < theta.size(); ++i) {
      double d = kGrads[std::size_t(t - 1)][i] + c.weight_decay * theta[i];
      if (c.momentum != 0) {
        b[i] = t == 1 ? d : c.momentum * b[i] + (1 - c.dampening) * d;
        d = c.nesterov ? d + c.momentum * b[i] : b[i];
      }
      theta[i] -= c.lr * d;
    }
  return theta;
}

template <class S, class Opt>
std::vector<double> run(Opt opt, int steps) {
  TwoParams<S> net;
  for (int t = 0; t < steps; ++t) {
    net.set_grads(kGrads[std::size_t(t)]);
    opt.step(net);
  }
  return net.values();
}

// Tolerance: float32 runs each update in about ten roundings of size u = 2^-24 relative to the
// parameter or the step, so |float − double| ≤ 64 u (|θ| + η) covers three steps with room;
// double is held to 64 ε of the same.
template <class S>
void check_close(const std::vector<double>& got, const std::vector<double>& want, double lr) {
  const double u = std::is_same_v<S, float> ? 0x1.0p-24 : 0x1.0p-53;
  for (std::size_t i = 0; i < got.size(); ++i)
    BOOST_TEST(std::abs(got[i] - want[i]) <= 64 * u * (std::abs(want[i]) + lr),
               "parameter " << i << ": got " << got[i] << ", by hand " << want[i]);
}

const std::vector<double> kTheta0 = {0.5, -1.25, 2, -0.75, 0.1};

}  // namespace

BOOST_AUTO_TEST_SUITE(optim)

BOOST_AUTO_TEST_CASE(adam_first_step_moves_each_parameter_by_lr_against_the_sign_of_its_gradient) {
  // t = 1: m̂ = g and v̂ = g², so θ₁ = θ₀ − η g / (|g| + ε): a step of η whatever |g| (bias correction).
  const AdamConfig c{};
  const auto got = run<double>(Adam<double>(c), 1);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = kGrads[0][i];
    BOOST_TEST(std::abs(got[i] - (kTheta0[i] - c.lr * g / (std::abs(g) + c.eps))) <= 1e-15);
  }
}

BOOST_AUTO_TEST_CASE(adam_three_steps_match_the_update_by_hand_float_and_double) {
  const AdamConfig c{};
  check_close<double>(run<double>(Adam<double>(c), 3), adam_by_hand(kTheta0, 3, c), c.lr);
  check_close<float>(run<float>(Adam<float>(c), 3), adam_by_hand(kTheta0, 3, c), c.lr);
}

BOOST_AUTO_TEST_CASE(adam_with_weight_decay_and_other_betas_matches_the_update_by_hand) {
  const AdamConfig c{.lr = 0.05, .beta1 = 0.5, .beta2 = 0.9, .eps = 1e-3, .weight_decay = 0.1};
  check_close<double>(run<double>(Adam<double>(c), 3), adam_by_hand(kTheta0, 3, c), c.lr);
  check_close<float>(run<float>(Adam<float>(c), 3), adam_by_hand(kTheta0, 3, c), c.lr);
}

BOOST_AUTO_TEST_CASE(adam_first_step_is_lr_not_the_uncorrected_step_of_about_3_lr) {
  // The negative control of the bias correction: at t = 1 the uncorrected step is
  // η (1 − β₁) g / (√(1 − β₂) |g| + ε) ≈ η · 0.1 / 0.0316 ≈ 3.16 η — not η. The test shows that the
  // implementation's first step is η, so the correction is there.
  const AdamConfig c{};
  const auto got = run<double>(Adam<double>(c), 1);
  const double step = std::abs(got[2] - kTheta0[2]);
  const double g = kGrads[0][2];
  BOOST_TEST(std::abs(step - c.lr * g / (g + c.eps)) <= 1e-15);  // η |g| / (|g| + ε), about η
  BOOST_TEST(std::abs(step - c.lr * 0.1 / std::sqrt(0.001)) > 1e-3);
}

BOOST_AUTO_TEST_CASE(sgd_plain_momentum_nesterov_and_weight_decay_match_the_update_by_hand) {
  for (const SgdConfig& c : {SgdConfig{.lr = 0.1}, SgdConfig{.lr = 0.1, .momentum = 0.9},
                             SgdConfig{.lr = 0.05, .momentum = 0.9, .dampening = 0.1},
                             SgdConfig{.lr = 0.05, .momentum = 0.8, .nesterov = true},
                             SgdConfig{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01}}) {
    check_close<double>(run<double>(Sgd<double>(c), 3), sgd_by_hand(kTheta0, 3, c), c.lr);
    check_close<float>(run<float>(Sgd<float>(c), 3), sgd_by_hand(kTheta0, 3, c), c.lr);
  }
}

BOOST_AUTO_TEST_CASE(sgd_first_momentum_step_is_a_plain_step) {
  // PyTorch starts the buffer at g₁ (not at (1 − τ) g₁): with dampening the first step is η g₁.
  const auto got = run<double>(Sgd<double>(SgdConfig{.lr = 0.1, .momentum = 0.9, .dampening = 0.5}), 1);
  for (std::size_t i = 0; i < got.size(); ++i) BOOST_TEST(std::abs(got[i] - (kTheta0[i] - 0.1 * kGrads[0][i])) <= 1e-15);
}

BOOST_AUTO_TEST_CASE(bad_options_are_refused_with_their_names) {
  auto refused = [](auto make, const std::string& name) {
    try {
      make();
      BOOST_ERROR("accepted a bad " << name);
    } catch (const InvalidArgument& e) {
      BOOST_TEST(std::string(e.what()).find(name) != std::string::npos, e.what());
    }
  };
  refused([] { Adam<float>(AdamConfig{.lr = 0}); }, "Adam: lr: expected > 0; got 0");
  refused([] { Adam<float>(AdamConfig{.beta1 = 1}); }, "Adam: beta1: expected in [0, 1); got 1");
  refused([] { Adam<float>(AdamConfig{.beta2 = -0.5}); }, "Adam: beta2");
  refused([] { Adam<float>(AdamConfig{.eps = -1}); }, "Adam: eps");
  refused([] { Adam<float>(AdamConfig{.weight_decay = -1}); }, "Adam: weight_decay");
  refused([] { Sgd<float>(SgdConfig{.lr = -0.1}); }, "Sgd: lr: expected > 0");
  refused([] { Sgd<float>(SgdConfig{.momentum = -1}); }, "Sgd: momentum");
  refused([] { Sgd<float>(SgdConfig{.dampening = -1}); }, "Sgd: dampening");
  refused([] { Sgd<float>(SgdConfig{.weight_decay = -1}); }, "Sgd: weight_decay");
  refused([] { Sgd<float>(SgdConfig{.nesterov = true}); }, "Sgd: nesterov needs momentum > 0 and dampening 0");
}

BOOST_AUTO_TEST_CASE(a_network_whose_parameters_changed_shape_is_refused) {
  Adam<float> adam(AdamConfig{});
  Sgd<float> sgd(SgdConfig{.momentum = 0.9});
  TwoParams<float> net;
  adam.step(net);
  sgd.step(net);
  net.b.value = Tensor<float>({3}, 0.0f);
  net.b.grad = Tensor<float>({3}, 0.0f);
  for (int k = 0; k < 2; ++k) {
    try {
      k ? sgd.step(net) : adam.step(net);
      BOOST_ERROR("stepped a network whose parameter b changed shape");
    } catch (const InvalidArgument& e) {
      BOOST_TEST(std::string(e.what()).find("parameter 1 (b) has shape (3,)") != std::string::npos, e.what());
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
