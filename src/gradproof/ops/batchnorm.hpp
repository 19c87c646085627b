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

#include "gradproof/kernels.hpp"
#include "gradproof/ops/layout.hpp"
#include "gradproof/parallel.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

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

/// What the backward pass needs from the forward pass. Every backward pass checks that the cache
/// was made for an input of the shape of its `x`, with `(C)` statistics, before it reads or
/// allocates anything else.
template <class Scalar>
struct BatchNormCache {
  Shape shape;            ///< shape of the forward input
  NCL dims;               ///< the `(N, C, L)` view of the input
  bool training = true;   ///< batch statistics (true) or running statistics (false)
  bool has_gamma = false; ///< the forward pass had \f$\gamma\f$: the backward must be given it too
  bool has_beta = false;  ///< the forward pass had \f$\beta\f$: the backward returns its gradient
  Tensor<Scalar> mean;    ///< `(C)`: \f$\mu\f$, the batch mean (training) or the running mean (eval)
  Tensor<Scalar> var;     ///< `(C)`: \f$\sigma^2\f$, biased batch variance (training) or running variance (eval)
  Tensor<Scalar> invstd;  ///< `(C)`: \f$1/\sqrt{\sigma^2+\varepsilon}\f$
  /// `(C)`: \f$\mu\f$ − `mean`, the part of the batch mean that `Scalar` cannot hold (the mean
  /// rounded to float32 is off by up to \f$2^{-24}|\mu|\f$, which x − μ would carry into every
  /// x̂ when \f$|\mu| \gg \sigma\f$); 0 in double and in eval. Empty: taken as 0.
  Tensor<Scalar> mean_residual;
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
  if (t != nullptr) require_shape(*t, vector_shape(C), kBatchNorm, what);
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

/// Throws unless `y` is distinct from `gamma`, `beta` and the cache's statistics (it may be `x`:
/// each value is read before its own output is written), and the running statistics from
/// `gamma` and `beta`.
template <class Scalar>
void check_bn_forward_outputs(const Tensor<Scalar>& y, const Tensor<Scalar>* gamma, const Tensor<Scalar>* beta,
                              const BatchNormRunningStats<Scalar>* running, const BatchNormCache<Scalar>& cache) {
  for (const auto& [in, name] : {std::pair{gamma, "gamma"}, std::pair{beta, "beta"}}) {
    require_distinct(kBatchNorm, &y, "y (output)", in, name);
    if (running) require_distinct(kBatchNorm, &running->mean, "running mean", in, name);
    if (running) require_distinct(kBatchNorm, &running->var, "running var", in, name);
  }
  require_distinct(kBatchNorm, &y, "y (output)", &cache.mean, "cache mean (output)");
  require_distinct(kBatchNorm, &y, "y (output)", &cache.var, "cache var (output)");
  require_distinct(kBatchNorm, &y, "y (output)", &cache.invstd, "cache invstd (output)");
  require_distinct(kBatchNorm, &y, "y (output)", &cache.mean_residual, "cache mean_residual (output)");
}

/// Checks `dy` and the cache against `x` before a backward pass, before anything is allocated.
template <class Scalar>
NCL check_bn_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const Tensor<Scalar>* gamma,
                      const BatchNormCache<Scalar>& cache) {
  const NCL d = ncl_view(x.shape(), kBatchNorm, "x");
  require_shape(dy, x.shape(), kBatchNorm, "dy (must match x)");
  check_channel_vector(gamma, d.C, "gamma");
  if (cache.shape != x.shape() || cache.dims.N != d.N || cache.dims.C != d.C || cache.dims.L != d.L) {
    std::ostringstream msg;
    msg << kBatchNorm << ": cache was made for an input of shape " << to_string(cache.shape) << ", (N, C, L) = ("
        << cache.dims.N << ", " << cache.dims.C << ", " << cache.dims.L << "), but x has shape "
        << to_string(x.shape());
    throw InvalidArgument(msg.str());
  }
  // What the forward pass saw (issue 15): a null γ after a forward with γ used to give dx as if
  // γ = 1, wrong by the factor γ; a γ after a forward without one, a dx for a y it never made.
  if ((gamma != nullptr) != cache.has_gamma) {
    throw InvalidArgument(std::string(kBatchNorm) + ": gamma is " + (gamma ? "given" : "null") +
                          " but the forward pass had " + (cache.has_gamma ? "gamma" : "none"));
  }
  for (const auto& [t, name] : {std::pair{&cache.mean, "cache mean"}, std::pair{&cache.var, "cache var"},
                                std::pair{&cache.invstd, "cache invstd"}}) {
    check_channel_vector(t, d.C, name);
  }
  // The residual of the mean is optional (empty: 0); one of the wrong size would be read as 0.
  if (cache.mean_residual.size() != 0) check_channel_vector(&cache.mean_residual, d.C, "cache mean_residual");
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


/// Gives the cache the shape of a pass over an input of `shape`, whose `(N, C, L)` view is `d`;
/// allocates only when a statistic is not `(C)` (or the recorded shape needs more room).
template <class Scalar>
void shape_cache(BatchNormCache<Scalar>& cache, const Shape& shape, const NCL& d, bool training) {
  cache.shape = shape;  // reuses the storage of the same rank: no allocation
  cache.dims = d;
  cache.training = training;
  for (Tensor<Scalar>* t : {&cache.mean, &cache.var, &cache.invstd, &cache.mean_residual}) {
    if (!same_shape(t->shape(), vector_shape(d.C))) *t = Tensor<Scalar>({d.C});
  }
}

/// The residual of the mean of channel `c` (BatchNormCache::mean_residual): 0 when the cache has
/// none of `C` values, and for the scalar types of the oracles, whose mean is exact in `Scalar`.
template <class Scalar>
Scalar mean_residual_at(const BatchNormCache<Scalar>& cache, Index c) {
  if constexpr (std::is_floating_point_v<Scalar>) {
    return cache.mean_residual.size() == cache.dims.C ? cache.mean_residual[c] : Scalar(0);
  } else {
    return Scalar(0);
  }
}

/// \brief The per-channel sums \f$(\sum_i t_0, \sum_i t_1)\f$ of `terms(a_i, b_i, ...)` over
/// the `N` runs of channel `c`.
///
/// For `float` and `double` the sums run through kernels::sum2 and are accumulated in double
/// (so `terms` must also accept double and vectors of double); for the other scalar types, in
/// a plain loop in `Scalar`.
template <class Scalar, class Terms, class... T>
auto channel_sums(const NCL& d, Index c, const Terms& terms, const T*... data) {
  if constexpr (std::is_floating_point_v<Scalar>) {
    kernels::Sums2<Scalar> acc;
    for (Index n = 0; n < d.N; ++n) kernels::sum2_into(acc, d.L, terms, (data + d.offset(n, c))...);
    return acc.total();
  } else {
    Scalar s0 = Scalar(0), s1 = Scalar(0);
    for (Index n = 0; n < d.N; ++n) {
      for (Index i = d.offset(n, c), e = i + d.L; i < e; ++i) {
        const auto [a, b] = terms(data[i]...);
        s0 += a;
        s1 += b;
      }
    }
    return std::pair{s0, s1};
  }
}

/// `out[i] = f(in[i]...)` over the `N` runs of channel `c`; vectorised (and with streaming
/// stores when `nontemporal`) for `float` and `double`, a plain loop otherwise.
template <class Scalar, class F, class... T>
void channel_map(Scalar* out, const NCL& d, Index c, bool nontemporal, const F& f, const T*... in) {
  for (Index n = 0; n < d.N; ++n) {
    const Index o = d.offset(n, c);
    if constexpr (std::is_floating_point_v<Scalar>) {
      kernels::map(out + o, d.L, nontemporal, f, (in + o)...);
    } else {
      for (Index i = o, e = o + d.L; i < e; ++i) out[i] = f(in[i]...);
    }
  }
}

/// Runs `channel(c)` for every channel: on the thread team for `float` and `double` (each
/// channel is independent), serially for the scalar types of the oracles.
template <class Scalar, class F>
void for_each_channel(const NCL& d, const F& channel) {
  if constexpr (std::is_floating_point_v<Scalar>) {
    parallel::parallel_for(d.C, d.N * d.C * d.L, [&](Index c) {
      channel(c);
      kernels::stream_fence();
    });
  } else {
    for (Index c = 0; c < d.C; ++c) channel(c);
  }
}

/// Channels per block of the pipelined kernels, at most this many.
inline constexpr Index kMaxChannelBlock = 128;

/// \brief How many adjacent channels the pipelined kernels would like to treat as one block.
///
/// In an `(N, C, L)` tensor, the runs `(n, c)` of adjacent channels are adjacent in memory, so a
/// block of `B` channels is read as `N` contiguous runs of `B·L` values. Each thread has two
/// blocks in flight, one being written from cache while the next is summed from memory, and the
/// one being written must still be in cache when its turn comes. Since the kernels prefetch
/// across the end of a run (kernels::kPrefetchBytes), short runs cost little and what is left is
/// the cache. Measured at two threads on the machine this is tuned on (1 MiB of L2 per core,
/// 32 MiB of shared L3): on (32, 64, 56, 56), blocks of 0.8 and 1.6 MiB of inputs were equally
/// fast within the noise, 3.2 MiB about 10% slower, 32 MiB 35-50% slower; on (64, 256, 14, 14),
/// 0.4 to 2 MiB equally fast, 6.4 MiB and more 10-20% slower. So a block is as many channels as
/// fit in 1 MiB of inputs, at least one.
/// \param d        the `(N, C, L)` view
/// \param streams  input arrays read per element (1 forward, 2 backward)
/// \param bytes    bytes per value
inline Index channel_block(const NCL& d, Index streams, Index bytes) {
  constexpr Index kBlockBytes = Index(1) << 20;
  return std::clamp<Index>(kBlockBytes / std::max<Index>(1, d.M() * streams * bytes), 1, kMaxChannelBlock);
}

/// pipelined_channels() with blocks of about `target` channels.
template <class Scalar, class TermsOf, class Finish, class MapOf, class... In>
void pipelined_channels_blocked(const NCL& d, Index target, Scalar* out, bool nontemporal, const TermsOf& terms_of,
                                const Finish& finish, const MapOf& map_of, const In*... in) {
  if (d.L < kernels::kLanes<Scalar>) {
    for_each_channel<Scalar>(d, [&](Index c) {
      const auto [s0, s1] = channel_sums<Scalar>(d, c, terms_of(c), in...);
      finish(c, s0, s1);
      channel_map(out, d, c, nontemporal, map_of(c, s0, s1), in...);
    });
    return;
  }
  // The maps and summands of a block's channels, made once per block rather than once per run
  // (each captures its channel's constants; making one costs a division).
  using Map = decltype(map_of(Index(0), 0.0, 0.0));
  using Terms = decltype(terms_of(Index(0)));
  const Index CL = d.C * d.L;
  parallel::parallel_ranges(d.C, d.N * d.C * d.L, [&](Index first, Index last, Index, Index) {
    if (first >= last) return;
    const Index blocks = (last - first + target - 1) / target;
    const Index base = (last - first) / blocks, larger = (last - first) % blocks;
    const auto block_end = [&](Index b, Index start) { return start + base + (b < larger ? 1 : 0); };
    // The running sums of the block being read from memory, and the maps of the block being
    // written. Per channel, so that a short run costs no reduction.
    std::array<kernels::Sums2<Scalar>, kMaxChannelBlock> next;
    std::array<std::optional<Map>, kMaxChannelBlock> maps;
    std::array<std::optional<Terms>, kMaxChannelBlock> terms;
    // Offset from the summed run of sample n of block [a, ...) to the next run summed, which is
    // sample n + 1 of the same block, or sample 0 of the block after it at `after` (if any).
    const auto next_run = [&](Index n, Index a, Index after) -> Index {
      if (n + 1 < d.N) return CL;
      return after < last ? d.offset(0, after) - d.offset(n, a) : Index(-1);
    };
    // The first block: its sums alone.
    Index c0 = first, c1 = block_end(0, first);
    for (Index c = c0; c < c1; ++c) terms[c - c0].emplace(terms_of(c));
    for (Index n = 0; n < d.N; ++n) {
      kernels::sum2_segments(next.data(), d.L, c1 - c0, [&](Index k) -> const Terms& { return *terms[k]; },
                             next_run(n, c0, c1), (in + d.offset(n, c0))...);
    }
    for (Index b = 0; b < blocks; ++b) {
      const Index c2 = b + 1 < blocks ? block_end(b + 1, c1) : c1;  // the next block is [c1, c2)
      for (Index c = c0; c < c1; ++c) {
        const auto [s0, s1] = next[c - c0].total();
        next[c - c0] = {};
        finish(c, s0, s1);
        maps[c - c0].emplace(map_of(c, s0, s1));
      }
      for (Index c = c1; c < c2; ++c) terms[c - c1].emplace(terms_of(c));
      // Channel c0 + k of this block pairs with channel c1 + k of the next, (c1 − c0)·L further on.
      const auto map_k = [&](Index k) -> const Map& { return *maps[k]; };
      const auto terms_k = [&](Index k) -> const Terms& { return *terms[k]; };
      for (Index n = 0; n < d.N; ++n) {
        const Index o = d.offset(n, c0);
        kernels::map_sum2_segments(next.data(), c2 - c1, out + o, d.L, c1 - c0, nontemporal, map_k, terms_k,
                                   (c1 - c0) * d.L, c2 > c1 ? next_run(n, c1, c2) : Index(-1), (in + o)...);
      }
      c0 = c1;
      c1 = c2;
    }
    kernels::stream_fence();
  });
}

/// \brief The two-phase per-channel kernel of the fused passes, software-pipelined over blocks
/// of channels: while block `b` is written from cache, block `b + 1` is summed from memory.
///
/// For each channel `c`: two sums over its values (`terms_of(c)` gives the summands, as for
/// kernels::sum2_into()), then `finish(c, s0, s1)` once they are complete, then
/// `out[i] = map_of(c, s0, s1)(in[i]...)` over its values. Each thread takes an equal share of
/// the channels and cuts it into blocks of nearly channel_block() channels, larger blocks first
/// (so that every channel of block `b + 1` has a partner in block `b`); only its first block is
/// summed alone, and only its last one is written alone. The `N` runs of a block are each one
/// stream (kernels::map_sum2_segments()). Allocates nothing. `float` and `double`; runs shorter
/// than a vector (`L` < kernels::kLanes) take the plain per-channel path.
template <class Scalar, class TermsOf, class Finish, class MapOf, class... In>
void pipelined_channels(const NCL& d, Scalar* out, bool nontemporal, const TermsOf& terms_of, const Finish& finish,
                        const MapOf& map_of, const In*... in) {
  pipelined_channels_blocked(d, channel_block(d, sizeof...(In), sizeof(Scalar)), out, nontemporal, terms_of, finish,
                             map_of, in...);
}

/// \brief The reference training forward: per channel, the mean, then the centred second
/// moment, then the normalisation, each an Eigen expression in `Scalar`.
///
/// This is the code the complex-step and dual-number oracles run; the benchmarks time it for
/// `float` as the staged forward. Arguments are validated by the caller.
template <class Scalar>
void batchnorm_forward_train_reference(const Tensor<Scalar>& x, const Tensor<Scalar>* gamma,
                                       const Tensor<Scalar>* beta, double eps, Tensor<Scalar>& y,
                                       BatchNormCache<Scalar>& cache) {
  using std::sqrt;
  const NCL d = cache.dims;
  const Scalar M = Scalar(static_cast<double>(d.M()));
  cache.has_gamma = gamma != nullptr;
  cache.has_beta = beta != nullptr;
  for (Index c = 0; c < d.C; ++c) {
    //! [bn.forward]
    // Two passes over the channel: mean first, then the centred second moment, which avoids
    // the cancellation of E[x²] − E[x]².
    Scalar sum = Scalar(0);
    for (Index n = 0; n < d.N; ++n)
      sum += ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L).sum();
    const Scalar mu = sum / M;
    Scalar sq = Scalar(0);
    for (Index n = 0; n < d.N; ++n) {
      sq += (ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L) - mu).square().sum();
    }
    const Scalar var = sq / M;
    const Scalar invstd = Scalar(1) / sqrt(var + Scalar(eps));
    cache.mean[c] = mu;
    cache.mean_residual[c] = Scalar(0);  // μ is exact in Scalar here
    cache.var[c] = var;
    cache.invstd[c] = invstd;

    const Scalar g = gamma_at(gamma, c);
    const Scalar b = beta ? (*beta)[c] : Scalar(0);
    for (Index n = 0; n < d.N; ++n) {
      ChunkMap<Scalar>(y.data() + d.offset(n, c), d.L) =
          (ConstChunkMap<Scalar>(x.data() + d.offset(n, c), d.L) - mu) * (invstd * g) + b;
    }
    //! [bn.forward]
  }
}

