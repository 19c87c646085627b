/// \file
/// \brief Layer normalization: forward, staged and fused backward.
///
/// Semantics of PyTorch's `LayerNorm(normalized_shape, eps, elementwise_affine, bias)`: the
/// statistics are taken over the trailing axes given by `normalized_shape`, separately for every
/// index of the leading axes; \f$\gamma\f$ and \f$\beta\f$ (optional, independently) have the
/// shape `normalized_shape`, one value per element of the normalized set.
///
/// Shape legend:
/// - `x`, `y`, `dy`, `dx`: rank 2 to 4, ending in `normalized_shape`, row-major;
/// - \f$M\f$ = `prod(normalized_shape)`: values per statistic (one set \f$S\f$ = one row);
/// - \f$R\f$ = `numel(x) / M`: number of rows (the product of the leading axes, 1 if none);
/// - `gamma`, `beta`, `dgamma`, `dbeta`: `normalized_shape`; statistics: `(R)`.
///
/// A layer-norm set is a contiguous row of \f$M\f$ values, so the computation is the family's
/// core (normalization.hpp) with NormSets `{R, M, period = 1, run = 1}`: \f$\gamma_j\f$ scales
/// position \f$j\f$ of every row. Every formula id `ln.*` marks the call that implements
/// that term for layer norm; the derivation is `derivations/layernorm.md`.
#pragma once

#include "gradproof/ops/normalization.hpp"

