/// \file
/// \brief Dropout: forward, staged and fused backward.
///
/// Semantics of PyTorch's `torch.nn.functional.dropout(input, p=0.5, training=True)`: in
/// training, each element is kept with probability \f$1 - p\f$ and scaled by \f$1/(1-p)\f$,
/// \f[ y_i = \frac{m_i}{1-p}\,x_i, \qquad m_i \in \{0, 1\},\; P(m_i = 0) = p; \f]
/// in evaluation (`training=false`) it is the identity. `p = 0` keeps everything (\f$y = x\f$
/// exactly), `p = 1` drops everything (\f$y = 0\f$, as PyTorch, not \f$0 \cdot \infty\f$).
///
/// The mask. Element \f$i\f$ is dropped when \f$u_i < p\f$, where \f$u_i\f$ is the top 53 bits of
/// SplitMix64 (Steele, Lea, Flood 2014) applied to `seed + (i + 1)·0x9E3779B97F4A7C15` (the
/// \f$(i+1)\f$-th output of the SplitMix64 stream started at `seed`), divided by \f$2^{53}\f$. A
/// counter-based generator: the mask is a function of the seed and the index only, the same for
/// any number of threads, and the same for every scalar type the oracles use (so for the oracles
/// dropout is a fixed linear map). libtorch's generator differs, so its oracle multiplies by this
/// mask as a constant. The mask is kept in the cache; the backward uses it and the same scale.
///
/// Shape legend: `x`, `y`, `dy`, `dx`, the mask: any shape, all the same.
#pragma once

#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"

#include <cstdint>
#include <sstream>

