/// \file
/// \brief Element-wise activations: relu, sigmoid, tanh;
/// forward, staged and fused backward, with PyTorch's semantics, names and defaults.
///
/// Each activation is a config struct (PyTorch's parameter names and defaults) that also holds
/// its math: `value` (the forward on one scalar of any kind the oracles use: `float`, `double`,
/// `long double`, `std::complex`, dual numbers), `array` (the same forward on Eigen arrays, for
/// `float` and `double`), `staged` (the derivative, one named step per chain-rule term, each
/// marked with its formula id) and `fused` (the derivative as one vectorized Eigen-array
/// expression). The generic functions activation_forward(), activation_backward_staged() and
/// activation_backward() run any of them; the `*_into` forms write into caller buffers and
/// allocate nothing.
///
/// Shape legend: `x`, `y`, `dy`, `dx` have any shape (the same one), rank ≥ 0, row-major;
/// \f$n\f$ = `numel(x)`. The functions act on each of the \f$n\f$ values alone.
///
/// The fused backward reads what PyTorch's backward reads: the output `y` for relu, sigmoid and
/// tanh (`saves_output = true`), the input `x` for the others. The staged backward always reads
/// `x`. Derivations: `derivations/activations.md`.
#pragma once

#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include <cmath>
#include <complex>
#include <sstream>
#include <string>
#include <type_traits>

