// libFuzzer harness of layer norm (fuzz/norm.hpp runs it; fuzz/fuzz.hpp says what is a finding).
#include "norm.hpp"

#include "gradproof/ops/layernorm.hpp"

using namespace gradproof;
using namespace gradproof::ops;

namespace {

struct LayerNorm {
  static constexpr const char* name = "layernorm";
  template <class T>
  static LayerNormConfig config(fuzz::Reader& r, const Shape& x, std::uint8_t misuse) {
    LayerNormConfig cfg;
    // The trailing k axes (k = 0, or a normalized_shape the input does not end in, must be refused).
    const auto k = static_cast<std::size_t>(r.in_range(misuse == 4 ? 0 : 1, static_cast<Index>(x.size())));
    cfg.normalized_shape.assign(x.end() - static_cast<long>(std::min(k, x.size())), x.end());
    if (misuse == 5) cfg.normalized_shape = fuzz::other_shape(cfg.normalized_shape, r);
    cfg.eps = fuzz::eps_of(r);
    return cfg;
  }
  static Shape param_shape(const Shape&, const LayerNormConfig& cfg) { return cfg.normalized_shape; }
  template <class T>
  static auto forward(const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const LayerNormConfig& cfg) {
    return layernorm_forward<T>(x, g, b, cfg);
  }
  template <class T>
  static void forward_into(const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const LayerNormConfig& cfg,
                           Tensor<T>& y, NormCache<T>& cache) {
    layernorm_forward_into<T>(x, g, b, cfg, y, cache);
  }
  template <class T>
  static auto staged(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c) {
    return layernorm_backward_staged<T>(dy, x, g, c);
  }
  template <class T>
  static auto fused(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c) {
    return layernorm_backward<T>(dy, x, g, c);
  }
  template <class T>
  static void fused_into(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c,
                         Tensor<T>& dx, Tensor<T>* dgamma, Tensor<T>* dbeta) {
    layernorm_backward_into<T>(dy, x, g, c, dx, dgamma, dbeta);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return fuzz::norm_fuzz<LayerNorm>(data, size);
}
