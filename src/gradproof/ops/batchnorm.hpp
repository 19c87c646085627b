/// \file
/// \brief Batch normalization: forward (training and eval), staged and fused backward.
///
/// Semantics of PyTorch's `BatchNorm1d` / `BatchNorm2d`, so results are comparable.
///
/// Shape legend:
/// - `N` batch, `C` channels, `L` length (rank 3), `H, W` spatial (rank 4);
/// - `x`, `y`, `dy`, `dx`: `(N, C)`, `(N, C, L)` or `(N, C, H, W)`, row-major;
/// - `gamma`, `beta`, statistics and their gradients: `(C)`;
/// - \f$M = N \cdot L\f$ (or \f$N H W\f$): values per channel statistic; \f$i\f$ runs over them.
///
/// The derivation of every term is in `derivations/batchnorm.md`; each formula id there marks
/// the code below that implements it (`//! [bn.<term>]`).
#pragma once

#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <optional>
#include <sstream>
#include <type_traits>

namespace gradproof::ops {

/// Hyper-parameters of batch normalization (PyTorch defaults).
struct BatchNormConfig {
  /// Added to the variance before the square root; must be finite and > 0.
  double eps = 1e-5;
  /// Weight of the new batch in the running statistics, in [0, 1]; `std::nullopt` means a
  /// cumulative moving average (weight \f$1/t\f$ for the \f$t\f$-th batch), as PyTorch's `momentum=None`.
  std::optional<double> momentum = 0.1;
};

/// Running statistics, updated by the training forward pass and used by the eval pass.
/// \tparam Scalar `float` or `double`.
template <class Scalar>
struct BatchNormRunningStats {
  Tensor<Scalar> mean;                  ///< `(C)`, starts at 0
  Tensor<Scalar> var;                   ///< `(C)`, unbiased estimate, starts at 1
  std::int64_t num_batches_tracked = 0;  ///< batches seen in training

