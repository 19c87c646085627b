// Uses the installed gradproof: a batch-norm forward and fused backward in float, linked against
// the library's explicit instantiations. Exits non-zero unless the per-channel sum of dx vanishes.
#include <gradproof/ops/batchnorm.hpp>

#include <cmath>
#include <cstdio>

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
  return 0;
}