/// \brief The fused training forward for `float` and `double`: one read of each channel from
/// memory for its statistics, and `y` written while the channel is still in cache, overlapped
/// with the next block's read (pipelined_channels()).
///
/// The statistics are shifted sums accumulated in double, \f$S_1 = \sum_i (x_i - K)\f$ and
/// \f$S_2 = \sum_i (x_i - K)^2\f$ with \f$K\f$ the channel's first value, so that
/// \f$\mu = K + S_1/M\f$ and \f$\sigma^2 = S_2/M - (S_1/M)^2\f$ come from one read. The shift
/// bounds the cancellation in the subtraction: the rounding error of \f$\sigma^2\f$ is about
/// \f$u_{64}(\sigma^2 + (\mu-K)^2)\f$, and \f$(\mu-K)^2 \le (M-1)\sigma^2\f$ for any sample value
/// \f$K\f$ (Samuelson's inequality), so the relative error of \f$\sigma^2\f$ is at most about
/// \f$M u_{64} \approx 1.5\cdot 10^{-11}\f$ for \f$M = 2^{17}\f$, and usually a few \f$u_{64}\f$.
template <class Scalar>
void batchnorm_forward_train_fused(const Tensor<Scalar>& x, const Tensor<Scalar>* gamma, const Tensor<Scalar>* beta,
                                   double eps, Tensor<Scalar>& y, BatchNormCache<Scalar>& cache) {
  const NCL d = cache.dims;
  const double M = static_cast<double>(d.M());
  cache.has_gamma = gamma != nullptr;
  cache.has_beta = beta != nullptr;
  const auto terms_of = [&](Index c) {
    const Scalar K = x[d.offset(0, c)];
    return [K](auto v) {
      const auto t = v - K;
      return std::pair{t, t * t};
    };
  };
  const auto finish = [&](Index c, double s1, double s2) {
    const double shift = s1 / M;
    const auto [var, invstd] = kernels::variance_and_invstd(s2 / M, shift, eps);
    // μ = mean + mean_residual: float32 holds μ to 2⁻²⁴|μ| only, too coarse for x − μ when |μ| ≫ σ.
    const double mu = static_cast<double>(x[d.offset(0, c)]) + shift;
    cache.mean[c] = Scalar(mu);
    cache.mean_residual[c] = Scalar(mu - static_cast<double>(cache.mean[c]));
    cache.var[c] = Scalar(var);
    cache.invstd[c] = Scalar(invstd);
  };
  const auto map_of = [&](Index c, double, double) {
    // y = (x − mean − residual)·scale + β = (x − mean)·scale + (β − residual·scale): x − mean is
    // exact for x near μ (Sterbenz), and the residual folds into the shift at no cost per element.
    const Scalar mu = cache.mean[c], scale = cache.invstd[c] * gamma_at(gamma, c);
    const Scalar b = Scalar(
        kernels::minus_residual(beta ? double((*beta)[c]) : 0.0, double(cache.mean_residual[c]), double(scale)));
    return [=](auto v) { return (v - mu) * scale + b; };
  };
  pipelined_channels(d, y.data(), kernels::should_stream(y.size() * Index(sizeof(Scalar))), terms_of, finish,
                     map_of, x.data());
}

}  // namespace detail

