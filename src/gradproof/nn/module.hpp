/// \file
/// \brief A small, explicit module layer over the verified ops: each module's `forward` returns
/// its output and its cache, each `backward` takes \f$dy\f$ and that cache, returns \f$dx\f$ and
/// *adds* the gradients of its parameters to their `grad`. No tape and no dynamic graph: a
/// network's backward is written as the calls of its layers' backwards in reverse order
/// (derivations/backprop.md).
///
/// Shape legend: `N` batch, `I` input features, `H` hidden features, `O` outputs; a module's `x`
/// and `y` are `(N, features)` here (batch norm also takes `(N, C, L)` and `(N, C, H, W)`, so a
/// convolutional network can be assembled from the same pieces).
///
/// The modules hold no math of their own: each calls one op's public forward and its staged or
/// fused backward (ops/linear.hpp, ops/batchnorm.hpp, ops/layernorm.hpp, ops/activations.hpp,
/// ops/cross_entropy.hpp). The one operation a module adds is the fan-out sum of Residual: a
/// value used twice receives the sum of the gradients of its uses.
#pragma once

#include "gradproof/ops/activations.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/cross_entropy.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/linear.hpp"
#include "gradproof/tensor.hpp"

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace gradproof::nn {

/// Which backward of the ops the modules call.
enum class Pass {
  staged,  ///< each op's staged backward (one step per chain-rule term; takes term scales)
  fused,   ///< each op's fused backward (the fast one)
};

/// \brief How a backward pass runs: the ops' pass and, for the staged pass, the term scales that
/// the negative controls set (1 is the derivation; 0 drops a term, −1 flips it).
struct Backward {
  Pass pass = Pass::fused;             ///< staged or fused backward of every op
  ops::BatchNormTermScales bn{};       ///< terms of every batch norm's staged backward
  ops::NormTermScales norm{};          ///< terms of every layer norm's staged backward
  ops::ReluConfig::Terms relu{};       ///< terms of every relu's staged backward
  ops::GeluConfig::Terms gelu{};       ///< terms of every gelu's staged backward
  ops::CrossEntropyTermScales ce{};    ///< terms of the cross-entropy loss's staged backward
  double skip = 1;                     ///< Residual: the gradient of the skip branch, \f$dy\f$
  double branch = 1;                   ///< Residual: the gradient through the body
};

/// A trainable tensor and the gradient accumulated into it.
template <class S>
struct Parameter {
  std::string name;  ///< e.g. `fc1.weight` (PyTorch's state-dict names)
  Tensor<S> value;   ///< the parameter
  Tensor<S> grad;    ///< \f$\partial L/\partial\,\text{value}\f$, added to by every backward
};

namespace detail {
template <class S>
Parameter<S> parameter(std::string name, const Shape& shape, S fill = S(0)) {
  return {std::move(name), Tensor<S>(shape, fill), Tensor<S>(shape, S(0))};
}
template <class S>
void accumulate(Tensor<S>& into, const Tensor<S>& g) {
  if (!g.empty()) into.flat() += g.flat();
}
/// The one step every normalization module's backward ends with: add the op's \f$d\gamma\f$,
/// \f$d\beta\f$ to the affine parameters' `grad` and hand back \f$dx\f$.
template <class S, class Grads>
Tensor<S> affine_grads(Grads&& g, Parameter<S>& weight, Parameter<S>& bias) {
  accumulate(weight.grad, g.dgamma);
  accumulate(bias.grad, g.dbeta);
  return std::move(g.dx);
}
}  // namespace detail

/// \brief `nn.Linear(in_features, out_features)`: \f$y = x W^T + b\f$ (ops/linear.hpp).
template <class S>
struct Linear {
  using Scalar = S;  ///< the scalar
  Parameter<S> weight;  ///< `(O, I)`
  Parameter<S> bias;    ///< `(O)`
  /// What the backward needs: the input (dW = dyᵀ x) and the op's cache.
  struct Cache {
    Tensor<S> x;               ///< `(N, I)`: the forward input
    ops::LinearCache<S> op;   ///< the op's cache (shapes)
  };
  /// Output and cache of a forward pass.
  struct Out {
    Tensor<S> y;  ///< `(N, O)`
    Cache cache;  ///< for backward()
  };
  /// \param name  prefix of the parameter names
  /// \param in    \f$I\f$
  /// \param out   \f$O\f$
  Linear(const std::string& name, Index in, Index out)
      : weight(detail::parameter<S>(name + ".weight", {out, in})), bias(detail::parameter<S>(name + ".bias", {out})) {}
  /// \param x  `(N, I)`
  /// \return `y` `(N, O)` and the cache.
  Out forward(const Tensor<S>& x) const {
    auto f = ops::linear_forward<S>(x, weight.value, &bias.value);
    return {std::move(f.y), {x, f.cache}};
  }
  /// \param dy  `(N, O)`
  /// \param c   the cache of the forward pass
  /// \param b   staged or fused
  /// \return `dx` `(N, I)`; adds \f$dW\f$, \f$db\f$ to the parameters' `grad`.
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    auto g = b.pass == Pass::staged ? ops::linear_backward_staged(dy, c.x, weight.value, c.op)
                                    : ops::linear_backward(dy, c.x, weight.value, c.op);
    detail::accumulate(weight.grad, g.dweight);
    detail::accumulate(bias.grad, g.dbias);
    return std::move(g.dx);
  }
  /// Calls `f(Parameter&)` for each parameter, in state-dict order.
  template <class F>
  void for_each_parameter(F&& f) {
    f(weight);
    f(bias);
  }
};

