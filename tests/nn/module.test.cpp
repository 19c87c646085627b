// The modules of nn/module.hpp that hold no parameters (ReLU, GELU, CrossEntropyLoss): each is a
// thin call of its op, so these tests check the wiring (the right op, the right pass, the right
// saved tensor, PyTorch's defaults) and the refusals. The gradients themselves are checked by the
// ops' catalog entries and, inside whole networks, by the network entries (mlp_bn, mlp_ln, resmlp).
#include "gradproof/nn/module.hpp"
#include "support/inputs.hpp"

#include <boost/test/unit_test.hpp>

#include <cmath>

using namespace gradproof;
using gradproof::testing::MessageHas;

namespace {

double max_diff(const TensorD& a, const TensorD& b) { return (a.flat() - b.flat()).abs().maxCoeff(); }

TensorD sample(const Shape& s, double offset) {
  TensorD t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = std::sin(1.7 * static_cast<double>(i) + offset) * 2;
  return t;
}

const nn::Backward kStaged{nn::Pass::staged}, kFused{nn::Pass::fused};

}  // namespace

BOOST_AUTO_TEST_SUITE(nn_modules)

BOOST_AUTO_TEST_CASE(relu_module_calls_the_op_in_both_passes) {
  const TensorD x = sample({4, 5}, 0.3), dy = sample({4, 5}, 1.1);
  const nn::ReLU<double> relu;
  const auto out = relu.forward(x);
  const auto ref = ops::activation_forward(x, ops::ReluConfig{});
  BOOST_TEST(max_diff(out.y, ref.y) == 0.0);
  BOOST_TEST(out.cache.y.size() == x.size());  // relu's fused backward reads y: kept
  const TensorD staged = relu.backward(dy, out.cache, kStaged);
  const TensorD fused = relu.backward(dy, out.cache, kFused);
  for (Index i = 0; i < x.size(); ++i) BOOST_TEST(staged[i] == (x[i] > 0 ? dy[i] : 0.0));
  BOOST_TEST(max_diff(staged, fused) == 0.0);
  // The term scale of Backward reaches the op: relu.dstep dropped gives 0.
  nn::Backward dropped = kStaged;
  dropped.relu.dstep = 0;
  BOOST_TEST(relu.backward(dy, out.cache, dropped).flat().abs().maxCoeff() == 0.0);
}

BOOST_AUTO_TEST_CASE(gelu_module_has_both_forms_and_pytorchs_default) {
  const TensorD x = sample({3, 4}, 0.7), dy = sample({3, 4}, 2.0);
  const nn::GELU<double> exact;
  BOOST_TEST(exact.cfg.approximate == "none");
  const nn::GELU<double> tanh_form({.approximate = "tanh"});
  for (const auto* m : {&exact, &tanh_form}) {
    const auto out = m->forward(x);
    BOOST_TEST(max_diff(out.y, ops::activation_forward(x, m->cfg).y) == 0.0);
    BOOST_TEST(out.cache.y.empty());  // gelu's fused backward reads x: y not kept
    const TensorD staged = m->backward(dy, out.cache, kStaged), fused = m->backward(dy, out.cache, kFused);
    BOOST_TEST(max_diff(staged, ops::activation_backward_staged(dy, x, out.cache.op).dx) == 0.0);
    BOOST_TEST(max_diff(fused, ops::activation_backward(dy, x, out.cache.op).dx) == 0.0);
    BOOST_TEST(max_diff(staged, fused) <= 1e-14);
  }
  // 0.5 x (1 + erf(x/√2)) against tanh's form differ (by up to ~5e-4 on this range).
  BOOST_TEST(max_diff(exact.forward(x).y, tanh_form.forward(x).y) > 1e-6);
}

BOOST_AUTO_TEST_CASE(gelu_module_refuses_an_unknown_approximate) {
  BOOST_CHECK_EXCEPTION(nn::GELU<double>({.approximate = "erf"}), InvalidArgument,
                        (MessageHas{{"gelu", "approximate", "'none' or 'tanh'", "'erf'"}}));
}