/// \brief Training forward pass into caller-provided outputs: normalise with the batch
/// statistics, update the running ones.
///
/// \f[
///   \mu = \frac1M \sum_i x_i,\quad \sigma^2 = \frac1M \sum_i (x_i-\mu)^2,\quad
///   \hat x_i = \frac{x_i-\mu}{\sqrt{\sigma^2+\varepsilon}},\quad y_i = \gamma\hat x_i + \beta .
/// \f]
///
/// For `float` and `double` this is the fused kernel: the statistics of a channel in one read
/// (shifted sums accumulated in double), `y` in a second pass over the channel while it is in
/// cache, channels spread over the threads (parallel.hpp). Other scalar types (complex, dual
/// numbers) run the reference code, two passes for the statistics and one for `y`. Once `y`
/// and the cache have their shapes, a call allocates nothing.
///
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number.
/// \param x        `(N, C[, L | H, W])` input
/// \param gamma    `(C)` scale, or `nullptr` for no affine transform (\f$\gamma = 1\f$)
/// \param beta     `(C)` shift, or `nullptr` (\f$\beta = 0\f$)
/// \param running  running statistics to update (unbiased variance), or `nullptr`
/// \param cfg      \f$\varepsilon\f$ and momentum
/// \param y        output, preallocated with the shape of `x`; may be `x` (in place), no other argument
/// \param cache    output for the backward pass; its `(C)` statistics are allocated if they do
///                 not have that shape yet
/// \throws InvalidArgument as batchnorm_forward_train(), or if `y` does not have the shape of `x`.
template <class Scalar>
void batchnorm_forward_train_into(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                  Opt<const Tensor<Scalar>> beta, Opt<BatchNormRunningStats<Scalar>> running,
                                  const BatchNormConfig& cfg, Tensor<Scalar>& y, BatchNormCache<Scalar>& cache) {
  const NCL d = detail::check_bn_inputs(x, gamma, beta, cfg);
  if (d.M() < 2) {
    std::ostringstream msg;
    msg << detail::kBatchNorm << ": training needs more than 1 value per channel; x has shape "
        << to_string(x.shape()) << ", so M = N*L = " << d.M();
    throw InvalidArgument(msg.str());
  }
  if (running) {
    require_shape(running->mean, vector_shape(d.C), detail::kBatchNorm, "running mean");
    require_shape(running->var, vector_shape(d.C), detail::kBatchNorm, "running var");
  }
  if (running && (running->num_batches_tracked < 0 ||
                  running->num_batches_tracked == std::numeric_limits<std::int64_t>::max())) {
    // One more batch is counted below, and with momentum None the update divides by the count:
    // -1 would become 0 (an infinite weight, NaN statistics), INT64_MAX would overflow.
    std::ostringstream msg;
    msg << detail::kBatchNorm << ": running num_batches_tracked must be in [0, "
        << std::numeric_limits<std::int64_t>::max() - 1 << "]; got " << running->num_batches_tracked;
    throw InvalidArgument(msg.str());
  }
  require_shape(y, x.shape(), detail::kBatchNorm, "y (output, must match x)");
  detail::check_bn_forward_outputs<Scalar>(y, gamma, beta, running, cache);
  detail::shape_cache(cache, x.shape(), d, true);

  if constexpr (std::is_floating_point_v<Scalar>) {
    detail::batchnorm_forward_train_fused(x, gamma, beta, cfg.eps, y, cache);
  } else {
    detail::batchnorm_forward_train_reference(x, gamma, beta, cfg.eps, y, cache);
  }

  if (running) {
    const Scalar M = Scalar(static_cast<double>(d.M()));
    //! [bn.running_stats]
    // The running variance is the unbiased estimate σ²·M/(M−1); normalising used the biased σ².
    running->num_batches_tracked += 1;
    const double w =
        cfg.momentum ? *cfg.momentum : 1.0 / static_cast<double>(running->num_batches_tracked);
    const Scalar bessel = M / (M - Scalar(1));
    for (Index c = 0; c < d.C; ++c) {
      running->mean[c] = Scalar(1 - w) * running->mean[c] + Scalar(w) * cache.mean[c];
      running->var[c] = Scalar(1 - w) * running->var[c] + Scalar(w) * cache.var[c] * bessel;
    }
    //! [bn.running_stats]
  }
}

