/// \file
/// \brief Element-wise activations: relu, leaky_relu, elu, gelu, silu, sigmoid, tanh, softplus;
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
#include "gradproof/parallel.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include <algorithm>
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
/// part \f$h \ll 1\f$): \f$\operatorname{erf}(a + ib) = \operatorname{erf}(a) +
/// ib\,\tfrac{2}{\sqrt\pi}e^{-a^2}
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

/// \brief `torch.nn.functional.leaky_relu`: \f$y = x\f$ for \f$x > 0\f$, else \f$s\,x\f$ with
/// \f$s\f$ = `negative_slope`. Kink at 0: \f$f'(0) = s\f$ (PyTorch: \f$x > 0 \Rightarrow dy\f$,
/// else \f$s\,dy\f$).
struct LeakyReluConfig {
  static constexpr const char* name = "leaky_relu";  ///< the op's name in messages
  static constexpr bool saves_output = false;        ///< the fused backward reads `x`
  double negative_slope = 0.01;                      ///< \f$s\f$: the slope for \f$x \le 0\f$
  /// Term scales of the staged backward.
  struct Terms {
    double dpos = 1;  ///< leaky_relu.dpos: \f$[x > 0]\f$
    double dneg = 1;  ///< leaky_relu.dneg: \f$s\,[x \le 0]\f$
  };
  /// Nothing to check: PyTorch takes any slope.
  void validate() const {}
  /// The forward on one scalar.
  template <class S>
  S value(const S& x) const {
    //! [leaky_relu.forward]
    return detail::act::real_value(x) > 0 ? x : x * S(negative_slope);
    //! [leaky_relu.forward]
  }
  /// The forward on an Eigen array \f$x\f$ (n) into \f$y\f$ (n).
  template <class A, class O>
  void array(const A& x, O&& y) const {
    using T = typename A::Scalar;
    // The slope as a factor, 1 or s exactly, instead of select(): Eigen 3.4 does not vectorize
    // a select between two arrays (a branch per element: 5x slower, bench/README.md).
    const auto k = (x > T(0)).template cast<T>();
    y = x * (k + (T(1) - k) * T(negative_slope));
  }
  /// The staged derivative times `dy` at one value.
  template <class S>
  S staged(const S& x, const S& dy, const Terms& t) const {
    //! [leaky_relu.dpos]
    const S pos = S(t.dpos) * (x > S(0) ? S(1) : S(0));  // the identity branch, x > 0
    //! [leaky_relu.dpos]
    //! [leaky_relu.dneg]
    const S neg = S(t.dneg) * (x > S(0) ? S(0) : S(negative_slope));  // x ≤ 0, the kink included
    //! [leaky_relu.dneg]
    //! [leaky_relu.dx]
    return dy * (pos + neg);
    //! [leaky_relu.dx]
  }
  /// The fused backward on Eigen arrays: `dy` (n), `x` (n) into `dx` (n).
  template <class A, class B, class O>
  void fused(const A& dy, const B& x, O&& dx) const {
    using T = typename A::Scalar;
    //! [leaky_relu.dx_fused]
    const auto k = (x > T(0)).template cast<T>();  // as in array(): the factor is 1 or s
    dx = dy * (k + (T(1) - k) * T(negative_slope));
    //! [leaky_relu.dx_fused]
  }
};

