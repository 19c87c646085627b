/// \file
/// \brief RMS normalization: forward, staged and fused backward. The member of the
/// normalization family without a mean.
///
/// Semantics of PyTorch's `RMSNorm(normalized_shape, eps=None, elementwise_affine)`:
/// \f[ y_{r,j} = \gamma_j\, x_{r,j}\,/\sqrt{\mathrm{ms}_r + \varepsilon},\qquad
///     \mathrm{ms}_r = \frac1M\sum_j x_{r,j}^2 , \f]
/// over the trailing axes given by `normalized_shape`; \f$\varepsilon\f$ is added to the mean
/// square inside the square root (as `torch.rsqrt(x.pow(2).mean(-1) + eps)`). There is no
/// \f$\beta\f$. `eps = std::nullopt` means PyTorch's `eps=None`: `torch.finfo(dtype).eps`, i.e.
/// the machine epsilon of the scalar type the pass runs in (\f$2^{-23}\f$ for float,
/// \f$2^{-52}\f$ for double; the complex and dual scalars of the oracles use double's). The
/// cache records the value used.
///
/// Shape legend:
/// - `x`, `y`, `dy`, `dx`: rank 2 to 4, ending in `normalized_shape`, row-major;
/// - \f$M\f$ = `prod(normalized_shape)`: values per statistic; \f$R\f$ = `numel(x) / M` rows;
/// - `gamma`, `dgamma`: `normalized_shape`; statistics: `(R)`.
///
/// Without a mean, \f$x\f$ reaches \f$\hat x\f$ by two paths (directly and through the mean
/// square), not three, and the fused form has one projection, \f$\hat x\sum g\hat x\f$, instead
/// of two. Every formula id `rms.*` marks the code that implements that term; the
/// derivation is `derivations/rmsnorm.md`.
#pragma once

#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/normalization.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>

