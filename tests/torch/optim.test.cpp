// nn::Adam and nn::Sgd against libtorch's C++ optimizers (torch::optim::Adam, torch::optim::SGD)
// in float32: the same parameters and the same gradient sequence, 50 steps, every parameter
// compared after every step.
#include "gradproof/nn/optim.hpp"

#define BOOST_TEST_MODULE gradproof_torch_optim
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <cmath>
#include <random>
#include <vector>

using namespace gradproof;

namespace {

constexpr int kSteps = 50;
constexpr Index kSize = 257;

struct One {
  using Scalar = float;
  nn::Parameter<float> p{"p", Tensor<float>({kSize}, 0.0f), Tensor<float>({kSize}, 0.0f)};
  template <class F>
  void for_each_parameter(F&& f) {
    f(p);
  }
};

// Gradients of a wide range of sizes (1e-6 to 10), both signs, drawn once per step.
std::vector<std::vector<float>> gradient_sequence() {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> n(0, 1);
  std::vector<std::vector<float>> g(kSteps, std::vector<float>(kSize));
  for (auto& step : g)
    for (auto& v : step) v = float(n(rng) * std::pow(10.0, -6 + 7 * double(rng() % 1000) / 1000));
  return g;
}

// The largest |ours − torch| after step t, over every parameter and step, as a fraction of its
// bound 4 u t · (max |θ| so far + η), u = 2^-24. Why that bound: the gradients are given (they do
// not depend on θ), so the two runs part only by rounding, and each step rounds θ's update in
// each implementation a few times at the scale of the largest |θ| or step (libtorch's vectorised
// kernels contract a multiply and an add into one FMA where ours rounds twice, and vice versa);
// the differences add up at most linearly in the number of steps. A ratio ≤ 1 passes.
template <class Ours, class Theirs>
double compare(Ours ours, Theirs make_theirs, double lr) {
  const auto grads = gradient_sequence();
  One net;
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(-1, 1);
  for (Index i = 0; i < kSize; ++i) net.p.value[i] = float(u(rng));
  torch::Tensor w = torch::from_blob(net.p.value.data(), {kSize}, torch::kFloat32).clone().set_requires_grad(true);
  auto theirs = make_theirs(std::vector<torch::Tensor>{w});
  double worst = 0, scale = 0;
  for (int t = 0; t < kSteps; ++t) {
    std::copy(grads[std::size_t(t)].begin(), grads[std::size_t(t)].end(), net.p.grad.data());
    ours.step(net);
    w.mutable_grad() = torch::from_blob(net.p.grad.data(), {kSize}, torch::kFloat32).clone();
    theirs.step();
    const float* tw = w.data_ptr<float>();
    double diff = 0;
    for (Index i = 0; i < kSize; ++i) {
      scale = std::max(scale, std::abs(double(tw[i])));
      diff = std::max(diff, std::abs(double(net.p.value[i]) - double(tw[i])));
    }
    worst = std::max(worst, diff / (4 * 0x1.0p-24 * (t + 1) * (scale + lr)));
  }
  return worst;
}

}  // namespace

// Each case passes when compare() ≤ 1 (its bound is explained there); the measured fraction is printed.
BOOST_AUTO_TEST_CASE(adam_matches_torch_optim_adam_over_50_steps) {
  for (const nn::AdamConfig c : {nn::AdamConfig{}, nn::AdamConfig{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6,
                                                                   .weight_decay = 0.01}}) {
    const double d = compare(nn::Adam<float>(c), [&](std::vector<torch::Tensor> p) {
      return torch::optim::Adam(p, torch::optim::AdamOptions(c.lr).betas({c.beta1, c.beta2}).eps(c.eps)
                                       .weight_decay(c.weight_decay));
    }, c.lr);
    BOOST_TEST_MESSAGE("Adam lr " << c.lr << ": largest difference, as a fraction of its bound: " << d);
    BOOST_TEST(d <= 1.0);
  }
}

BOOST_AUTO_TEST_CASE(sgd_matches_torch_optim_sgd_over_50_steps) {
  for (const nn::SgdConfig c : {nn::SgdConfig{.lr = 0.1}, nn::SgdConfig{.lr = 0.1, .momentum = 0.9},
                                nn::SgdConfig{.lr = 0.05, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01},
                                nn::SgdConfig{.lr = 0.05, .momentum = 0.8, .nesterov = true}}) {
    const double d = compare(nn::Sgd<float>(c), [&](std::vector<torch::Tensor> p) {
      return torch::optim::SGD(p, torch::optim::SGDOptions(c.lr).momentum(c.momentum).dampening(c.dampening)
                                      .weight_decay(c.weight_decay).nesterov(c.nesterov));
    }, c.lr);
    BOOST_TEST_MESSAGE("SGD lr " << c.lr << " momentum " << c.momentum << ": largest difference, as a fraction of its bound: " << d);
    BOOST_TEST(d <= 1.0);
  }
}