/// \brief `torch.nn.functional.elu`: \f$y = x\f$ for \f$x > 0\f$, else
/// \f$\alpha(e^x - 1)\f$. At 0, \f$f'(0) = \alpha\f$ (PyTorch's \f$x \le 0\f$ branch); a kink
/// unless \f$\alpha = 1\f$.
struct EluConfig {
  static constexpr const char* name = "elu";   ///< the op's name in messages
  static constexpr bool saves_output = false;  ///< the fused backward reads `x`
  double alpha = 1.0;                          ///< \f$\alpha\f$: the scale of the negative branch
  /// Term scales of the staged backward.
  struct Terms {
    double dpos = 1;  ///< elu.dpos: \f$[x > 0]\f$
    double dneg = 1;  ///< elu.dneg: \f$\alpha e^x [x \le 0]\f$
  };
  /// Nothing to check: PyTorch takes any alpha.
  void validate() const {}
  /// The forward on one scalar.
  template <class S>
  S value(const S& x) const {
    //! [elu.forward]
    return detail::act::real_value(x) > 0
               ? x
               : S(alpha) * detail::act::expm1(x);  // expm1: no cancellation
    //! [elu.forward]
  }
  /// The forward on an Eigen array \f$x\f$ (n) into \f$y\f$ (n).
  template <class A, class O>
  void array(const A& x, O&& y) const {
    using T = typename A::Scalar;
    // max(x, 0) + α expm1(min(x, 0)): the same values as the branch (each side adds an exact 0),
    // and vectorized, where Eigen 3.4's select() is not.
    y = x.max(T(0)) + T(alpha) * x.min(T(0)).expm1();
  }
  /// The staged derivative times `dy` at one value.
  template <class S>
  S staged(const S& x, const S& dy, const Terms& t) const {
    using std::exp;
    //! [elu.dpos]
    const S pos = S(t.dpos) * (x > S(0) ? S(1) : S(0));
    //! [elu.dpos]
    //! [elu.dneg]
    const S neg = S(t.dneg) * (x > S(0) ? S(0) : S(alpha) * exp(x));  // x ≤ 0, the kink included
    //! [elu.dneg]
    //! [elu.dx]
    return dy * (pos + neg);
    //! [elu.dx]
  }
  /// The fused backward on Eigen arrays: `dy` (n), `x` (n) into `dx` (n).
  template <class A, class B, class O>
  void fused(const A& dy, const B& x, O&& dx) const {
    using T = typename A::Scalar;
    //! [elu.dx_fused]
    dx = (x > T(0)).select(dy, dy * T(alpha) * x.exp());
    //! [elu.dx_fused]
  }
};

