// libFuzzer harness of instance norm (fuzz/norm.hpp runs it; fuzz/fuzz.hpp says what is a finding).
#include "norm.hpp"

#include "gradproof/ops/instancenorm.hpp"

using namespace gradproof;
using namespace gradproof::ops;

namespace {

// The configuration with what instance norm adds: running statistics (updated in training, or
// used in eval), which the other layers of the family do not have.
template <class T>
struct InConfig {
  InstanceNormConfig cfg;
  bool eval = false, with_running = false;
  mutable InstanceNormRunningStats<T> running;
};

struct InstanceNorm {
  static constexpr const char* name = "instancenorm";
  template <class T>
  static InConfig<T> config(fuzz::Reader& r, const Shape& x, std::uint8_t misuse) {
    InConfig<T> c;
    c.cfg.eps = fuzz::eps_of(r);
    static constexpr double kMomenta[] = {0.1, 0.1, 0.0, 1.0, 0.5, -0.5, 2.0};
    c.cfg.momentum = r.pick(kMomenta);
    c.eval = r.byte() % 8 == 0;
    c.with_running = r.flag();
    const Index C = x.size() >= 2 ? x[1] : 1;
    c.running = InstanceNormRunningStats<T>::fresh(misuse == 6 ? C + 1 : C);
    for (Index k = 0; k < c.running.var.size(); ++k) c.running.var[k] = static_cast<T>(0.25 + r.byte() / 64.0);
    return c;
  }
  template <class T>
  static Shape param_shape(const Shape& x, const InConfig<T>&) { return {x.size() >= 2 ? x[1] : 1}; }
  template <class T>
  static auto forward(const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const InConfig<T>& c) {
    if (c.eval) return instancenorm_forward_eval<T>(x, g, b, c.running, c.cfg);
    return instancenorm_forward_train<T>(x, g, b, c.with_running ? &c.running : nullptr, c.cfg);
  }
  template <class T>
  static void forward_into(const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const InConfig<T>& c,
                           Tensor<T>& y, NormCache<T>& cache) {
    if (c.eval) return instancenorm_forward_eval_into<T>(x, g, b, c.running, c.cfg, y, cache);
    instancenorm_forward_train_into<T>(x, g, b, c.with_running ? &c.running : nullptr, c.cfg, y, cache);
  }
  template <class T>
  static auto staged(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c) {
    return instancenorm_backward_staged<T>(dy, x, g, c);
  }
  template <class T>
  static auto fused(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c) {
    return instancenorm_backward<T>(dy, x, g, c);
  }
  template <class T>
  static void fused_into(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c,
                         Tensor<T>& dx, Tensor<T>* dgamma, Tensor<T>* dbeta) {
    instancenorm_backward_into<T>(dy, x, g, c, dx, dgamma, dbeta);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return fuzz::norm_fuzz<InstanceNorm>(data, size);
}
