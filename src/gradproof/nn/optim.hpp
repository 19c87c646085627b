/// \file
/// \brief Optimizers over the parameters of an nn/module.hpp network: stochastic gradient descent
/// (with PyTorch's momentum, dampening, Nesterov and weight decay) and Adam (PyTorch's defaults
/// and update, bias correction included). Derived on derivations/training.md.
///
/// Each optimizer keeps one state per parameter, in the order of `for_each_parameter` (the
/// state-dict order), made on the first step. A step reads each parameter's `grad` and updates its
/// `value` element by element, in a fixed order on one thread: the same gradients give the same
/// bits on every run and at every thread count.
///
/// Shape legend: every state tensor has the shape of its parameter.
#pragma once

#include "gradproof/nn/module.hpp"
#include "gradproof/tensor.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace gradproof::nn {

/// `torch.optim.SGD`'s options (lr has no default there; 0.01 here is only a starting value).
struct SgdConfig {
  double lr = 0.01;            ///< learning rate \f$\eta > 0\f$
  double momentum = 0;         ///< \f$\mu \ge 0\f$; 0 is plain SGD
  double dampening = 0;        ///< \f$\tau\f$: the momentum buffer adds \f$(1-\tau)\,g\f$
  double weight_decay = 0;     ///< \f$\lambda \ge 0\f$: \f$g \leftarrow g + \lambda\theta\f$
  bool nesterov = false;       ///< Nesterov momentum (needs momentum > 0 and dampening 0)
};

/// `torch.optim.Adam`'s options and defaults (amsgrad is not offered).
struct AdamConfig {
  double lr = 1e-3;            ///< learning rate \f$\eta > 0\f$
  double beta1 = 0.9;          ///< \f$\beta_1 \in [0, 1)\f$: decay of the first moment
  double beta2 = 0.999;        ///< \f$\beta_2 \in [0, 1)\f$: decay of the second moment
  double eps = 1e-8;           ///< \f$\epsilon \ge 0\f$, added to \f$\sqrt{\hat v}\f$
  double weight_decay = 0;     ///< \f$\lambda \ge 0\f$: \f$g \leftarrow g + \lambda\theta\f$ (L2, not AdamW)
};

namespace detail {
inline void require_option(bool ok, const char* opt, const std::string& expected, double got) {
  if (!ok)
    throw InvalidArgument(std::string(opt) + ": expected " + expected + "; got " + std::to_string(got));
}
/// Visits the parameters with their index in state-dict order.
template <class Net, class F>
void each_parameter(Net& net, F&& f) {
  std::size_t k = 0;
  net.for_each_parameter([&](auto& p) { f(p, k++); });
}
}  // namespace detail

/// \brief `torch.optim.SGD`: \f$\theta \leftarrow \theta - \eta\,d\f$ with
/// \f$d = g\f$ (plain), \f$d = b\f$ (momentum: \f$b \leftarrow \mu b + (1-\tau)g\f$, and
/// \f$b = g\f$ on the first step), or \f$d = g + \mu b\f$ (Nesterov).
/// \tparam S  `float` or `double`
template <class S>
class Sgd {
 public:
  /// \throws InvalidArgument naming the option for lr ≤ 0, momentum, dampening or weight decay
  ///         < 0, or Nesterov without momentum or with dampening.
  explicit Sgd(const SgdConfig& cfg) : cfg_(cfg) {
    detail::require_option(cfg.lr > 0, "Sgd: lr", "> 0", cfg.lr);
    detail::require_option(cfg.momentum >= 0, "Sgd: momentum", ">= 0", cfg.momentum);
    detail::require_option(cfg.dampening >= 0, "Sgd: dampening", ">= 0", cfg.dampening);
    detail::require_option(cfg.weight_decay >= 0, "Sgd: weight_decay", ">= 0", cfg.weight_decay);
    if (cfg.nesterov && (cfg.momentum <= 0 || cfg.dampening != 0))
      throw InvalidArgument("Sgd: nesterov needs momentum > 0 and dampening 0; got momentum " +
                            std::to_string(cfg.momentum) + ", dampening " + std::to_string(cfg.dampening));
  }
  /// The options.
  const SgdConfig& config() const noexcept { return cfg_; }

  /// One step over every parameter of `net`, from the gradients accumulated in their `grad`.
  /// \throws InvalidArgument if `net` has other parameters (count or shapes) than on the first step.
  template <class Net>
  void step(Net& net) {
    // [sgd-step]
    const S lr = S(cfg_.lr), mu = S(cfg_.momentum), damp = S(1 - cfg_.dampening);
    const S wd = S(cfg_.weight_decay);
    detail::each_parameter(net, [&](auto& p, std::size_t k) {
      S* theta = p.value.data();
      const S* grad = p.grad.data();
      S* buf = momentum_buffer(p, k);
      for (Index i = 0; i < p.value.size(); ++i) {
        S d = grad[i];
        if (cfg_.weight_decay != 0) d += wd * theta[i];    // g + λθ
        if (buf != nullptr) {
          buf[i] = steps_ == 0 ? d : mu * buf[i] + damp * d;  // b = μ b + (1 − τ) g; b₁ = g
          d = cfg_.nesterov ? d + mu * buf[i] : buf[i];       // Nesterov: g + μ b
        }
        theta[i] -= lr * d;                                  // θ ← θ − η d
      }
    });
    ++steps_;
    // [sgd-step]
  }
  /// Steps taken.
  std::int64_t steps() const noexcept { return steps_; }