  /// Fresh statistics for `channels` channels (mean 0, variance 1, as PyTorch initialises them).
  static BatchNormRunningStats fresh(Index channels) {
    return {Tensor<Scalar>({channels}, Scalar(0)), Tensor<Scalar>({channels}, Scalar(1)), 0};
  }
};

/// What the backward pass needs from the forward pass.
template <class Scalar>
struct BatchNormCache {
  NCL dims;               ///< the `(N, C, L)` view of the input
  bool training = true;   ///< batch statistics (true) or running statistics (false)
  Tensor<Scalar> mean;    ///< `(C)`: \f$\mu\f$, the batch mean (training) or the running mean (eval)
  Tensor<Scalar> var;     ///< `(C)`: \f$\sigma^2\f$, biased batch variance (training) or running variance (eval)
  Tensor<Scalar> invstd;  ///< `(C)`: \f$1/\sqrt{\sigma^2+\varepsilon}\f$
};

/// Output of a forward pass: `y` and the cache for backward.
template <class Scalar>
struct BatchNormForward {
  Tensor<Scalar> y;             ///< same shape as `x`
  BatchNormCache<Scalar> cache;  ///< statistics used to normalise
};

/// Gradients of the loss with respect to the inputs of batch normalization.
template <class Scalar>
struct BatchNormGrads {
  Tensor<Scalar> dx;      ///< same shape as `x`
  Tensor<Scalar> dgamma;  ///< `(C)`; empty when the op has no affine transform
  Tensor<Scalar> dbeta;   ///< `(C)`; empty when the op has no affine transform
};

/// \brief Scales applied to each chain-rule term of the staged backward.
///
/// All ones is the derivation. The negative controls set one scale to 0 (drop the term) or -1
/// (flip its sign) and show that the checks notice, except for \f$\partial\sigma^2/\partial\mu\f$,
/// which is zero at the batch mean, so dropping it changes nothing.
struct BatchNormTermScales {
  double dl_dxhat = 1;  ///< bn.dl_dxhat: \f$\partial L/\partial\hat x_i\f$
  double dl_dvar = 1;   ///< bn.dl_dvar: \f$\partial L/\partial\sigma^2\f$
  double dvar_dmu = 1;  ///< bn.dvar_dmu: \f$\partial\sigma^2/\partial\mu\f$
  double dl_dmu = 1;    ///< bn.dl_dmu: \f$\partial L/\partial\mu\f$
  double dvar_dx = 1;   ///< bn.dvar_dx: \f$\partial\sigma^2/\partial x_i\f$ in the assembly
  double dmu_dx = 1;    ///< bn.dmu_dx: \f$\partial\mu/\partial x_i\f$ in the assembly
};

/// The intermediate terms of the staged backward, for term-by-term checks.
template <class Scalar>
struct BatchNormStagedTrace {
  Tensor<Scalar> dl_dxhat;  ///< shape of `x`: \f$\partial L/\partial\hat x_i\f$ (bn.dl_dxhat)
  Tensor<Scalar> dl_dvar;   ///< `(C)`: \f$\partial L/\partial\sigma^2\f$ (bn.dl_dvar)
  Tensor<Scalar> dvar_dmu;  ///< `(C)`: \f$\partial\sigma^2/\partial\mu\f$ (bn.dvar_dmu)
  Tensor<Scalar> dl_dmu;    ///< `(C)`: \f$\partial L/\partial\mu\f$ (bn.dl_dmu)
  Tensor<Scalar> dvar_dx;   ///< shape of `x`: \f$\partial\sigma^2/\partial x_i\f$ (bn.dvar_dx)
  Tensor<Scalar> dmu_dx;    ///< `(C)`: \f$\partial\mu/\partial x_i\f$, the same for every i (bn.dmu_dx)
};

namespace detail {

constexpr const char* kBatchNorm = "batchnorm";

template <class Scalar>
void check_channel_vector(const Tensor<Scalar>* t, Index C, const char* what) {
  if (t != nullptr) require_shape(*t, Shape{C}, kBatchNorm, what);
}

/// Validates the arguments common to every pass and returns the `(N, C, L)` view of `x`.
template <class Scalar>
NCL check_bn_inputs(const Tensor<Scalar>& x, const Tensor<Scalar>* gamma, const Tensor<Scalar>* beta,
                    const BatchNormConfig& cfg) {
  const NCL d = ncl_view(x.shape(), kBatchNorm, "x");
  check_channel_vector(gamma, d.C, "gamma");
  check_channel_vector(beta, d.C, "beta");
  require_positive_eps(cfg.eps, kBatchNorm);
  require_momentum(cfg.momentum, kBatchNorm);
  return d;
}

/// Checks `dy` and the cache against `x` before a backward pass.
template <class Scalar>
NCL check_bn_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const Tensor<Scalar>* gamma,
                      const BatchNormCache<Scalar>& cache) {
  const NCL d = ncl_view(x.shape(), kBatchNorm, "x");
  require_shape(dy, x.shape(), kBatchNorm, "dy (must match x)");
  check_channel_vector(gamma, d.C, "gamma");
  if (cache.dims.N != d.N || cache.dims.C != d.C || cache.dims.L != d.L || cache.mean.size() != d.C ||
      cache.invstd.size() != d.C) {
    std::ostringstream msg;
    msg << kBatchNorm << ": cache was made for (N, C, L) = (" << cache.dims.N << ", " << cache.dims.C
        << ", " << cache.dims.L << ") but x has shape " << to_string(x.shape());
    throw InvalidArgument(msg.str());
  }
  return d;
}

template <class Scalar>
Scalar gamma_at(const Tensor<Scalar>* gamma, Index c) {
  return gamma ? (*gamma)[c] : Scalar(1);
}

template <class Scalar>
using ChunkMap = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using ConstChunkMap = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

}  // namespace detail