namespace gradproof::ops {

/// Hyper-parameters of layer normalization (PyTorch defaults).
struct LayerNormConfig {
  /// The trailing axes normalized over, e.g. `{C}` for `(N, T, C)` or `{C, H, W}` for `(N, C, H, W)`.
  Shape normalized_shape;
  /// Added to the variance before the square root; must be finite and > 0.
  double eps = 1e-5;
};

namespace norm::detail {

constexpr const char* kLayerNorm = "layernorm";

/// The sets of layer norm for an input of `shape`, after checking rank, emptiness and that
/// `shape` ends in `normalized_shape`.
inline NormSets layernorm_sets(const Shape& shape, const Shape& normalized, const char* op = kLayerNorm) {
  const auto rank = shape.size();
  if (rank < 2 || rank > 4) {
    std::ostringstream msg;
    msg << op << ": x must have rank 2, 3 or 4; got rank " << rank << " with shape " << to_string(shape);
    throw InvalidArgument(msg.str());
  }
  if (numel(shape) == 0) {
    std::ostringstream msg;
    msg << op << ": x must not be empty; got shape " << to_string(shape);
    throw InvalidArgument(msg.str());
  }
  if (normalized.empty()) {
    throw InvalidArgument(std::string(op) + ": normalized_shape must have at least 1 axis; got ()");
  }
  const bool trailing = normalized.size() <= rank &&
                        std::equal(normalized.begin(), normalized.end(), shape.end() - static_cast<long>(normalized.size()));
  if (!trailing) {
    std::ostringstream msg;
    msg << op << ": x must end in normalized_shape " << to_string(normalized) << ", i.e. have shape (*";
    for (Index d : normalized) msg << ", " << d;
    msg << "); got " << to_string(shape);
    throw InvalidArgument(msg.str());
  }
  NormSets s;
  s.M = numel(normalized);
  s.R = numel(shape) / s.M;
  s.period = 1;
  s.run = 1;
  return s;
}

/// \brief The sets a layer-norm (or RMS-norm) forward pass made for an input of `shape`, from
/// the `normalized_shape` a cache records (its `param_shape`), after checking that `shape` ends
/// in it: for a backward pass, whose `x` has been checked against the cache's shape.
/// \throws InvalidArgument naming the cache when its `normalized_shape` is empty or not trailing.
template <class Cache>
NormSets layernorm_cache_sets(const char* op, const Shape& shape, const Cache& cache) {
  const Shape& normalized = cache.param_shape;
  const bool trailing = !normalized.empty() && normalized.size() <= shape.size() &&
                        std::equal(normalized.begin(), normalized.end(), shape.end() - static_cast<long>(normalized.size()));
  if (!trailing) {
    std::ostringstream msg;
    msg << op << ": cache has normalized_shape " << to_string(normalized) << ", which x of shape " << to_string(shape)
        << " does not end in";
    throw InvalidArgument(msg.str());
  }
  return layernorm_sets(shape, normalized, op);
}

/// layernorm_cache_sets() for the NormCache of layer norm.
template <class Scalar>
NormSets ln_cache_sets(const char* op, const Shape& shape, const NormCache<Scalar>& cache) {
  return layernorm_cache_sets(op, shape, cache);
}

}  // namespace norm::detail

/// \brief Forward pass writing into caller-provided `y` and `cache`; allocation-free when the
/// cache is reused for inputs of the same number of rows.
///
/// \f[
///   \mu_r = \frac1M \sum_j x_{r,j},\quad \sigma^2_r = \frac1M \sum_j (x_{r,j}-\mu_r)^2,\quad
///   \hat x_{r,j} = \frac{x_{r,j}-\mu_r}{\sqrt{\sigma^2_r+\varepsilon}},\quad
///   y_{r,j} = \gamma_j\hat x_{r,j} + \beta_j .
/// \f]
/// A row of one value (`normalized_shape` = `(1)`) is allowed, as in PyTorch: \f$\sigma^2 = 0\f$,
/// \f$\hat x = 0\f$, \f$y = \beta\f$.
///
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number.
/// \param x      input of rank 2 to 4 ending in `cfg.normalized_shape`
/// \param gamma  `normalized_shape` scale, or `nullptr` (\f$\gamma = 1\f$)
/// \param beta   `normalized_shape` shift, or `nullptr` (\f$\beta = 0\f$)
/// \param cfg    `normalized_shape` and \f$\varepsilon\f$
/// \param y      output, preallocated with the shape of `x`; may be `x` (in place), no other argument
/// \param cache  output: `(R)` statistics and what the backward pass needs
/// \throws InvalidArgument on a rank outside [2, 4], an empty `x`, an empty `normalized_shape` or
///         one that `x` does not end in, `gamma`/`beta` not of shape `normalized_shape`, `eps`
///         not finite and > 0, or `y` not of the shape of `x`.
template <class Scalar>
void layernorm_forward_into(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma, Opt<const Tensor<Scalar>> beta,
                            const LayerNormConfig& cfg, Tensor<Scalar>& y, NormCache<Scalar>& cache) {
  using namespace norm::detail;
  const NormSets s = layernorm_sets(x.shape(), cfg.normalized_shape);
  require_optional_shape(gamma, cfg.normalized_shape, kLayerNorm, "gamma");
  require_optional_shape(beta, cfg.normalized_shape, kLayerNorm, "beta");
  require_positive_eps(cfg.eps, kLayerNorm);
  require_shape(y, x.shape(), kLayerNorm, "y (output)");
  check_forward_outputs(kLayerNorm, y, gamma, beta, cache);
  prepare_cache(cache, kLayerNorm, s, x.shape(), cfg.normalized_shape, true, gamma != nullptr, beta != nullptr);
  //! [ln.forward]
  // Each row r (one index of the leading axes) is a set of M = prod(normalized_shape) values:
  // μ_r, σ²_r over the row, x̂ = (x − μ_r)/√(σ²_r + ε), y_{r,j} = γ_j x̂_{r,j} + β_j
  // (γ, β elementwise).
  norm::forward_kernel(s, x.data(), data_or_null(gamma), data_or_null(beta), cfg.eps, y.data(),
                       cache.mean.data(), cache.var.data(), cache.invstd.data(),
                       cache.mean_residual.data());
  //! [ln.forward]
}

/// \brief Forward pass (allocating wrapper of layernorm_forward_into()).
/// \return `y` of the shape of `x`, and the cache for the backward pass.
template <class Scalar>
NormForward<Scalar> layernorm_forward(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                      Opt<const Tensor<Scalar>> beta, const LayerNormConfig& cfg) {
  NormForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  layernorm_forward_into(x, gamma, beta, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: one named step per chain-rule term, each marked with its ln formula id.
///
/// This is the version to read next to the derivation; it keeps every intermediate and is not
/// fast.
/// \param dy      upstream gradient \f$\partial L/\partial y\f$, shape of `x`
/// \param x       the forward input
/// \param gamma   `normalized_shape` scale, or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param scales  term scales for negative controls; leave at the default
/// \param trace   if not `nullptr`, receives the intermediate terms
/// \return dx; dgamma if `gamma`; dbeta if the forward pass had \f$\beta\f$.
/// \throws InvalidArgument if `dy` does not match `x`, the cache was made for another input, or
///         `gamma` is absent/present unlike in the forward pass.
template <class Scalar>
NormGrads<Scalar> layernorm_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                            Opt<const Tensor<Scalar>> gamma, const NormCache<Scalar>& cache,
                                            const NormTermScales& scales = {},
                                            NormStagedTrace<Scalar>* trace = nullptr) {
  norm::detail::check_backward(norm::detail::kLayerNorm, dy, x, gamma, cache, norm::detail::ln_cache_sets<Scalar>);
  const NormSets& s = cache.sets;
  NormGrads<Scalar> g = norm::detail::allocate_grads(x, gamma, cache);

  // Step 0. The parameter gradients: γⱼ and βⱼ are shared by position j of every row.
  if (gamma) {
    //! [ln.dgamma]
    // ∂L/∂γⱼ = Σ_r dy_{r,j} x̂_{r,j}: a sum over the rows, one value per position of normalized_shape
    norm::steps::dgamma(s, dy, x, cache, g.dgamma);
    //! [ln.dgamma]
  }
  if (cache.has_beta) {
    //! [ln.dbeta]
    // ∂L/∂βⱼ = Σ_r dy_{r,j}
    norm::steps::dbeta(s, dy, g.dbeta);
    //! [ln.dbeta]
  }

  NormStagedTrace<Scalar> t = norm::steps::buffers<Scalar>(s, x.shape());
  // Step 1. ∂L/∂x̂.
  //! [ln.dl_dxhat]
  // ∂L/∂x̂_{r,j} = γⱼ ∂L/∂y_{r,j}: γ varies over the set (elementwise affine)
  norm::steps::dl_dxhat(s, dy, gamma, scales.dl_dxhat, t.dl_dxhat);
  //! [ln.dl_dxhat]

  // Step 2. ∂L/∂σ², one per row.
  //! [ln.dl_dvar]
  // ∂L/∂σ²_r = −½ (σ²_r + ε)^(−3/2) Σⱼ ∂L/∂x̂_{r,j} (x_{r,j} − μ_r)
  norm::steps::dl_dvar(s, x, cache, t.dl_dxhat, scales.dl_dvar, t.dl_dvar);
  //! [ln.dl_dvar]

  // Step 3. ∂σ²/∂μ with μ treated as its own node and x held fixed.
  //! [ln.dvar_dmu]
  // ∂σ²_r/∂μ_r = −(2/M) Σⱼ (x_{r,j} − μ_r) = 0: μ_r is the mean of the row σ²_r is taken over
  norm::steps::dvar_dmu(s, x, cache, scales.dvar_dmu, t.dvar_dmu);
  //! [ln.dvar_dmu]

  // Step 4. ∂L/∂μ, one per row.
  //! [ln.dl_dmu]
  // ∂L/∂μ_r = −(σ²_r + ε)^(−1/2) Σⱼ ∂L/∂x̂_{r,j} + ∂L/∂σ²_r · ∂σ²_r/∂μ_r
  norm::steps::dl_dmu(s, cache, t.dl_dxhat, t.dl_dvar, t.dvar_dmu, scales.dl_dmu, t.dl_dmu);
  //! [ln.dl_dmu]

  // Step 5. The local derivatives of the statistics in x.
  //! [ln.dvar_dx]
  // ∂σ²_r/∂x_{r,j} = 2(x_{r,j} − μ_r)/M, M = prod(normalized_shape)
  norm::steps::dvar_dx(s, x, cache, scales.dvar_dx, t.dvar_dx);
  //! [ln.dvar_dx]
  //! [ln.dmu_dx]
  // ∂μ_r/∂x_{r,j} = 1/M
  norm::steps::dmu_dx(s, scales.dmu_dx, t.dmu_dx);
  //! [ln.dmu_dx]

  // Step 6. Assemble ∂L/∂x from the three paths x → x̂, x → σ², x → μ.
  //! [ln.dx]
  // ∂L/∂x_{r,j} = ∂L/∂x̂_{r,j}/√(σ²_r + ε) + ∂L/∂σ²_r · ∂σ²_r/∂x_{r,j} + ∂L/∂μ_r · ∂μ_r/∂x_{r,j}
  norm::steps::dx(s, cache, t, g.dx);
  //! [ln.dx]
  if (trace) *trace = std::move(t);
  return g;
}

/// \brief Fused backward pass writing into caller-provided outputs; allocates nothing.
///
/// \f[ dx_{r,j} = \frac{1}{M\sqrt{\sigma^2_r+\varepsilon}}
///     \Big(M g_{r,j} - \sum_k g_{r,k} - \hat x_{r,j} \sum_k g_{r,k}\hat x_{r,k}\Big),
///     \qquad g_{r,j} = \gamma_j\,dy_{r,j}, \f]
/// two passes per row for dx, a third when dγ or dβ is requested, and no temporaries of the
/// input's size.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param gamma   `normalized_shape` scale, or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param dx      output, preallocated with the shape of `x`; may be `dy` or `x` (in place), no other argument
/// \param dgamma  output `normalized_shape`, or `nullptr` to skip (must be `nullptr` when `gamma` is)
/// \param dbeta   output `normalized_shape`, or `nullptr` to skip (must be `nullptr` without \f$\beta\f$)
/// \throws InvalidArgument on mismatched shapes of any argument or output, outputs that alias
///         each other, `gamma` or the cache, or a cache that a forward pass of this op on an
///         input of the shape of `x` did not make.
template <class Scalar>
void layernorm_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                             const NormCache<Scalar>& cache, Tensor<Scalar>& dx, Opt<Tensor<Scalar>> dgamma,
                             Opt<Tensor<Scalar>> dbeta) {
  using namespace norm::detail;
  check_backward(kLayerNorm, dy, x, gamma, cache, ln_cache_sets<Scalar>);
  check_outputs(kLayerNorm, dy, x, gamma, cache, dx, dgamma, dbeta);
  //! [ln.dx_fused]
  // dx_{r,j} = (1/(M√(σ²_r+ε))) · (M g_{r,j} − Σ_k g_{r,k} − x̂_{r,j} Σ_k g_{r,k} x̂_{r,k}),
  // g_{r,j} = γⱼ dy_{r,j};
  // γ varies along the row, so it sits inside both sums. Two passes per row.
  norm::backward_kernel(cache.sets, dy.data(), x.data(), data_or_null(gamma), cache, dx.data(),
                        dgamma ? dgamma->data() : nullptr, dbeta ? dbeta->data() : nullptr);
  //! [ln.dx_fused]
}

/// \brief Fused backward pass (allocating wrapper of layernorm_backward_into()).
/// \return dx; dgamma if `gamma`; dbeta if the forward pass had \f$\beta\f$.
template <class Scalar>
NormGrads<Scalar> layernorm_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                     const NormCache<Scalar>& cache) {
  // The cache is checked before its shapes size any allocation.
  norm::detail::check_backward(norm::detail::kLayerNorm, dy, x, gamma, cache, norm::detail::ln_cache_sets<Scalar>);
  NormGrads<Scalar> g = norm::detail::allocate_grads(x, gamma, cache);
  layernorm_backward_into(dy, x, gamma, cache, g.dx, gamma ? &g.dgamma : nullptr, cache.has_beta ? &g.dbeta : nullptr);
  return g;
}

}  // namespace gradproof::ops

/// \cond INTERNAL
#define GRADPROOF_LAYERNORM_INSTANTIATE(PREFIX, S)                                                                \
  PREFIX template void layernorm_forward_into<S>(const Tensor<S>&, const Tensor<S>*, const Tensor<S>*,           \
                                                 const LayerNormConfig&, Tensor<S>&, NormCache<S>&);             \
  PREFIX template NormForward<S> layernorm_forward<S>(const Tensor<S>&, const Tensor<S>*, const Tensor<S>*,      \
                                                      const LayerNormConfig&);                                    \
  PREFIX template NormGrads<S> layernorm_backward_staged<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*, \
                                                            const NormCache<S>&, const NormTermScales&,          \
                                                            NormStagedTrace<S>*);                                 \
  PREFIX template void layernorm_backward_into<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,          \
                                                  const NormCache<S>&, Tensor<S>&, Tensor<S>*, Tensor<S>*);       \
  PREFIX template NormGrads<S> layernorm_backward<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,       \
                                                     const NormCache<S>&);
namespace gradproof::ops {
GRADPROOF_LAYERNORM_INSTANTIATE(extern, float)
GRADPROOF_LAYERNORM_INSTANTIATE(extern, double)
}  // namespace gradproof::ops
/// \endcond