/// \brief `nn.BatchNorm1d(C)` in training mode: normalise with the batch statistics of each
/// feature (ops/batchnorm.hpp). `running`, when set, is updated by forward() (PyTorch's running
/// statistics, for evaluation with forward_eval()).
template <class S>
struct BatchNorm1d {
  using Scalar = S;  ///< the scalar
  Parameter<S> weight;  ///< \f$\gamma\f$ `(C)`, starts at 1
  Parameter<S> bias;    ///< \f$\beta\f$ `(C)`, starts at 0
  ops::BatchNormConfig cfg{};  ///< eps, momentum
  /// Running statistics, or empty (not tracked: the oracles' scalars have none).
  std::vector<ops::BatchNormRunningStats<S>> running;
  /// What the backward needs: the input and the batch statistics.
  struct Cache {
    Tensor<S> x;                 ///< `(N, C)`: the forward input
    ops::BatchNormCache<S> op;  ///< \f$\mu\f$, \f$\sigma^2\f$, \f$1/\sqrt{\sigma^2+\varepsilon}\f$
  };
  /// Output and cache of a forward pass.
  struct Out {
    Tensor<S> y;  ///< `(N, C)`
    Cache cache;  ///< for backward()
  };
  /// \param name  prefix of the parameter names
  /// \param C     features
  BatchNorm1d(const std::string& name, Index C)
      : weight(detail::parameter<S>(name + ".weight", {C}, S(1))), bias(detail::parameter<S>(name + ".bias", {C})) {}
  /// \param x  `(N, C)`
  /// \return `y` and the cache (training mode: the batch's statistics).
  Out forward(const Tensor<S>& x) {
    auto f = ops::batchnorm_forward_train<S>(x, &weight.value, &bias.value, running.empty() ? nullptr : &running[0], cfg);
    return {std::move(f.y), {x, std::move(f.cache)}};
  }
  /// Forward without a cache: training mode (const: the running statistics are not updated).
  /// \param x  `(N, C)`
  Out forward(const Tensor<S>& x) const {
    auto f = ops::batchnorm_forward_train<S>(x, &weight.value, &bias.value, nullptr, cfg);
    return {std::move(f.y), {x, std::move(f.cache)}};
  }
  /// \param dy  `(N, C)`
  /// \param c   the cache of the forward pass
  /// \param b   staged (with `b.bn`'s term scales) or fused
  /// \return `dx`; adds \f$d\gamma\f$, \f$d\beta\f$ to the parameters' `grad`.
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    const Tensor<S>* g = &weight.value;
    return detail::affine_grads(b.pass == Pass::staged
                                    ? ops::batchnorm_backward_staged(dy, c.x, g, c.op, b.bn)
                                    : ops::batchnorm_backward(dy, c.x, g, c.op),
                                weight, bias);
  }
  /// Calls `f(Parameter&)` for each parameter, in state-dict order.
  template <class F>
  void for_each_parameter(F&& f) {
    f(weight);
    f(bias);
  }
};