/// \brief Training forward pass: normalise with the batch statistics, update the running ones.
///
/// \f[
///   \mu = \frac1M \sum_i x_i,\quad \sigma^2 = \frac1M \sum_i (x_i-\mu)^2,\quad
///   \hat x_i = \frac{x_i-\mu}{\sqrt{\sigma^2+\varepsilon}},\quad y_i = \gamma\hat x_i + \beta .
/// \f]
///
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number (the forward pass
///         is analytic in `x`, so the complex-step and dual-number oracles can run it).
/// \param x        `(N, C[, L | H, W])` input
/// \param gamma    `(C)` scale, or `nullptr` for no affine transform (\f$\gamma = 1\f$)
/// \param beta     `(C)` shift, or `nullptr` (\f$\beta = 0\f$)
/// \param running  running statistics to update (unbiased variance), or `nullptr`
/// \param cfg      \f$\varepsilon\f$ and momentum
/// \return `y` of the shape of `x`, and the cache for the backward pass.
/// \throws InvalidArgument on a rank outside [2, 4], an empty `x`, a `gamma`/`beta`/running
///         statistic whose length is not `C`, `eps` not finite and > 0, momentum outside [0, 1],
///         or a single value per channel (\f$M = 1\f$: the variance is undefined; PyTorch
///         refuses this too).
template <class Scalar>
BatchNormForward<Scalar> batchnorm_forward_train(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                                 Opt<const Tensor<Scalar>> beta,
                                                 Opt<BatchNormRunningStats<Scalar>> running,
                                                 const BatchNormConfig& cfg = {}) {
  using std::sqrt;
  const NCL d = detail::check_bn_inputs(x, gamma, beta, cfg);
  if (d.M() < 2) {
    std::ostringstream msg;
    msg << detail::kBatchNorm << ": training needs more than 1 value per channel; x has shape "
        << to_string(x.shape()) << ", so M = N*L = " << d.M();
    throw InvalidArgument(msg.str());
  }
  if (running) {
    require_shape(running->mean, Shape{d.C}, detail::kBatchNorm, "running mean");
    require_shape(running->var, Shape{d.C}, detail::kBatchNorm, "running var");
  }

  BatchNormForward<Scalar> out{Tensor<Scalar>(x.shape()),
                               {d, true, Tensor<Scalar>({d.C}), Tensor<Scalar>({d.C}), Tensor<Scalar>({d.C})}};
  const Scalar M = Scalar(static_cast<double>(d.M()));
  for (Index c = 0; c < d.C; ++c) {
    //! [bn.forward]
    // Two passes over the channel: mean first, then the centred second moment, which avoids
    // the cancellation of E[x²] − E[x]².
    Scalar sum = Scalar(0);
    for (Index n = 0; n < d.N; ++n) sum += detail::ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L).sum();
    const Scalar mu = sum / M;
    Scalar sq = Scalar(0);
    for (Index n = 0; n < d.N; ++n) {
      sq += (detail::ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L) - mu).square().sum();
    }
    const Scalar var = sq / M;
    const Scalar invstd = Scalar(1) / sqrt(var + Scalar(cfg.eps));
    out.cache.mean[c] = mu;
    out.cache.var[c] = var;
    out.cache.invstd[c] = invstd;

    const Scalar g = detail::gamma_at(gamma, c);
    const Scalar b = beta ? (*beta)[c] : Scalar(0);
    for (Index n = 0; n < d.N; ++n) {
      detail::ChunkMap<Scalar>(out.y.data() + d.offset(n, c), d.L) =
          (detail::ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L) - mu) * (invstd * g) + b;
    }
    //! [bn.forward]
  }

  if (running) {
    //! [bn.running_stats]
    // The running variance is the unbiased estimate σ²·M/(M−1); normalising used the biased σ².
    running->num_batches_tracked += 1;
    const double w = cfg.momentum ? *cfg.momentum : 1.0 / static_cast<double>(running->num_batches_tracked);
    const Scalar bessel = M / (M - Scalar(1));
    for (Index c = 0; c < d.C; ++c) {
      running->mean[c] = Scalar(1 - w) * running->mean[c] + Scalar(w) * out.cache.mean[c];
      running->var[c] = Scalar(1 - w) * running->var[c] + Scalar(w) * out.cache.var[c] * bessel;
    }
    //! [bn.running_stats]
  }
  return out;
}