namespace gradproof::ops {

/// Hyper-parameters of RMS normalization (PyTorch defaults).
struct RMSNormConfig {
  /// The trailing axes normalized over.
  Shape normalized_shape;
  /// Added to the mean square before the square root; finite and > 0 when given.
  /// `std::nullopt` (PyTorch's `eps=None`) means the machine epsilon of the scalar type.
  std::optional<double> eps = std::nullopt;
};

/// The \f$\varepsilon\f$ a pass in `Scalar` uses: `cfg.eps`, or `torch.finfo(dtype).eps` when absent.
template <class Scalar>
double rmsnorm_eps(const RMSNormConfig& cfg) {
  if (cfg.eps) return *cfg.eps;
  return std::is_same_v<Scalar, float> ? static_cast<double>(std::numeric_limits<float>::epsilon())
                                       : std::numeric_limits<double>::epsilon();
}

/// What the backward pass of RMS norm needs from its forward pass.
template <class Scalar>
struct RMSNormCache {
  NormSets sets;           ///< `{R, M, period = 1, run = 1}`
  Shape shape;             ///< shape of the forward input
  Shape param_shape;       ///< `normalized_shape`
  bool has_gamma = false;  ///< the forward pass had \f$\gamma\f$
  double eps = 0;          ///< the \f$\varepsilon\f$ used (resolved from `std::nullopt`)
  Tensor<Scalar> ms;       ///< `(R)`: mean square \f$\frac1M\sum_j x_j^2\f$ of each row
  Tensor<Scalar> invrms;   ///< `(R)`: \f$1/\sqrt{\mathrm{ms}+\varepsilon}\f$
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar>
struct RMSNormForward {
  Tensor<Scalar> y;             ///< same shape as `x`
  RMSNormCache<Scalar> cache;  ///< statistics used to normalise
};

/// Gradients of the loss with respect to the inputs of RMS normalization.
template <class Scalar>
struct RMSNormGrads {
  Tensor<Scalar> dx;      ///< same shape as `x`
  Tensor<Scalar> dgamma;  ///< `normalized_shape`; empty without \f$\gamma\f$
};

/// \brief Scales applied to each chain-rule term of the staged backward (1 is the derivation;
/// the negative controls drop (0) or flip (-1) one of them).
struct RMSNormTermScales {
  double dl_dxhat = 1;  ///< rms.dl_dxhat: \f$\partial L/\partial\hat x_i\f$
  double dl_dms = 1;    ///< rms.dl_dms: \f$\partial L/\partial\,\mathrm{ms}\f$
  double dms_dx = 1;    ///< rms.dms_dx: \f$\partial\,\mathrm{ms}/\partial x_i\f$ in the assembly
};

/// The intermediate terms of the staged backward, for term-by-term checks.
template <class Scalar>
struct RMSNormStagedTrace {
  Tensor<Scalar> dl_dxhat;  ///< shape of `x`: \f$\partial L/\partial\hat x_i\f$ (rms.dl_dxhat)
  Tensor<Scalar> dl_dms;    ///< `(R)`: \f$\partial L/\partial\,\mathrm{ms}\f$ (rms.dl_dms)
  Tensor<Scalar> dms_dx;    ///< shape of `x`: \f$\partial\,\mathrm{ms}/\partial x_i\f$ (rms.dms_dx)
};

namespace norm::detail {

constexpr const char* kRMSNorm = "rmsnorm";

/// Checks `dy`, `x`, `gamma` and the cache before a backward pass, before anything is allocated:
/// the cache must be made for an input of the shape of `x`, with the sets, parameter shape and
/// `(R)` statistics that the forward pass makes.
template <class Scalar>
void check_rms_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const Tensor<Scalar>* gamma,
                        const RMSNormCache<Scalar>& cache) {
  require_shape(dy, x.shape(), kRMSNorm, "dy (must match x)");
  if (x.shape() != cache.shape) {
    std::ostringstream msg;
    msg << kRMSNorm << ": cache was made for an input of shape " << to_string(cache.shape) << " but x has shape "
        << to_string(x.shape());
    throw InvalidArgument(msg.str());
  }
  const NormSets& s = cache.sets;
  if (const NormSets e = layernorm_cache_sets(kRMSNorm, x.shape(), cache); !(s == e)) {
    std::ostringstream msg;
    msg << kRMSNorm << ": cache is inconsistent with x of shape " << to_string(x.shape())
        << ": its sets are (R, M, period, run) = (" << s.R << ", " << s.M << ", " << s.period << ", " << s.run
        << "), a forward pass makes (" << e.R << ", " << e.M << ", " << e.period << ", " << e.run << ")";
    throw InvalidArgument(msg.str());
  }
  for (const auto& [t, name] : {std::pair{&cache.ms, "ms"}, std::pair{&cache.invrms, "invrms"}}) {
    if (!same_shape(t->shape(), vector_shape(s.R))) {
      std::ostringstream msg;
      msg << kRMSNorm << ": cache " << name << " must have shape " << to_string(vector_shape(s.R))
          << " (one per row); got " << to_string(t->shape());
      throw InvalidArgument(msg.str());
    }
  }
  if ((gamma != nullptr) != cache.has_gamma) {
    std::ostringstream msg;
    msg << kRMSNorm << ": gamma is " << (gamma ? "given" : "null") << " but the forward pass had "
        << (cache.has_gamma ? "gamma" : "none");
    throw InvalidArgument(msg.str());
  }
  require_optional_shape(gamma, cache.param_shape, kRMSNorm, "gamma");
}

/// \brief The reference forward: per row, the mean square, then \f$y = \gamma \odot x/\sqrt{\mathrm{ms}+\varepsilon}\f$,
/// in Eigen expressions on `Scalar`. The code the complex-step and dual-number oracles run; the
/// benchmarks time it as the staged forward. Checks nothing.
template <class Scalar>
void rmsnorm_forward_reference(const NormSets& s, const Scalar* x, const Scalar* gamma, double eps, Scalar* y,
                               Scalar* ms_out, Scalar* invrms_out) {
  using std::sqrt;
  const Scalar M = Scalar(static_cast<double>(s.M));
  for (Index r = 0; r < s.R; ++r) {
    //! [rms.forward]
    // One pass for the mean square (no centring), then x̂ = x/√(ms + ε) and y = γ ⊙ x̂
    // (γ elementwise).
    const auto xs = CMap<Scalar>(x + s.offset(r), s.M);
    const Scalar ms = xs.square().sum() / M;
    const Scalar inv = Scalar(1) / sqrt(ms + Scalar(eps));
    ms_out[r] = ms;
    invrms_out[r] = inv;
    auto ys = Map<Scalar>(y + s.offset(r), s.M);
    ys = xs * inv;
    if (gamma) ys *= CMap<Scalar>(gamma, s.M);
    //! [rms.forward]
  }
}

/// \brief The fast forward for `float` and `double`: one read of each row for its mean square
/// (kernels::Sums2: float partial sums, double totals), `y` written while the row is in cache,
/// rows spread over the threads. Checks nothing.
template <class Scalar>
void rmsnorm_forward_rows(const NormSets& s, const Scalar* x, const Scalar* gamma, double eps, Scalar* y,
                          Scalar* ms_out, Scalar* invrms_out) {
  const double M = static_cast<double>(s.M);
  const bool nontemporal = kernels::should_stream(s.size() * Index(sizeof(Scalar)));
  parallel::parallel_ranges(s.R, s.size(), [&](Index r0, Index r1, Index, Index) {
    for (Index r = r0; r < r1; ++r) {
      const Scalar* xr = x + s.offset(r);
      const double ms = kernels::sum2(s.M, [](auto v) { return std::pair{v * v, decltype(v){}}; }, xr).first / M;
      ms_out[r] = Scalar(ms);
      // ms = +∞ from finite values: a square overflowed the dtype. NaN then, not 1/√∞ = 0, which
      // would give y = 0 and dx = 0 for the row, finite and wrong (as kernels::variance_and_invstd()
      // does for the members with a mean). With a ±Inf value, 1/√∞ = 0 is the limit, as in PyTorch.
      // The scan for an infinite value runs only when ms = +∞, so the common case costs nothing.
      const bool overflow = ms == std::numeric_limits<double>::infinity() &&
                            std::all_of(xr, xr + s.M, [](Scalar v) { return std::isfinite(v); });
      invrms_out[r] = Scalar(overflow ? std::numeric_limits<double>::quiet_NaN() : 1.0 / std::sqrt(ms + eps));
      const Scalar inv = invrms_out[r];
      if (gamma) {
        kernels::map(y + s.offset(r), s.M, nontemporal, [inv](auto v, auto g) { return v * inv * g; }, xr, gamma);
      } else {
        kernels::map(y + s.offset(r), s.M, nontemporal, [inv](auto v) { return v * inv; }, xr);
      }
    }
    kernels::stream_fence();
  });
}

/// \brief The fused backward for `float` and `double` (the formula of rms.dx_fused, vectorised):
/// per row, one read from memory for \f$\sum_j g_j x_j\f$ (\f$g = \gamma \odot dy\f$), then one
/// pass over the row in cache that writes `dx` and adds the row's \f$dy \odot \hat x\f$ into
/// column sums for \f$d\gamma\f$ per chunk of rows (kernels::ColumnSums2), added into `dgamma`
/// in the order of the chunks (the same bits at any number of threads). Rows spread over the threads. Checks nothing.
template <class Scalar>
void rmsnorm_backward_rows(const NormSets& s, const Scalar* dy, const Scalar* x, const Scalar* gamma,
                           const Scalar* invrms, Scalar* dx, Scalar* dgamma) {
  const Scalar M = Scalar(static_cast<double>(s.M));
  const bool nontemporal = kernels::should_stream(s.size() * Index(sizeof(Scalar)));
  // Rows are handled kRows at a time in pass 2, dγ per chunk of rows (see norm::backward_rows()).
  constexpr int kRows = 4;
  const bool blocked = !nontemporal || (s.M * Index(sizeof(Scalar))) % kernels::kVectorBytes == 0;
  const Index chunk = kernels::column_chunk_rows(s.M), chunks = (s.R + chunk - 1) / chunk;
  double* totals = dgamma ? kernels::zeroed_scratch(s.M) : nullptr;
  parallel::chunks_in_order(chunks, s.size(), [&](Index q, const auto& in_turn) {
    const Index r0 = q * chunk, r1 = std::min(s.R, r0 + chunk);
    kernels::ColumnSums2<Scalar> columns(s.M, dgamma != nullptr, false);
    // What pass 2 needs of a row: 1/√(ms+ε) and c = inv³·Σ(g·x)/M, for dx = inv·g − x·c.
    struct Row {
      Scalar inv, c;
    };
    std::array<Row, kRows> rows{};
    for (Index r = r0; r < r1; r += kRows) {
      const int count = static_cast<int>(std::min<Index>(kRows, r1 - r));
      for (int k = 0; k < count; ++k) {
        const Index o = s.offset(r + k);
        // Pass 1 (memory): Σ g·x, g = γ ⊙ dy.
        const double sgx =
            gamma ? kernels::sum2(
                        s.M, [](auto d, auto xv, auto g) { return std::pair{g * d * xv, decltype(d){}}; }, dy + o,
                        x + o, gamma)
                        .first
                  : kernels::sum2(s.M, [](auto d, auto xv) { return std::pair{d * xv, decltype(d){}}; }, dy + o, x + o)
                        .first;
        const double inv = invrms[r + k];
        rows[static_cast<std::size_t>(k)] = {Scalar(inv), Scalar(inv * inv * inv * sgx / static_cast<double>(M))};
      }
      // Pass 2 (cache): dx = inv·g − x·c, and the column Σ dy·x̂ (dγ).
      const auto dx_of = [&rows](int k, auto d, auto xv, auto g) {
        const Row& t = rows[static_cast<std::size_t>(k)];
        return t.inv * (g * d) - xv * t.c;
      };
      const auto col = [&rows](int k, auto d, auto xv) {
        return std::pair{d * xv * rows[static_cast<std::size_t>(k)].inv, decltype(d){}};
      };
      const Index o = s.offset(r);
      if (count == kRows && blocked) {
        kernels::map_columns_rows<kRows>(dx + o, s.M, s.M, nontemporal, dx_of, columns.partial(0), nullptr, col, gamma,
                                         dy + o, x + o);
      } else {
        for (int k = 0; k < count; ++k) {
          kernels::map_columns_rows<1>(dx + o + k * s.M, s.M, s.M, nontemporal,
                                       [&](int, auto d, auto xv, auto g) { return dx_of(k, d, xv, g); },
                                       columns.partial(0), nullptr, [&](int, auto d, auto xv) { return col(k, d, xv); },
                                       gamma, dy + o + k * s.M, x + o + k * s.M);
        }
      }
      columns.rows_done(count);
    }
    kernels::stream_fence();
    if (dgamma) in_turn([&] { columns.add_totals_into(totals, nullptr); });
  });
  if (dgamma)
    for (Index j = 0; j < s.M; ++j) dgamma[j] = Scalar(totals[j]);
}

}  // namespace norm::detail

/// \brief Forward pass writing into caller-provided `y` and `cache`; allocation-free when the
/// cache is reused.
///
/// \f[ \mathrm{ms}_r = \frac1M \sum_j x_{r,j}^2,\quad \hat x_{r,j} = \frac{x_{r,j}}{\sqrt{\mathrm{ms}_r+\varepsilon}},
///     \quad y_{r,j} = \gamma_j \hat x_{r,j}. \f]
/// \tparam Scalar `float`, `double`, `std::complex<double>` or a dual number.
/// \param x      input of rank 2 to 4 ending in `cfg.normalized_shape`
/// \param gamma  `normalized_shape` scale, or `nullptr` (`elementwise_affine=False`)
/// \param cfg    `normalized_shape` and \f$\varepsilon\f$ (absent: machine epsilon of `Scalar`)
/// \param y      output, preallocated with the shape of `x`; may be `x` (in place), no other argument
/// \param cache  output: `(R)` statistics, the \f$\varepsilon\f$ used, and what backward needs
/// \throws InvalidArgument on a rank outside [2, 4], an empty `x`, an empty `normalized_shape` or
///         one that `x` does not end in, `gamma` not of shape `normalized_shape`, a given `eps`
///         not finite and > 0, or `y` not of the shape of `x`.
template <class Scalar>
void rmsnorm_forward_into(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma, const RMSNormConfig& cfg,
                          Tensor<Scalar>& y, RMSNormCache<Scalar>& cache) {
  using namespace norm::detail;
  using std::sqrt;
  const NormSets s = layernorm_sets(x.shape(), cfg.normalized_shape, kRMSNorm);
  require_optional_shape(gamma, cfg.normalized_shape, kRMSNorm, "gamma");
  if (cfg.eps) require_positive_eps(*cfg.eps, kRMSNorm);
  require_shape(y, x.shape(), kRMSNorm, "y (output)");
  require_distinct(kRMSNorm, &y, "y (output)", gamma, "gamma");
  require_distinct(kRMSNorm, &y, "y (output)", &cache.ms, "cache ms (output)");
  require_distinct(kRMSNorm, &y, "y (output)", &cache.invrms, "cache invrms (output)");
  cache.sets = s;
  cache.shape = x.shape();
  cache.param_shape = cfg.normalized_shape;
  cache.has_gamma = gamma != nullptr;
  cache.eps = rmsnorm_eps<Scalar>(cfg);
  for (Tensor<Scalar>* t : {&cache.ms, &cache.invrms})
    if (!same_shape(t->shape(), vector_shape(s.R))) *t = Tensor<Scalar>({s.R});

  if constexpr (std::is_floating_point_v<Scalar>) {
    rmsnorm_forward_rows(s, x.data(), data_or_null(gamma), cache.eps, y.data(), cache.ms.data(), cache.invrms.data());
  } else {
    rmsnorm_forward_reference(s, x.data(), data_or_null(gamma), cache.eps, y.data(), cache.ms.data(),
                              cache.invrms.data());
  }
}

/// \brief Forward pass (allocating wrapper of rmsnorm_forward_into()).
/// \return `y` of the shape of `x`, and the cache for the backward pass.
template <class Scalar>
RMSNormForward<Scalar> rmsnorm_forward(const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                       const RMSNormConfig& cfg) {
  RMSNormForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  rmsnorm_forward_into(x, gamma, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: one named step per chain-rule term, each marked with its rms formula id.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param gamma   `normalized_shape` scale, or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param scales  term scales for negative controls; leave at the default
/// \param trace   if not `nullptr`, receives the intermediate terms
/// \return dx, and dgamma if `gamma`.
/// \throws InvalidArgument if `dy` does not match `x`, the cache was made for another input, or
///         `gamma` is absent/present unlike in the forward pass.
template <class Scalar>
RMSNormGrads<Scalar> rmsnorm_backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                             Opt<const Tensor<Scalar>> gamma, const RMSNormCache<Scalar>& cache,
                                             const RMSNormTermScales& scales = {},
                                             RMSNormStagedTrace<Scalar>* trace = nullptr) {
  norm::detail::check_rms_backward(dy, x, gamma, cache);
  const NormSets& s = cache.sets;
  const Scalar M = Scalar(static_cast<double>(s.M));
  RMSNormGrads<Scalar> g{Tensor<Scalar>(x.shape()), gamma ? Tensor<Scalar>(cache.param_shape) : Tensor<Scalar>()};
  const auto gamma_at = [&](Index j) { return gamma ? (*gamma)[j] : Scalar(1); };

  // Step 0. The parameter gradient: γⱼ is shared by position j of every row.
  if (gamma) {
    g.dgamma.flat().setZero();
    for (Index r = 0; r < s.R; ++r) {
      for (Index j = 0; j < s.M; ++j) {
        //! [rms.dgamma]
        // ∂L/∂γⱼ = Σ_r dy_{r,j} x̂_{r,j}, x̂ = x/√(ms + ε)
        g.dgamma[j] += dy[s.offset(r) + j] * x[s.offset(r) + j] * cache.invrms[r];
        //! [rms.dgamma]
      }
    }
  }

  RMSNormStagedTrace<Scalar> t{Tensor<Scalar>(x.shape()), Tensor<Scalar>({s.R}), Tensor<Scalar>(x.shape())};
  // Step 1. ∂L/∂x̂.
  for (Index r = 0; r < s.R; ++r) {
    for (Index j = 0; j < s.M; ++j) {
      //! [rms.dl_dxhat]
      // ∂L/∂x̂_{r,j} = γⱼ ∂L/∂y_{r,j}
      t.dl_dxhat[s.offset(r) + j] = Scalar(scales.dl_dxhat) * gamma_at(j) * dy[s.offset(r) + j];
      //! [rms.dl_dxhat]
    }
  }

  // Step 2. ∂L/∂ms, one per row: ms reaches L only through the x̂ of its row.
  for (Index r = 0; r < s.R; ++r) {
    //! [rms.dl_dms]
    // ∂L/∂ms_r = Σⱼ ∂L/∂x̂_{r,j} · x_{r,j} · (−½)(ms_r + ε)^(−3/2)
    Scalar acc = Scalar(0);
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i) acc += t.dl_dxhat[i] * x[i];
    const Scalar inv = cache.invrms[r];
    t.dl_dms[r] = Scalar(scales.dl_dms) * acc * Scalar(-0.5) * inv * inv * inv;
    //! [rms.dl_dms]
  }

  // Step 3. The local derivative of the mean square in x (there is no mean, so no ∂ms/∂μ).
  for (Index i = 0; i < x.size(); ++i) {
    //! [rms.dms_dx]
    // ∂ms/∂xᵢ = 2xᵢ/M
    t.dms_dx[i] = Scalar(scales.dms_dx) * Scalar(2) * x[i] / M;
    //! [rms.dms_dx]
  }

  // Step 4. Assemble ∂L/∂x from the two paths x → x̂ and x → ms.
  for (Index r = 0; r < s.R; ++r) {
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i) {
      //! [rms.dx]
      // ∂L/∂xᵢ = ∂L/∂x̂ᵢ / √(ms + ε) + ∂L/∂ms · ∂ms/∂xᵢ
      g.dx[i] = t.dl_dxhat[i] * cache.invrms[r] + t.dl_dms[r] * t.dms_dx[i];
      //! [rms.dx]
    }
  }
  if (trace) *trace = std::move(t);
  return g;
}