/// \brief `nn.LayerNorm(C)` over the last axis (ops/layernorm.hpp).
template <class S>
struct LayerNorm {
  using Scalar = S;  ///< the scalar
  Parameter<S> weight;  ///< \f$\gamma\f$ `(C)`, starts at 1
  Parameter<S> bias;    ///< \f$\beta\f$ `(C)`, starts at 0
  ops::LayerNormConfig cfg;  ///< normalized_shape `(C)`, eps
  /// What the backward needs: the input and each row's statistics.
  struct Cache {
    Tensor<S> x;          ///< `(N, C)`: the forward input
    ops::NormCache<S> op;  ///< per row \f$\mu\f$, \f$\sigma^2\f$, \f$1/\sqrt{\sigma^2+\varepsilon}\f$
  };
  /// Output and cache of a forward pass.
  struct Out {
    Tensor<S> y;  ///< `(N, C)`
    Cache cache;  ///< for backward()
  };
  /// \param name  prefix of the parameter names
  /// \param C     features (the normalized_shape)
  LayerNorm(const std::string& name, Index C)
      : weight(detail::parameter<S>(name + ".weight", {C}, S(1))),
        bias(detail::parameter<S>(name + ".bias", {C})),
        cfg{{C}} {}
  /// \param x  `(N, C)`
  Out forward(const Tensor<S>& x) const {
    auto f = ops::layernorm_forward<S>(x, &weight.value, &bias.value, cfg);
    return {std::move(f.y), {x, std::move(f.cache)}};
  }
  /// \param dy  `(N, C)`
  /// \param c   the cache of the forward pass
  /// \param b   staged (with `b.norm`'s term scales) or fused
  /// \return `dx`; adds \f$d\gamma\f$, \f$d\beta\f$ to the parameters' `grad`.
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    const Tensor<S>* g = &weight.value;
    return detail::affine_grads(b.pass == Pass::staged
                                    ? ops::layernorm_backward_staged(dy, c.x, g, c.op, b.norm)
                                    : ops::layernorm_backward(dy, c.x, g, c.op),
                                weight, bias);
  }
  /// Calls `f(Parameter&)` for each parameter, in state-dict order.
  template <class F>
  void for_each_parameter(F&& f) {
    f(weight);
    f(bias);
  }
};

namespace detail {
/// The term scales of `b` that belong to the activation `Config` (relu or gelu).
template <class Config>
typename Config::Terms activation_terms(const Backward& b) {
  if constexpr (std::is_same_v<Config, ops::ReluConfig>) return b.relu;
  else if constexpr (std::is_same_v<Config, ops::GeluConfig>) return b.gelu;
  else return {};
}
}  // namespace detail