/// \brief Eval forward pass: normalise with the running statistics,
/// \f$y_i = \gamma (x_i - r_\mu)/\sqrt{r_{\sigma^2}+\varepsilon} + \beta\f$.
///
/// \param x        `(N, C[, L | H, W])` input; one value per channel is fine here
/// \param gamma    `(C)` scale or `nullptr`
/// \param beta     `(C)` shift or `nullptr`
/// \param running  running statistics, `(C)` each
/// \param cfg      \f$\varepsilon\f$ (the momentum is unused but still validated)
/// \return `y` and a cache holding the running statistics.
/// \throws InvalidArgument as batchnorm_forward_train(), except that \f$M = 1\f$ is allowed.
template <class Scalar>
BatchNormForward<Scalar> batchnorm_forward_eval(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                                Opt<const Tensor<Scalar>> beta,
                                                const BatchNormRunningStats<Scalar>& running,
                                                const BatchNormConfig& cfg = {}) {
  using std::sqrt;
  const NCL d = detail::check_bn_inputs(x, gamma, beta, cfg);
  require_shape(running.mean, Shape{d.C}, detail::kBatchNorm, "running mean");
  require_shape(running.var, Shape{d.C}, detail::kBatchNorm, "running var");

  BatchNormForward<Scalar> out{Tensor<Scalar>(x.shape()),
                               {d, false, running.mean, running.var, Tensor<Scalar>({d.C})}};
  for (Index c = 0; c < d.C; ++c) {
    const Scalar invstd = Scalar(1) / sqrt(running.var[c] + Scalar(cfg.eps));
    out.cache.invstd[c] = invstd;
    const Scalar g = detail::gamma_at(gamma, c);
    const Scalar b = beta ? (*beta)[c] : Scalar(0);
    for (Index n = 0; n < d.N; ++n) {
      detail::ChunkMap<Scalar>(out.y.data() + d.offset(n, c), d.L) =
          (detail::ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L) - running.mean[c]) * (invstd * g) + b;
    }
  }
  return out;
}