/// \brief Fused backward pass writing into caller-provided outputs; allocates nothing.
///
/// \f[ dx_{r,j} = \frac{1}{\sqrt{\mathrm{ms}_r+\varepsilon}}
///     \Big(g_{r,j} - \hat x_{r,j}\,\frac1M\sum_k g_{r,k}\hat x_{r,k}\Big),\qquad g_{r,j} = \gamma_j\,dy_{r,j}, \f]
/// two passes per row for dx (the one projection, then dx), a third when dγ is requested, and
/// no temporaries of the input's size.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param gamma   `normalized_shape` scale, or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param dx      output, preallocated with the shape of `x`; may be `dy` or `x` (in place), no other argument
/// \param dgamma  output `normalized_shape`, or `nullptr` to skip (must be `nullptr` when `gamma` is)
/// \throws InvalidArgument on mismatched shapes of any argument or output, outputs that alias
///         each other, `gamma` or the cache, or a cache that a forward pass of this op on an
///         input of the shape of `x` did not make.
template <class Scalar>
void rmsnorm_backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                           const RMSNormCache<Scalar>& cache, Tensor<Scalar>& dx, Opt<Tensor<Scalar>> dgamma) {
  using namespace norm::detail;
  check_rms_backward(dy, x, gamma, cache);
  require_shape(dx, x.shape(), kRMSNorm, "dx (output)");
  if (dgamma && !gamma) throw InvalidArgument("rmsnorm: dgamma requested but gamma is null (no affine transform)");
  require_optional_shape(dgamma, cache.param_shape, kRMSNorm, "dgamma (output)");
  // dx may be dy or x (every value of a row is read before its dx is written); nothing else.
  require_distinct(kRMSNorm, &dx, "dx (output)", gamma, "gamma");
  require_distinct(kRMSNorm, dgamma, "dgamma (output)", &dx, "dx (output)");
  require_distinct(kRMSNorm, dgamma, "dgamma (output)", gamma, "gamma");
  require_distinct(kRMSNorm, dgamma, "dgamma (output)", &dy, "dy");
  require_distinct(kRMSNorm, dgamma, "dgamma (output)", &x, "x");
  for (const Tensor<Scalar>* out : {static_cast<const Tensor<Scalar>*>(&dx), static_cast<const Tensor<Scalar>*>(dgamma)}) {
    require_distinct(kRMSNorm, out, out == &dx ? "dx (output)" : "dgamma (output)", &cache.ms, "cache ms");
    require_distinct(kRMSNorm, out, out == &dx ? "dx (output)" : "dgamma (output)", &cache.invrms, "cache invrms");
  }

  const NormSets& s = cache.sets;
  if constexpr (std::is_floating_point_v<Scalar>) {  // the vectorised path of the same formula
    return rmsnorm_backward_rows(s, dy.data(), x.data(), data_or_null(gamma), cache.invrms.data(), dx.data(),
                                 dgamma ? dgamma->data() : nullptr);
  }
  const Scalar M = Scalar(static_cast<double>(s.M));
  if (dgamma) dgamma->flat().setZero();
  for (Index r = 0; r < s.R; ++r) {
    const auto dys = CMap<Scalar>(dy.data() + s.offset(r), s.M), xs = CMap<Scalar>(x.data() + s.offset(r), s.M);
    const Scalar inv = cache.invrms[r];
    if (dgamma) Map<Scalar>(dgamma->data(), s.M) += dys * xs * inv;
    auto dxs = Map<Scalar>(dx.data() + s.offset(r), s.M);
    //! [rms.dx_fused]
    // dx = (1/√(ms+ε)) · (g − x̂ · Σ(g·x̂)/M), g = γ ⊙ dy, x̂ = x/√(ms+ε): one projection,
    // no Σg term.
    // Pass 1: Σ g·x (x̂ rebuilt on the fly). Pass 2: dx = inv·g − x·(inv³·Σ g·x / M).
    if (gamma) {
      const auto gs = CMap<Scalar>(gamma->data(), s.M);
      const Scalar c = inv * inv * inv * (gs * dys * xs).sum() / M;
      dxs = inv * gs * dys - xs * c;
    } else {
      const Scalar c = inv * inv * inv * (dys * xs).sum() / M;
      dxs = inv * dys - xs * c;
    }
    //! [rms.dx_fused]
  }
}

