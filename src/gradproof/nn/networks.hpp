/// \file
/// \brief The networks of derivations/backprop.md, assembled from the modules of nn/module.hpp.
/// Each is written out: the forward calls its layers first to last and keeps each cache, the
/// backward calls their backwards last to first. Nothing here computes a derivative itself.
///
/// Every network ends in its loss: forward takes the class-index targets and returns the scalar
/// cross-entropy (PyTorch's `nn.CrossEntropyLoss()`, mean over the batch); backward takes the
/// loss's upstream gradient (1 for the loss itself) and returns \f$\partial L/\partial x\f$, adding
/// \f$\partial L/\partial\theta\f$ to every parameter's `grad`.
///
/// Shape legend: `x` `(N, I)`, hidden `(N, H)`, logits `(N, O)` (`O` classes), `target` `(N)`,
/// the loss `()`.
#pragma once

#include "gradproof/nn/module.hpp"

namespace gradproof::nn {

/// What a network's forward returns: the loss, the logits and every layer's cache.
template <class S, class Cache>
struct NetOut {
  Tensor<S> loss;  ///< `()`: the mean cross-entropy
  Cache cache;     ///< for backward(); `cache.ce.logits` are the logits `(N, O)`
};

/// \brief linear → batch norm → relu → linear → cross-entropy:
/// \f$L = \mathrm{CE}(W_2\,\mathrm{relu}(\mathrm{BN}(W_1 x + b_1)) + b_2,\ t)\f$.
template <class S>
struct MlpBn {
  using Scalar = S;         ///< the scalar
  Linear<S> fc1;            ///< `(H, I)`
  BatchNorm1d<S> bn;        ///< over the `H` features of the batch
  ReLU<S> relu;             ///< the activation
  Linear<S> fc2;            ///< `(O, H)`
  CrossEntropyLoss<S> ce;   ///< mean over the batch
  /// One cache per layer.
  struct Cache {
    typename Linear<S>::Cache fc1;            ///< x
    typename BatchNorm1d<S>::Cache bn;        ///< fc1's output and its batch statistics
    typename ReLU<S>::Cache relu;             ///< bn's output (the pre-activation) and relu's
    typename Linear<S>::Cache fc2;            ///< relu's output
    typename CrossEntropyLoss<S>::Cache ce;   ///< the logits, the targets, per-row statistics
  };
  using Out = NetOut<S, Cache>;  ///< loss and caches
  /// \param I  inputs  \param H  hidden features  \param O  classes
  MlpBn(Index I, Index H, Index O) : fc1("fc1", I, H), bn("bn", H), fc2("fc2", H, O) {}
  /// \param x  `(N, I)`  \param target  `(N)` class indices in `[0, O)`
  Out forward(const Tensor<S>& x, const Tensor<Index>& target) {
    //! [mlp_bn.forward]
    auto a = fc1.forward(x);          // a = x W₁ᵀ + b₁
    auto h = bn.forward(a.y);         // h = γ x̂(a) + β, batch statistics
    auto r = relu.forward(h.y);       // r = max(h, 0)
    auto z = fc2.forward(r.y);        // z = r W₂ᵀ + b₂, the logits
    auto L = ce.forward(z.y, target);  // L = (1/N) Σₙ (lse(zₙ) − zₙₜₙ)
    //! [mlp_bn.forward]
    return {std::move(L.loss),
            {std::move(a.cache), std::move(h.cache), std::move(r.cache), std::move(z.cache), std::move(L.cache)}};
  }
  /// \param dL  `()` upstream gradient of the loss  \param c  the caches
  /// \param b   how the layers' backwards run
  /// \return `dx` `(N, I)`; adds every parameter's gradient.
  Tensor<S> backward(const Tensor<S>& dL, const Cache& c, const Backward& b) {
    //! [mlp_bn.dx]
    Tensor<S> dz = ce.backward(dL, c.ce, b);      // dz = dL (softmax(z) − onehot(t)) / N
    Tensor<S> dr = fc2.backward(dz, c.fc2, b);    // dr = dz W₂;          adds dW₂, db₂
    Tensor<S> dh = relu.backward(dr, c.relu, b);  // dh = dr ⊙ [h > 0]
    Tensor<S> da = bn.backward(dh, c.bn, b);      // da = bn's VJP of dh;  adds dγ, dβ
    return fc1.backward(da, c.fc1, b);            // dx = da W₁;          adds dW₁, db₁
    //! [mlp_bn.dx]
  }
  /// Calls `f(Parameter&)` for each parameter in state-dict order.
  template <class F>
  void for_each_parameter(F&& f) {
    //! [mlp_bn.dparams]
    fc1.for_each_parameter(f);  // fc1.weight, fc1.bias
    bn.for_each_parameter(f);   // bn.weight (γ), bn.bias (β)
    fc2.for_each_parameter(f);  // fc2.weight, fc2.bias (relu and the loss have none)
    //! [mlp_bn.dparams]
  }
};

/// \brief linear → layer norm → gelu → linear → cross-entropy:
/// \f$L = \mathrm{CE}(W_2\,\mathrm{gelu}(\mathrm{LN}(W_1 x + b_1)) + b_2,\ t)\f$.
template <class S>
struct MlpLn {
  using Scalar = S;         ///< the scalar
  Linear<S> fc1;            ///< `(H, I)`
  LayerNorm<S> ln;          ///< over the `H` features of each row
  GELU<S> gelu;             ///< the activation (exact erf form, PyTorch's default)
  Linear<S> fc2;            ///< `(O, H)`
  CrossEntropyLoss<S> ce;   ///< mean over the batch
  /// One cache per layer.
  struct Cache {
    typename Linear<S>::Cache fc1;            ///< x
    typename LayerNorm<S>::Cache ln;          ///< fc1's output and each row's statistics
    typename GELU<S>::Cache gelu;             ///< ln's output
    typename Linear<S>::Cache fc2;            ///< gelu's output
    typename CrossEntropyLoss<S>::Cache ce;   ///< the logits, the targets, per-row statistics
  };
  using Out = NetOut<S, Cache>;  ///< loss and caches
  /// \param I  inputs  \param H  hidden features  \param O  classes
  MlpLn(Index I, Index H, Index O) : fc1("fc1", I, H), ln("ln", H), fc2("fc2", H, O) {}
  /// \param x  `(N, I)`  \param target  `(N)` class indices in `[0, O)`
  Out forward(const Tensor<S>& x, const Tensor<Index>& target) {
    //! [mlp_ln.forward]
    auto a = fc1.forward(x);           // a = x W₁ᵀ + b₁
    auto h = ln.forward(a.y);          // h = γ x̂(a) + β, per-row statistics
    auto g = gelu.forward(h.y);        // g = h Φ(h)
    auto z = fc2.forward(g.y);         // z = g W₂ᵀ + b₂
    auto L = ce.forward(z.y, target);  // L = mean cross-entropy
    //! [mlp_ln.forward]
    return {std::move(L.loss),
            {std::move(a.cache), std::move(h.cache), std::move(g.cache), std::move(z.cache), std::move(L.cache)}};
  }
  /// \param dL  `()`  \param c  the caches  \param b  how the layers' backwards run
  /// \return `dx` `(N, I)`; adds every parameter's gradient.
  Tensor<S> backward(const Tensor<S>& dL, const Cache& c, const Backward& b) {
    //! [mlp_ln.dx]
    Tensor<S> dz = ce.backward(dL, c.ce, b);      // dz = dL (softmax(z) − onehot(t)) / N
    Tensor<S> dg = fc2.backward(dz, c.fc2, b);    // dg = dz W₂
    Tensor<S> dh = gelu.backward(dg, c.gelu, b);  // dh = dg ⊙ (Φ(h) + h φ(h))
    Tensor<S> da = ln.backward(dh, c.ln, b);      // da = ln's VJP of dh
    return fc1.backward(da, c.fc1, b);            // dx = da W₁
    //! [mlp_ln.dx]
  }
  /// Calls `f(Parameter&)` for each parameter in state-dict order.
  template <class F>
  void for_each_parameter(F&& f) {
    //! [mlp_ln.dparams]
    fc1.for_each_parameter(f);
    ln.for_each_parameter(f);
    fc2.for_each_parameter(f);
    //! [mlp_ln.dparams]
  }
};

/// The body of the residual MLP block: layer norm → relu → linear `(H → H)` (pre-norm).
template <class S>
using ResBody = Sequential<LayerNorm<S>, ReLU<S>, Linear<S>>;

/// \brief A residual MLP block between two linear layers, then the loss:
/// \f$a = W_1 x + b_1,\; h = a + W_r\,\mathrm{relu}(\mathrm{LN}(a)) + b_r,\; z = W_2 h + b_2,\;
/// L = \mathrm{CE}(z, t)\f$ (Sequential composition inside a Residual: \f$a\f$ is used twice).
template <class S>
struct ResMlp {
  using Scalar = S;               ///< the scalar
  Linear<S> fc1;                  ///< `(H, I)`
  Residual<ResBody<S>> block;     ///< \f$a + f(a)\f$
  Linear<S> fc2;                  ///< `(O, H)`
  CrossEntropyLoss<S> ce;         ///< mean over the batch
  /// One cache per layer.
  struct Cache {
    typename Linear<S>::Cache fc1;              ///< x
    typename Residual<ResBody<S>>::Cache block; ///< the body's caches
    typename Linear<S>::Cache fc2;              ///< the block's output
    typename CrossEntropyLoss<S>::Cache ce;     ///< the logits, the targets, per-row statistics
  };
  using Out = NetOut<S, Cache>;  ///< loss and caches
  /// \param I  inputs  \param H  hidden features  \param O  classes
  ResMlp(Index I, Index H, Index O)
      : fc1("fc1", I, H),
        block(ResBody<S>(LayerNorm<S>("block.ln", H), ReLU<S>(), Linear<S>("block.fc", H, H))),
        fc2("fc2", H, O) {}
  /// \param x  `(N, I)`  \param target  `(N)` class indices in `[0, O)`
  Out forward(const Tensor<S>& x, const Tensor<Index>& target) {
    //! [resmlp.forward]
    auto a = fc1.forward(x);           // a = x W₁ᵀ + b₁
    auto h = block.forward(a.y);       // h = a + (relu(LN(a)) W_rᵀ + b_r)
    auto z = fc2.forward(h.y);         // z = h W₂ᵀ + b₂
    auto L = ce.forward(z.y, target);  // L = mean cross-entropy
    //! [resmlp.forward]
    return {std::move(L.loss), {std::move(a.cache), std::move(h.cache), std::move(z.cache), std::move(L.cache)}};
  }
  /// \param dL  `()`  \param c  the caches  \param b  how the layers' backwards run
  /// \return `dx` `(N, I)`; adds every parameter's gradient.
  Tensor<S> backward(const Tensor<S>& dL, const Cache& c, const Backward& b) {
    //! [resmlp.dx]
    Tensor<S> dz = ce.backward(dL, c.ce, b);        // dz = dL (softmax(z) − onehot(t)) / N
    Tensor<S> dh = fc2.backward(dz, c.fc2, b);      // dh = dz W₂
    Tensor<S> da = block.backward(dh, c.block, b);  // da = dh + (body's VJP of dh): the fan-out sum
    return fc1.backward(da, c.fc1, b);              // dx = da W₁
    //! [resmlp.dx]
  }
  /// Calls `f(Parameter&)` for each parameter in state-dict order.
  template <class F>
  void for_each_parameter(F&& f) {
    //! [resmlp.dparams]
    fc1.for_each_parameter(f);    // fc1.weight, fc1.bias
    block.for_each_parameter(f);  // block.ln.weight, block.ln.bias, block.fc.weight, block.fc.bias
    fc2.for_each_parameter(f);    // fc2.weight, fc2.bias
    //! [resmlp.dparams]
  }
};

}  // namespace gradproof::nn
