// Uses the installed gradproof: batch-norm and layer-norm forward and fused backward in float
// (and an RMS-norm pass), linked against the library's explicit instantiations. Exits non-zero
// unless the per-channel (per-row) sum of dx vanishes.
#include <gradproof/ops/batchnorm.hpp>
#include <gradproof/ops/layernorm.hpp>
#include <gradproof/ops/rmsnorm.hpp>

#include <cmath>
#include <cstdio>
#include <limits>

int main() {
  using namespace gradproof;
  TensorF x({4, 2, 3}), dy({4, 2, 3});
  for (Index i = 0; i < x.size(); ++i) {
    x[i] = std::sin(0.3f * static_cast<float>(i)) + 0.1f * static_cast<float>(i);
    dy[i] = std::cos(0.7f * static_cast<float>(i));
  }
  const TensorF gamma({2}, 1.5f), beta({2}, 0.5f);
  const auto fwd = ops::batchnorm_forward_train<float>(x, &gamma, &beta, nullptr);
  const auto g = ops::batchnorm_backward<float>(dy, x, &gamma, fwd.cache);
  for (Index c = 0; c < 2; ++c) {
    double sum = 0;
    for (Index n = 0; n < 4; ++n)
      for (Index l = 0; l < 3; ++l) sum += g.dx[(n * 2 + c) * 3 + l];
    std::printf("channel %ld: sum(dx) = %.3g, dbeta = %.6g\n", static_cast<long>(c), sum, g.dbeta[c]);
    if (std::abs(sum) > 1e-5) return 1;
  }
  // Layer norm over the trailing (2, 3) of each sample: every row's dx sums to 0, up to float32
  // rounding of the terms it is made of (|γ| dy /√(σ²+ε) each).
  const TensorF lg({2, 3}, 1.5f), lb({2, 3}, 0.5f);
  const auto lf = ops::layernorm_forward<float>(x, &lg, &lb, {{2, 3}});
  const auto lgr = ops::layernorm_backward<float>(dy, x, &lg, lf.cache);
  for (Index n = 0; n < 4; ++n) {
    double sum = 0, terms = 0;
    for (Index k = 0; k < 6; ++k) {
      sum += lgr.dx[n * 6 + k];
      terms += 1.5 * lf.cache.invstd[n] * std::abs(dy[n * 6 + k]);
    }
    std::printf("layernorm row %ld: sum(dx) = %.3g (terms %.3g)\n", static_cast<long>(n), sum, terms);
    if (std::abs(sum) > 1e-5 * terms) return 1;
  }
  const auto rf = ops::rmsnorm_forward<float>(x, nullptr, {{3}});  // eps = None: float32's epsilon
  const auto rg = ops::rmsnorm_backward<float>(dy, x, nullptr, rf.cache);
  std::printf("rmsnorm: eps = %.3g, dx[0] = %.6g\n", rf.cache.eps, static_cast<double>(rg.dx[0]));
  return rf.cache.eps == static_cast<double>(std::numeric_limits<float>::epsilon()) ? 0 : 1;
}