namespace gradproof::ops {

/// Hyper-parameters of dropout (PyTorch's names and defaults; `seed` is gradproof's, see the
/// file).
struct DropoutConfig {
  double p = 0.5;           ///< probability of dropping an element, in \f$[0, 1]\f$
  bool training = true;     ///< false: the identity (PyTorch's eval mode)
  std::uint64_t seed = 0;   ///< seed of the counter-based generator of the mask
};

/// What the backward pass needs: the mask and the scale.
template <class Scalar>
struct DropoutCache {
  Shape shape;                      ///< shape of `x`
  bool training = true;             ///< false: the identity
  double p = 0.5;                   ///< the drop probability
  double scale = 2;                 ///< \f$1/(1-p)\f$, or 0 for \f$p = 1\f$
  std::vector<std::uint8_t> mask;   ///< \f$m_i\f$ (1 kept, 0 dropped), training only
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar>
struct DropoutForward {
  Tensor<Scalar> y;             ///< shape of `x`
  DropoutCache<Scalar> cache;  ///< the mask and the scale
};

/// Gradient of the loss with respect to the input of dropout.
template <class Scalar>
struct DropoutGrads {
  Tensor<Scalar> dx;  ///< shape of `x`
};

/// Scales of the terms of the staged backward (1 is the derivation; the negative controls drop or
/// flip one).
struct DropoutTermScales {
  double dmask = 1;   ///< dropout.dmask: \f$\partial y_i/\partial (x_i/(1-p))\f$ = \f$m_i\f$
  double dscale = 1;  ///< dropout.dscale: the factor \f$1/(1-p)\f$
};

namespace detail::dropout {

constexpr const char* kDropout = "dropout";

/// SplitMix64's output function.
inline std::uint64_t splitmix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// \f$u_i \in [0, 1)\f$: the \f$(i+1)\f$-th output of SplitMix64 from `seed`, 53 bits.
inline double uniform(std::uint64_t seed, Index i) {
  const std::uint64_t z = seed + (static_cast<std::uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ull;
  return static_cast<double>(splitmix64(z) >> 11) * 0x1.0p-53;
}

inline void check_p(double p) {
  if (!(p >= 0 && p <= 1)) {
    std::ostringstream msg;
    msg << "dropout: p (the drop probability) must be in [0, 1]; got " << p;
    throw InvalidArgument(msg.str());
  }
}

template <class Scalar>
void setup(const Shape& xs, const DropoutConfig& cfg, DropoutCache<Scalar>& c) {
  check_p(cfg.p);
  if (!same_shape(c.shape, xs)) c.shape = xs;
  c.training = cfg.training;
  c.p = cfg.p;
  c.scale = cfg.p == 1 ? 0.0 : 1.0 / (1.0 - cfg.p);
  if (!cfg.training) return;
  const Index n = numel(xs);
  c.mask.resize(static_cast<std::size_t>(n));
  // m_i = 1 when u_i >= p: p = 0 keeps all (u >= 0), p = 1 drops all (u < 1)
  for (Index i = 0; i < n; ++i)
    c.mask[static_cast<std::size_t>(i)] = uniform(cfg.seed, i) >= cfg.p ? 1 : 0;
}

template <class Scalar>
void check_backward(const Tensor<Scalar>& dy, const DropoutCache<Scalar>& c) {
  require_shape(dy, c.shape, kDropout, "dy (must match x)");
}

}  // namespace detail::dropout

/// \brief Forward pass into caller-provided `y` and `cache`; allocates nothing when the cache is
/// reused for the same shape.
/// \param x      any shape
/// \param cfg    `p`, `training`, `seed`
/// \param y      output, shape of `x`
/// \param cache  output: the mask and the scale
/// \throws InvalidArgument on `p` outside \f$[0, 1]\f$ or `y` of another shape.
template <class Scalar>
void dropout_forward_into(const Tensor<Scalar>& x, const DropoutConfig& cfg, Tensor<Scalar>& y,
                          DropoutCache<Scalar>& cache) {
  detail::dropout::setup(x.shape(), cfg, cache);
  require_shape(y, cache.shape, detail::dropout::kDropout, "y (output)");
  //! [dropout.forward]
  // training: yᵢ = mᵢ xᵢ / (1 − p) (0 for p = 1); eval: yᵢ = xᵢ
  if (!cache.training) {
    for (Index i = 0; i < x.size(); ++i) y[i] = x[i];
    return;
  }
  for (Index i = 0; i < x.size(); ++i)
    y[i] =
        cache.mask[static_cast<std::size_t>(i)] ? Scalar(x[i] * Scalar(cache.scale)) : Scalar(0);
  //! [dropout.forward]
}

/// \brief Forward pass (allocating wrapper of dropout_forward_into()).
template <class Scalar>
DropoutForward<Scalar> dropout_forward(const Tensor<Scalar>& x, const DropoutConfig& cfg = {}) {
  DropoutForward<Scalar> out;
  detail::dropout::check_p(cfg.p);
  out.y = Tensor<Scalar>(x.shape());
  dropout_forward_into(x, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward: one named step per term.
/// \param dy      shape of `x`
/// \param cache   from the forward pass (the mask)
/// \param scales  term scales for the negative controls; leave at the default
/// \throws InvalidArgument if `dy` does not match the cache.
template <class Scalar>
DropoutGrads<Scalar> dropout_backward_staged(const Tensor<Scalar>& dy,
                                             const DropoutCache<Scalar>& cache,
                                             const DropoutTermScales& scales = {}) {
  detail::dropout::check_backward(dy, cache);
  DropoutGrads<Scalar> g{Tensor<Scalar>(cache.shape)};
  if (!cache.training) {  // the identity
    for (Index i = 0; i < dy.size(); ++i) g.dx[i] = dy[i];
    return g;
  }
  for (Index i = 0; i < dy.size(); ++i) {
    // Step 1. yᵢ = mᵢ vᵢ with vᵢ = xᵢ/(1 − p): ∂yᵢ/∂vᵢ = mᵢ, the same mask as the forward.
    //! [dropout.dmask]
    const Scalar dv =
        Scalar(scales.dmask) * (cache.mask[static_cast<std::size_t>(i)] ? dy[i] : Scalar(0));
    //! [dropout.dmask]
    // Step 2. vᵢ = xᵢ/(1 − p): ∂vᵢ/∂xᵢ = 1/(1 − p) (0 for p = 1: y ≡ 0).
    //! [dropout.dscale]
    const Scalar s = Scalar(scales.dscale) * Scalar(cache.scale);
    //! [dropout.dscale]
    //! [dropout.dx]
    g.dx[i] = dv * s;
    //! [dropout.dx]
  }
  return g;
}

/// \brief Fused backward into a caller-provided `dx`.
/// \param dy     shape of `x`
/// \param cache  from the forward pass
/// \param dx     output, shape of `x`
/// \throws InvalidArgument on mismatched shapes.
template <class Scalar>
void dropout_backward_into(const Tensor<Scalar>& dy, const DropoutCache<Scalar>& cache,
                           Tensor<Scalar>& dx) {
  detail::dropout::check_backward(dy, cache);
  require_shape(dx, cache.shape, detail::dropout::kDropout, "dx (output)");
  //! [dropout.dx_fused]
  // dx = dy ⊙ m / (1 − p) in training, dy in eval
  const Scalar s = Scalar(cache.scale);
  for (Index i = 0; i < dy.size(); ++i)
    dx[i] = !cache.training                           ? dy[i]
            : cache.mask[static_cast<std::size_t>(i)] ? Scalar(dy[i] * s)
                                                      : Scalar(0);
  //! [dropout.dx_fused]
}

/// \brief Fused backward (allocating wrapper of dropout_backward_into()).
template <class Scalar>
DropoutGrads<Scalar> dropout_backward(const Tensor<Scalar>& dy,
                                      const DropoutCache<Scalar>& cache) {
  DropoutGrads<Scalar> g{Tensor<Scalar>(cache.shape)};
  dropout_backward_into(dy, cache, g.dx);
  return g;
}

using DropoutForwardF = DropoutForward<float>;   ///< float alias
using DropoutForwardD = DropoutForward<double>;  ///< double alias

}  // namespace gradproof::ops