/// \brief An element-wise activation as a module (ops/activations.hpp): no parameters; the cache
/// keeps what the op's backwards read, `x` for the staged one and `y` or `x` for the fused one
/// (`Config::saves_output`, as PyTorch).
template <class S, class Config>
struct Activation {
  using Scalar = S;  ///< the scalar
  Config cfg{};      ///< the activation and its parameters (PyTorch's names and defaults)
  /// What the backward needs.
  struct Cache {
    Tensor<S> x;                          ///< the forward input (staged backward)
    Tensor<S> y;                          ///< the output, kept when the fused backward reads it
    ops::ActivationCache<Config> op;      ///< shape and parameters
  };
  /// Output and cache of a forward pass.
  struct Out {
    Tensor<S> y;  ///< shape of `x`
    Cache cache;  ///< for backward()
  };
  /// \param c  the activation's parameters, e.g. `{.approximate = "tanh"}` for GELU
  /// \throws InvalidArgument on a bad parameter (checked here, not at the first forward).
  explicit Activation(Config c = {}) : cfg(std::move(c)) { cfg.validate(); }
  /// \param x  any shape
  Out forward(const Tensor<S>& x) const {
    auto f = ops::activation_forward<S>(x, cfg);
    Tensor<S> kept = Config::saves_output ? f.y : Tensor<S>();
    return {std::move(f.y), {x, std::move(kept), std::move(f.cache)}};
  }
  /// \param dy  shape of `x`
  /// \param c   the cache of the forward pass
  /// \param b   staged (with this activation's term scales in `b`) or fused
  /// \return `dx`, shape of `x`.
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) const {
    if (b.pass == Pass::staged)
      return ops::activation_backward_staged(dy, c.x, c.op, detail::activation_terms<Config>(b)).dx;
    return ops::activation_backward(dy, Config::saves_output ? c.y : c.x, c.op).dx;
  }
  /// No parameters.
  template <class F>
  void for_each_parameter(F&&) {}
};

/// `nn.ReLU()`: \f$\max(x, 0)\f$; at the kink \f$x = 0\f$ the gradient is 0 (PyTorch's).
template <class S>
using ReLU = Activation<S, ops::ReluConfig>;

/// `nn.GELU(approximate='none')`: \f$x\,\Phi(x)\f$, or its tanh form with `{.approximate = "tanh"}`.
template <class S>
using GELU = Activation<S, ops::GeluConfig>;

/// \brief `nn.CrossEntropyLoss(weight=None, ignore_index=-100, reduction='mean',
/// label_smoothing=0.0)` with class-index targets (ops/cross_entropy.hpp): log_softmax over the
/// class axis, then the negative log-likelihood of the targets. It ends a network, so its
/// forward takes the target too and returns the loss; its backward takes the loss's upstream
/// gradient (1 for the loss itself) and returns \f$\partial L/\partial\,\text{logits}\f$.
///
/// Shape legend: `logits` `(N, C)` (or `(N, C, d1, ...)`, `(C)`), `target` `(N)` (or
/// `(N, d1, ...)`, `()`), the loss `()` for mean and sum, the target's shape for none.
template <class S>
struct CrossEntropyLoss {
  using Scalar = S;              ///< the scalar
  ops::CrossEntropyConfig cfg;   ///< ignore_index, reduction, label_smoothing
  Tensor<S> weight;              ///< `(C)` class weights, or empty (none, PyTorch's default)
  /// What the backward needs: the logits, the targets and the per-sample statistics.
  struct Cache {
    Tensor<S> logits;             ///< the forward input
    Tensor<Index> target;         ///< the class indices (a constant of the graph)
    ops::ClassLossCache<S> op;    ///< per sample: max, \f$\sum e^{z}\f$, argmax, \f$Q_r\f$; \f$D\f$
  };
  /// Loss and cache of a forward pass.
  struct Out {
    Tensor<S> loss;  ///< `()` for mean and sum
    Cache cache;     ///< for backward()
  };
  /// \param c  PyTorch's options (defaults: mean, no smoothing, ignore_index −100)
  /// \param w  `(C)` class weights, or empty
  explicit CrossEntropyLoss(ops::CrossEntropyConfig c = {}, Tensor<S> w = {})
      : cfg(c), weight(std::move(w)) {}
  /// \param logits  `(N, C)`
  /// \param target  `(N)` class indices in `[0, C)` or `ignore_index`
  /// \return the loss and the cache.
  /// \throws InvalidArgument on a target of the wrong shape or out of range (the op's checks).
  Out forward(const Tensor<S>& logits, const Tensor<Index>& target) const {
    auto f = ops::cross_entropy_forward<S>(logits, target, weight_ptr(), cfg);
    return {std::move(f.loss), {logits, target, std::move(f.cache)}};
  }
  /// \param dloss  upstream gradient, the shape of the loss (`()` for mean and sum)
  /// \param c      the cache of the forward pass
  /// \param b      staged (the chain log_softmax → NLL, with `b.ce`'s term scales) or fused
  ///               (the collapsed form \f$g\,(Q\,p - q)\f$)
  /// \return `dlogits`, shape of the logits.
  Tensor<S> backward(const Tensor<S>& dloss, const Cache& c, const Backward& b) const {
    if (b.pass == Pass::staged)
      return ops::cross_entropy_backward_staged(dloss, c.logits, c.target, weight_ptr(), cfg, c.op, b.ce)
          .dx;
    return ops::cross_entropy_backward(dloss, c.logits, c.target, weight_ptr(), cfg, c.op).dx;
  }
  /// \param c  the cache of the forward pass
  /// \param b  staged or fused
  /// \return \f$\partial L/\partial\,\text{logits}\f$ of the loss itself (upstream gradient 1).
  Tensor<S> backward(const Cache& c, const Backward& b) const {
    return backward(Tensor<S>(ops::detail::xent::loss_shape(c.target.shape(), cfg.reduction), S(1)), c, b);
  }
  /// No parameters (the class weights are constants).
  template <class F>
  void for_each_parameter(F&&) {}

