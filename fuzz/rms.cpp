// libFuzzer harness of RMS norm: forward (allocating and *_into), the staged and the fused
// backward, float and double; fused and staged compared in float64 (fuzz.hpp). RMS norm has no
// mean: its statistic is the mean square, and x̂ = x·invrms.
#include "norm.hpp"

#include "gradproof/ops/rmsnorm.hpp"

using namespace gradproof;
using namespace gradproof::ops;

namespace {

template <class T>
void run(fuzz::Reader& r, const Shape& shape) {
  const bool affine = r.byte() % 4 != 0, into = r.flag();
  const std::uint8_t misuse = r.byte();  // < 16: one argument of a wrong shape, which must be refused
  RMSNormConfig cfg;
  const auto k = static_cast<std::size_t>(r.in_range(misuse == 4 ? 0 : 1, static_cast<Index>(shape.size())));
  cfg.normalized_shape.assign(shape.end() - static_cast<long>(std::min(k, shape.size())), shape.end());
  if (misuse == 5) cfg.normalized_shape = fuzz::other_shape(cfg.normalized_shape, r);
  if (r.flag()) cfg.eps = fuzz::eps_of(r);  // else PyTorch's eps=None: the type's machine epsilon
  r.seed(r.byte() * 0x100000001b3ull + shape.size());
  // One decision per statement: the order in which the input is read must not depend on the
  // compiler's order of evaluating arguments.
  const fuzz::ValueRange vx = fuzz::ValueRange::of(r);
  const Tensor<T> x = fuzz::tensor<T>(r, shape, vx);
  const Shape dyshape = misuse == 1 ? fuzz::other_shape(shape, r) : shape;
  const fuzz::ValueRange vdy = fuzz::ValueRange::of(r);
  const Tensor<T> dy = fuzz::tensor<T>(r, dyshape, vdy);
  const Shape pshape = misuse == 0 ? fuzz::other_shape(cfg.normalized_shape, r) : cfg.normalized_shape;
  const Tensor<T> gamma = fuzz::tensor<T>(r, pshape, {1.0, 0.5});
  const Tensor<T>* g = affine ? &gamma : nullptr;

  RMSNormForward<T> f;
  if (into) {
    f.y = Tensor<T>(misuse == 2 ? fuzz::other_shape(shape, r) : shape);
    rmsnorm_forward_into<T>(x, g, cfg, f.y, f.cache);
  } else {
    f = rmsnorm_forward<T>(x, g, cfg);
  }
  const auto staged = rmsnorm_backward_staged<T>(dy, x, g, f.cache);
  RMSNormGrads<T> fused;
  if (into) {
    fused = {Tensor<T>(misuse == 3 ? fuzz::other_shape(shape, r) : shape), Tensor<T>(f.cache.param_shape)};
    rmsnorm_backward_into<T>(dy, x, g, f.cache, fused.dx, g ? &fused.dgamma : nullptr);
  } else {
    fused = rmsnorm_backward<T>(dy, x, g, f.cache);
  }
  if constexpr (std::is_same_v<T, double>) {
    const NormSets& sets = f.cache.sets;
    const fuzz::SetsView s = fuzz::sets_view(sets, false);
    fuzz::check_stats("rmsnorm", s, x.data(), nullptr, f.cache.ms.data());
    fuzz::check_y("rmsnorm", s, x.data(), g ? g->data() : nullptr, nullptr, nullptr, f.cache.invrms.data(), f.y.data());
    fuzz::check_grads("rmsnorm", s, x.data(), dy.data(), g ? g->data() : nullptr, nullptr, f.cache.invrms.data(),
                      staged.dx.data(), fused.dx.data(), g ? staged.dgamma.data() : nullptr,
                      g ? fused.dgamma.data() : nullptr, nullptr, nullptr);
    fuzz::trace("rmsnorm", "compared", shape);
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