/// \brief Staged training backward pass: one named step per chain-rule term.
///
/// This is the version to read next to the derivation; it keeps every intermediate
/// (\f$\partial L/\partial\hat x\f$ has the input's size) and is not fast. For an eval-mode
/// cache it applies the eval formulas (bn.eval_dx, bn.eval_dgamma).
///
/// \param dy      `(N, C[, L | H, W])` upstream gradient \f$\partial L/\partial y\f$
/// \param x       the forward input, same shape
/// \param gamma   `(C)` scale or `nullptr`
/// \param cache   from the forward pass on `x`
/// \param scales  term scales for negative controls; leave at the default
/// \param trace   if not `nullptr`, receives the intermediate terms (training only)
/// \return dx, and dgamma / dbeta (empty when `gamma` is `nullptr`).
/// \throws InvalidArgument if `dy` does not match `x` or the cache was made for another shape.
template <class Scalar>
BatchNormGrads<Scalar> batchnorm_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                                 Opt<const Tensor<Scalar>> gamma,
                                                 const BatchNormCache<Scalar>& cache,
                                                 const BatchNormTermScales& scales = {},
                                                 BatchNormStagedTrace<Scalar>* trace = nullptr) {
  const NCL d = detail::check_bn_backward(dy, x, gamma, cache);
  const Index C = d.C;
  const Scalar M = Scalar(static_cast<double>(d.M()));
  const auto each = [&](Index c, auto&& f) {  // f(i) for every flat index i of channel c
    for (Index n = 0; n < d.N; ++n)
      for (Index i = d.offset(n, c), e = i + d.L; i < e; ++i) f(i);
  };

  BatchNormGrads<Scalar> g{Tensor<Scalar>(x.shape()), gamma ? Tensor<Scalar>({C}) : Tensor<Scalar>(),
                           gamma ? Tensor<Scalar>({C}) : Tensor<Scalar>()};
  const Tensor<Scalar>& mu = cache.mean;
  const Tensor<Scalar>& invstd = cache.invstd;  // (σ²+ε)^(−1/2)

  if (!cache.training) {
    for (Index c = 0; c < C; ++c) {
      //! [bn.eval_dx]
      // Running statistics are constants: y is affine in x, so ∂L/∂xᵢ = dyᵢ γ / √(r_σ² + ε).
      const Scalar scale = detail::gamma_at(gamma, c) * invstd[c];
      each(c, [&](Index i) { g.dx[i] = dy[i] * scale; });
      //! [bn.eval_dx]
      if (!gamma) continue;
      //! [bn.eval_dgamma]
      // ∂L/∂γ = Σᵢ dyᵢ x̂ᵢ, with x̂ᵢ = (xᵢ − r_μ)/√(r_σ² + ε) built from the running statistics
      Scalar dgamma = Scalar(0);
      each(c, [&](Index i) { dgamma += dy[i] * (x[i] - mu[c]) * invstd[c]; });
      g.dgamma[c] = dgamma;
      //! [bn.eval_dgamma]
      Scalar dbeta = Scalar(0);  // ∂L/∂β = Σᵢ dyᵢ, as in training (bn.dbeta)
      each(c, [&](Index i) { dbeta += dy[i]; });
      g.dbeta[c] = dbeta;
    }
    return g;
  }

  // Step 0. The parameter gradients: y = γ x̂ + β is linear in γ and β.
  if (gamma) {
    for (Index c = 0; c < C; ++c) {
      //! [bn.dgamma]
      // ∂L/∂γ = Σᵢ dyᵢ x̂ᵢ
      Scalar dgamma = Scalar(0);
      each(c, [&](Index i) { dgamma += dy[i] * (x[i] - mu[c]) * invstd[c]; });
      g.dgamma[c] = dgamma;
      //! [bn.dgamma]
      //! [bn.dbeta]
      // ∂L/∂β = Σᵢ dyᵢ
      Scalar dbeta = Scalar(0);
      each(c, [&](Index i) { dbeta += dy[i]; });
      g.dbeta[c] = dbeta;
      //! [bn.dbeta]
    }
  }

  // Step 1. ∂L/∂x̂ᵢ
  Tensor<Scalar> dl_dxhat(x.shape());
  for (Index c = 0; c < C; ++c) {
    //! [bn.dl_dxhat]
    // ∂L/∂x̂ᵢ = γ ∂L/∂yᵢ
    const Scalar gc = detail::gamma_at(gamma, c) * Scalar(scales.dl_dxhat);
    each(c, [&](Index i) { dl_dxhat[i] = gc * dy[i]; });
    //! [bn.dl_dxhat]
  }

  Tensor<Scalar> dl_dvar({C}), dvar_dmu({C}), dl_dmu({C});
  for (Index c = 0; c < C; ++c) {
    // Step 2. ∂L/∂σ²: σ² reaches L only through every x̂ᵢ of the channel.
    //! [bn.dl_dvar]
    // ∂L/∂σ² = Σᵢ ∂L/∂x̂ᵢ · (xᵢ − μ) · (−½)(σ² + ε)^(−3/2)
    Scalar s = Scalar(0);
    each(c, [&](Index i) { s += dl_dxhat[i] * (x[i] - mu[c]); });
    dl_dvar[c] = Scalar(scales.dl_dvar) * s * Scalar(-0.5) * invstd[c] * invstd[c] * invstd[c];
    //! [bn.dl_dvar]

    // Step 3. ∂σ²/∂μ, with μ treated as its own node and x held fixed.
    //! [bn.dvar_dmu]
    // ∂σ²/∂μ = −(2/M) Σᵢ (xᵢ − μ), which is 0 because μ is the mean of these same xᵢ.
    // Computed anyway: in floating point it is a rounding-level number, and the ablation
    // shows that keeping or dropping it changes nothing.
    Scalar centred = Scalar(0);
    each(c, [&](Index i) { centred += x[i] - mu[c]; });
    dvar_dmu[c] = Scalar(scales.dvar_dmu) * Scalar(-2) * centred / M;
    //! [bn.dvar_dmu]

    // Step 4. ∂L/∂μ: μ reaches L directly through every x̂ᵢ, and through σ².
    //! [bn.dl_dmu]
    // ∂L/∂μ = Σᵢ ∂L/∂x̂ᵢ · (−1/√(σ² + ε)) + ∂L/∂σ² · ∂σ²/∂μ
    Scalar direct = Scalar(0);
    each(c, [&](Index i) { direct += dl_dxhat[i]; });
    dl_dmu[c] = Scalar(scales.dl_dmu) * (-direct * invstd[c] + dl_dvar[c] * dvar_dmu[c]);
    //! [bn.dl_dmu]
  }

  // Step 5. Assemble ∂L/∂xᵢ from the three paths x → x̂, x → σ², x → μ.
  for (Index c = 0; c < C; ++c) {
    //! [bn.dvar_dx]
    // ∂σ²/∂xᵢ = 2(xᵢ − μ)/M  (the partial with μ fixed; it is also the total derivative,
    // since the extra term ∂σ²/∂μ · ∂μ/∂xᵢ is 0)
    const auto dvar_dx = [&](Index i) { return Scalar(scales.dvar_dx) * Scalar(2) * (x[i] - mu[c]) / M; };
    //! [bn.dvar_dx]
    //! [bn.dmu_dx]
    // ∂μ/∂xᵢ = 1/M
    const Scalar dmu_dx = Scalar(scales.dmu_dx) / M;
    //! [bn.dmu_dx]
    //! [bn.dx]
    // ∂L/∂xᵢ = ∂L/∂x̂ᵢ / √(σ² + ε) + ∂L/∂σ² · ∂σ²/∂xᵢ + ∂L/∂μ · ∂μ/∂xᵢ
    each(c, [&](Index i) {
      g.dx[i] = dl_dxhat[i] * invstd[c] + dl_dvar[c] * dvar_dx(i) + dl_dmu[c] * dmu_dx;
    });
    //! [bn.dx]
    if (trace) {
      if (c == 0) trace->dvar_dx = Tensor<Scalar>(x.shape()), trace->dmu_dx = Tensor<Scalar>({C});
      each(c, [&](Index i) { trace->dvar_dx[i] = dvar_dx(i); });
      trace->dmu_dx[c] = dmu_dx;
    }
  }
  if (trace) {
    trace->dl_dxhat = std::move(dl_dxhat);
    trace->dl_dvar = std::move(dl_dvar);
    trace->dvar_dmu = std::move(dvar_dmu);
    trace->dl_dmu = std::move(dl_dmu);
  }
  return g;
}