 private:
  template <class P>
  S* momentum_buffer(P& p, std::size_t k) {
    if (cfg_.momentum == 0) return nullptr;
    if (steps_ == 0) {
      if (k != buffers_.size())
        throw InvalidArgument("Sgd: internal: parameter " + std::to_string(k) + " out of order");
      buffers_.emplace_back(p.value.shape(), S(0));
    }
    if (k >= buffers_.size() || buffers_[k].shape() != p.value.shape())
      throw InvalidArgument("Sgd::step: parameter " + std::to_string(k) + " (" + p.name + ") has shape " +
                            to_string(p.value.shape()) + "; the optimizer's state was made for " +
                            (k < buffers_.size() ? to_string(buffers_[k].shape()) : std::string("no such parameter")));
    return buffers_[k].data();
  }
  SgdConfig cfg_;
  std::vector<Tensor<S>> buffers_;
  std::int64_t steps_ = 0;
};

/// \brief `torch.optim.Adam` (Kingma and Ba, 2015, Algorithm 1, as PyTorch computes it): at
/// step \f$t\f$, \f$m \leftarrow \beta_1 m + (1-\beta_1) g\f$,
/// \f$v \leftarrow \beta_2 v + (1-\beta_2) g^2\f$,
/// \f$\theta \leftarrow \theta - \frac{\eta}{1-\beta_1^t}\,\frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}\f$.
/// \tparam S  `float` or `double`: the moments are kept in `S`, the bias corrections in double
///            (as PyTorch's C++ Adam).
template <class S>
class Adam {
 public:
  /// \throws InvalidArgument naming the option for lr ≤ 0, a β outside [0, 1), eps or weight
  ///         decay < 0.
  explicit Adam(const AdamConfig& cfg) : cfg_(cfg) {
    detail::require_option(cfg.lr > 0, "Adam: lr", "> 0", cfg.lr);
    detail::require_option(cfg.beta1 >= 0 && cfg.beta1 < 1, "Adam: beta1", "in [0, 1)", cfg.beta1);
    detail::require_option(cfg.beta2 >= 0 && cfg.beta2 < 1, "Adam: beta2", "in [0, 1)", cfg.beta2);
    detail::require_option(cfg.eps >= 0, "Adam: eps", ">= 0", cfg.eps);
    detail::require_option(cfg.weight_decay >= 0, "Adam: weight_decay", ">= 0", cfg.weight_decay);
  }
  /// The options.
  const AdamConfig& config() const noexcept { return cfg_; }

  /// One step over every parameter of `net`, from the gradients accumulated in their `grad`.
  /// \throws InvalidArgument if `net` has other parameters (count or shapes) than on the first step.
  template <class Net>
  void step(Net& net) {
    ++t_;
    // [adam-step]
    const double bc1 = 1 - std::pow(cfg_.beta1, double(t_));  // 1 − β₁ᵗ
    const double bc2 = 1 - std::pow(cfg_.beta2, double(t_));  // 1 − β₂ᵗ
    const S b1 = S(cfg_.beta1), a1 = S(1 - cfg_.beta1);
    const S b2 = S(cfg_.beta2), a2 = S(1 - cfg_.beta2);
    const S step_size = S(cfg_.lr / bc1), sqrt_bc2 = S(std::sqrt(bc2));
    const S eps = S(cfg_.eps), wd = S(cfg_.weight_decay);
    detail::each_parameter(net, [&](auto& p, std::size_t k) {
      auto& [m, v] = moments(p, k);
      S* theta = p.value.data();
      const S* grad = p.grad.data();
      for (Index i = 0; i < p.value.size(); ++i) {
        S g = grad[i];
        if (cfg_.weight_decay != 0) g += wd * theta[i];  // g + λθ (L2 penalty)
        m[i] = b1 * m[i] + a1 * g;                       // m = β₁ m + (1 − β₁) g
        v[i] = b2 * v[i] + a2 * g * g;                   // v = β₂ v + (1 − β₂) g²
        const S denom = std::sqrt(v[i]) / sqrt_bc2 + eps;  // √v̂ + ε, v̂ = v / (1 − β₂ᵗ)
        theta[i] -= step_size * m[i] / denom;  // θ ← θ − η m̂ / (√v̂ + ε), m̂ = m / (1 − β₁ᵗ)
      }
    });
    // [adam-step]
  }
  /// Steps taken (\f$t\f$).
  std::int64_t steps() const noexcept { return t_; }

 private:
  struct Moments {
    Tensor<S> m, v;
  };
  template <class P>
  Moments& moments(P& p, std::size_t k) {
    if (t_ == 1 && k == state_.size()) state_.push_back({Tensor<S>(p.value.shape(), S(0)), Tensor<S>(p.value.shape(), S(0))});
    if (k >= state_.size() || state_[k].m.shape() != p.value.shape())
      throw InvalidArgument("Adam::step: parameter " + std::to_string(k) + " (" + p.name + ") has shape " +
                            to_string(p.value.shape()) + "; the optimizer's state was made for " +
                            (k < state_.size() ? to_string(state_[k].m.shape()) : std::string("no such parameter")));
    return state_[k];
  }
  AdamConfig cfg_;
  std::vector<Moments> state_;
  std::int64_t t_ = 0;
};

}  // namespace gradproof::nn