namespace gradproof::ops {

namespace detail::act {

/// The real value of a scalar of the oracles (`double`, `std::complex`, a dual number).
template <class S>
double real_value(const S& v) {
  if constexpr (requires { v.value(); }) return real_value(v.value());
  else if constexpr (requires { v.real(); }) return static_cast<double>(v.real());
  else return static_cast<double>(v);
}

template <class S>
struct is_complex : std::false_type {};
template <class R>
struct is_complex<std::complex<R>> : std::true_type {};

/// erf on every scalar of the oracles. Real: `std::erf`. Complex (the complex step, imaginary
/// part \f$h \ll 1\f$): \f$\operatorname{erf}(a + ib) = \operatorname{erf}(a) + ib\,\tfrac{2}{\sqrt\pi}e^{-a^2}
/// + O(b^2)\f$, exact at the step's own order. Dual: the value and the chain rule of erf.
template <class S>
S erf(const S& x) {
  if constexpr (std::is_floating_point_v<S>) {
    return std::erf(x);
  } else if constexpr (is_complex<S>::value) {
    using R = typename S::value_type;
    const R a = x.real();
    return S(std::erf(a), x.imag() * R(M_2_SQRTPI) * std::exp(-a * a));
  } else {
    const double a = x.value();
    return S(std::erf(a), x.derivatives() * (M_2_SQRTPI * std::exp(-a * a)));
  }
}

/// \f$e^x - 1\f$: `std::expm1` on reals (no cancellation near 0), `exp(x) - 1` on the oracles'
/// other scalars (their derivative part has no cancellation).
template <class S>
S expm1(const S& x) {
  using std::exp;
  if constexpr (std::is_floating_point_v<S>) return std::expm1(x);
  else return exp(x) - S(1);
}

/// \f$\log(1 + e^x)\f$: `std::log1p(std::exp(x))` on reals, as PyTorch computes it.
template <class S>
S log1p_exp(const S& x) {
  using std::exp;
  using std::log;
  if constexpr (std::is_floating_point_v<S>) return std::log1p(std::exp(x));
  else return log(S(1) + exp(x));
}

/// \f$\sigma(x) = 1/(1 + e^{-x})\f$.
template <class S>
S sigmoid(const S& x) {
  using std::exp;
  return S(1) / (S(1) + exp(-x));
}

}  // namespace detail::act

// ---- The activations --------------------------------------------------------------------------

/// \brief `torch.relu`: \f$y = \max(x, 0)\f$. Kink at 0: \f$\mathrm{relu}'(0) = 0\f$ (PyTorch's
/// `threshold_backward` on the output: \f$y \le 0 \Rightarrow 0\f$).
///
/// One chain-rule term, so the staged and fused backward compute the same product; the staged
/// one reads `x`, the fused one `y` (as PyTorch); \f$x > 0 \Leftrightarrow y > 0\f$.
struct ReluConfig {
  static constexpr const char* name = "relu";   ///< the op's name in messages
  static constexpr bool saves_output = true;    ///< the fused backward reads `y`
  /// Term scales of the staged backward (1 is the derivation; the negative controls use 0, −1).
  struct Terms {
    double dstep = 1;  ///< relu.dstep: \f$[x > 0]\f$
  };
  /// Nothing to check.
  void validate() const {}
  /// The forward on one scalar.
  template <class S>
  S value(const S& x) const {
    //! [relu.forward]
    return detail::act::real_value(x) > 0 ? x : S(0);  // relu(x) = max(x, 0); NaN stays NaN below
    //! [relu.forward]
  }
  /// The forward on an Eigen array \f$x\f$ (n) into \f$y\f$ (n).
  template <class A, class O>
  void array(const A& x, O&& y) const {
    using T = typename A::Scalar;
    y = (x > T(0)).select(x, T(0));
  }
  /// The staged derivative times `dy` at one value.
  template <class S>
  S staged(const S& x, const S& dy, const Terms& t) const {
    //! [relu.dstep]
    // ∂y/∂x = [x > 0]: 1 on the right, 0 on the left and at the kink x = 0 (PyTorch's value)
    const S step = S(t.dstep) * (x > S(0) ? S(1) : S(0));
    //! [relu.dstep]
    //! [relu.dx]
    return dy * step;
    //! [relu.dx]
  }
  /// The fused backward on Eigen arrays: `dy` (n), `y` (n) into `dx` (n).
  template <class A, class B, class O>
  void fused(const A& dy, const B& y, O&& dx) const {
    using T = typename A::Scalar;
    //! [relu.dx_fused]
    dx = (y > T(0)).select(dy, T(0));  // threshold_backward(dy, y, 0)
    //! [relu.dx_fused]
  }
};

/// \brief `torch.sigmoid`: \f$y = \sigma(x) = 1/(1 + e^{-x})\f$.
struct SigmoidConfig {
  static constexpr const char* name = "sigmoid";  ///< the op's name in messages
  static constexpr bool saves_output = true;      ///< the fused backward reads `y`
  /// Term scales of the staged backward.
  struct Terms {
    double dlocal = 1;  ///< sigmoid.dlocal: \f$\sigma(x)\sigma(-x)\f$
  };
  /// Nothing to check.
  void validate() const {}
  /// The forward on one scalar.
  template <class S>
  S value(const S& x) const {
    //! [sigmoid.forward]
    return detail::act::sigmoid(x);  // 1 / (1 + exp(−x)): exp(−x) → ∞ gives 0, → 0 gives 1
    //! [sigmoid.forward]
  }
  /// The forward on an Eigen array \f$x\f$ (n) into \f$y\f$ (n).
  template <class A, class O>
  void array(const A& x, O&& y) const {
    using T = typename A::Scalar;
    y = T(1) / (T(1) + (-x).exp());
  }
  /// The staged derivative times `dy` at one value.
  template <class S>
  S staged(const S& x, const S& dy, const Terms& t) const {
    //! [sigmoid.dlocal]
    // ∂y/∂x = σ(x)(1 − σ(x)) = σ(x)σ(−x): the second form keeps its digits where σ(x) rounds to 1
    const S local = S(t.dlocal) * detail::act::sigmoid(x) * detail::act::sigmoid(-x);
    //! [sigmoid.dlocal]
    //! [sigmoid.dx]
    return dy * local;
    //! [sigmoid.dx]
  }
  /// The fused backward on Eigen arrays: `dy` (n), `y` (n) into `dx` (n).
  template <class A, class B, class O>
  void fused(const A& dy, const B& y, O&& dx) const {
    using T = typename A::Scalar;
    //! [sigmoid.dx_fused]
    dx = dy * y * (T(1) - y);  // from the output, as PyTorch's sigmoid_backward
    //! [sigmoid.dx_fused]
  }
};

/// \brief `torch.tanh`: \f$y = \tanh x\f$.
struct TanhConfig {
  static constexpr const char* name = "tanh";  ///< the op's name in messages
  static constexpr bool saves_output = true;   ///< the fused backward reads `y`
  /// Term scales of the staged backward.
  struct Terms {
    double dlocal = 1;  ///< tanh.dlocal: \f$1/\cosh^2 x\f$
  };
  /// Nothing to check.
  void validate() const {}
  /// The forward on one scalar.
  template <class S>
  S value(const S& x) const {
    using std::tanh;
    //! [tanh.forward]
    return tanh(x);
    //! [tanh.forward]
  }
  /// The forward on an Eigen array \f$x\f$ (n) into \f$y\f$ (n).
  template <class A, class O>
  void array(const A& x, O&& y) const {
    y = x.tanh();
  }
  /// The staged derivative times `dy` at one value.
  template <class S>
  S staged(const S& x, const S& dy, const Terms& t) const {
    using std::cosh;
    //! [tanh.dlocal]
    // ∂y/∂x = 1 − tanh²x = 1/cosh²x: the second form keeps its digits where tanh x rounds to ±1
    const S c = cosh(x);
    const S local = S(t.dlocal) / (c * c);
    //! [tanh.dlocal]
    //! [tanh.dx]
    return dy * local;
    //! [tanh.dx]
  }
  /// The fused backward on Eigen arrays: `dy` (n), `y` (n) into `dx` (n).
  template <class A, class B, class O>
  void fused(const A& dy, const B& y, O&& dx) const {
    using T = typename A::Scalar;
    //! [tanh.dx_fused]
    dx = dy * (T(1) - y * y);  // from the output, as PyTorch's tanh_backward
    //! [tanh.dx_fused]
  }
};

// ---- The generic passes -----------------------------------------------------------------------

/// What the backward passes need from the forward pass besides the tensor they read.
template <class Config>
struct ActivationCache {
  Shape shape;  ///< shape of the forward input
  Config cfg;   ///< the activation and its parameters
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar, class Config>
struct ActivationForward {
  Tensor<Scalar> y;              ///< shape of `x`
  ActivationCache<Config> cache;  ///< shape and parameters
};

/// The gradient of the loss with respect to the input of an activation.
template <class Scalar>
struct ActivationGrads {
  Tensor<Scalar> dx;  ///< shape of `x`
};

namespace detail::act {
template <class Scalar, class Config>
void check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& other, const ActivationCache<Config>& cache,
                    const char* other_name) {
  if (!same_shape(other.shape(), cache.shape)) {
    std::ostringstream msg;
    msg << Config::name << ": cache was made for an input of shape " << to_string(cache.shape) << " but "
        << other_name << " has shape " << to_string(other.shape());
    throw InvalidArgument(msg.str());
  }
  require_shape(dy, cache.shape, Config::name, "dy (must match x)");
}
}  // namespace detail::act

/// \brief Forward pass writing into a caller-provided `y`; allocates nothing when `cache` is
/// reused.
/// \tparam Scalar `float`, `double`, `long double`, `std::complex` or a dual number.
/// \param x      input, any shape
/// \param cfg    the activation and its parameters (e.g. `LeakyReluConfig{.negative_slope = 0.2}`)
/// \param y      output, preallocated with the shape of `x`; may be `x` itself
/// \param cache  output: the shape and `cfg`
/// \throws InvalidArgument on a bad parameter or `y` not of the shape of `x`.
template <class Scalar, class Config>
void activation_forward_into(const Tensor<Scalar>& x, const Config& cfg, Tensor<Scalar>& y,
                             ActivationCache<Config>& cache) {
  cfg.validate();
  require_shape(y, x.shape(), Config::name, "y (output)");
  if (!same_shape(cache.shape, x.shape())) cache.shape = x.shape();
  cache.cfg = cfg;
  if constexpr (std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>) {
    cfg.array(x.flat(), y.flat());
  } else {
    for (Index i = 0; i < x.size(); ++i) y[i] = cfg.value(x[i]);
  }
}

/// \brief Forward pass (allocating wrapper of activation_forward_into()).
/// \param x    input, any shape
/// \param cfg  the activation and its parameters
/// \return `y` of the shape of `x`, and the cache.
template <class Scalar, class Config>
ActivationForward<Scalar, Config> activation_forward(const Tensor<Scalar>& x, const Config& cfg) {
  ActivationForward<Scalar, Config> out{Tensor<Scalar>(x.shape()), {}};
  activation_forward_into(x, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: at each value the derivative's chain-rule terms, one named step
/// each (`Config::staged`), times `dy`.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param cache   from the forward pass on `x`
/// \param scales  term scales for the negative controls; leave at the default
/// \throws InvalidArgument if `dy` or `x` does not match the cache.
template <class Scalar, class Config>
ActivationGrads<Scalar> activation_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                                   const ActivationCache<Config>& cache,
                                                   const typename Config::Terms& scales = {}) {
  detail::act::check_backward(dy, x, cache, "x");
  ActivationGrads<Scalar> g{Tensor<Scalar>(x.shape())};
  for (Index i = 0; i < x.size(); ++i) g.dx[i] = cache.cfg.staged(x[i], dy[i], scales);
  return g;
}

/// \brief Fused backward pass writing into a caller-provided `dx`; allocates nothing. One
/// vectorized Eigen-array expression (`Config::fused`).
/// \param dy     upstream gradient, shape of `x`
/// \param saved  what the fused backward reads: `y` if `Config::saves_output`, else `x`
/// \param cache  from the forward pass
/// \param dx     output, preallocated with the shape of `x`; may be the buffer of `dy` or `saved`
/// \throws InvalidArgument on mismatched shapes of any argument or output.
template <class Scalar, class Config>
void activation_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& saved,
                              const ActivationCache<Config>& cache, Tensor<Scalar>& dx) {
  detail::act::check_backward(dy, saved, cache, Config::saves_output ? "y" : "x");
  require_shape(dx, cache.shape, Config::name, "dx (output)");
  cache.cfg.fused(dy.flat(), saved.flat(), dx.flat());
}

/// \brief Fused backward pass (allocating wrapper of activation_backward_into()).
/// \param dy     upstream gradient, shape of `x`
/// \param saved  `y` if `Config::saves_output`, else `x`
/// \param cache  from the forward pass
template <class Scalar, class Config>
ActivationGrads<Scalar> activation_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& saved,
                                            const ActivationCache<Config>& cache) {
  ActivationGrads<Scalar> g{Tensor<Scalar>(saved.shape())};
  activation_backward_into(dy, saved, cache, g.dx);
  return g;
}

using ActivationGradsF = ActivationGrads<float>;   ///< float alias
using ActivationGradsD = ActivationGrads<double>;  ///< double alias
/// float alias of a forward result
template <class Config>
using ActivationForwardF = ActivationForward<float, Config>;
/// double alias of a forward result
template <class Config>
using ActivationForwardD = ActivationForward<double, Config>;

}  // namespace gradproof::ops