 private:
  const Tensor<S>* weight_ptr() const { return weight.empty() ? nullptr : &weight; }
};

/// \brief Sequential composition \f$y = f_K(\cdots f_2(f_1(x)))\f$: forward runs the modules
/// first to last and keeps each one's cache; backward runs their backwards last to first, each
/// taking the gradient the one after it returned (reverse mode: one vector–Jacobian product per
/// module).
template <class... Ms>
struct Sequential {
  using Scalar = typename std::tuple_element_t<0, std::tuple<Ms...>>::Scalar;  ///< the scalar
  using S = Scalar;                                                           ///< short for Scalar
  std::tuple<Ms...> layers;                            ///< the modules, first to last
  using Cache = std::tuple<typename Ms::Cache...>;     ///< one cache per module
  /// Output and caches of a forward pass.
  struct Out {
    Tensor<S> y;  ///< the last module's output
    Cache cache;  ///< every module's cache
  };
  /// \param ms  the modules, first to last
  explicit Sequential(Ms... ms) : layers(std::move(ms)...) {}
  /// \param x  the first module's input
  Out forward(const Tensor<S>& x) {
    Out o{{}, {}};
    o.y = forward_from<0>(x, o.cache);
    return o;
  }
  /// \param dy  gradient of the last module's output
  /// \param c   the caches of the forward pass
  /// \param b   how the modules' backwards run
  /// \return the gradient of the first module's input; adds every parameter's gradient.
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    return backward_from<sizeof...(Ms) - 1>(dy, c, b);
  }
  /// Calls `f(Parameter&)` for each parameter of each module, first module first.
  template <class F>
  void for_each_parameter(F&& f) {
    std::apply([&f](auto&... m) { (m.for_each_parameter(f), ...); }, layers);
  }

 private:
  template <std::size_t K>
  Tensor<S> forward_from(const Tensor<S>& x, Cache& c) {
    auto out = std::get<K>(layers).forward(x);
    std::get<K>(c) = std::move(out.cache);
    if constexpr (K + 1 < sizeof...(Ms)) return forward_from<K + 1>(out.y, c);
    else return std::move(out.y);
  }
  template <std::size_t K>
  Tensor<S> backward_from(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    Tensor<S> dx = std::get<K>(layers).backward(dy, std::get<K>(c), b);  // module K's VJP
    if constexpr (K > 0) return backward_from<K - 1>(dx, c, b);          // then the module before it
    else return dx;
  }
};