/// \brief `torch.nn.functional.gelu`: \f$y = x\,\Phi(x)\f$ with the normal CDF
/// \f$\Phi(x) = \tfrac12(1 + \operatorname{erf}(x/\sqrt2))\f$ (`approximate = "none"`), or
/// \f$y = \tfrac12 x (1 + \tanh u)\f$, \f$u = \sqrt{2/\pi}\,(x + 0.044715 x^3)\f$
/// (`approximate = "tanh"`).
struct GeluConfig {
  static constexpr const char* name = "gelu";  ///< the op's name in messages
  static constexpr bool saves_output = false;  ///< the fused backward reads `x`
  std::string approximate = "none";            ///< `"none"` (erf) or `"tanh"`
  /// Term scales of the staged backward.
  struct Terms {
    double dcdf = 1;  ///< gelu.dcdf: \f$\Phi(x)\f$, or \f$\tfrac12(1 + \tanh u)\f$
    double dpdf = 1;  ///< gelu.dpdf: \f$x\varphi(x)\f$, or \f$\tfrac12 x (1 - \tanh^2 u)\,u'\f$
  };
  static constexpr double kBeta = M_SQRT2 * M_2_SQRTPI * 0.5;  ///< \f$\sqrt{2/\pi}\f$
  static constexpr double kKappa = 0.044715;                    ///< the cubic coefficient
  /// True for `"tanh"`.
  bool tanh_form() const { return approximate == "tanh"; }
  /// \throws InvalidArgument unless `approximate` is `"none"` or `"tanh"` (as PyTorch).
  void validate() const {
    if (approximate != "none" && approximate != "tanh")
      throw InvalidArgument("gelu: approximate must be 'none' or 'tanh'; got '" + approximate +
                            "'");
  }
  /// The forward on one scalar.
  template <class S>
  S value(const S& x) const {
    using std::tanh;
    //! [gelu.forward]
    if (tanh_form()) return S(0.5) * x * (S(1) + tanh(S(kBeta) * (x + S(kKappa) * x * x * x)));
    return x * S(0.5) * (S(1) + detail::act::erf<S>(x * S(M_SQRT1_2)));  // x Φ(x)
    //! [gelu.forward]
  }
  /// The forward on an Eigen array \f$x\f$ (n) into \f$y\f$ (n).
  template <class A, class O>
  void array(const A& x, O&& y) const {
    using T = typename A::Scalar;
    if (tanh_form()) y = T(0.5) * x * (T(1) + (T(kBeta) * (x + T(kKappa) * x * x * x)).tanh());
    else y = x * T(0.5) * (T(1) + (x * T(M_SQRT1_2)).erf());
  }
  /// The staged derivative times `dy` at one value.
  template <class S>
  S staged(const S& x, const S& dy, const Terms& t) const {
    using std::erf;
    using std::exp;
    using std::tanh;
    const S th = tanh_form() ? tanh(S(kBeta) * (x + S(kKappa) * x * x * x)) : S(0);
    //! [gelu.dcdf]
    // ∂/∂x of x·c(x) = c(x) + x·c'(x); this is c: Φ(x) = ½(1 + erf(x/√2)), or ½(1 + tanh u)
    const S cdf = S(t.dcdf) *
                  (tanh_form() ? S(0.5) * (S(1) + th) : S(0.5) * (S(1) + erf(x * S(M_SQRT1_2))));
    //! [gelu.dcdf]
    //! [gelu.dpdf]
    // and this is x·c'(x): x φ(x) = x exp(−x²/2)/√(2π), or ½x (1 − tanh²u) u', u' = √(2/π)(1 +
    // 3κx²)
    const S pdf =
        S(t.dpdf) *
        (tanh_form() ? S(0.5) * x * (S(1) - th * th) * S(kBeta) * (S(1) + S(3 * kKappa) * x * x)
                     : x * exp(S(-0.5) * x * x) * S(0.5 * M_2_SQRTPI * M_SQRT1_2));
    //! [gelu.dpdf]
    //! [gelu.dx]
    return dy * (cdf + pdf);
    //! [gelu.dx]
  }
  /// The fused backward on Eigen arrays: `dy` (n), `x` (n) into `dx` (n).
  template <class A, class B, class O>
  void fused(const A& dy, const B& x, O&& dx) const {
    using T = typename A::Scalar;
    //! [gelu.dx_fused]
    if (tanh_form()) {
      const auto th = (T(kBeta) * (x + T(kKappa) * x * x * x)).tanh();
      dx = dy * (T(0.5) * (T(1) + th) +
                 T(0.5 * kBeta) * x * (T(1) - th * th) * (T(1) + T(3 * kKappa) * x * x));
    } else {
      dx = dy * (T(0.5) * (T(1) + (x * T(M_SQRT1_2)).erf()) +
                 T(0.5 * M_2_SQRTPI * M_SQRT1_2) * x * (T(-0.5) * x * x).exp());
    }
    //! [gelu.dx_fused]
  }
};

