/// \file
/// \brief Instance normalization (1d and 2d): forward (instance or running statistics), staged
/// and fused backward.
///
/// Semantics of PyTorch's `InstanceNorm1d` / `InstanceNorm2d(num_features, eps, momentum, affine,
/// track_running_stats)`: the statistics are taken over the spatial values of one channel of one
/// sample. Affine parameters and running statistics are optional and off by default, as in
/// PyTorch (pass `nullptr`). With running statistics, training updates them and eval normalises
/// with them; without, PyTorch uses the instance statistics in eval mode too, which is
/// instancenorm_forward_train() with `running = nullptr`.
///
/// Shape legend:
/// - `N` batch, `C` channels, `L` length (InstanceNorm1d) or `H·W` (InstanceNorm2d);
/// - `x`, `y`, `dy`, `dx`: `(N, C, L)` or `(N, C, H, W)`, row-major. PyTorch's unbatched
///   `(C, L)` / `(C, H, W)` inputs are the same computation with `N = 1`: add a leading axis;
/// - \f$M = L\f$: values per statistic; set \f$(n, c)\f$ is row \f$r = nC + c\f$;
/// - `gamma`, `beta`, running statistics and the parameter gradients: `(C)`; statistics: `(N·C)`.
///
/// An instance-norm set is the contiguous run of \f$L\f$ values of one (sample, channel): the
/// family's core (normalization.hpp) with NormSets `{N·C, L, period = C, run = L}`, and
/// \f$\gamma\f$ is constant over every set. Every formula id `in.*` marks the call that
/// implements that term for instance norm; the derivation is `derivations/instancenorm.md`.
#pragma once

#include "gradproof/ops/normalization.hpp"

namespace gradproof::ops {

/// Hyper-parameters of instance normalization (PyTorch defaults).
///
/// PyTorch also accepts `momentum=None`, but its `InstanceNorm` then passes 0 to the kernel, which
/// freezes the running statistics (unlike batch norm, where `None` means a cumulative average).
/// gradproof does not reproduce that silently: pass 0 for frozen statistics.
struct InstanceNormConfig {
  /// Added to the variance before the square root; must be finite and > 0.
  double eps = 1e-5;
  /// Weight of the new batch in the running statistics, in [0, 1]; used only with running statistics.
  double momentum = 0.1;
};

/// Running statistics of instance normalization (`track_running_stats=True`).
/// \tparam Scalar `float` or `double`.
template <class Scalar>
struct InstanceNormRunningStats {
  Tensor<Scalar> mean;  ///< `(C)`, starts at 0
  Tensor<Scalar> var;   ///< `(C)`, average of the unbiased instance variances, starts at 1

