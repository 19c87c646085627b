// libFuzzer harness of batch norm: training and eval forward (allocating and *_into), the staged
// and the fused backward, float and double; fused and staged compared in float64 (fuzz.hpp).
#include "fuzz.hpp"

#include "gradproof/ops/batchnorm.hpp"

using namespace gradproof;
using namespace gradproof::ops;

namespace {

struct Dims {
  Index C, L;
};
Index bn_set(const void* ctx, Index i) {
  const auto* d = static_cast<const Dims*>(ctx);
  return (i / d->L) % d->C;
}

template <class T>
void run(fuzz::Reader& r, const Shape& shape) {
  const bool affine = r.byte() % 4 != 0, with_beta = r.flag(), into = r.flag(), eval = r.byte() % 8 == 0;
  const bool with_running = r.flag();
  const std::uint8_t misuse = r.byte();  // < 16: one argument of a wrong shape, which must be refused
  BatchNormConfig cfg;
  cfg.eps = fuzz::eps_of(r);
  static constexpr double kMomenta[] = {0.1, 0.1, 0.0, 1.0, 0.5, -0.5, 2.0};
  if (r.byte() % 5 == 0) cfg.momentum = std::nullopt; else cfg.momentum = r.pick(kMomenta);
  r.seed(r.byte() * 0x100000001b3ull + shape.size());

  const Index C = shape.size() >= 2 ? shape[1] : 0;
  const Shape cshape = misuse == 0 ? fuzz::other_shape({C}, r) : Shape{C};
  // One decision per statement: the order in which the input is read must not depend on the
  // compiler's order of evaluating arguments.
  const fuzz::ValueRange vx = fuzz::ValueRange::of(r);
  const Tensor<T> x = fuzz::tensor<T>(r, shape, vx);
  const Shape dyshape = misuse == 1 ? fuzz::other_shape(shape, r) : shape;
  const fuzz::ValueRange vdy = fuzz::ValueRange::of(r);
  const Tensor<T> dy = fuzz::tensor<T>(r, dyshape, vdy);
  const Tensor<T> gamma = fuzz::tensor<T>(r, cshape, {1.0, 0.5});
  const Tensor<T> beta = fuzz::tensor<T>(r, {C}, {0.0, 1.0});
  auto running = BatchNormRunningStats<T>::fresh(C);
  if (eval) {  // positive running variances
    for (Index c = 0; c < C; ++c) running.var[c] = static_cast<T>(0.25 + std::fabs(r.value(0.0, 1.0)));
  }
  const Tensor<T>* g = affine ? &gamma : nullptr;
  const Tensor<T>* b = affine && with_beta ? &beta : nullptr;

  BatchNormForward<T> f;
  const Shape yshape = misuse == 2 ? fuzz::other_shape(shape, r) : shape;
  if (eval) {
    if (into) {
      f.y = Tensor<T>(yshape);
      batchnorm_forward_eval_into<T>(x, g, b, running, cfg, f.y, f.cache);
    } else {
      f = batchnorm_forward_eval<T>(x, g, b, running, cfg);
    }
  } else if (into) {
    f.y = Tensor<T>(yshape);
    batchnorm_forward_train_into<T>(x, g, b, with_running ? &running : nullptr, cfg, f.y, f.cache);
  } else {
    f = batchnorm_forward_train<T>(x, g, b, with_running ? &running : nullptr, cfg);
  }
  const auto staged = batchnorm_backward_staged<T>(dy, x, g, f.cache);
  BatchNormGrads<T> fused;
  if (into) {
    fused = {Tensor<T>(misuse == 3 ? fuzz::other_shape(shape, r) : shape), Tensor<T>({C}), Tensor<T>({C})};
    // dβ when the forward had β (the allocating passes return it then, also without γ).
    batchnorm_backward_into<T>(dy, x, g, f.cache, fused.dx, g ? &fused.dgamma : nullptr, b ? &fused.dbeta : nullptr);
  } else {
    fused = batchnorm_backward<T>(dy, x, g, f.cache);
  }
  if constexpr (std::is_same_v<T, double>) {
    const Dims d{C, x.size() / (shape[0] * C)};
    const fuzz::SetsView s{x.size(), C, C, x.size() / C, true, bn_set, bn_set, &d};
    if (!eval) fuzz::check_stats("batchnorm", s, x.data(), f.cache.mean.data(), f.cache.var.data());
    fuzz::check_y("batchnorm", s, x.data(), g ? g->data() : nullptr, b ? b->data() : nullptr, f.cache.mean.data(),
                  f.cache.invstd.data(), f.y.data());
    fuzz::check_grads("batchnorm", s, x.data(), dy.data(), g ? g->data() : nullptr, f.cache.mean.data(),
                      f.cache.invstd.data(), staged.dx.data(), fused.dx.data(), g ? staged.dgamma.data() : nullptr,
                      g ? fused.dgamma.data() : nullptr, b ? staged.dbeta.data() : nullptr,
                      b ? fused.dbeta.data() : nullptr);
    fuzz::trace("batchnorm", eval ? "eval compared" : "compared", shape);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return fuzz::run_one(data, size, [](fuzz::Reader& r) {
    const bool also_float = r.flag();
    const auto shape = r.shape(static_cast<std::size_t>(r.in_range(1, 5)));  // ranks 1 and 5 must be refused
    if (!shape) return;
    fuzz::Reader again = r;  // the same decisions and values for both types
    run<double>(r, *shape);
    if (also_float) run<float>(again, *shape);
  });
}
