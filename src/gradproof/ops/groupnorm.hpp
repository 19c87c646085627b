/// \file
/// \brief Group normalization: forward, staged and fused backward.
///
/// Semantics of PyTorch's `GroupNorm(num_groups, num_channels, eps, affine)`: the `C` channels
/// are split into `G` groups of `C/G` consecutive channels; the statistics are taken over the
/// \f$(C/G)\cdot L\f$ values of one group of one sample; \f$\gamma\f$ and \f$\beta\f$ (optional)
/// have one value per channel.
///
/// Shape legend:
/// - `N` batch, `C` channels, `G` groups, `L` spatial positions (1 for rank 2, `L` for rank 3,
///   `H·W` for rank 4);
/// - `x`, `y`, `dy`, `dx`: `(N, C)`, `(N, C, L)` or `(N, C, H, W)`, row-major;
/// - \f$M = (C/G)\cdot L\f$: values per statistic; set \f$(n, g)\f$ is row \f$r = nG + g\f$;
/// - `gamma`, `beta`, `dgamma`, `dbeta`: `(C)`; statistics: `(N·G)`.
///
/// In row-major order the channels of one group of one sample are contiguous, so a group-norm
/// set is a contiguous block: the family's core (normalization.hpp) with NormSets
/// `{N·G, (C/G)·L, period = G, run = L}`. \f$\gamma\f$ is constant on each run of \f$L\f$
/// values (one channel) but varies across the channels of a group. Every formula id
/// `gn.*` marks the call that implements that term for group norm; the derivation is
/// `derivations/groupnorm.md`.
#pragma once

#include "gradproof/ops/normalization.hpp"