/// \brief A residual block \f$y = x + f(x)\f$. The input is used twice, by the skip and by the
/// body \f$f\f$, so its gradient is the sum over both uses: \f$dx = dy + J_f^T dy\f$.
template <class Body>
struct Residual {
  using Scalar = typename Body::Scalar;  ///< the scalar
  using S = Scalar;                      ///< short for Scalar
  Body body;                             ///< \f$f\f$: its output has the shape of its input
  using Cache = typename Body::Cache;    ///< the body's cache (the skip needs none)
  /// Output and cache of a forward pass.
  struct Out {
    Tensor<S> y;  ///< \f$x + f(x)\f$
    Cache cache;  ///< for backward()
  };
  /// \param b  the body
  explicit Residual(Body b) : body(std::move(b)) {}
  /// \param x  the input, shape of the body's output
  Out forward(const Tensor<S>& x) {
    auto f = body.forward(x);
    f.y.flat() += x.flat();
    return {std::move(f.y), std::move(f.cache)};
  }
  //! [resmlp.fan_out]
  /// \param dy  `dL/dy`
  /// \param c   the body's cache
  /// \param b   how the body's backward runs; `b.skip`, `b.branch` scale the two uses' gradients
  ///            (1: the derivation; the negative controls drop one)
  /// \return `dx` = (gradient through the skip) + (gradient through the body).
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    Tensor<S> dx = body.backward(dy, c, b);                 // use 1: x → f(x), its VJP J_fᵀ dy
    dx.flat() = S(b.branch) * dx.flat() + S(b.skip) * dy.flat();  // use 2: x → x, identity; the sum
    return dx;
  }
  //! [resmlp.fan_out]
  /// Calls `f(Parameter&)` for each parameter of the body.
  template <class F>
  void for_each_parameter(F&& f) {
    body.for_each_parameter(f);
  }
};

/// \brief The parameters of `net` in order, as one flat vector.
template <class Net>
Tensor<typename Net::Scalar> parameters(Net& net) {
  std::vector<typename Net::Scalar> v;
  net.for_each_parameter([&v](auto& p) { v.insert(v.end(), p.value.data(), p.value.data() + p.value.size()); });
  const Index n = static_cast<Index>(v.size());
  return Tensor<typename Net::Scalar>({n}, std::move(v));
}

/// \brief Sets the parameters of `net` from one flat vector (the order of parameters()).
/// \throws InvalidArgument if `flat` does not have as many values as `net` has parameters.
template <class Net>
void set_parameters(Net& net, const Tensor<typename Net::Scalar>& flat) {
  Index at = 0, total = 0;
  net.for_each_parameter([&total](auto& p) { total += p.value.size(); });
  if (flat.size() != total)
    throw InvalidArgument("nn::set_parameters: the network has " + std::to_string(total) +
                          " parameters; got a vector of shape " + to_string(flat.shape()));
  net.for_each_parameter([&](auto& p) {
    for (Index i = 0; i < p.value.size(); ++i) p.value[i] = flat[at++];
  });
}

/// \brief The accumulated gradients of `net`'s parameters as one flat vector (parameters()' order).
template <class Net>
Tensor<typename Net::Scalar> gradients(Net& net) {
  std::vector<typename Net::Scalar> v;
  net.for_each_parameter([&v](auto& p) { v.insert(v.end(), p.grad.data(), p.grad.data() + p.grad.size()); });
  const Index n = static_cast<Index>(v.size());
  return Tensor<typename Net::Scalar>({n}, std::move(v));
}

/// Sets every accumulated gradient of `net` to zero (before a new backward pass).
template <class Net>
void zero_grad(Net& net) {
  net.for_each_parameter([](auto& p) { p.grad.flat().setZero(); });
}

}  // namespace gradproof::nn