/// \brief Training forward pass: normalise with the batch statistics, update the running ones
/// (allocating wrapper of batchnorm_forward_train_into()).
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
  BatchNormForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  batchnorm_forward_train_into(x, gamma, beta, running, cfg, out.y, out.cache);
  return out;
}

/// \brief Eval forward pass into caller-provided outputs: normalise with the running statistics,
/// \f$y_i = \gamma (x_i - r_\mu)/\sqrt{r_{\sigma^2}+\varepsilon} + \beta\f$.
///
/// One pass over memory; vectorised and spread over the threads for `float` and `double`.
/// \param x        `(N, C[, L | H, W])` input; one value per channel is fine here
/// \param gamma    `(C)` scale or `nullptr`
/// \param beta     `(C)` shift or `nullptr`
/// \param running  running statistics, `(C)` each
/// \param cfg      \f$\varepsilon\f$ (the momentum is unused but still validated)
/// \param y        output, preallocated with the shape of `x`; may be `x` (in place), no other argument
/// \param cache    output holding the running statistics; its `(C)` statistics are allocated if
///                 they do not have that shape yet
/// \throws InvalidArgument as batchnorm_forward_eval(), or if `y` does not have the shape of `x`.
template <class Scalar>
void batchnorm_forward_eval_into(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                 Opt<const Tensor<Scalar>> beta, const BatchNormRunningStats<Scalar>& running,
                                 const BatchNormConfig& cfg, Tensor<Scalar>& y, BatchNormCache<Scalar>& cache) {
  using std::sqrt;
  const NCL d = detail::check_bn_inputs(x, gamma, beta, cfg);
  require_shape(running.mean, vector_shape(d.C), detail::kBatchNorm, "running mean");
  require_shape(running.var, vector_shape(d.C), detail::kBatchNorm, "running var");
  require_shape(y, x.shape(), detail::kBatchNorm, "y (output, must match x)");
  detail::check_bn_forward_outputs<Scalar>(y, gamma, beta, nullptr, cache);
  detail::shape_cache(cache, x.shape(), d, false);
  cache.has_gamma = gamma != nullptr;
  cache.has_beta = beta != nullptr;

  for (Index c = 0; c < d.C; ++c) {
    cache.mean[c] = running.mean[c];
    cache.mean_residual[c] = Scalar(0);  // the running mean is exact in Scalar
    cache.var[c] = running.var[c];
    cache.invstd[c] = Scalar(1) / sqrt(running.var[c] + Scalar(cfg.eps));
  }
  const bool nontemporal = kernels::should_stream(y.size() * Index(sizeof(Scalar)));
  detail::for_each_channel<Scalar>(d, [&](Index c) {
    const Scalar mu = cache.mean[c], scale = cache.invstd[c] * detail::gamma_at(gamma, c);
    const Scalar b = beta ? (*beta)[c] : Scalar(0);
    detail::channel_map(y.data(), d, c, nontemporal, [=](auto v) { return (v - mu) * scale + b; }, x.data());
  });
}