namespace gradproof::ops {

/// Hyper-parameters of group normalization (PyTorch defaults where PyTorch has one).
struct GroupNormConfig {
  /// Number of groups `G`; must be > 0 and divide the number of channels. (No default, as in PyTorch.)
  Index num_groups = 0;
  /// Added to the variance before the square root; must be finite and > 0.
  double eps = 1e-5;
};

namespace norm::detail {

constexpr const char* kGroupNorm = "groupnorm";

/// The sets of group norm for an input of `shape` with `groups` groups, after the checks PyTorch makes.
inline NormSets groupnorm_sets(const Shape& shape, Index groups) {
  const NCL d = ncl_view(shape, kGroupNorm, "x");
  if (groups <= 0) {
    std::ostringstream msg;
    msg << kGroupNorm << ": num_groups must be > 0; got " << groups;
    throw InvalidArgument(msg.str());
  }
  if (d.C % groups != 0) {
    std::ostringstream msg;
    msg << kGroupNorm << ": the number of channels C = " << d.C << " (x has shape " << to_string(shape)
        << ") must be divisible by num_groups = " << groups;
    throw InvalidArgument(msg.str());
  }
  // PyTorch's F.group_norm refuses exactly this case (its batch-size check on the view
  // (N·C/G, G, L)): a single value per group across the whole batch. A group of one value with
  // N > 1 is accepted there and here (σ² = 0, x̂ = 0, y = β).
  if (d.N * (d.C / groups) * d.L == 1) {
    std::ostringstream msg;
    msg << kGroupNorm << ": expected more than 1 value per group across the batch, N*(C/G)*L > 1, as PyTorch does; x has shape "
        << to_string(shape) << " and num_groups = " << groups << ", so N*(C/G)*L = 1";
    throw InvalidArgument(msg.str());
  }
  NormSets s;
  s.R = d.N * groups;
  s.M = (d.C / groups) * d.L;
  s.period = groups;
  s.run = d.L;
  return s;
}

/// The sets a group-norm forward pass made for an input of `shape` with the cache's number of
/// groups (its sets' period), and its `(C)` parameter shape; for a backward pass.
/// \throws InvalidArgument naming the cache when its groups or parameter shape cannot be.
template <class Scalar>
NormSets gn_cache_sets(const char* op, const Shape& shape, const NormCache<Scalar>& cache) {
  const NCL d = ncl_view(shape, op, "x");
  const Index groups = cache.sets.period;
  if (groups < 1 || d.C % groups != 0 || !same_shape(cache.param_shape, vector_shape(d.C))) {
    std::ostringstream msg;
    msg << op << ": cache has num_groups = " << groups << " and parameter shape " << to_string(cache.param_shape)
        << ", which no forward pass on x of shape " << to_string(shape) << " makes (expected a divisor of C = " << d.C
        << " and " << to_string(vector_shape(d.C)) << ")";
    throw InvalidArgument(msg.str());
  }
  return {d.N * groups, (d.C / groups) * d.L, groups, d.L};
}

}  // namespace norm::detail

/// \brief Forward pass writing into caller-provided `y` and `cache`; allocation-free when the
/// cache is reused.
///
/// For sample \f$n\f$ and group \f$g\f$, with \f$i\f$ over its \f$M = (C/G)L\f$ values and
/// \f$c(i)\f$ the channel of value \f$i\f$:
/// \f[
///   \mu_{ng} = \frac1M \sum_i x_i,\quad \sigma^2_{ng} = \frac1M \sum_i (x_i-\mu_{ng})^2,\quad
///   y_i = \gamma_{c(i)}\frac{x_i-\mu_{ng}}{\sqrt{\sigma^2_{ng}+\varepsilon}} + \beta_{c(i)} .
/// \f]
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number.
/// \param x      `(N, C[, L | H, W])` input
/// \param gamma  `(C)` scale, or `nullptr` (\f$\gamma = 1\f$)
/// \param beta   `(C)` shift, or `nullptr` (\f$\beta = 0\f$)
/// \param cfg    `num_groups` and \f$\varepsilon\f$
/// \param y      output, preallocated with the shape of `x`; may be `x` (in place), no other argument
/// \param cache  output: `(N·G)` statistics and what the backward pass needs
/// \throws InvalidArgument on a rank outside [2, 4], an empty `x`, `num_groups` <= 0 or not
///         dividing `C`, \f$N\cdot(C/G)\cdot L = 1\f$ (refused by PyTorch), `gamma`/`beta` not
///         `(C)`, `eps` not finite and > 0, or `y` not of the shape of `x`.
template <class Scalar>
void groupnorm_forward_into(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma, Opt<const Tensor<Scalar>> beta,
                            const GroupNormConfig& cfg, Tensor<Scalar>& y, NormCache<Scalar>& cache) {
  using namespace norm::detail;
  const NormSets s = groupnorm_sets(x.shape(), cfg.num_groups);
  const auto channels = vector_shape(x.shape()[1]);
  require_optional_shape(gamma, channels, kGroupNorm, "gamma");
  require_optional_shape(beta, channels, kGroupNorm, "beta");
  require_positive_eps(cfg.eps, kGroupNorm);
  require_shape(y, x.shape(), kGroupNorm, "y (output)");
  check_forward_outputs(kGroupNorm, y, gamma, beta, cache);
  prepare_cache(cache, kGroupNorm, s, x.shape(), channels, true, gamma != nullptr, beta != nullptr);
  //! [gn.forward]
  // Each (sample n, group g) is a set of M = (C/G)·L contiguous values: μ_ng, σ²_ng over the set,
  // x̂ = (x − μ_ng)/√(σ²_ng + ε), y = γ_c x̂ + β_c with c the channel of the value (γ per channel).
  norm::forward_kernel(s, x.data(), data_or_null(gamma), data_or_null(beta), cfg.eps, y.data(),
                       cache.mean.data(), cache.var.data(), cache.invstd.data(),
                       cache.mean_residual.data());
  //! [gn.forward]
}

/// \brief Forward pass (allocating wrapper of groupnorm_forward_into()).
/// \return `y` of the shape of `x`, and the cache for the backward pass.
template <class Scalar>
NormForward<Scalar> groupnorm_forward(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                      Opt<const Tensor<Scalar>> beta, const GroupNormConfig& cfg) {
  NormForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  groupnorm_forward_into(x, gamma, beta, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: one named step per chain-rule term, each marked with its gn formula id.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param gamma   `(C)` scale, or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param scales  term scales for negative controls; leave at the default
/// \param trace   if not `nullptr`, receives the intermediate terms (per-set terms are `(N·G)`)
/// \return dx; dgamma if `gamma`; dbeta if the forward pass had \f$\beta\f$.
/// \throws InvalidArgument if `dy` does not match `x`, the cache was made for another input, or
///         `gamma` is absent/present unlike in the forward pass.
template <class Scalar>
NormGrads<Scalar> groupnorm_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                            Opt<const Tensor<Scalar>> gamma, const NormCache<Scalar>& cache,
                                            const NormTermScales& scales = {},
                                            NormStagedTrace<Scalar>* trace = nullptr) {
  norm::detail::check_backward(norm::detail::kGroupNorm, dy, x, gamma, cache, norm::detail::gn_cache_sets<Scalar>);
  const NormSets& s = cache.sets;
  NormGrads<Scalar> g = norm::detail::allocate_grads(x, gamma, cache);

  // Step 0. The parameter gradients: γ_c and β_c are shared by every value of channel c.
  if (gamma) {
    //! [gn.dgamma]
    // ∂L/∂γ_c = Σ_{n, l} dy_{n,c,l} x̂_{n,c,l}, with x̂ normalised by the statistics of c's group
    norm::steps::dgamma(s, dy, x, cache, g.dgamma);
    //! [gn.dgamma]
  }
  if (cache.has_beta) {
    //! [gn.dbeta]
    // ∂L/∂β_c = Σ_{n, l} dy_{n,c,l}
    norm::steps::dbeta(s, dy, g.dbeta);
    //! [gn.dbeta]
  }

  NormStagedTrace<Scalar> t = norm::steps::buffers<Scalar>(s, x.shape());
  // Step 1. ∂L/∂x̂.
  //! [gn.dl_dxhat]
  // ∂L/∂x̂ᵢ = γ_{c(i)} ∂L/∂yᵢ: γ is per channel, so it varies across the C/G channels of a group
  norm::steps::dl_dxhat(s, dy, gamma, scales.dl_dxhat, t.dl_dxhat);
  //! [gn.dl_dxhat]

  // Step 2. ∂L/∂σ², one per (sample, group).
  //! [gn.dl_dvar]
  // ∂L/∂σ²_ng = −½ (σ²_ng + ε)^(−3/2) Σ_{i∈(n,g)} ∂L/∂x̂ᵢ (xᵢ − μ_ng)
  norm::steps::dl_dvar(s, x, cache, t.dl_dxhat, scales.dl_dvar, t.dl_dvar);
  //! [gn.dl_dvar]

  // Step 3. ∂σ²/∂μ with μ treated as its own node and x held fixed.
  //! [gn.dvar_dmu]
  // ∂σ²_ng/∂μ_ng = −(2/M) Σ_{i∈(n,g)} (xᵢ − μ_ng) = 0: μ_ng is the mean of the group σ²_ng
  // is taken over
  norm::steps::dvar_dmu(s, x, cache, scales.dvar_dmu, t.dvar_dmu);
  //! [gn.dvar_dmu]

  // Step 4. ∂L/∂μ, one per (sample, group).
  //! [gn.dl_dmu]
  // ∂L/∂μ_ng = −(σ²_ng + ε)^(−1/2) Σ_{i∈(n,g)} ∂L/∂x̂ᵢ + ∂L/∂σ²_ng · ∂σ²_ng/∂μ_ng
  norm::steps::dl_dmu(s, cache, t.dl_dxhat, t.dl_dvar, t.dvar_dmu, scales.dl_dmu, t.dl_dmu);
  //! [gn.dl_dmu]

  // Step 5. The local derivatives of the statistics in x.
  //! [gn.dvar_dx]
  // ∂σ²_ng/∂xᵢ = 2(xᵢ − μ_ng)/M, M = (C/G)·L
  norm::steps::dvar_dx(s, x, cache, scales.dvar_dx, t.dvar_dx);
  //! [gn.dvar_dx]
  //! [gn.dmu_dx]
  // ∂μ_ng/∂xᵢ = 1/M
  norm::steps::dmu_dx(s, scales.dmu_dx, t.dmu_dx);
  //! [gn.dmu_dx]

  // Step 6. Assemble ∂L/∂x from the three paths x → x̂, x → σ², x → μ.
  //! [gn.dx]
  // ∂L/∂xᵢ = ∂L/∂x̂ᵢ/√(σ²_ng + ε) + ∂L/∂σ²_ng · ∂σ²_ng/∂xᵢ + ∂L/∂μ_ng · ∂μ_ng/∂xᵢ
  norm::steps::dx(s, cache, t, g.dx);
  //! [gn.dx]
  if (trace) *trace = std::move(t);
  return g;
}

/// \brief Fused backward pass writing into caller-provided outputs; allocates nothing.
///
/// Per (sample, group): \f$dx_i = \frac{1}{M\sqrt{\sigma^2+\varepsilon}}
/// (M g_i - \sum_j g_j - \hat x_i\sum_j g_j\hat x_j)\f$ with \f$g_i = \gamma_{c(i)}\,dy_i\f$.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param gamma   `(C)` scale, or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param dx      output, preallocated with the shape of `x`; may be `dy` or `x` (in place), no other argument
/// \param dgamma  output `(C)`, or `nullptr` to skip (must be `nullptr` when `gamma` is)
/// \param dbeta   output `(C)`, or `nullptr` to skip (must be `nullptr` without \f$\beta\f$)
/// \throws InvalidArgument on mismatched shapes of any argument or output, outputs that alias
///         each other, `gamma` or the cache, or a cache that a forward pass of this op on an
///         input of the shape of `x` did not make.
template <class Scalar>
void groupnorm_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                             const NormCache<Scalar>& cache, Tensor<Scalar>& dx, Opt<Tensor<Scalar>> dgamma,
                             Opt<Tensor<Scalar>> dbeta) {
  using namespace norm::detail;
  check_backward(kGroupNorm, dy, x, gamma, cache, gn_cache_sets<Scalar>);
  check_outputs(kGroupNorm, dy, x, gamma, cache, dx, dgamma, dbeta);
  //! [gn.dx_fused]
  // dxᵢ = (1/(M√(σ²_ng+ε))) · (M gᵢ − Σⱼ gⱼ − x̂ᵢ Σⱼ gⱼ x̂ⱼ) over the group's M = (C/G)·L values,
  // gᵢ = γ_{c(i)} dyᵢ: Σg = Σ_c γ_c Σ_l dy, one channel (run of L values) at a time.
  // Two passes per group.
  norm::backward_kernel(cache.sets, dy.data(), x.data(), data_or_null(gamma), cache, dx.data(),
                        dgamma ? dgamma->data() : nullptr, dbeta ? dbeta->data() : nullptr);
  //! [gn.dx_fused]
}

/// \brief Fused backward pass (allocating wrapper of groupnorm_backward_into()).
/// \return dx; dgamma if `gamma`; dbeta if the forward pass had \f$\beta\f$.
template <class Scalar>
NormGrads<Scalar> groupnorm_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                     const NormCache<Scalar>& cache) {
  // The cache is checked before its shapes size any allocation.
  norm::detail::check_backward(norm::detail::kGroupNorm, dy, x, gamma, cache, norm::detail::gn_cache_sets<Scalar>);
  NormGrads<Scalar> g = norm::detail::allocate_grads(x, gamma, cache);
  groupnorm_backward_into(dy, x, gamma, cache, g.dx, gamma ? &g.dgamma : nullptr, cache.has_beta ? &g.dbeta : nullptr);
  return g;
}

}  // namespace gradproof::ops

/// \cond INTERNAL
#define GRADPROOF_GROUPNORM_INSTANTIATE(PREFIX, S)                                                                \
  PREFIX template void groupnorm_forward_into<S>(const Tensor<S>&, const Tensor<S>*, const Tensor<S>*,           \
                                                 const GroupNormConfig&, Tensor<S>&, NormCache<S>&);             \
  PREFIX template NormForward<S> groupnorm_forward<S>(const Tensor<S>&, const Tensor<S>*, const Tensor<S>*,      \
                                                      const GroupNormConfig&);                                    \
  PREFIX template NormGrads<S> groupnorm_backward_staged<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*, \
                                                            const NormCache<S>&, const NormTermScales&,          \
                                                            NormStagedTrace<S>*);                                 \
  PREFIX template void groupnorm_backward_into<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,          \
                                                  const NormCache<S>&, Tensor<S>&, Tensor<S>*, Tensor<S>*);       \
  PREFIX template NormGrads<S> groupnorm_backward<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,       \
                                                     const NormCache<S>&);
namespace gradproof::ops {
GRADPROOF_GROUPNORM_INSTANTIATE(extern, float)
GRADPROOF_GROUPNORM_INSTANTIATE(extern, double)
}  // namespace gradproof::ops
/// \endcond