/// \brief Fused backward pass (allocating wrapper of rmsnorm_backward_into()).
/// \return dx, and dgamma if `gamma`.
template <class Scalar>
RMSNormGrads<Scalar> rmsnorm_backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x,
                                      Opt<const Tensor<Scalar>> gamma, const RMSNormCache<Scalar>& cache) {
  norm::detail::check_rms_backward(dy, x, gamma, cache);  // before the cache's shapes size an allocation
  RMSNormGrads<Scalar> g{Tensor<Scalar>(x.shape()), gamma ? Tensor<Scalar>(cache.param_shape) : Tensor<Scalar>()};
  rmsnorm_backward_into(dy, x, gamma, cache, g.dx, gamma ? &g.dgamma : nullptr);
  return g;
}

}  // namespace gradproof::ops

/// \cond INTERNAL
#define GRADPROOF_RMSNORM_INSTANTIATE(PREFIX, S)                                                                   \
  PREFIX template void rmsnorm_forward_into<S>(const Tensor<S>&, const Tensor<S>*, const RMSNormConfig&,          \
                                               Tensor<S>&, RMSNormCache<S>&);                                     \
  PREFIX template RMSNormForward<S> rmsnorm_forward<S>(const Tensor<S>&, const Tensor<S>*, const RMSNormConfig&); \
  PREFIX template RMSNormGrads<S> rmsnorm_backward_staged<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*, \
                                                             const RMSNormCache<S>&, const RMSNormTermScales&,    \
                                                             RMSNormStagedTrace<S>*);                              \
  PREFIX template void rmsnorm_backward_into<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,             \
                                                const RMSNormCache<S>&, Tensor<S>&, Tensor<S>*);                  \
  PREFIX template RMSNormGrads<S> rmsnorm_backward<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,       \
                                                      const RMSNormCache<S>&);
namespace gradproof::ops {
GRADPROOF_RMSNORM_INSTANTIATE(extern, float)
GRADPROOF_RMSNORM_INSTANTIATE(extern, double)
}  // namespace gradproof::ops
/// \endcond