  /// Fresh statistics for `channels` channels (mean 0, variance 1, as PyTorch initialises them).
  static InstanceNormRunningStats fresh(Index channels) {
    return {Tensor<Scalar>({channels}, Scalar(0)), Tensor<Scalar>({channels}, Scalar(1))};
  }
};

namespace norm::detail {

constexpr const char* kInstanceNorm = "instancenorm";

/// The sets of instance norm for an input of `shape`; `instance_stats` refuses one spatial value.
inline NormSets instancenorm_sets(const Shape& shape, bool instance_stats) {
  if (shape.size() != 3 && shape.size() != 4) {
    std::ostringstream msg;
    msg << kInstanceNorm << ": x must have rank 3 (N, C, L) or 4 (N, C, H, W); got rank " << shape.size()
        << " with shape " << to_string(shape)
        << " (an unbatched (C, L) or (C, H, W) input is the same as N = 1: add a leading axis)";
    throw InvalidArgument(msg.str());
  }
  const NCL d = ncl_view(shape, kInstanceNorm, "x");
  if (instance_stats && d.L < 2) {
    std::ostringstream msg;
    msg << kInstanceNorm << ": instance statistics need more than 1 spatial value per (sample, channel), "
        << "as in PyTorch; x has shape " << to_string(shape) << ", so L = " << d.L;
    throw InvalidArgument(msg.str());
  }
  NormSets s;
  s.R = d.N * d.C;
  s.M = d.L;
  s.period = d.C;
  s.run = d.L;
  return s;
}

/// Validates the arguments common to every forward pass; returns the sets.
template <class Scalar>
NormSets check_in_inputs(const Tensor<Scalar>& x, const Tensor<Scalar>* gamma, const Tensor<Scalar>* beta,
                         const InstanceNormRunningStats<Scalar>* running, const InstanceNormConfig& cfg,
                         bool instance_stats, const Tensor<Scalar>& y) {
  const NormSets s = instancenorm_sets(x.shape(), instance_stats);
  const auto channels = vector_shape(x.shape()[1]);
  require_optional_shape(gamma, channels, kInstanceNorm, "gamma");
  require_optional_shape(beta, channels, kInstanceNorm, "beta");
  require_positive_eps(cfg.eps, kInstanceNorm);
  if (!(cfg.momentum >= 0.0 && cfg.momentum <= 1.0)) {
    std::ostringstream msg;
    msg << kInstanceNorm << ": momentum must be in [0, 1]; got " << cfg.momentum;
    throw InvalidArgument(msg.str());
  }
  if (running) {
    require_shape(running->mean, channels, kInstanceNorm, "running mean");
    require_shape(running->var, channels, kInstanceNorm, "running var");
  }
  require_shape(y, x.shape(), kInstanceNorm, "y (output)");
  if (running) {
    require_distinct(kInstanceNorm, &running->mean, "running mean", gamma, "gamma");
    require_distinct(kInstanceNorm, &running->mean, "running mean", beta, "beta");
    require_distinct(kInstanceNorm, &running->var, "running var", gamma, "gamma");
    require_distinct(kInstanceNorm, &running->var, "running var", beta, "beta");
  }
  return s;
}

/// The sets an instance-norm forward pass made for an input of `shape`, and its `(C)` parameter
/// shape; for a backward pass.
/// \throws InvalidArgument naming the cache when its parameter shape is not `(C)`.
template <class Scalar>
NormSets in_cache_sets(const char* op, const Shape& shape, const NormCache<Scalar>& cache) {
  const NormSets s = instancenorm_sets(shape, false);
  if (!same_shape(cache.param_shape, vector_shape(s.period))) {
    std::ostringstream msg;
    msg << op << ": cache has parameter shape " << to_string(cache.param_shape) << " but x of shape "
        << to_string(shape) << " has " << to_string(vector_shape(s.period)) << " (one per channel)";
    throw InvalidArgument(msg.str());
  }
  return s;
}

}  // namespace norm::detail

/// \brief Training forward pass with instance statistics, writing into caller-provided `y` and
/// `cache`; updates the running statistics if given. Allocation-free when the cache is reused.
///
/// For sample \f$n\f$ and channel \f$c\f$, with \f$l\f$ over its \f$L\f$ spatial values:
/// \f[
///   \mu_{nc} = \frac1L \sum_l x_{ncl},\quad \sigma^2_{nc} = \frac1L \sum_l (x_{ncl}-\mu_{nc})^2,\quad
///   y_{ncl} = \gamma_c\frac{x_{ncl}-\mu_{nc}}{\sqrt{\sigma^2_{nc}+\varepsilon}} + \beta_c .
/// \f]
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number.
/// \param x        `(N, C, L)` or `(N, C, H, W)` input
/// \param gamma    `(C)` scale, or `nullptr` (PyTorch's default `affine=False`)
/// \param beta     `(C)` shift, or `nullptr`
/// \param running  running statistics to update, or `nullptr` (PyTorch's default `track_running_stats=False`)
/// \param cfg      \f$\varepsilon\f$ and momentum
/// \param y        output, preallocated with the shape of `x`; may be `x` (in place), no other argument
/// \param cache    output: `(N·C)` statistics and what the backward pass needs
/// \throws InvalidArgument on a rank other than 3 or 4, an empty `x`, a single spatial value
///         (\f$L = 1\f$: PyTorch refuses instance statistics of one value), `gamma`/`beta`/running
///         statistics not `(C)`, `eps` not finite and > 0, momentum outside [0, 1], or `y` not
///         of the shape of `x`.
template <class Scalar>
void instancenorm_forward_train_into(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                     Opt<const Tensor<Scalar>> beta, Opt<InstanceNormRunningStats<Scalar>> running,
                                     const InstanceNormConfig& cfg, Tensor<Scalar>& y, NormCache<Scalar>& cache) {
  using namespace norm::detail;
  const NormSets s = check_in_inputs(x, gamma, beta, running, cfg, true, y);
  check_forward_outputs(kInstanceNorm, y, gamma, beta, cache);
  prepare_cache(cache, kInstanceNorm, s, x.shape(), vector_shape(x.shape()[1]), true, gamma != nullptr,
                beta != nullptr);
  //! [in.forward]
  // Each (sample n, channel c) is a set of M = L contiguous values: μ_nc, σ²_nc over the set,
  // x̂ = (x − μ_nc)/√(σ²_nc + ε), y = γ_c x̂ + β_c (γ, β constant over the set).
  norm::forward_kernel(s, x.data(), data_or_null(gamma), data_or_null(beta), cfg.eps, y.data(),
                       cache.mean.data(), cache.var.data(), cache.invstd.data(),
                       cache.mean_residual.data());
  //! [in.forward]
  if (running) {
    //! [in.running_stats]
    // Per channel c: the instance statistics averaged over the batch, each variance made unbiased
    // per instance (σ²_nc · L/(L−1)), then r ← (1 − momentum)·r + momentum·new. (PyTorch runs
    // instance norm as batch norm on the (1, N·C, L) view with the running statistics repeated N
    // times, and then averages the N updated copies: the same numbers.)
    const Index C = s.period, N = s.R / C;
    const Scalar L = Scalar(static_cast<double>(s.M)), bessel = L / (L - Scalar(1));
    const Scalar m = Scalar(cfg.momentum);
    for (Index c = 0; c < C; ++c) {
      Scalar mean = Scalar(0), var = Scalar(0);
      for (Index n = 0; n < N; ++n) {
        mean += cache.mean[n * C + c];
        var += cache.var[n * C + c] * bessel;
      }
      const Scalar inv_n = Scalar(1) / Scalar(static_cast<double>(N));
      running->mean[c] = (Scalar(1) - m) * running->mean[c] + m * mean * inv_n;
      running->var[c] = (Scalar(1) - m) * running->var[c] + m * var * inv_n;
    }
    //! [in.running_stats]
  }
}

/// \brief Training forward pass (allocating wrapper of instancenorm_forward_train_into()).
/// \return `y` of the shape of `x`, and the cache for the backward pass.
template <class Scalar>
NormForward<Scalar> instancenorm_forward_train(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                               Opt<const Tensor<Scalar>> beta,
                                               Opt<InstanceNormRunningStats<Scalar>> running,
                                               const InstanceNormConfig& cfg = {}) {
  NormForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  instancenorm_forward_train_into(x, gamma, beta, running, cfg, out.y, out.cache);
  return out;
}

/// \brief Eval forward pass with running statistics (`track_running_stats=True`), writing into
/// caller-provided `y` and `cache`:
/// \f$y_{ncl} = \gamma_c (x_{ncl} - r_{\mu,c})/\sqrt{r_{\sigma^2,c}+\varepsilon} + \beta_c\f$.
///
/// The cache holds the running statistics repeated for every sample (one entry per set), so
/// the backward passes read them like instance statistics and apply the eval formulas.
/// \param x        `(N, C, L)` or `(N, C, H, W)` input; one spatial value is fine here
/// \param gamma    `(C)` scale or `nullptr`
/// \param beta     `(C)` shift or `nullptr`
/// \param running  running statistics, `(C)` each
/// \param cfg      \f$\varepsilon\f$ (the momentum is unused but still validated)
/// \param y        output, preallocated with the shape of `x`; may be `x` (in place), no other argument
/// \param cache    output
/// \throws InvalidArgument as instancenorm_forward_train_into(), except that \f$L = 1\f$ is allowed.
template <class Scalar>
void instancenorm_forward_eval_into(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                    Opt<const Tensor<Scalar>> beta, const InstanceNormRunningStats<Scalar>& running,
                                    const InstanceNormConfig& cfg, Tensor<Scalar>& y, NormCache<Scalar>& cache) {
  using namespace norm::detail;
  using std::sqrt;
  const NormSets s = check_in_inputs(x, gamma, beta, &running, cfg, false, y);
  check_forward_outputs(kInstanceNorm, y, gamma, beta, cache);
  prepare_cache(cache, kInstanceNorm, s, x.shape(), vector_shape(x.shape()[1]), false, gamma != nullptr,
                beta != nullptr);
  for (Index r = 0; r < s.R; ++r) {
    const Index c = r % s.period;
    cache.mean[r] = running.mean[c];
    cache.mean_residual[r] = Scalar(0);  // the running mean is exact in Scalar
    cache.var[r] = running.var[c];
    cache.invstd[r] = Scalar(1) / sqrt(running.var[c] + Scalar(cfg.eps));
    norm::normalize_set(s, r, x.data(), data_or_null(gamma), data_or_null(beta), cache.mean[r], cache.invstd[r],
                        y.data());
  }
}

/// \brief Eval forward pass (allocating wrapper of instancenorm_forward_eval_into()).
template <class Scalar>
NormForward<Scalar> instancenorm_forward_eval(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                              Opt<const Tensor<Scalar>> beta,
                                              const InstanceNormRunningStats<Scalar>& running,
                                              const InstanceNormConfig& cfg = {}) {
  NormForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  instancenorm_forward_eval_into(x, gamma, beta, running, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: one named step per chain-rule term, each marked with its in formula id.
/// For an eval-mode cache it applies the eval formulas (in.eval_dx, in.eval_dgamma).
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param gamma   `(C)` scale, or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param scales  term scales for negative controls; leave at the default
/// \param trace   if not `nullptr`, receives the intermediate terms (training only)
/// \return dx; dgamma if `gamma`; dbeta if the forward pass had \f$\beta\f$.
/// \throws InvalidArgument if `dy` does not match `x`, the cache was made for another input, or
///         `gamma` is absent/present unlike in the forward pass.
template <class Scalar>
NormGrads<Scalar> instancenorm_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                               Opt<const Tensor<Scalar>> gamma, const NormCache<Scalar>& cache,
                                               const NormTermScales& scales = {},
                                               NormStagedTrace<Scalar>* trace = nullptr) {
  norm::detail::check_backward(norm::detail::kInstanceNorm, dy, x, gamma, cache, norm::detail::in_cache_sets<Scalar>,
                               true);
  const NormSets& s = cache.sets;
  NormGrads<Scalar> g = norm::detail::allocate_grads(x, gamma, cache);
  if (cache.has_beta) {
    //! [in.dbeta]
    // ∂L/∂β_c = Σ_{n, l} dy_{n,c,l} (training and eval alike)
    norm::steps::dbeta(s, dy, g.dbeta);
    //! [in.dbeta]
  }

  if (!cache.training) {
    //! [in.eval_dx]
    // Running statistics are constants: y is affine in x, so
    // ∂L/∂x_{ncl} = γ_c dy_{ncl} / √(r_σ²_c + ε)
    for (Index r = 0; r < s.R; ++r) {
      const Scalar k = (gamma ? (*gamma)[r % s.period] : Scalar(1)) * cache.invstd[r];
      for (Index i = s.offset(r), e = i + s.M; i < e; ++i) g.dx[i] = dy[i] * k;
    }
    //! [in.eval_dx]
    if (gamma) {
      //! [in.eval_dgamma]
      // ∂L/∂γ_c = Σ_{n, l} dy_{n,c,l} x̂_{n,c,l}, with x̂ built from the running statistics
      norm::steps::dgamma(s, dy, x, cache, g.dgamma);
      //! [in.eval_dgamma]
    }
    return g;
  }

  // Step 0. The parameter gradient of γ (β's is above): γ_c is shared by every value of channel c.
  if (gamma) {
    //! [in.dgamma]
    // ∂L/∂γ_c = Σ_{n, l} dy_{n,c,l} x̂_{n,c,l}, each x̂ normalised by its own instance statistics
    norm::steps::dgamma(s, dy, x, cache, g.dgamma);
    //! [in.dgamma]
  }

  NormStagedTrace<Scalar> t = norm::steps::buffers<Scalar>(s, x.shape());
  // Step 1. ∂L/∂x̂.
  //! [in.dl_dxhat]
  // ∂L/∂x̂_{ncl} = γ_c ∂L/∂y_{ncl}: γ is constant over the set (n, c)
  norm::steps::dl_dxhat(s, dy, gamma, scales.dl_dxhat, t.dl_dxhat);
  //! [in.dl_dxhat]

  // Step 2. ∂L/∂σ², one per (sample, channel).
  //! [in.dl_dvar]
  // ∂L/∂σ²_nc = −½ (σ²_nc + ε)^(−3/2) Σ_l ∂L/∂x̂_{ncl} (x_{ncl} − μ_nc)
  norm::steps::dl_dvar(s, x, cache, t.dl_dxhat, scales.dl_dvar, t.dl_dvar);
  //! [in.dl_dvar]

  // Step 3. ∂σ²/∂μ with μ treated as its own node and x held fixed.
  //! [in.dvar_dmu]
  // ∂σ²_nc/∂μ_nc = −(2/L) Σ_l (x_{ncl} − μ_nc) = 0: μ_nc is the mean of the values σ²_nc
  // is taken over
  norm::steps::dvar_dmu(s, x, cache, scales.dvar_dmu, t.dvar_dmu);
  //! [in.dvar_dmu]

  // Step 4. ∂L/∂μ, one per (sample, channel).
  //! [in.dl_dmu]
  // ∂L/∂μ_nc = −(σ²_nc + ε)^(−1/2) Σ_l ∂L/∂x̂_{ncl} + ∂L/∂σ²_nc · ∂σ²_nc/∂μ_nc
  norm::steps::dl_dmu(s, cache, t.dl_dxhat, t.dl_dvar, t.dvar_dmu, scales.dl_dmu, t.dl_dmu);
  //! [in.dl_dmu]

  // Step 5. The local derivatives of the statistics in x.
  //! [in.dvar_dx]
  // ∂σ²_nc/∂x_{ncl} = 2(x_{ncl} − μ_nc)/L
  norm::steps::dvar_dx(s, x, cache, scales.dvar_dx, t.dvar_dx);
  //! [in.dvar_dx]
  //! [in.dmu_dx]
  // ∂μ_nc/∂x_{ncl} = 1/L
  norm::steps::dmu_dx(s, scales.dmu_dx, t.dmu_dx);
  //! [in.dmu_dx]

  // Step 6. Assemble ∂L/∂x from the three paths x → x̂, x → σ², x → μ.
  //! [in.dx]
  // ∂L/∂x_{ncl} = ∂L/∂x̂_{ncl}/√(σ²_nc + ε) + ∂L/∂σ²_nc · ∂σ²_nc/∂x_{ncl}
  //             + ∂L/∂μ_nc · ∂μ_nc/∂x_{ncl}
  norm::steps::dx(s, cache, t, g.dx);
  //! [in.dx]
  if (trace) *trace = std::move(t);
  return g;
}

/// \brief Fused backward pass writing into caller-provided outputs; allocates nothing.
///
/// Training, per (sample, channel): \f$dx_l = \frac{\gamma_c}{L\sqrt{\sigma^2+\varepsilon}}
/// (L\,dy_l - \sum_k dy_k - \hat x_l\sum_k dy_k\hat x_k)\f$. Eval:
/// \f$dx = \gamma_c\,dy/\sqrt{r_{\sigma^2,c}+\varepsilon}\f$.
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
void instancenorm_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                const NormCache<Scalar>& cache, Tensor<Scalar>& dx, Opt<Tensor<Scalar>> dgamma,
                                Opt<Tensor<Scalar>> dbeta) {
  using namespace norm::detail;
  check_backward(kInstanceNorm, dy, x, gamma, cache, in_cache_sets<Scalar>, true);
  check_outputs(kInstanceNorm, dy, x, gamma, cache, dx, dgamma, dbeta);
  //! [in.dx_fused]
  // dx_{ncl} = (γ_c/(L√(σ²_nc+ε))) · (L dy_{ncl} − Σ_k dy_{nck} − x̂_{ncl} Σ_k dy_{nck} x̂_{nck}):
  // γ is constant over the set, so it factors out of both sums. Two passes per (sample, channel).
  norm::backward_kernel(cache.sets, dy.data(), x.data(), data_or_null(gamma), cache, dx.data(),
                        dgamma ? dgamma->data() : nullptr, dbeta ? dbeta->data() : nullptr);
  //! [in.dx_fused]
}

/// \brief Fused backward pass (allocating wrapper of instancenorm_backward_into()).
/// \return dx; dgamma if `gamma`; dbeta if the forward pass had \f$\beta\f$.
template <class Scalar>
NormGrads<Scalar> instancenorm_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                        Opt<const Tensor<Scalar>> gamma, const NormCache<Scalar>& cache) {
  // The cache is checked before its shapes size any allocation.
  norm::detail::check_backward(norm::detail::kInstanceNorm, dy, x, gamma, cache, norm::detail::in_cache_sets<Scalar>,
                               true);
  NormGrads<Scalar> g = norm::detail::allocate_grads(x, gamma, cache);
  instancenorm_backward_into(dy, x, gamma, cache, g.dx, gamma ? &g.dgamma : nullptr,
                             cache.has_beta ? &g.dbeta : nullptr);
  return g;
}

}  // namespace gradproof::ops