/// \brief `torch.nn.functional.silu`: \f$y = x\,\sigma(x)\f$.
struct SiluConfig {
  static constexpr const char* name = "silu";  ///< the op's name in messages
  static constexpr bool saves_output = false;  ///< the fused backward reads `x`
  /// Term scales of the staged backward.
  struct Terms {
    double dsig = 1;   ///< silu.dsig: \f$\sigma(x)\f$
    double dxsig = 1;  ///< silu.dxsig: \f$x\,\sigma(x)(1 - \sigma(x))\f$
  };
  /// Nothing to check.
  void validate() const {}
  /// The forward on one scalar.
  template <class S>
  S value(const S& x) const {
    //! [silu.forward]
    return x * detail::act::sigmoid(x);
    //! [silu.forward]
  }
  /// The forward on an Eigen array \f$x\f$ (n) into \f$y\f$ (n).
  template <class A, class O>
  void array(const A& x, O&& y) const {
    using T = typename A::Scalar;
    y = x / (T(1) + (-x).exp());
  }
  /// The staged derivative times `dy` at one value.
  template <class S>
  S staged(const S& x, const S& dy, const Terms& t) const {
    const S s = detail::act::sigmoid(x);
    //! [silu.dsig]
    const S direct = S(t.dsig) * s;  // the factor x held fixed: ∂(x σ)/∂x ⊃ σ(x)
    //! [silu.dsig]
    //! [silu.dxsig]
    const S through = S(t.dxsig) * x * s * detail::act::sigmoid(-x);  // x σ'(x) = x σ(x)σ(−x)
    //! [silu.dxsig]
    //! [silu.dx]
    return dy * (direct + through);
    //! [silu.dx]
  }
  /// The fused backward on Eigen arrays: `dy` (n), `x` (n) into `dx` (n).
  template <class A, class B, class O>
  void fused(const A& dy, const B& x, O&& dx) const {
    using T = typename A::Scalar;
    //! [silu.dx_fused]
    const auto s = T(1) / (T(1) + (-x).exp());
    dx = dy * s * (T(1) + x * (T(1) - s));  // PyTorch's silu_backward
    //! [silu.dx_fused]
  }
};

/// \brief `torch.nn.functional.softplus`: \f$y = \tfrac1\beta\log(1 + e^{\beta x})\f$, and
/// \f$y = x\f$ where \f$\beta x >\f$ `threshold` (PyTorch's switch to the identity, which the
/// derivative follows: 1 there, \f$\sigma(\beta x)\f$ elsewhere).
struct SoftplusConfig {
  static constexpr const char* name = "softplus";  ///< the op's name in messages
  static constexpr bool saves_output = false;      ///< the fused backward reads `x`
  double beta = 1.0;                               ///< \f$\beta\f$
  double threshold = 20.0;  ///< the identity where \f$\beta x\f$ exceeds it
  /// Term scales of the staged backward.
  struct Terms {
    double dsigmoid =
        1;  ///< softplus.dsigmoid: \f$\sigma(\beta x)\f$ where \f$\beta x \le\f$ threshold
    double didentity = 1;  ///< softplus.didentity: 1 where \f$\beta x >\f$ threshold
  };
  /// \throws InvalidArgument if `beta` is 0 or not finite, or `threshold` is NaN (meaningless:
  /// \f$1/\beta\f$, and a comparison that is always false).
  void validate() const {
    if (!std::isfinite(beta) || beta == 0 || std::isnan(threshold)) {
      std::ostringstream msg;
      msg << "softplus: beta must be finite and nonzero and threshold not NaN; got beta " << beta
          << ", threshold " << threshold;
      throw InvalidArgument(msg.str());
    }
  }
  /// The forward on one scalar.
  template <class S>
  S value(const S& x) const {
    //! [softplus.forward]
    const S bx = x * S(beta);
    if (detail::act::real_value(bx) > threshold) return x;  // the identity above the threshold
    return detail::act::log1p_exp(bx) / S(beta);
    //! [softplus.forward]
  }
  /// The forward on an Eigen array \f$x\f$ (n) into \f$y\f$ (n).
  template <class A, class O>
  void array(const A& x, O&& y) const {
    using T = typename A::Scalar;
    y = (x * T(beta) > T(threshold)).select(x, (x * T(beta)).exp().log1p() / T(beta));
  }
  /// The staged derivative times `dy` at one value.
  template <class S>
  S staged(const S& x, const S& dy, const Terms& t) const {
    const bool identity = x * S(beta) > S(threshold);
    //! [softplus.dsigmoid]
    // d/dx log(1 + e^{βx})/β = e^{βx}/(1 + e^{βx}) = σ(βx), on βx ≤ threshold (the kink included)
    const S soft = S(t.dsigmoid) * (identity ? S(0) : detail::act::sigmoid(x * S(beta)));
    //! [softplus.dsigmoid]
    //! [softplus.didentity]
    const S ident = S(t.didentity) * (identity ? S(1) : S(0));  // d/dx x = 1 on βx > threshold
    //! [softplus.didentity]
    //! [softplus.dx]
    return dy * (soft + ident);
    //! [softplus.dx]
  }
  /// The fused backward on Eigen arrays: `dy` (n), `x` (n) into `dx` (n).
  template <class A, class B, class O>
  void fused(const A& dy, const B& x, O&& dx) const {
    using T = typename A::Scalar;
    //! [softplus.dx_fused]
    // σ(βx) as 1/(1 + e^{−βx}): no inf/inf where e^{βx} overflows (PyTorch's z/(z + 1) would)
    dx = (x * T(beta) > T(threshold)).select(dy, dy / (T(1) + (x * T(-beta)).exp()));
    //! [softplus.dx_fused]
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
/// Chunks of this many values: each thread's share of a large tensor is many chunks, and a
/// chunk's arrays (three of 64 KiB in `float`) stay in the L2 cache between Eigen's passes.
constexpr Index kChunk = 1 << 14;

/// Calls `body(begin, count)` on consecutive chunks of `[0, n)`, over the threads
/// (parallel::parallel_for). Each value is computed from its own inputs alone, so the result has
/// the same bits at any thread count.
template <class Body>
void chunked(Index n, const Body& body) {
  const Index chunks = (n + kChunk - 1) / kChunk;
  parallel::parallel_for(chunks, n,
                         [&](Index c) { body(c * kChunk, std::min(kChunk, n - c * kChunk)); });
}

template <class Scalar, class Config>
void check_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& other,
                    const ActivationCache<Config>& cache, const char* other_name) {
  if (!same_shape(other.shape(), cache.shape)) {
    std::ostringstream msg;
    msg << Config::name << ": cache was made for an input of shape " << to_string(cache.shape)
        << " but " << other_name << " has shape " << to_string(other.shape());
    throw InvalidArgument(msg.str());
  }
  require_shape(dy, cache.shape, Config::name, "dy (must match x)");
}
}  // namespace detail::act