/// \brief Eval forward pass: normalise with the running statistics,
/// \f$y_i = \gamma (x_i - r_\mu)/\sqrt{r_{\sigma^2}+\varepsilon} + \beta\f$
/// (allocating wrapper of batchnorm_forward_eval_into()).
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
  BatchNormForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  batchnorm_forward_eval_into(x, gamma, beta, running, cfg, out.y, out.cache);
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
/// \return dx, dgamma (empty when `gamma` is `nullptr`) and dbeta (empty when the forward pass had
///         no `beta`).
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

  // dβ whenever the forward had β, also without γ (PyTorch's `F.batch_norm(weight=None, bias=b)`).
  BatchNormGrads<Scalar> g{Tensor<Scalar>(x.shape()), gamma ? Tensor<Scalar>({C}) : Tensor<Scalar>(),
                           cache.has_beta ? Tensor<Scalar>({C}) : Tensor<Scalar>()};
  const Tensor<Scalar>& mu = cache.mean;
  const Tensor<Scalar>& invstd = cache.invstd;  // (σ²+ε)^(−1/2)
  // xᵢ − μ with μ = mean + mean_residual: the residual is what float32 cannot hold of a large μ.
  const auto centred = [&](Index i, Index c) { return (x[i] - mu[c]) - detail::mean_residual_at(cache, c); };

  if (!cache.training) {
    for (Index c = 0; c < C; ++c) {
      //! [bn.eval_dx]
      // Running statistics are constants: y is affine in x, so ∂L/∂xᵢ = dyᵢ γ / √(r_σ² + ε).
      const Scalar scale = detail::gamma_at(gamma, c) * invstd[c];
      each(c, [&](Index i) { g.dx[i] = dy[i] * scale; });
      //! [bn.eval_dx]
      if (gamma) {
        //! [bn.eval_dgamma]
        // ∂L/∂γ = Σᵢ dyᵢ x̂ᵢ, with x̂ᵢ = (xᵢ − r_μ)/√(r_σ² + ε) built from the running statistics
        Scalar dgamma = Scalar(0);
        each(c, [&](Index i) { dgamma += dy[i] * centred(i, c) * invstd[c]; });
        g.dgamma[c] = dgamma;
        //! [bn.eval_dgamma]
      }
      if (cache.has_beta) {
        Scalar dbeta = Scalar(0);  // ∂L/∂β = Σᵢ dyᵢ, as in training (bn.dbeta)
        each(c, [&](Index i) { dbeta += dy[i]; });
        g.dbeta[c] = dbeta;
      }
    }
    return g;
  }

  // Step 0. The parameter gradients: y = γ x̂ + β is linear in γ and β.
  for (Index c = 0; c < C; ++c) {
    if (gamma) {
      //! [bn.dgamma]
      // ∂L/∂γ = Σᵢ dyᵢ x̂ᵢ
      Scalar dgamma = Scalar(0);
      each(c, [&](Index i) { dgamma += dy[i] * centred(i, c) * invstd[c]; });
      g.dgamma[c] = dgamma;
      //! [bn.dgamma]
    }
    if (cache.has_beta) {
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
    each(c, [&](Index i) { s += dl_dxhat[i] * centred(i, c); });
    dl_dvar[c] = Scalar(scales.dl_dvar) * s * Scalar(-0.5) * invstd[c] * invstd[c] * invstd[c];
    //! [bn.dl_dvar]

    // Step 3. ∂σ²/∂μ, with μ treated as its own node and x held fixed.
    //! [bn.dvar_dmu]
    // ∂σ²/∂μ = −(2/M) Σᵢ (xᵢ − μ), which is 0 because μ is the mean of these same xᵢ.
    // Computed anyway: in floating point it is a rounding-level number, and the ablation
    // shows that keeping or dropping it changes nothing.
    Scalar centred_sum = Scalar(0);
    each(c, [&](Index i) { centred_sum += centred(i, c); });
    dvar_dmu[c] = Scalar(scales.dvar_dmu) * Scalar(-2) * centred_sum / M;
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
    const auto dvar_dx = [&](Index i) {
      return Scalar(scales.dvar_dx) * Scalar(2) * centred(i, c) / M;
    };
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
/// two passes per channel (the sums, then dx) and no temporaries of the input's size. Every
/// \f$dx_i\f$ needs both sums of its channel, so the channel is read twice; the second read finds
/// it in cache. Eval: \f$dx_i = dy_i\,\gamma/\sqrt{r_{\sigma^2}+\varepsilon}\f$.
///
/// For `float` and `double` the sums are accumulated in double, the passes are vectorised,
/// `dx` is written with streaming stores when it is larger than the caches
/// (kernels::should_stream()), and the channels are spread over the threads (parallel.hpp).
///
/// \param dy      `(N, C[, L | H, W])` upstream gradient
/// \param x       the forward input, same shape
/// \param gamma   `(C)` scale or `nullptr`
/// \param cache   from the forward pass on `x`
/// \param dx      output, preallocated with the shape of `x`; may be `dy` or `x` (in place), no other argument
/// \param dgamma  output `(C)`, or `nullptr` to skip (must be `nullptr` when `gamma` is)
/// \param dbeta   output `(C)`, or `nullptr` to skip
/// \throws InvalidArgument on mismatched shapes of any argument or output, outputs that alias
///         each other, `gamma` or the cache, or a cache that a forward pass of this op on an
///         input of the shape of `x` did not make.
template <class Scalar>
void batchnorm_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                             const BatchNormCache<Scalar>& cache, Tensor<Scalar>& dx, Opt<Tensor<Scalar>> dgamma,
                             Opt<Tensor<Scalar>> dbeta) {
  const NCL d = detail::check_bn_backward(dy, x, gamma, cache);
  require_shape(dx, x.shape(), detail::kBatchNorm, "dx (output)");
  detail::check_channel_vector(dgamma, d.C, "dgamma (output)");
  detail::check_channel_vector(dbeta, d.C, "dbeta (output)");
  if (dgamma && !gamma) throw InvalidArgument("batchnorm: dgamma requested but gamma is null (no affine transform)");
  // dx may be dy or x (every value of a channel is read before its dx is written); the outputs
  // must be distinct from each other, from gamma and from the cache's statistics.
  require_distinct(detail::kBatchNorm, dgamma, "dgamma (output)", dbeta, "dbeta (output)");
  for (const auto& [out, name] : {std::pair{static_cast<const Tensor<Scalar>*>(&dx), "dx (output)"},
                                  std::pair{static_cast<const Tensor<Scalar>*>(dgamma), "dgamma (output)"},
                                  std::pair{static_cast<const Tensor<Scalar>*>(dbeta), "dbeta (output)"}}) {
    if (name != std::string_view("dx (output)")) {
      require_distinct(detail::kBatchNorm, out, name, static_cast<const Tensor<Scalar>*>(&dx), "dx (output)");
    }
    require_distinct(detail::kBatchNorm, out, name, gamma, "gamma");
    require_distinct(detail::kBatchNorm, out, name, &cache.mean, "cache mean");
    require_distinct(detail::kBatchNorm, out, name, &cache.var, "cache var");
    require_distinct(detail::kBatchNorm, out, name, &cache.invstd, "cache invstd");
  }

  const bool nontemporal = kernels::should_stream(dx.size() * Index(sizeof(Scalar)));
  // Totals and coefficients in double for float and double.
  using Acc = std::conditional_t<std::is_floating_point_v<Scalar>, double, Scalar>;
  // The fused formula of one channel, given Σdy and Σdy·(x − μ) (see terms_of).
  const auto dx_of = [&](Index c, Acc sum_dy, Acc sum_dy_xmu) {
    const Scalar mu = cache.mean[c];
    const Acc lo = Acc(detail::mean_residual_at(cache, c)), invstd = Acc(cache.invstd[c]);
    const Acc gc = Acc(detail::gamma_at(gamma, c)), Ma = Acc(static_cast<double>(d.M()));
    //! [bn.dx_fused]
    // dx = γ/(M√(σ²+ε)) · (M·dy − Σdy − x̂·Σ(dy·x̂)), with x̂ = (x − μ)·invstd;
    // k = γ/(M√(σ²+ε)) distributed over the three terms, so each element costs two products and
    // three differences. μ = mean + residual (the residual: what float32 cannot hold of a large
    // μ): (x − mean − residual)·k_xhat = (x − mean)·k_xhat − residual·k_xhat, the second term
    // folded into the constant.
    const Acc k = gc * invstd / Ma, sum_dy_xhat = sum_dy_xmu * invstd;
    const Acc k_xhat_a = k * invstd * sum_dy_xhat;
    const Scalar k_dy = Scalar(k * Ma), k_xhat = Scalar(k_xhat_a);
    const Scalar k_const = Scalar(kernels::minus_residual(k * sum_dy, lo, k_xhat_a));
    return [=](auto dy, auto x) { return k_dy * dy - k_const - (x - mu) * k_xhat; };
    //! [bn.dx_fused]
  };
  // Pass 1 of a channel: Σdy and Σdy·(x − μ), so that Σdy·x̂ = invstd·Σdy·(x − μ); x̂ is rebuilt
  // on the fly, never stored. The sums run over x − mean; Σdy·(x − μ) = Σdy·(x − mean) −
  // residual·Σdy (xmu_sum).
  const auto terms_of = [&](Index c) {
    const Scalar mu = cache.mean[c];
    return [mu](auto g, auto v) { return std::pair{g, g * (v - mu)}; };
  };
  const auto xmu_sum = [&](Index c, Acc sum_dy, Acc sum_dy_xmean) {
    return kernels::minus_residual(sum_dy_xmean, Acc(detail::mean_residual_at(cache, c)), sum_dy);
  };
  const auto finish = [&](Index c, Acc sum_dy, Acc sum_dy_xmean) {
    if (dgamma) (*dgamma)[c] = Scalar(xmu_sum(c, sum_dy, sum_dy_xmean) * Acc(cache.invstd[c]));
    if (dbeta) (*dbeta)[c] = Scalar(sum_dy);
  };

  if constexpr (std::is_floating_point_v<Scalar>) {
    if (cache.training) {  // the fast path: both passes, pipelined over blocks of channels
      detail::pipelined_channels(
          d, dx.data(), nontemporal, terms_of, finish,
          [&](Index c, double sum_dy, double sum_dy_xmean) {
            return dx_of(c, sum_dy, xmu_sum(c, sum_dy, sum_dy_xmean));
          },
          dy.data(), x.data());
      return;
    }
  }
  detail::for_each_channel<Scalar>(d, [&](Index c) {
    Acc sum_dy = Acc(0), sum_dy_xmean = Acc(0);
    if (cache.training || dgamma || dbeta) {
      std::tie(sum_dy, sum_dy_xmean) = detail::channel_sums<Scalar>(d, c, terms_of(c), dy.data(), x.data());
      finish(c, sum_dy, sum_dy_xmean);
    }
    if (cache.training) {
      detail::channel_map(dx.data(), d, c, nontemporal, dx_of(c, sum_dy, xmu_sum(c, sum_dy, sum_dy_xmean)), dy.data(),
                          x.data());
    } else {  // eval: dx = dy·γ/√(r_σ² + ε)
      const Scalar scale = detail::gamma_at(gamma, c) * cache.invstd[c];
      detail::channel_map(dx.data(), d, c, nontemporal, [=](auto g) { return g * scale; }, dy.data());
    }
  });
}

/// \brief Fused backward pass (allocating wrapper of batchnorm_backward_into()).
/// \param dy     `(N, C[, L | H, W])` upstream gradient
/// \param x      the forward input, same shape
/// \param gamma  `(C)` scale or `nullptr`
/// \param cache  from the forward pass on `x`
/// \return dx, dgamma (empty when `gamma` is `nullptr`) and dbeta (empty when the forward pass had
///         no `beta`).
template <class Scalar>
BatchNormGrads<Scalar> batchnorm_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                          Opt<const Tensor<Scalar>> gamma, const BatchNormCache<Scalar>& cache) {
  detail::check_bn_backward(dy, x, gamma, cache);  // before the cache's shapes size an allocation
  const Index C = cache.dims.C;
  BatchNormGrads<Scalar> g{Tensor<Scalar>(x.shape()), gamma ? Tensor<Scalar>({C}) : Tensor<Scalar>(),
                           cache.has_beta ? Tensor<Scalar>({C}) : Tensor<Scalar>()};
  batchnorm_backward_into(dy, x, gamma, cache, g.dx, gamma ? &g.dgamma : nullptr,
                          cache.has_beta ? &g.dbeta : nullptr);
  return g;
}

}  // namespace gradproof::ops

/// \cond INTERNAL
// Explicit instantiation for float and double: declared here, defined once in batchnorm.cpp.
#define GRADPROOF_BATCHNORM_INSTANTIATE(PREFIX, S)                                                          \
  PREFIX template void batchnorm_forward_train_into<S>(const Tensor<S>&, const Tensor<S>*, const Tensor<S>*,  \
                                                       BatchNormRunningStats<S>*, const BatchNormConfig&,     \
                                                       Tensor<S>&, BatchNormCache<S>&);                       \
  PREFIX template void batchnorm_forward_eval_into<S>(const Tensor<S>&, const Tensor<S>*, const Tensor<S>*,   \
                                                      const BatchNormRunningStats<S>&, const BatchNormConfig&, \
                                                      Tensor<S>&, BatchNormCache<S>&);                        \
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
