// libFuzzer harness of group norm (fuzz/norm.hpp runs it; fuzz/fuzz.hpp says what is a finding).
#include "norm.hpp"

#include "gradproof/ops/groupnorm.hpp"

using namespace gradproof;
using namespace gradproof::ops;

namespace {

struct GroupNorm {
  static constexpr const char* name = "groupnorm";
  template <class T>
  static GroupNormConfig config(fuzz::Reader& r, const Shape& x, std::uint8_t misuse) {
    GroupNormConfig cfg;
    // Mostly a divisor of C (1, C, or one in between); a group count that does not divide C, or
    // one <= 0, must be refused.
    const Index C = x.size() >= 2 ? x[1] : 1;
    std::vector<Index> divisors;
    for (Index d = 1; d <= C; ++d)
      if (C % d == 0) divisors.push_back(d);
    cfg.num_groups = divisors.empty() ? 1 : divisors[static_cast<std::size_t>(r.byte()) % divisors.size()];
    if (misuse == 4) cfg.num_groups = r.in_range(-2, C + 2);
    cfg.eps = fuzz::eps_of(r);
    return cfg;
  }
  static Shape param_shape(const Shape& x, const GroupNormConfig&) { return {x.size() >= 2 ? x[1] : 1}; }
  template <class T>
  static auto forward(const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const GroupNormConfig& cfg) {
    return groupnorm_forward<T>(x, g, b, cfg);
  }
  template <class T>
  static void forward_into(const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const GroupNormConfig& cfg,
                           Tensor<T>& y, NormCache<T>& cache) {
    groupnorm_forward_into<T>(x, g, b, cfg, y, cache);
  }
  template <class T>
  static auto staged(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c) {
    return groupnorm_backward_staged<T>(dy, x, g, c);
  }
  template <class T>
  static auto fused(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c) {
    return groupnorm_backward<T>(dy, x, g, c);
  }
  template <class T>
  static void fused_into(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g, const NormCache<T>& c,
                         Tensor<T>& dx, Tensor<T>* dgamma, Tensor<T>* dbeta) {
    groupnorm_backward_into<T>(dy, x, g, c, dx, dgamma, dbeta);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return fuzz::norm_fuzz<GroupNorm>(data, size);
}