/// \brief Forward pass writing into a caller-provided `y`; allocates nothing when `cache` is
/// reused.
/// \tparam Scalar `float`, `double`, `long double`, `std::complex` or a dual number.
/// \param x      input, any shape
/// \param cfg    the activation and its parameters (e.g. `LeakyReluConfig{.negative_slope =
/// 0.2}`) \param y      output, preallocated with the shape of `x`; may be `x` itself \param
/// cache  output: the shape and `cfg` \throws InvalidArgument on a bad parameter or `y` not of
/// the shape of `x`.
template <class Scalar, class Config>
void activation_forward_into(const Tensor<Scalar>& x, const Config& cfg, Tensor<Scalar>& y,
                             ActivationCache<Config>& cache) {
  cfg.validate();
  require_shape(y, x.shape(), Config::name, "y (output)");
  if (!same_shape(cache.shape, x.shape())) cache.shape = x.shape();
  cache.cfg = cfg;
  if constexpr (std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>) {
    detail::act::chunked(x.size(), [&](Index b, Index m) {
      cfg.array(x.flat().segment(b, m), y.flat().segment(b, m));
    });
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
ActivationGrads<Scalar> activation_backward_staged(const Tensor<Scalar>& dy,
                                                   const Tensor<Scalar>& x,
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
  detail::act::chunked(dx.size(), [&](Index b, Index m) {
    cache.cfg.fused(dy.flat().segment(b, m), saved.flat().segment(b, m), dx.flat().segment(b, m));
  });
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