/// \cond INTERNAL
#define GRADPROOF_INSTANCENORM_INSTANTIATE(PREFIX, S)                                                            \
  PREFIX template void instancenorm_forward_train_into<S>(const Tensor<S>&, const Tensor<S>*, const Tensor<S>*, \
                                                          InstanceNormRunningStats<S>*, const InstanceNormConfig&, \
                                                          Tensor<S>&, NormCache<S>&);                            \
  PREFIX template NormForward<S> instancenorm_forward_train<S>(const Tensor<S>&, const Tensor<S>*,              \
                                                               const Tensor<S>*, InstanceNormRunningStats<S>*,  \
                                                               const InstanceNormConfig&);                       \
  PREFIX template void instancenorm_forward_eval_into<S>(const Tensor<S>&, const Tensor<S>*, const Tensor<S>*,  \
                                                         const InstanceNormRunningStats<S>&,                     \
                                                         const InstanceNormConfig&, Tensor<S>&, NormCache<S>&);  \
  PREFIX template NormForward<S> instancenorm_forward_eval<S>(const Tensor<S>&, const Tensor<S>*,               \
                                                              const Tensor<S>*, const InstanceNormRunningStats<S>&, \
                                                              const InstanceNormConfig&);                        \
  PREFIX template NormGrads<S> instancenorm_backward_staged<S>(const Tensor<S>&, const Tensor<S>&,              \
                                                               const Tensor<S>*, const NormCache<S>&,           \
                                                               const NormTermScales&, NormStagedTrace<S>*);     \
  PREFIX template void instancenorm_backward_into<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,      \
                                                     const NormCache<S>&, Tensor<S>&, Tensor<S>*, Tensor<S>*);   \
  PREFIX template NormGrads<S> instancenorm_backward<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,   \
                                                        const NormCache<S>&);
namespace gradproof::ops {
GRADPROOF_INSTANCENORM_INSTANTIATE(extern, float)
GRADPROOF_INSTANCENORM_INSTANTIATE(extern, double)
}  // namespace gradproof::ops
/// \endcond