/// \brief Fused backward pass writing into caller-provided outputs; allocates nothing.
///
/// Training:
/// \f[ dx_i = \frac{\gamma}{M\sqrt{\sigma^2+\varepsilon}}
///     \Big(M\,dy_i - \sum_j dy_j - \hat x_i \sum_j dy_j \hat x_j\Big), \f]
/// two passes per channel (the sums, then dx) and no temporaries of the input's size.
/// Eval: \f$dx_i = dy_i\,\gamma/\sqrt{r_{\sigma^2}+\varepsilon}\f$.
///
/// \param dy      `(N, C[, L | H, W])` upstream gradient
/// \param x       the forward input, same shape
/// \param gamma   `(C)` scale or `nullptr`
/// \param cache   from the forward pass on `x`
/// \param dx      output, preallocated with the shape of `x`
/// \param dgamma  output `(C)`, or `nullptr` to skip (must be `nullptr` when `gamma` is)
/// \param dbeta   output `(C)`, or `nullptr` to skip
/// \throws InvalidArgument on mismatched shapes of any argument or output.
template <class Scalar>
void batchnorm_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                             const BatchNormCache<Scalar>& cache, Tensor<Scalar>& dx, Opt<Tensor<Scalar>> dgamma,
                             Opt<Tensor<Scalar>> dbeta) {
  const NCL d = detail::check_bn_backward(dy, x, gamma, cache);
  require_shape(dx, x.shape(), detail::kBatchNorm, "dx (output)");
  detail::check_channel_vector(dgamma, d.C, "dgamma (output)");
  detail::check_channel_vector(dbeta, d.C, "dbeta (output)");
  if (dgamma && !gamma) throw InvalidArgument("batchnorm: dgamma requested but gamma is null (no affine transform)");

  const Scalar M = Scalar(static_cast<double>(d.M()));
  for (Index c = 0; c < d.C; ++c) {
    const Scalar mu = cache.mean[c], invstd = cache.invstd[c], gc = detail::gamma_at(gamma, c);
    // Pass 1: Σdy and Σdy·x̂ = invstd·Σdy·(x − μ); x̂ is rebuilt on the fly, never stored.
    Scalar sum_dy = Scalar(0), sum_dy_xmu = Scalar(0);
    for (Index n = 0; n < d.N; ++n) {
      const auto dyc = detail::ConstChunkMap<Scalar>(dy.data() + d.offset(n, c), d.L);
      const auto xc = detail::ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L);
      sum_dy += dyc.sum();
      sum_dy_xmu += (dyc * (xc - mu)).sum();
    }
    const Scalar sum_dy_xhat = sum_dy_xmu * invstd;
    if (dgamma) (*dgamma)[c] = sum_dy_xhat;
    if (dbeta) (*dbeta)[c] = sum_dy;

    // Pass 2: dx.
    for (Index n = 0; n < d.N; ++n) {
      const auto dyc = detail::ConstChunkMap<Scalar>(dy.data() + d.offset(n, c), d.L);
      const auto xc = detail::ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L);
      auto dxc = detail::ChunkMap<Scalar>(dx.data() + d.offset(n, c), d.L);
      if (cache.training) {
        //! [bn.dx_fused]
        // dx = γ/(M√(σ²+ε)) · (M·dy − Σdy − x̂·Σ(dy·x̂)), with x̂ = (x − μ)·invstd
        const Scalar k = gc * invstd / M;
        dxc = k * (M * dyc - sum_dy - (xc - mu) * (invstd * sum_dy_xhat));
        //! [bn.dx_fused]
      } else {
        dxc = dyc * (gc * invstd);
      }
    }
  }
}