BOOST_AUTO_TEST_CASE(cross_entropy_module_is_pytorchs_mean_over_the_batch) {
  const Index N = 5, C = 4;
  const TensorD z = sample({N, C}, 0.1);
  const Tensor<Index> t({N}, std::vector<Index>{0, 3, 1, 1, 2});
  const nn::CrossEntropyLoss<double> ce;
  const auto out = ce.forward(z, t);
  BOOST_TEST(out.loss.rank() == 0);
  // L = (1/N) Σ_n (log Σ_c e^{z_nc} − z_{n,t_n}); dL/dz = (softmax(z) − onehot(t)) / N.
  double L = 0;
  TensorD expect({N, C});
  for (Index n = 0; n < N; ++n) {
    double s = 0;
    for (Index c = 0; c < C; ++c) s += std::exp(z[n * C + c]);
    L += (std::log(s) - z[n * C + t[n]]) / static_cast<double>(N);
    for (Index c = 0; c < C; ++c)
      expect[n * C + c] = (std::exp(z[n * C + c]) / s - (c == t[n] ? 1.0 : 0.0)) / static_cast<double>(N);
  }
  BOOST_TEST(std::abs(out.loss[0] - L) <= 1e-15 * std::abs(L) + 1e-16);
  const TensorD staged = ce.backward(out.cache, kStaged), fused = ce.backward(out.cache, kFused);
  BOOST_TEST(max_diff(staged, expect) <= 1e-16);
  BOOST_TEST(max_diff(fused, expect) <= 1e-16);
  // An upstream gradient scales dlogits; the staged pass takes the term scales of Backward.
  BOOST_TEST(max_diff(ce.backward(TensorD({}, 3.0), out.cache, kFused), ce.backward(out.cache, kFused)) > 0.0);
  nn::Backward no_lse = kStaged;
  no_lse.ce.dlse = 0;  // the log-sum-exp edge dropped: the softmax term of the collapse is gone
  const TensorD only_pick = ce.backward(out.cache, no_lse);
  BOOST_TEST(max_diff(only_pick, expect) > 0.1 / static_cast<double>(N));  // the softmax term p/N is missing
}

BOOST_AUTO_TEST_CASE(cross_entropy_module_takes_pytorchs_options) {
  const TensorD z = sample({3, 4}, 0.4);
  const Tensor<Index> t({3}, std::vector<Index>{2, -100, 0});
  const nn::CrossEntropyLoss<double> sum_ce({.reduction = ops::Reduction::sum});
  const nn::CrossEntropyLoss<double> none_ce({.reduction = ops::Reduction::none});
  const auto s = sum_ce.forward(z, t), n = none_ce.forward(z, t);
  BOOST_TEST(n.loss.size() == 3);
  BOOST_TEST(n.loss[1] == 0.0);  // ignore_index −100 (the default) contributes nothing
  BOOST_TEST(std::abs(s.loss[0] - (n.loss[0] + n.loss[2])) <= 1e-15);
  BOOST_TEST(none_ce.backward(n.cache, kFused).size() == z.size());
}

BOOST_AUTO_TEST_CASE(cross_entropy_module_refuses_a_class_out_of_range) {
  const nn::CrossEntropyLoss<double> ce;
  BOOST_CHECK_EXCEPTION(ce.forward(sample({2, 3}, 0), Tensor<Index>({2}, std::vector<Index>{0, 3})),
                        InvalidArgument, (MessageHas{{"cross_entropy", "target value 3", "out of range [0, 3"}}));
  BOOST_CHECK_EXCEPTION(ce.forward(sample({2, 3}, 0), Tensor<Index>({3}, std::vector<Index>{0, 1, 2})),
                        InvalidArgument, (MessageHas{{"cross_entropy", "target", "(3,)"}}));
}

BOOST_AUTO_TEST_SUITE_END()
