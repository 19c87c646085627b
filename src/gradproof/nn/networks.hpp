/// \file
/// \brief The networks of derivations/backprop.md, assembled from the modules of nn/module.hpp.
/// Each is written out: the forward calls its layers first to last and keeps each cache, the
/// backward calls their backwards last to first. Nothing here computes a derivative itself.
///
/// Shape legend: `x` `(N, I)`, hidden `(N, H)`, `y` `(N, O)`.
#pragma once

#include "gradproof/nn/module.hpp"

namespace gradproof::nn {

/// \brief linear → batch norm → linear: \f$y = W_2\,\mathrm{BN}(W_1 x + b_1) + b_2\f$.
template <class S>
struct MlpBn {
  using Scalar = S;  ///< the scalar
  Linear<S> fc1;     ///< `(H, I)`
  BatchNorm1d<S> bn; ///< over the `H` features of the batch
  Linear<S> fc2;     ///< `(O, H)`
  /// One cache per layer.
  struct Cache {
    typename Linear<S>::Cache fc1;       ///< x
    typename BatchNorm1d<S>::Cache bn;   ///< fc1's output and its batch statistics
    typename Linear<S>::Cache fc2;       ///< bn's output
  };
  /// Output and caches.
  struct Out {
    Tensor<S> y;  ///< `(N, O)`
    Cache cache;  ///< for backward()
  };
  /// \param I  inputs  \param H  hidden features  \param O  outputs
  MlpBn(Index I, Index H, Index O) : fc1("fc1", I, H), bn("bn", H), fc2("fc2", H, O) {}
  /// \param x  `(N, I)`
  Out forward(const Tensor<S>& x) {
    //! [mlp_bn.forward]
    auto a = fc1.forward(x);    // a = x W₁ᵀ + b₁
    auto h = bn.forward(a.y);   // h = γ x̂(a) + β, batch statistics
    auto y = fc2.forward(h.y);  // y = h W₂ᵀ + b₂
    //! [mlp_bn.forward]
    return {std::move(y.y), {std::move(a.cache), std::move(h.cache), std::move(y.cache)}};
  }
  /// \param dy  `(N, O)`  \param c  the caches  \param b  how the layers' backwards run
  /// \return `dx` `(N, I)`; adds every parameter's gradient.
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    //! [mlp_bn.dx]
    Tensor<S> dh = fc2.backward(dy, c.fc2, b);  // dh = dy W₂;         adds dW₂, db₂
    Tensor<S> da = bn.backward(dh, c.bn, b);    // da = bn's VJP of dh; adds dγ, dβ
    return fc1.backward(da, c.fc1, b);          // dx = da W₁;         adds dW₁, db₁
    //! [mlp_bn.dx]
  }
  /// Calls `f(Parameter&)` for each parameter in state-dict order.
  template <class F>
  void for_each_parameter(F&& f) {
    //! [mlp_bn.dparams]
    fc1.for_each_parameter(f);  // fc1.weight, fc1.bias
    bn.for_each_parameter(f);   // bn.weight (γ), bn.bias (β)
    fc2.for_each_parameter(f);  // fc2.weight, fc2.bias
    //! [mlp_bn.dparams]
  }
};

/// \brief linear → layer norm → linear: \f$y = W_2\,\mathrm{LN}(W_1 x + b_1) + b_2\f$.
template <class S>
struct MlpLn {
  using Scalar = S;  ///< the scalar
  Linear<S> fc1;     ///< `(H, I)`
  LayerNorm<S> ln;   ///< over the `H` features of each row
  Linear<S> fc2;     ///< `(O, H)`
  /// One cache per layer.
  struct Cache {
    typename Linear<S>::Cache fc1;     ///< x
    typename LayerNorm<S>::Cache ln;   ///< fc1's output and each row's statistics
    typename Linear<S>::Cache fc2;     ///< ln's output
  };
  /// Output and caches.
  struct Out {
    Tensor<S> y;  ///< `(N, O)`
    Cache cache;  ///< for backward()
  };
  /// \param I  inputs  \param H  hidden features  \param O  outputs
  MlpLn(Index I, Index H, Index O) : fc1("fc1", I, H), ln("ln", H), fc2("fc2", H, O) {}
  /// \param x  `(N, I)`
  Out forward(const Tensor<S>& x) {
    //! [mlp_ln.forward]
    auto a = fc1.forward(x);    // a = x W₁ᵀ + b₁
    auto h = ln.forward(a.y);   // h = γ x̂(a) + β, per-row statistics
    auto y = fc2.forward(h.y);  // y = h W₂ᵀ + b₂
    //! [mlp_ln.forward]
    return {std::move(y.y), {std::move(a.cache), std::move(h.cache), std::move(y.cache)}};
  }
  /// \param dy  `(N, O)`  \param c  the caches  \param b  how the layers' backwards run
  /// \return `dx` `(N, I)`; adds every parameter's gradient.
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    //! [mlp_ln.dx]
    Tensor<S> dh = fc2.backward(dy, c.fc2, b);  // dh = dy W₂
    Tensor<S> da = ln.backward(dh, c.ln, b);    // da = ln's VJP of dh
    return fc1.backward(da, c.fc1, b);          // dx = da W₁
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

/// The body of the residual MLP block: layer norm → linear `(H → H)`.
template <class S>
using ResBody = Sequential<LayerNorm<S>, Linear<S>>;

/// \brief A residual MLP block between two linear layers:
/// \f$a = W_1 x + b_1,\; h = a + W_r\,\mathrm{LN}(a) + b_r,\; y = W_2 h + b_2\f$ (Sequential
/// composition inside a Residual: \f$a\f$ is used twice).
template <class S>
struct ResMlp {
  using Scalar = S;               ///< the scalar
  Linear<S> fc1;                  ///< `(H, I)`
  Residual<ResBody<S>> block;     ///< \f$a + f(a)\f$
  Linear<S> fc2;                  ///< `(O, H)`
  /// One cache per layer.
  struct Cache {
    typename Linear<S>::Cache fc1;              ///< x
    typename Residual<ResBody<S>>::Cache block; ///< the body's caches
    typename Linear<S>::Cache fc2;              ///< the block's output
  };
  /// Output and caches.
  struct Out {
    Tensor<S> y;  ///< `(N, O)`
    Cache cache;  ///< for backward()
  };
  /// \param I  inputs  \param H  hidden features  \param O  outputs
  ResMlp(Index I, Index H, Index O)
      : fc1("fc1", I, H), block(ResBody<S>(LayerNorm<S>("block.ln", H), Linear<S>("block.fc", H, H))), fc2("fc2", H, O) {}
  /// \param x  `(N, I)`
  Out forward(const Tensor<S>& x) {
    //! [resmlp.forward]
    auto a = fc1.forward(x);      // a = x W₁ᵀ + b₁
    auto h = block.forward(a.y);  // h = a + (LN(a) W_rᵀ + b_r)
    auto y = fc2.forward(h.y);    // y = h W₂ᵀ + b₂
    //! [resmlp.forward]
    return {std::move(y.y), {std::move(a.cache), std::move(h.cache), std::move(y.cache)}};
  }
  /// \param dy  `(N, O)`  \param c  the caches  \param b  how the layers' backwards run
  /// \return `dx` `(N, I)`; adds every parameter's gradient.
  Tensor<S> backward(const Tensor<S>& dy, const Cache& c, const Backward& b) {
    //! [resmlp.dx]
    Tensor<S> dh = fc2.backward(dy, c.fc2, b);      // dh = dy W₂
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