/// \brief Fused backward pass (allocating wrapper of batchnorm_backward_into()).
/// \param dy     `(N, C[, L | H, W])` upstream gradient
/// \param x      the forward input, same shape
/// \param gamma  `(C)` scale or `nullptr`
/// \param cache  from the forward pass on `x`
/// \return dx, and dgamma / dbeta (empty when `gamma` is `nullptr`).
template <class Scalar>
BatchNormGrads<Scalar> batchnorm_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                          Opt<const Tensor<Scalar>> gamma, const BatchNormCache<Scalar>& cache) {
  BatchNormGrads<Scalar> g{Tensor<Scalar>(x.shape()), gamma ? Tensor<Scalar>({cache.dims.C}) : Tensor<Scalar>(),
                           gamma ? Tensor<Scalar>({cache.dims.C}) : Tensor<Scalar>()};
  batchnorm_backward_into(dy, x, gamma, cache, g.dx, gamma ? &g.dgamma : nullptr, gamma ? &g.dbeta : nullptr);
  return g;
}

}  // namespace gradproof::ops

/// \cond INTERNAL
// Explicit instantiation for float and double: declared here, defined once in batchnorm.cpp.
#define GRADPROOF_BATCHNORM_INSTANTIATE(PREFIX, S)                                                          \
  PREFIX template BatchNormForward<S> batchnorm_forward_train<S>(                                          \
      const Tensor<S>&, const Tensor<S>*, const Tensor<S>*, BatchNormRunningStats<S>*, const BatchNormConfig&); \
  PREFIX template BatchNormForward<S> batchnorm_forward_eval<S>(                                           \
      const Tensor<S>&, const Tensor<S>*, const Tensor<S>*, const BatchNormRunningStats<S>&,               \
      const BatchNormConfig&);                                                                             \
  PREFIX template BatchNormGrads<S> batchnorm_backward_staged<S>(                                          \
      const Tensor<S>&, const Tensor<S>&, const Tensor<S>*, const BatchNormCache<S>&,                       \
      const BatchNormTermScales&, BatchNormStagedTrace<S>*);                                               \
  PREFIX template void batchnorm_backward_into<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,    \
                                                  const BatchNormCache<S>&, Tensor<S>&, Tensor<S>*,        \
                                                  Tensor<S>*);                                             \
  PREFIX template BatchNormGrads<S> batchnorm_backward<S>(const Tensor<S>&, const Tensor<S>&,              \
                                                          const Tensor<S>*, const BatchNormCache<S>&);
namespace gradproof::ops {
GRADPROOF_BATCHNORM_INSTANTIATE(extern, float)
GRADPROOF_BATCHNORM_INSTANTIATE(extern, double)
}  // namespace gradproof::ops
/// \endcond
