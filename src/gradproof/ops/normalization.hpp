/// \file
/// \brief The normalization family's shared core: normalize contiguous sets of a row-major
/// tensor. Forward, staged backward (one step per chain-rule term) and fused backward, derived
/// once for "normalize over a set \f$S\f$".
///
/// Layer, group and instance normalization differ only in the set \f$S\f$ that a mean and a
/// variance are taken over, and for all three every \f$S\f$ is a contiguous block of the
/// row-major input:
/// - layer norm: the trailing `prod(normalized_shape)` values of one leading index;
///   \f$\gamma, \beta\f$ have one value per element of \f$S\f$;
/// - group norm: the \f$(C/G)\cdot L\f$ values of group \f$g\f$ of sample \f$n\f$;
///   \f$\gamma, \beta\f$ have one value per channel, constant on runs of \f$L\f$ values;
/// - instance norm: the \f$L\f$ values of channel \f$c\f$ of sample \f$n\f$;
///   \f$\gamma, \beta\f$ have one value per channel, constant over all of \f$S\f$.
///
/// So the input is an \f$R \times M\f$ matrix, one set per row, and a layer is a NormSets: the
/// two extents plus the rule that says which \f$\gamma\f$ scales value \f$i\f$ of set \f$r\f$.
/// Batch norm is the member whose sets are strided (channel \f$c\f$ of every sample); it keeps
/// its own implementation (batchnorm.hpp). RMS norm, the member without a mean, is in rmsnorm.hpp.
///
/// Shape legend:
/// - \f$R\f$ sets, \f$M\f$ values per set; \f$i\f$ runs over one set; set \f$r\f$ occupies the
///   flat offsets \f$[rM, (r+1)M)\f$;
/// - `x`, `y`, `dy`, `dx`: \f$R M\f$ values (any shape with that many elements);
/// - statistics \f$\mu, \sigma^2, 1/\sqrt{\sigma^2+\varepsilon}\f$ and the per-set terms: `(R)`;
/// - \f$\gamma, \beta\f$ and their gradients: \f$P\f$ values (NormSets::params()); value \f$i\f$
///   of set \f$r\f$ is scaled by \f$\gamma_{p(r,i)}\f$ (NormSets::param()).
///
/// The general derivation is `derivations/normalization.md`; the formula ids `norm.*` mark the
/// code below. Each layer marks its own instance of every term (`ln.*`, `gn.*`, `in.*`) around
/// the call to the step it uses.
#pragma once

#include "gradproof/kernels.hpp"
#include "gradproof/ops/layout.hpp"
#include "gradproof/parallel.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

namespace gradproof::ops {

/// \brief The sets of a normalization layer: \f$R\f$ contiguous rows of \f$M\f$ values, and how
/// the affine parameters are laid out over them.
///
/// Value \f$i\f$ of set \f$r\f$ is scaled by \f$\gamma_{p(r,i)}\f$ with
/// \f$p(r, i) = (r \bmod \mathit{period})\cdot(M/\mathit{run}) + \lfloor i/\mathit{run}\rfloor\f$:
/// - layer norm: `period = 1`, `run = 1` (one parameter per element of the set, shared by all rows);
/// - group norm: `period = G`, `run = L` (set \f$(n, g)\f$ spans channels \f$g\,C/G \ldots\f$, each
///   a run of \f$L\f$ values);
/// - instance norm: `period = C`, `run = L = M` (one parameter for the whole set \f$(n, c)\f$).
struct NormSets {
  Index R = 0;       ///< number of sets (rows)
  Index M = 0;       ///< values per set
  Index period = 1;  ///< sets \f$r\f$ and \f$r + \mathit{period}\f$ use the same parameters
  Index run = 1;     ///< consecutive values of a set that share one parameter; divides \f$M\f$

  /// Flat offset of the first value of set `r`.
  Index offset(Index r) const noexcept { return r * M; }
  /// Parameters per set, \f$M/\mathit{run}\f$.
  Index per_set() const noexcept { return M / run; }
  /// Number of affine parameters \f$P = \mathit{period}\cdot M/\mathit{run}\f$.
  Index params() const noexcept { return period * per_set(); }
  /// Index \f$p(r, i)\f$ of the parameter that scales value `i` of set `r`.
  Index param(Index r, Index i) const noexcept { return (r % period) * per_set() + i / run; }
  /// Index of the first parameter of set `r` (the parameters of one set are contiguous).
  Index param_base(Index r) const noexcept { return (r % period) * per_set(); }
  /// Total number of values \f$R M\f$.
  Index size() const noexcept { return R * M; }

  /// Same sets and the same parameter layout.
  bool operator==(const NormSets&) const = default;
};

/// \brief Scales applied to each chain-rule term of a staged backward of the family.
///
/// All ones is the derivation. The negative controls set one scale to 0 (drop the term) or -1
/// (flip its sign) and show that the checks notice, except for \f$\partial\sigma^2/\partial\mu\f$,
/// which is zero because \f$\mu\f$ is the mean of the very values \f$\sigma^2\f$ is taken over.
struct NormTermScales {
  double dl_dxhat = 1;  ///< \f$\partial L/\partial\hat x_i\f$
  double dl_dvar = 1;   ///< \f$\partial L/\partial\sigma^2\f$
  double dvar_dmu = 1;  ///< \f$\partial\sigma^2/\partial\mu\f$
  double dl_dmu = 1;    ///< \f$\partial L/\partial\mu\f$
  double dvar_dx = 1;   ///< \f$\partial\sigma^2/\partial x_i\f$ in the assembly
  double dmu_dx = 1;    ///< \f$\partial\mu/\partial x_i\f$ in the assembly
};

/// The intermediate terms of a staged backward, for term-by-term checks.
template <class Scalar>
struct NormStagedTrace {
  Tensor<Scalar> dl_dxhat;  ///< shape of `x`: \f$\partial L/\partial\hat x_i\f$
  Tensor<Scalar> dl_dvar;   ///< `(R)`: \f$\partial L/\partial\sigma^2\f$ per set
  Tensor<Scalar> dvar_dmu;  ///< `(R)`: \f$\partial\sigma^2/\partial\mu\f$ per set
  Tensor<Scalar> dl_dmu;    ///< `(R)`: \f$\partial L/\partial\mu\f$ per set
  Tensor<Scalar> dvar_dx;   ///< shape of `x`: \f$\partial\sigma^2/\partial x_i\f$
  Tensor<Scalar> dmu_dx;    ///< `(R)`: \f$\partial\mu/\partial x_i\f$, the same for every i of a set
};

/// What a backward pass of the family needs from its forward pass.
///
/// Every backward pass checks that the cache is its own op's (`op`), made for an input of the
/// shape of its `x` (`shape`), with the sets, parameter shape and statistics that such a forward
/// pass makes, before it reads or allocates anything else.
template <class Scalar>
struct NormCache {
  std::string_view op;     ///< the op whose forward pass made the cache ("layernorm", "groupnorm", ...)
  NormSets sets;           ///< the sets the statistics were taken over
  Shape shape;             ///< shape of the forward input
  Shape param_shape;       ///< shape of \f$\gamma\f$, \f$\beta\f$ and their gradients
  bool training = true;    ///< statistics of the input (true) or running statistics (instance norm eval)
  bool has_gamma = false;  ///< the forward pass had \f$\gamma\f$
  bool has_beta = false;   ///< the forward pass had \f$\beta\f$
  Tensor<Scalar> mean;     ///< `(R)`: \f$\mu\f$ of each set (or the running mean of its channel)
  Tensor<Scalar> var;      ///< `(R)`: biased \f$\sigma^2\f$ of each set (or the running variance)
  Tensor<Scalar> invstd;   ///< `(R)`: \f$1/\sqrt{\sigma^2+\varepsilon}\f$
  /// `(R)`: \f$\mu\f$ − `mean`, the part of the set's mean that `Scalar` cannot hold (float32
  /// rounds μ by up to \f$2^{-24}|\mu|\f$, which x − μ would carry into every x̂ when
  /// \f$|\mu| \gg \sigma\f$); 0 in double and with running statistics. Empty: taken as 0.
  Tensor<Scalar> mean_residual;
};

/// Output of a forward pass of the family: `y` and the cache for backward.
template <class Scalar>
struct NormForward {
  Tensor<Scalar> y;           ///< same shape as `x`
  NormCache<Scalar> cache;  ///< statistics used to normalise
};

/// Gradients of the loss with respect to the inputs of a normalization layer.
template <class Scalar>
struct NormGrads {
  Tensor<Scalar> dx;      ///< same shape as `x`
  Tensor<Scalar> dgamma;  ///< shape of \f$\gamma\f$; empty when the layer has no \f$\gamma\f$
  Tensor<Scalar> dbeta;   ///< shape of \f$\beta\f$; empty when the forward pass had no \f$\beta\f$
};

namespace norm {

namespace detail {

template <class S>
using Map = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
template <class S>
using CMap = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

template <class Scalar>
const Scalar* data_or_null(const Tensor<Scalar>* t) {
  return t ? t->data() : nullptr;
}

template <class Scalar>
void require_optional_shape(const Tensor<Scalar>* t, ShapeView expected, const char* op, const char* what) {
  if (t != nullptr) require_shape(*t, expected, op, what);
}

/// Checks a NormSets for internal consistency (the layers build valid ones; the core API checks):
/// positive extents, `run` dividing `M`, and sizes \f$R M\f$ and \f$P\f$ that fit in Index
/// (unchecked, \f$(2^{62}+1)\cdot 4\f$ wraps around to 4 and a 4-value `x` would pass).
inline void check_sets(const NormSets& s, const char* op) {
  if (s.R < 1 || s.M < 1 || s.period < 1 || s.run < 1 || s.M % s.run != 0) {
    std::ostringstream msg;
    msg << op << ": sets must have R >= 1, M >= 1, period >= 1 and run >= 1 dividing M; got R = " << s.R
        << ", M = " << s.M << ", period = " << s.period << ", run = " << s.run;
    throw InvalidArgument(msg.str());
  }
  Index size = 0, params = 0;
  if (__builtin_mul_overflow(s.R, s.M, &size) || __builtin_mul_overflow(s.period, s.per_set(), &params)) {
    std::ostringstream msg;
    msg << op << ": sets with R = " << s.R << ", M = " << s.M << ", period = " << s.period << ", run = " << s.run
        << " have R*M or period*(M/run) values beyond the index type (at most "
        << std::numeric_limits<Index>::max() << ")";
    throw InvalidArgument(msg.str());
  }
}

/// Gives the cache the shape of a pass over `s` (allocating only when a statistic is not `(R)`)
/// and records what the forward pass had.
template <class Scalar>
void prepare_cache(NormCache<Scalar>& cache, const char* op, const NormSets& s, const Shape& shape,
                   ShapeView param_shape, bool training, bool has_gamma, bool has_beta) {
  // Assignments that reuse the cache's storage when the shapes are unchanged: no allocation.
  cache.op = op;
  cache.sets = s;
  cache.shape = shape;
  cache.param_shape.assign(param_shape.begin(), param_shape.end());
  cache.training = training;
  cache.has_gamma = has_gamma;
  cache.has_beta = has_beta;
  for (Tensor<Scalar>* t : {&cache.mean, &cache.var, &cache.invstd, &cache.mean_residual})
    if (!same_shape(t->shape(), vector_shape(s.R))) *t = Tensor<Scalar>({s.R});
}

/// The residual of the mean of set `r` (NormCache::mean_residual): 0 when the cache has none of
/// `R` values, and for the scalar types of the oracles, whose mean is exact in `Scalar`.
template <class Scalar>
Scalar mean_residual_at(const NormCache<Scalar>& cache, Index r) {
  if constexpr (std::is_floating_point_v<Scalar>) {
    return cache.mean_residual.size() == cache.sets.R ? cache.mean_residual[r] : Scalar(0);
  } else {
    return Scalar(0);
  }
}

/// \f$x_i - \mu_r\f$ with \f$\mu_r\f$ = mean + mean_residual: `x[i]` − mean is exact for values
/// near the mean (Sterbenz), and the residual is what float32 cannot hold of a large mean.
template <class Scalar>
Scalar centred(const Tensor<Scalar>& x, const NormCache<Scalar>& cache, Index i, Index r) {
  return (x[i] - cache.mean[r]) - mean_residual_at(cache, r);
}

/// Throws unless `y` is distinct from every tensor a forward pass of `op` reads or writes besides
/// `x` (which it may overwrite in place: each value is read before its own output is written).
template <class Scalar>
void check_forward_outputs(const char* op, const Tensor<Scalar>& y, const Tensor<Scalar>* gamma,
                           const Tensor<Scalar>* beta, const NormCache<Scalar>& cache) {
  require_distinct(op, &y, "y (output)", gamma, "gamma");
  require_distinct(op, &y, "y (output)", beta, "beta");
  require_distinct(op, &y, "y (output)", &cache.mean, "cache mean (output)");
  require_distinct(op, &y, "y (output)", &cache.var, "cache var (output)");
  require_distinct(op, &y, "y (output)", &cache.invstd, "cache invstd (output)");
  require_distinct(op, &y, "y (output)", &cache.mean_residual, "cache mean_residual (output)");
}

/// The core's own check of a cache: its sets are consistent, sized for `x`, with `(P)` parameters.
template <class Scalar>
NormSets core_cache_sets(const char* op, const Shape&, const NormCache<Scalar>& cache) {
  check_sets(cache.sets, op);
  if (!same_shape(cache.param_shape, vector_shape(cache.sets.params()))) {
    std::ostringstream msg;
    msg << op << ": cache has parameter shape " << to_string(cache.param_shape) << " but its sets have "
        << cache.sets.params() << " parameters";
    throw InvalidArgument(msg.str());
  }
  return cache.sets;
}

/// \brief Checks `dy`, `x`, `gamma` and the cache before a backward pass of `op`, before anything
/// is allocated: the cache must come from a forward pass of `op` (not of another member of the
/// family) on an input of the shape of `x`, and hold the sets, parameter shape and `(R)`
/// statistics that such a pass makes.
/// \param expected_sets  `(op, x.shape(), cache)` → the sets a forward pass of `op` makes for
///                       that shape with the cache's hyper-parameters; throws itself when the
///                       cache's parameter shape cannot be the op's
/// \param eval_allowed   whether the op makes caches of running statistics (instance norm eval)
template <class Scalar, class ExpectedSets>
void check_backward(const char* op, const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const Tensor<Scalar>* gamma,
                    const NormCache<Scalar>& cache, const ExpectedSets& expected_sets, bool eval_allowed = false) {
  require_shape(dy, x.shape(), op, "dy (must match x)");
  if (cache.op != op) {
    std::ostringstream msg;
    msg << op << ": cache was made by the forward pass of "
        << (cache.op.empty() ? std::string_view("no op (a default-constructed cache)") : cache.op) << ", not of " << op;
    throw InvalidArgument(msg.str());
  }
  if (x.shape() != cache.shape) {
    std::ostringstream msg;
    msg << op << ": cache was made for an input of shape " << to_string(cache.shape) << " but x has shape "
        << to_string(x.shape());
    throw InvalidArgument(msg.str());
  }
  const NormSets& s = cache.sets;
  if (const NormSets e = expected_sets(op, x.shape(), cache); !(s == e)) {
    std::ostringstream msg;
    msg << op << ": cache is inconsistent with x of shape " << to_string(x.shape()) << ": its sets are (R, M, period, run) = ("
        << s.R << ", " << s.M << ", " << s.period << ", " << s.run << "), a forward pass makes (" << e.R << ", " << e.M
        << ", " << e.period << ", " << e.run << ")";
    throw InvalidArgument(msg.str());
  }
  if (s.size() != x.size()) {  // the core's own sets: consistent, but for another number of values
    std::ostringstream msg;
    msg << op << ": cache sets cover R*M = " << s.size() << " values but x has shape " << to_string(x.shape());
    throw InvalidArgument(msg.str());
  }
  for (const auto& [t, name] : {std::pair{&cache.mean, "mean"}, std::pair{&cache.var, "var"},
                                std::pair{&cache.invstd, "invstd"}}) {
    if (!same_shape(t->shape(), vector_shape(s.R))) {
      std::ostringstream msg;
      msg << op << ": cache " << name << " must have shape " << to_string(vector_shape(s.R)) << " (one per set); got "
          << to_string(t->shape());
      throw InvalidArgument(msg.str());
    }
  }
  // The residual of the mean is optional (empty: 0), but one of the wrong size would be read as 0
  // silently; refuse it.
  if (cache.mean_residual.size() != 0 && !same_shape(cache.mean_residual.shape(), vector_shape(s.R))) {
    std::ostringstream msg;
    msg << op << ": cache mean_residual must be empty or have shape " << to_string(vector_shape(s.R))
        << " (one per set); got " << to_string(cache.mean_residual.shape());
    throw InvalidArgument(msg.str());
  }
  if (!cache.training && !eval_allowed) {
    throw InvalidArgument(std::string(op) + ": cache holds running (eval) statistics, which a forward pass of " + op +
                          " never makes");
  }
  if ((gamma != nullptr) != cache.has_gamma) {
    std::ostringstream msg;
    msg << op << ": gamma is " << (gamma ? "given" : "null") << " but the forward pass had "
        << (cache.has_gamma ? "gamma" : "none");
    throw InvalidArgument(msg.str());
  }
  require_optional_shape(gamma, cache.param_shape, op, "gamma");
}

/// Checks the caller's outputs of a fused backward pass of `op`.
///
/// The outputs must be distinct from each other, from `gamma` and from the cache's statistics,
/// and dγ, dβ also from `dy` and `x`; `dx` may be `dy` or `x` (in place: every value of a set is
/// read before its `dx` is written).
template <class Scalar>
void check_outputs(const char* op, const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const Tensor<Scalar>* gamma,
                   const NormCache<Scalar>& cache, const Tensor<Scalar>& dx, const Tensor<Scalar>* dgamma,
                   const Tensor<Scalar>* dbeta) {
  require_shape(dx, x.shape(), op, "dx (output)");
  if (dgamma && !gamma) {
    throw InvalidArgument(std::string(op) + ": dgamma requested but gamma is null (no affine transform)");
  }
  if (dbeta && !cache.has_beta) {
    throw InvalidArgument(std::string(op) + ": dbeta requested but the forward pass had no beta");
  }
  require_optional_shape(dgamma, cache.param_shape, op, "dgamma (output)");
  require_optional_shape(dbeta, cache.param_shape, op, "dbeta (output)");
  require_distinct(op, dgamma, "dgamma (output)", dbeta, "dbeta (output)");
  for (const auto& [out, name] : {std::pair{&dx, "dx (output)"}, std::pair{dgamma, "dgamma (output)"},
                                  std::pair{dbeta, "dbeta (output)"}}) {
    if (name != std::string_view("dx (output)")) {
      require_distinct(op, out, name, &dx, "dx (output)");
      require_distinct(op, out, name, &dy, "dy");
      require_distinct(op, out, name, &x, "x");
    }
    require_distinct(op, out, name, gamma, "gamma");
    require_distinct(op, out, name, &cache.mean, "cache mean");
    require_distinct(op, out, name, &cache.var, "cache var");
    require_distinct(op, out, name, &cache.invstd, "cache invstd");
  }
}

/// The outputs of a backward pass on `x`, allocated (after check_backward(), so that the shapes
/// come from a cache that has been validated): dx always, dγ when the layer has γ, dβ when
/// the forward pass had β (the others stay empty, as NormGrads documents).
template <class Scalar>
NormGrads<Scalar> allocate_grads(const Tensor<Scalar>& x, const Tensor<Scalar>* gamma, const NormCache<Scalar>& cache) {
  return {Tensor<Scalar>(x.shape()), gamma ? Tensor<Scalar>(cache.param_shape) : Tensor<Scalar>(),
          cache.has_beta ? Tensor<Scalar>(cache.param_shape) : Tensor<Scalar>()};
}

}  // namespace detail

/// \brief \f$y = \gamma\,(x - \mu_r)/\sqrt{\sigma^2_r + \varepsilon} + \beta\f$ on set `r`, given
/// its statistics (`mu`, `invstd`); \f$\gamma = 1\f$, \f$\beta = 0\f$ where null.
/// `lo` is the residual of the mean (NormCache::mean_residual): \f$\mu_r\f$ = `mu` + `lo`.
template <class Scalar>
void normalize_set(const NormSets& s, Index r, const Scalar* x, const Scalar* gamma, const Scalar* beta,
                   const Scalar& mu, const Scalar& invstd, Scalar* y, const Scalar& lo = Scalar(0)) {
  const Index o = s.offset(r), base = s.param_base(r);
  if (s.run == 1) {  // γ, β elementwise over the set
    auto ys = detail::Map<Scalar>(y + o, s.M);
    ys = ((detail::CMap<Scalar>(x + o, s.M) - mu) - lo) * invstd;
    if (gamma) ys *= detail::CMap<Scalar>(gamma + base, s.M);
    if (beta) ys += detail::CMap<Scalar>(beta + base, s.M);
    return;
  }
  for (Index q = 0; q < s.per_set(); ++q) {  // γ, β constant on each run
    const Index oq = o + q * s.run;
    const Scalar g = gamma ? gamma[base + q] : Scalar(1);
    const Scalar scale = invstd * g;
    const Scalar b = kernels::minus_residual(beta ? beta[base + q] : Scalar(0), lo, scale);  // (x − mu − lo)·scale + β
    detail::Map<Scalar>(y + oq, s.run) = (detail::CMap<Scalar>(x + oq, s.run) - mu) * scale + b;
  }
}

/// \brief The reference forward kernel of every member with a mean: the statistics of each set
/// and \f$y = \gamma\hat x + \beta\f$, in Eigen expressions on `Scalar`. Checks nothing.
///
/// The code the complex-step and dual-number oracles run (and, for `float` and `double`, the
/// layouts that forward_kernel() has no fast path for); the benchmarks time it as the staged
/// forward.
/// \param s       the sets
/// \param x       \f$R M\f$ input values
/// \param gamma   \f$P\f$ scales or `nullptr`
/// \param beta    \f$P\f$ shifts or `nullptr`
/// \param eps     \f$\varepsilon > 0\f$
/// \param y       \f$R M\f$ outputs
/// \param mean    `(R)` output \f$\mu\f$
/// \param var     `(R)` output biased \f$\sigma^2\f$
/// \param invstd  `(R)` output \f$1/\sqrt{\sigma^2+\varepsilon}\f$
/// \param mean_residual  `(R)` output \f$\mu - \f$ `mean` (NormCache::mean_residual), or `nullptr`
template <class Scalar>
void forward_kernel_reference(const NormSets& s, const Scalar* x, const Scalar* gamma, const Scalar* beta, double eps,
                              Scalar* y, Scalar* mean, Scalar* var, Scalar* invstd, Scalar* mean_residual = nullptr) {
  using std::sqrt;
  const Scalar M = Scalar(static_cast<double>(s.M));
  for (Index r = 0; r < s.R; ++r) {
    //! [norm.forward]
    // Two passes over the set: the mean, then the centred second moment, which avoids the
    // cancellation of E[x²] − E[x]². Then x̂ = (x − μ)/√(σ² + ε) and y = γ x̂ + β.
    const auto xs = detail::CMap<Scalar>(x + s.offset(r), s.M);
    const Scalar mu = xs.sum() / M;
    const Scalar v = (xs - mu).square().sum() / M;
    const Scalar is = Scalar(1) / sqrt(v + Scalar(eps));
    mean[r] = mu;
    if (mean_residual) mean_residual[r] = Scalar(0);  // μ is exact in Scalar here
    var[r] = v;
    invstd[r] = is;
    normalize_set(s, r, x, gamma, beta, mu, is, y);
    //! [norm.forward]
  }
}

/// \brief The fast forward of every member with a mean, `float` and `double`: one read of each
/// set for its statistics, `y` written while the set is in cache (vectorised, with streaming
/// stores for layer norm's elementwise \f$\gamma, \beta\f$; normalize_set() for per-channel
/// ones), sets spread over the threads. The sums run in an order fixed by \f$M\f$ alone, so no
/// bit depends on the alignment of the buffers or on the number of threads.
///
/// The statistics are shifted sums (kernels::Sums2), \f$S_1 = \sum_j (x_j - K)\f$ and
/// \f$S_2 = \sum_j (x_j - K)^2\f$ with \f$K\f$ the row's first value, so that one read gives
/// \f$\mu = K + S_1/M\f$ and \f$\sigma^2 = S_2/M - (S_1/M)^2\f$; the shift bounds the
/// cancellation (\f$(\mu-K)^2 \le (M-1)\sigma^2\f$ for any value \f$K\f$ of the row, and is of
/// the order of \f$\sigma^2\f$ for a typical one), as in batch norm's fused forward.
///
/// The mean is stored as `mean` + `mean_residual` (NormCache::mean_residual), which holds μ to
/// about 2⁻⁴⁸|μ| in float32: x − μ is then as accurate for |μ| ≫ σ as for μ = 0. A NaN or an
/// overflow propagates as kernels::variance_and_invstd() says.
template <class Scalar>
void forward_rows(const NormSets& s, const Scalar* x, const Scalar* gamma, const Scalar* beta, double eps, Scalar* y,
                  Scalar* mean, Scalar* var, Scalar* invstd, Scalar* mean_residual) {
  const double M = static_cast<double>(s.M);
  const bool nontemporal = kernels::should_stream(s.size() * Index(sizeof(Scalar)));
  parallel::parallel_ranges(s.R, s.size(), [&](Index r0, Index r1, Index, Index) {
    for (Index r = r0; r < r1; ++r) {
      const Scalar *xr = x + s.offset(r), K = xr[0];
      Scalar* yr = y + s.offset(r);
      const auto [s1, s2] = kernels::sum2(
          s.M, [K](auto v) { const auto t = v - K; return std::pair{t, t * t}; }, xr);
      const double shift = s1 / M;
      const auto [v, inv] = kernels::variance_and_invstd(s2 / M, shift, eps);
      // μ = K + shift as a pair (TwoSum): the rounding of the sum is kept, also in float64,
      // where a rounded μ is off by up to ulp(|μ|)/2, i.e. by ulp(|μ|)/(2σ) in every x̂ of the
      // set (issue 15 §2: 9e-11 at mean 1e4, σ 1e-2; libtorch rounds μ the same way).
      const double k = static_cast<double>(K), mu_hi = k + shift, back = mu_hi - k;
      const double mu_err = (k - (mu_hi - back)) + (shift - back);
      mean[r] = Scalar(mu_hi);
      const Scalar lo = Scalar((mu_hi - static_cast<double>(mean[r])) + mu_err);
      if (mean_residual) mean_residual[r] = lo;
      var[r] = Scalar(v);
      invstd[r] = Scalar(inv);
      const Scalar mu = mean[r], is = invstd[r];
      // x̂ = ((x − mean) − residual)·invstd; with γ, β elementwise the residual costs one
      // subtraction per element (in cache: the pass is bound by memory traffic).
      if (s.run != 1 || s.period != 1) {  // γ, β per channel (group, instance norm)
        normalize_set(s, r, x, gamma, beta, mu, is, y, lo);
      } else if (gamma && beta) {
        kernels::map(
            yr, s.M, nontemporal, [=](auto xv, auto g, auto b) { return ((xv - mu) - lo) * is * g + b; }, xr, gamma,
            beta);
      } else if (gamma) {
        kernels::map(yr, s.M, nontemporal, [=](auto xv, auto g) { return ((xv - mu) - lo) * is * g; }, xr, gamma);
      } else if (beta) {
        kernels::map(yr, s.M, nontemporal, [=](auto xv, auto b) { return ((xv - mu) - lo) * is + b; }, xr, beta);
      } else {
        // The same expression as with γ = 1, β = 0, so that both give the same bits.
        kernels::map(yr, s.M, nontemporal, [=](auto xv) { return ((xv - mu) - lo) * is; }, xr);
      }
    }
    kernels::stream_fence();
  });
}

/// \brief The forward kernel of every member with a mean: forward_rows() for `float` and
/// `double` (statistics from sums in a fixed order, so the bits do not depend on alignment),
/// forward_kernel_reference() for the scalar types of the oracles. Checks nothing; the callers do. Same parameters as forward_kernel_reference()
/// (`mean_residual` may be `nullptr`: then μ − mean is not kept).
template <class Scalar>
void forward_kernel(const NormSets& s, const Scalar* x, const Scalar* gamma, const Scalar* beta, double eps, Scalar* y,
                    Scalar* mean, Scalar* var, Scalar* invstd, Scalar* mean_residual = nullptr) {
  if constexpr (std::is_floating_point_v<Scalar>) {
    forward_rows(s, x, gamma, beta, eps, y, mean, var, invstd, mean_residual);
  } else {
    forward_kernel_reference(s, x, gamma, beta, eps, y, mean, var, invstd, mean_residual);
  }
}

/// \brief The steps of the staged backward, one per chain-rule term, over all sets at once.
///
/// Each step reads the terms before it and writes one term; a layer's staged backward calls
/// them in order, each call marked with the layer's own formula id. `scale` multiplies the term
/// (1 is the derivation; see NormTermScales). No step checks its arguments. Common parameters:
/// `s` the sets, `x` the forward input and `dy` the upstream gradient (\f$R M\f$ values each),
/// `cache` the forward pass's statistics, `out` the term computed.
namespace steps {

/// \f$\partial L/\partial\hat x_i = \gamma_{p(i)}\,\partial L/\partial y_i\f$.
/// \param s      the sets
/// \param dy     \f$R M\f$ upstream gradient
/// \param gamma  \f$P\f$ scales or `nullptr`
/// \param scale  term scale (1 = the derivation)
/// \param out    \f$R M\f$ output
template <class Scalar>
void dl_dxhat(const NormSets& s, const Tensor<Scalar>& dy, const Tensor<Scalar>* gamma, double scale,
              Tensor<Scalar>& out) {
  for (Index r = 0; r < s.R; ++r) {
    for (Index i = 0; i < s.M; ++i) {
      //! [norm.dl_dxhat]
      // ∂L/∂x̂ᵢ = γ_p(i) ∂L/∂yᵢ: y = γ x̂ + β is linear in x̂ (γ = 1 without an affine transform)
      const Scalar g = gamma ? (*gamma)[s.param(r, i)] : Scalar(1);
      out[s.offset(r) + i] = Scalar(scale) * g * dy[s.offset(r) + i];
      //! [norm.dl_dxhat]
    }
  }
}

/// \f$\partial L/\partial\sigma^2 = -\tfrac12(\sigma^2+\varepsilon)^{-3/2}\sum_{i\in S}
/// \partial L/\partial\hat x_i\,(x_i-\mu)\f$ per set.
/// \param s         the sets
/// \param x         \f$R M\f$ forward input
/// \param cache     the forward pass's statistics
/// \param dl_dxhat  \f$R M\f$ values of \f$\partial L/\partial\hat x\f$
/// \param scale     term scale (1 = the derivation)
/// \param out       `(R)` output
template <class Scalar>
void dl_dvar(const NormSets& s, const Tensor<Scalar>& x, const NormCache<Scalar>& cache,
             const Tensor<Scalar>& dl_dxhat, double scale, Tensor<Scalar>& out) {
  for (Index r = 0; r < s.R; ++r) {
    //! [norm.dl_dvar]
    // ∂L/∂σ² = Σ_{i∈S} ∂L/∂x̂ᵢ · (xᵢ − μ) · (−½)(σ² + ε)^(−3/2): σ² reaches L only through
    // the x̂ᵢ of its set
    const Scalar is = cache.invstd[r];
    Scalar acc = Scalar(0);
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i)
      acc += dl_dxhat[i] * detail::centred(x, cache, i, r);
    out[r] = Scalar(scale) * acc * Scalar(-0.5) * is * is * is;
    //! [norm.dl_dvar]
  }
}

/// \f$\partial\sigma^2/\partial\mu = -\tfrac{2}{M}\sum_{i\in S}(x_i - \mu)\f$ per set (zero up to rounding).
/// \param s      the sets
/// \param x      \f$R M\f$ forward input
/// \param cache  the forward pass's statistics
/// \param scale  term scale (1 = the derivation)
/// \param out    `(R)` output
template <class Scalar>
void dvar_dmu(const NormSets& s, const Tensor<Scalar>& x, const NormCache<Scalar>& cache, double scale,
              Tensor<Scalar>& out) {
  const Scalar M = Scalar(static_cast<double>(s.M));
  for (Index r = 0; r < s.R; ++r) {
    //! [norm.dvar_dmu]
    // ∂σ²/∂μ = −(2/M) Σ_{i∈S} (xᵢ − μ), which is 0 because μ is the mean of these same xᵢ.
    // Computed anyway: in floating point it is a rounding-level number, and the ablation shows
    // that keeping or dropping it changes nothing.
    Scalar centred_sum = Scalar(0);
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i)
      centred_sum += detail::centred(x, cache, i, r);
    out[r] = Scalar(scale) * Scalar(-2) * centred_sum / M;
    //! [norm.dvar_dmu]
  }
}

/// \f$\partial L/\partial\mu = -(\sigma^2+\varepsilon)^{-1/2}\sum_{i\in S}\partial L/\partial\hat x_i
/// + \partial L/\partial\sigma^2\cdot\partial\sigma^2/\partial\mu\f$ per set.
/// \param s         the sets
/// \param cache     the forward pass's statistics
/// \param dl_dxhat  \f$R M\f$ values of \f$\partial L/\partial\hat x\f$
/// \param dl_dvar   `(R)` values of \f$\partial L/\partial\sigma^2\f$
/// \param dvar_dmu  `(R)` values of \f$\partial\sigma^2/\partial\mu\f$
/// \param scale     term scale (1 = the derivation)
/// \param out       `(R)` output
template <class Scalar>
void dl_dmu(const NormSets& s, const NormCache<Scalar>& cache, const Tensor<Scalar>& dl_dxhat,
            const Tensor<Scalar>& dl_dvar, const Tensor<Scalar>& dvar_dmu, double scale, Tensor<Scalar>& out) {
  for (Index r = 0; r < s.R; ++r) {
    //! [norm.dl_dmu]
    // ∂L/∂μ = Σ_{i∈S} ∂L/∂x̂ᵢ · (−1/√(σ² + ε)) + ∂L/∂σ² · ∂σ²/∂μ: μ reaches L through every
    // x̂ᵢ and through σ²
    Scalar direct = Scalar(0);
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i) direct += dl_dxhat[i];
    out[r] = Scalar(scale) * (-direct * cache.invstd[r] + dl_dvar[r] * dvar_dmu[r]);
    //! [norm.dl_dmu]
  }
}

/// \f$\partial\sigma^2/\partial x_i = 2(x_i - \mu)/M\f$ (the partial with \f$\mu\f$ held fixed).
/// \param s      the sets
/// \param x      \f$R M\f$ forward input
/// \param cache  the forward pass's statistics
/// \param scale  term scale (1 = the derivation)
/// \param out    \f$R M\f$ output
template <class Scalar>
void dvar_dx(const NormSets& s, const Tensor<Scalar>& x, const NormCache<Scalar>& cache, double scale,
             Tensor<Scalar>& out) {
  const Scalar M = Scalar(static_cast<double>(s.M));
  for (Index r = 0; r < s.R; ++r) {
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i) {
      //! [norm.dvar_dx]
      // ∂σ²/∂xᵢ = 2(xᵢ − μ)/M with μ fixed; it is also the total derivative, since the extra
      // term ∂σ²/∂μ · ∂μ/∂xᵢ is 0
      out[i] = Scalar(scale) * Scalar(2) * detail::centred(x, cache, i, r) / M;
      //! [norm.dvar_dx]
    }
  }
}

/// \f$\partial\mu/\partial x_i = 1/M\f$, one value per set.
/// \param s      the sets
/// \param scale  term scale (1 = the derivation)
/// \param out    `(R)` output
template <class Scalar>
void dmu_dx(const NormSets& s, double scale, Tensor<Scalar>& out) {
  for (Index r = 0; r < s.R; ++r) {
    //! [norm.dmu_dx]
    // ∂μ/∂xᵢ = 1/M for every i of the set
    out[r] = Scalar(scale) / Scalar(static_cast<double>(s.M));
    //! [norm.dmu_dx]
  }
}

/// \f$\partial L/\partial x_i = \partial L/\partial\hat x_i/\sqrt{\sigma^2+\varepsilon} +
/// \partial L/\partial\sigma^2\cdot\partial\sigma^2/\partial x_i + \partial L/\partial\mu\cdot\partial\mu/\partial x_i\f$.
/// \param s      the sets
/// \param cache  the forward pass's statistics
/// \param t      the terms computed by the steps before
/// \param out    \f$R M\f$ output
template <class Scalar>
void dx(const NormSets& s, const NormCache<Scalar>& cache, const NormStagedTrace<Scalar>& t, Tensor<Scalar>& out) {
  for (Index r = 0; r < s.R; ++r) {
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i) {
      //! [norm.dx]
      // ∂L/∂xᵢ = ∂L/∂x̂ᵢ / √(σ² + ε) + ∂L/∂σ² · ∂σ²/∂xᵢ + ∂L/∂μ · ∂μ/∂xᵢ: the three paths
      // x → x̂, x → σ², x → μ
      out[i] = t.dl_dxhat[i] * cache.invstd[r] + t.dl_dvar[r] * t.dvar_dx[i]
               + t.dl_dmu[r] * t.dmu_dx[r];
      //! [norm.dx]
    }
  }
}

/// \f$\partial L/\partial\gamma_p = \sum_{(r,i):\,p(r,i)=p} \partial L/\partial y_{r,i}\,\hat x_{r,i}\f$.
/// \param s      the sets
/// \param dy     \f$R M\f$ upstream gradient
/// \param x      \f$R M\f$ forward input
/// \param cache  the forward pass's statistics
/// \param out    \f$P\f$ output
template <class Scalar>
void dgamma(const NormSets& s, const Tensor<Scalar>& dy, const Tensor<Scalar>& x, const NormCache<Scalar>& cache,
            Tensor<Scalar>& out) {
  out.flat().setZero();
  for (Index r = 0; r < s.R; ++r) {
    for (Index i = 0; i < s.M; ++i) {
      //! [norm.dgamma]
      // ∂L/∂γ_p = Σ dyᵢ x̂ᵢ over every value that γ_p scales (across sets too: the sets share γ)
      const Index k = s.offset(r) + i;
      out[s.param(r, i)] += dy[k] * detail::centred(x, cache, k, r) * cache.invstd[r];
      //! [norm.dgamma]
    }
  }
}

/// \f$\partial L/\partial\beta_p = \sum_{(r,i):\,p(r,i)=p} \partial L/\partial y_{r,i}\f$.
/// \param s    the sets
/// \param dy   \f$R M\f$ upstream gradient
/// \param out  \f$P\f$ output
template <class Scalar>
void dbeta(const NormSets& s, const Tensor<Scalar>& dy, Tensor<Scalar>& out) {
  out.flat().setZero();
  for (Index r = 0; r < s.R; ++r) {
    for (Index i = 0; i < s.M; ++i) {
      //! [norm.dbeta]
      // ∂L/∂β_p = Σ dyᵢ over every value that β_p shifts
      out[s.param(r, i)] += dy[s.offset(r) + i];
      //! [norm.dbeta]
    }
  }
}

/// Allocates the intermediate terms of a staged backward over `s` for an input of `shape`.
template <class Scalar>
NormStagedTrace<Scalar> buffers(const NormSets& s, const Shape& shape) {
  return {Tensor<Scalar>(shape), Tensor<Scalar>({s.R}), Tensor<Scalar>({s.R}),
          Tensor<Scalar>({s.R}), Tensor<Scalar>(shape), Tensor<Scalar>({s.R})};
}

}  // namespace steps

/// \brief The fused backward for rows with elementwise \f$\gamma\f$ (layer norm's sets), `float`
/// and `double`: the formula of backward_kernel() (norm.dx_fused), vectorised, with the rows
/// spread over the threads and the parameter gradients summed while the row is in cache.
///
/// Per row: one read from memory for \f$\sum_j g_j\f$ and \f$\sum_j g_j (x_j - \mu)\f$
/// (\f$g = \gamma \odot dy\f$), then one pass over the row in cache that writes `dx` and adds the
/// row's \f$dy \odot \hat x\f$ and \f$dy\f$ into the column sums
/// (kernels::ColumnSums2) of its chunk of rows; the chunks' totals go into `dgamma` and `dbeta`
/// in the order of the chunks (parallel::chunks_in_order()), so the result is the same at any
/// number of threads. Same parameters as backward_kernel().
template <class Scalar>
void backward_rows(const NormSets& s, const Scalar* dy, const Scalar* x, const Scalar* gamma,
                   const NormCache<Scalar>& cache, Scalar* dx, Scalar* dgamma, Scalar* dbeta) {
  const bool nontemporal = kernels::should_stream(s.size() * Index(sizeof(Scalar)));
  // Rows are handled kRows at a time in pass 2, so that the column sums are loaded and stored
  // once per kRows rows; that needs every row equally aligned for the streaming stores.
  constexpr int kRows = 4;
  const bool blocked = !nontemporal || (s.M * Index(sizeof(Scalar))) % kernels::kVectorBytes == 0;
  // dγ and dβ: column sums per chunk of rows (kernels::column_chunk_rows()), whose double totals
  // are added in chunk order, so that their bits do not depend on the number of threads.
  const Index chunk = kernels::column_chunk_rows(s.M), chunks = (s.R + chunk - 1) / chunk;
  const bool columns_wanted = dgamma || dbeta;
  double* totals = columns_wanted ? kernels::zeroed_scratch(2 * s.M) : nullptr;
  parallel::chunks_in_order(chunks, s.size(), [&](Index q, const auto& in_turn) {
    const Index r0 = q * chunk, r1 = std::min(s.R, r0 + chunk);
    kernels::ColumnSums2<Scalar> columns(s.M, dgamma != nullptr, dbeta != nullptr);
    // What pass 2 needs of a row: μ, 1/√(σ²+ε), and the three coefficients of
    // dx = (1/(M√(σ²+ε)))·(M·g − Σg − x̂·Σ(g·x̂)) with k = invstd/M distributed over its terms.
    struct Row {
      Scalar mu, lo, is, k_g, k_sum_g, k_xhat;
    };
    std::array<Row, kRows> rows{};
    for (Index r = r0; r < r1; r += kRows) {
      const int count = static_cast<int>(std::min<Index>(kRows, r1 - r));
      for (int k = 0; k < count; ++k) {
        const Index o = s.offset(r + k);
        const Scalar mu = cache.mean[r + k], lo = detail::mean_residual_at(cache, r + k), is = cache.invstd[r + k];
        // Pass 1 (memory): Σg and Σg·(x − mean), g = γ ⊙ dy; Σg·(x − μ) = Σg·(x − mean) − residual·Σg.
        const auto [sg, sgx] =
            gamma ? kernels::sum2(
                        s.M,
                        [mu](auto d, auto xv, auto g) {
                          const auto gd = g * d;
                          return std::pair{gd, gd * (xv - mu)};
                        },
                        dy + o, x + o, gamma)
                  : kernels::sum2(s.M, [mu](auto d, auto xv) { return std::pair{d, d * (xv - mu)}; }, dy + o, x + o);
        // The coefficients in double: (x − μ)·k_xhat = (x − mean)·k_xhat − residual·k_xhat, the
        // second term folded into k_sum_g.
        const double isd = is, kk = isd / static_cast<double>(s.M);
        const double sum_g_xhat = kernels::minus_residual(sgx, double(lo), sg) * isd;
        const double k_xhat = kk * isd * sum_g_xhat;
        rows[static_cast<std::size_t>(k)] = {mu,           lo, is, Scalar(kk * static_cast<double>(s.M)),
                                             Scalar(kernels::minus_residual(kk * sg, double(lo), k_xhat)), Scalar(k_xhat)};
      }
      // Pass 2 (cache): dx, and the columns Σ dy·x̂ (dγ) and Σ dy (dβ).
      const auto dx_of = [&rows](int k, auto d, auto xv, auto g) {
        const Row& t = rows[static_cast<std::size_t>(k)];
        return t.k_g * (g * d) - t.k_sum_g - (xv - t.mu) * t.k_xhat;
      };
      const auto col = [&rows](int k, auto d, auto xv) {  // dy·x̂, x̂ = ((x − mean) − residual)·invstd
        const Row& t = rows[static_cast<std::size_t>(k)];
        return std::pair{d * (((xv - t.mu) - t.lo) * t.is), d};
      };
      const Index o = s.offset(r);
      if (count == kRows && blocked) {
        kernels::map_columns_rows<kRows>(dx + o, s.M, s.M, nontemporal, dx_of, columns.partial(0), columns.partial(1),
                                         col, gamma, dy + o, x + o);
      } else {
        for (int k = 0; k < count; ++k) {
          kernels::map_columns_rows<1>(dx + o + k * s.M, s.M, s.M, nontemporal,
                                       [&](int, auto d, auto xv, auto g) { return dx_of(k, d, xv, g); },
                                       columns.partial(0), columns.partial(1),
                                       [&](int, auto d, auto xv) { return col(k, d, xv); }, gamma, dy + o + k * s.M,
                                       x + o + k * s.M);
        }
      }
      columns.rows_done(count);
    }
    kernels::stream_fence();
    if (columns_wanted) in_turn([&] { columns.add_totals_into(totals, totals + s.M); });
  });
  for (Index j = 0; j < s.M; ++j) {
    if (dgamma) dgamma[j] = Scalar(totals[j]);
    if (dbeta) dbeta[j] = Scalar(totals[s.M + j]);
  }
}

/// \f$(\sum_i dy_i, \sum_i dy_i (x_i - \mu))\f$ over a run of `n` values: for `float` and
/// `double` through kernels::sum2 (double totals, an order fixed by `n`, so the bits do not
/// depend on the alignment of the run, as an Eigen reduction's do), in `Scalar` otherwise.
/// With μ = `mu` + `lo` (NormCache::mean_residual): the sums run over x − `mu`, and
/// \f$\sum dy (x - \mu) = \sum dy (x - \mathit{mu}) - \mathit{lo}\sum dy\f$.
template <class Scalar>
std::pair<Scalar, Scalar> dy_sums(Index n, const Scalar* dy, const Scalar* x, const Scalar& mu, const Scalar& lo) {
  if constexpr (std::is_floating_point_v<Scalar>) {
    const auto [a, b] = kernels::sum2(n, [mu](auto d, auto xv) { return std::pair{d, d * (xv - mu)}; }, dy, x);
    return {Scalar(a), Scalar(kernels::minus_residual(b, double(lo), a))};
  } else {
    const auto dys = detail::CMap<Scalar>(dy, n);
    return {dys.sum(), (dys * ((detail::CMap<Scalar>(x, n) - mu) - lo)).sum()};
  }
}

/// \brief The fused backward kernel of every member with a mean. Checks nothing; the callers do.
///
/// Training:
/// \f[ dx_i = \frac{1}{M\sqrt{\sigma^2+\varepsilon}}
///     \Big(M g_i - \sum_{j\in S} g_j - \hat x_i \sum_{j\in S} g_j \hat x_j\Big),
///     \qquad g_i = \gamma_{p(i)}\,dy_i, \f]
/// two passes per set for dx (the sums, then dx), a third when dγ or dβ is requested, and no
/// temporaries of the input's size. With
/// constant statistics (instance norm eval): \f$dx_i = g_i/\sqrt{r_{\sigma^2}+\varepsilon}\f$.
/// \param s       the sets
/// \param dy      \f$R M\f$ upstream gradient
/// \param x       \f$R M\f$ forward input
/// \param gamma   \f$P\f$ scales or `nullptr`
/// \param cache   the forward pass's statistics
/// \param dx      \f$R M\f$ output
/// \param dgamma  \f$P\f$ output or `nullptr`
/// \param dbeta   \f$P\f$ output or `nullptr`
template <class Scalar>
void backward_kernel(const NormSets& s, const Scalar* dy, const Scalar* x, const Scalar* gamma,
                     const NormCache<Scalar>& cache, Scalar* dx, Scalar* dgamma, Scalar* dbeta) {
  using detail::CMap;
  using detail::Map;
  if constexpr (std::is_floating_point_v<Scalar>) {  // layer norm's rows: the vectorised path
    if (s.run == 1 && s.period == 1 && cache.training) return backward_rows(s, dy, x, gamma, cache, dx, dgamma, dbeta);
  }
  if (dgamma) Map<Scalar>(dgamma, s.params()).setZero();
  if (dbeta) Map<Scalar>(dbeta, s.params()).setZero();
  const Scalar M = Scalar(static_cast<double>(s.M));
  for (Index r = 0; r < s.R; ++r) {
    const Index o = s.offset(r), base = s.param_base(r);
    const Scalar mu = cache.mean[r], lo = detail::mean_residual_at(cache, r), is = cache.invstd[r];
    // The parameter gradients, accumulated over the sets that share the parameters.
    if (s.run == 1) {
      if (dgamma)
        Map<Scalar>(dgamma + base, s.M) += CMap<Scalar>(dy + o, s.M) * ((CMap<Scalar>(x + o, s.M) - mu) - lo) * is;
      if (dbeta) Map<Scalar>(dbeta + base, s.M) += CMap<Scalar>(dy + o, s.M);
    } else {
      for (Index q = 0; q < s.per_set(); ++q) {
        const auto [sum_dy, sum_dy_xmu] = dy_sums(s.run, dy + o + q * s.run, x + o + q * s.run, mu, lo);
        if (dgamma) dgamma[base + q] += sum_dy_xmu * is;
        if (dbeta) dbeta[base + q] += sum_dy;
      }
    }
    if (!cache.training) {  // constant statistics: y is affine in x
      if (s.run == 1) {
        auto dxs = Map<Scalar>(dx + o, s.M);
        dxs = CMap<Scalar>(dy + o, s.M) * is;
        if (gamma) dxs *= CMap<Scalar>(gamma + base, s.M);
      } else {
        for (Index q = 0; q < s.per_set(); ++q)
          Map<Scalar>(dx + o + q * s.run, s.run) =
              CMap<Scalar>(dy + o + q * s.run, s.run) * (is * (gamma ? gamma[base + q] : Scalar(1)));
      }
      continue;
    }
    //! [norm.dx_fused]
    // dx = (1/(M√(σ²+ε))) · (M·g − Σg − x̂·Σ(g·x̂)) with g = γ ⊙ dy and x̂ = (x − μ)·invstd.
    // Pass 1: Σg and Σg·(x − μ); x̂ is rebuilt on the fly, never stored.
    Scalar sum_g = Scalar(0), sum_g_xmu = Scalar(0);
    if (s.run == 1) {  // γ elementwise over the set
      const auto dys = CMap<Scalar>(dy + o, s.M), xs = CMap<Scalar>(x + o, s.M);
      if constexpr (std::is_floating_point_v<Scalar>) {  // a fixed order (see dy_sums())
        if (gamma) {
          const auto [a, b] = kernels::sum2(
              s.M,
              [mu](auto d, auto xv, auto g) {
                const auto gd = g * d;
                return std::pair{gd, gd * (xv - mu)};
              },
              dy + o, x + o, gamma + base);
          sum_g = Scalar(a), sum_g_xmu = Scalar(kernels::minus_residual(b, double(lo), a));
        } else {
          std::tie(sum_g, sum_g_xmu) = dy_sums(s.M, dy + o, x + o, mu, lo);
        }
      } else if (gamma) {
        const auto gs = CMap<Scalar>(gamma + base, s.M);
        sum_g = (gs * dys).sum();
        sum_g_xmu = (gs * dys * (xs - mu)).sum();
      } else {
        sum_g = dys.sum();
        sum_g_xmu = (dys * (xs - mu)).sum();
      }
    } else {  // γ constant on runs: Σg = Σ_q γ_q Σ_run dy
      for (Index q = 0; q < s.per_set(); ++q) {
        const Index oq = o + q * s.run;
        const Scalar gq = gamma ? gamma[base + q] : Scalar(1);
        const auto [sum_dy, sum_dy_xmu] = dy_sums(s.run, dy + oq, x + oq, mu, lo);
        sum_g += gq * sum_dy;
        sum_g_xmu += gq * sum_dy_xmu;
      }
    }
    const Scalar sum_g_xhat = sum_g_xmu * is;
    // Pass 2: dx = k·(M·g − Σg − (x − μ)·invstd·Σ(g·x̂)), k = invstd/M; x − μ = (x − mean) − residual,
    // the residual folded into the constant: −Σg − (x − μ)·c = −(Σg − residual·c) − (x − mean)·c.
    const Scalar k = is / M, c = is * sum_g_xhat;
    sum_g = kernels::minus_residual(sum_g, lo, c);
    if (s.run == 1) {
      const auto dys = CMap<Scalar>(dy + o, s.M), xs = CMap<Scalar>(x + o, s.M);
      auto dxs = Map<Scalar>(dx + o, s.M);
      if (gamma) {
        dxs = k * (M * CMap<Scalar>(gamma + base, s.M) * dys - sum_g - (xs - mu) * c);
      } else {
        dxs = k * (M * dys - sum_g - (xs - mu) * c);
      }
    } else {
      for (Index q = 0; q < s.per_set(); ++q) {
        const Index oq = o + q * s.run;
        const Scalar gq = gamma ? gamma[base + q] : Scalar(1);
        Map<Scalar>(dx + oq, s.run) =
            k * ((M * gq) * CMap<Scalar>(dy + oq, s.run) - sum_g
                 - (CMap<Scalar>(x + oq, s.run) - mu) * c);
      }
    }
    //! [norm.dx_fused]
  }
}

// ------------------------------------------------------------------------------------------
// The core as an op of its own: normalization over the sets of a NormSets, the general result
// that the layers instantiate. The catalog checks it on its own, on layouts chosen to exercise
// every way of indexing γ (period and run both above 1), as well as through each layer.

/// The core's name in error messages.
constexpr const char* kNorm = "norm";

/// \brief Forward pass over the sets `s`, writing into caller-provided `y` and `cache`.
///
/// The cache's statistics are reallocated only when they are not `(R)`, so a reused cache
/// makes the call allocation-free.
/// \param s      the sets; \f$R M\f$ must equal the size of `x`
/// \param x      input, any shape with \f$R M\f$ values
/// \param gamma  `(P)` scales or `nullptr`
/// \param beta   `(P)` shifts or `nullptr`
/// \param eps    \f$\varepsilon\f$, finite and > 0
/// \param y      output, preallocated with the shape of `x`; may be `x` (in place), no other argument
/// \param cache  output cache
/// \throws InvalidArgument on inconsistent sets, sizes or \f$\varepsilon\f$.
template <class Scalar>
void forward_into(const NormSets& s, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                  Opt<const Tensor<Scalar>> beta, double eps, Tensor<Scalar>& y, NormCache<Scalar>& cache) {
  detail::check_sets(s, kNorm);
  if (x.size() != s.size()) {
    std::ostringstream msg;
    msg << kNorm << ": x must have R*M = " << s.size() << " values; got shape " << to_string(x.shape());
    throw InvalidArgument(msg.str());
  }
  detail::require_optional_shape(gamma, vector_shape(s.params()), kNorm, "gamma");
  detail::require_optional_shape(beta, vector_shape(s.params()), kNorm, "beta");
  require_positive_eps(eps, kNorm);
  require_shape(y, x.shape(), kNorm, "y (output)");
  detail::check_forward_outputs(kNorm, y, gamma, beta, cache);
  detail::prepare_cache(cache, kNorm, s, x.shape(), vector_shape(s.params()), true, gamma != nullptr,
                        beta != nullptr);
  forward_kernel(s, x.data(), detail::data_or_null(gamma), detail::data_or_null(beta), eps, y.data(),
                 cache.mean.data(), cache.var.data(), cache.invstd.data(), cache.mean_residual.data());
}

/// \brief Forward pass over the sets `s` (allocating wrapper of forward_into()).
template <class Scalar>
NormForward<Scalar> forward(const NormSets& s, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                            Opt<const Tensor<Scalar>> beta, double eps = 1e-5) {
  NormForward<Scalar> out{Tensor<Scalar>(x.shape()), {}};
  forward_into(s, x, gamma, beta, eps, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass over the sets of the cache: the steps of norm::steps in order.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param gamma   `(P)` scales or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param scales  term scales for negative controls; leave at the default
/// \param trace   if not `nullptr`, receives the intermediate terms
/// \return dx, dgamma (if `gamma`), dbeta (if the forward pass had \f$\beta\f$).
template <class Scalar>
NormGrads<Scalar> backward_staged(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                                  const NormCache<Scalar>& cache, const NormTermScales& scales = {},
                                  NormStagedTrace<Scalar>* trace = nullptr) {
  detail::check_backward(kNorm, dy, x, gamma, cache, detail::core_cache_sets<Scalar>);
  const NormSets& s = cache.sets;
  NormGrads<Scalar> g = detail::allocate_grads(x, gamma, cache);
  if (gamma) steps::dgamma(s, dy, x, cache, g.dgamma);
  if (cache.has_beta) steps::dbeta(s, dy, g.dbeta);
  NormStagedTrace<Scalar> t = steps::buffers<Scalar>(s, x.shape());
  steps::dl_dxhat(s, dy, gamma, scales.dl_dxhat, t.dl_dxhat);
  steps::dl_dvar(s, x, cache, t.dl_dxhat, scales.dl_dvar, t.dl_dvar);
  steps::dvar_dmu(s, x, cache, scales.dvar_dmu, t.dvar_dmu);
  steps::dl_dmu(s, cache, t.dl_dxhat, t.dl_dvar, t.dvar_dmu, scales.dl_dmu, t.dl_dmu);
  steps::dvar_dx(s, x, cache, scales.dvar_dx, t.dvar_dx);
  steps::dmu_dx(s, scales.dmu_dx, t.dmu_dx);
  steps::dx(s, cache, t, g.dx);
  if (trace) *trace = std::move(t);
  return g;
}

/// \brief Fused backward pass writing into caller-provided outputs; allocates nothing.
/// \param dy      upstream gradient, shape of `x`
/// \param x       the forward input
/// \param gamma   `(P)` scales or `nullptr` (as in the forward pass)
/// \param cache   from the forward pass on `x`
/// \param dx      output, preallocated with the shape of `x`; may be `dy` or `x` (in place), no other argument
/// \param dgamma  output `(P)`, or `nullptr` to skip (must be `nullptr` when `gamma` is)
/// \param dbeta   output `(P)`, or `nullptr` to skip
/// \throws InvalidArgument on mismatched shapes of any argument or output, outputs that alias
///         each other, `gamma` or the cache, or a cache that a forward pass of this op on an
///         input of the shape of `x` did not make.
template <class Scalar>
void backward_into(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                   const NormCache<Scalar>& cache, Tensor<Scalar>& dx, Opt<Tensor<Scalar>> dgamma,
                   Opt<Tensor<Scalar>> dbeta) {
  detail::check_backward(kNorm, dy, x, gamma, cache, detail::core_cache_sets<Scalar>);
  detail::check_outputs(kNorm, dy, x, gamma, cache, dx, dgamma, dbeta);
  backward_kernel(cache.sets, dy.data(), x.data(), detail::data_or_null(gamma), cache, dx.data(),
                  dgamma ? dgamma->data() : nullptr, dbeta ? dbeta->data() : nullptr);
}

/// \brief Fused backward pass (allocating wrapper of backward_into()).
template <class Scalar>
NormGrads<Scalar> backward(const Tensor<Scalar>& dy, const Tensor<Scalar>& x, Opt<const Tensor<Scalar>> gamma,
                           const NormCache<Scalar>& cache) {
  detail::check_backward(kNorm, dy, x, gamma, cache, detail::core_cache_sets<Scalar>);  // before allocating
  NormGrads<Scalar> g = detail::allocate_grads(x, gamma, cache);
  backward_into(dy, x, gamma, cache, g.dx, gamma ? &g.dgamma : nullptr, cache.has_beta ? &g.dbeta : nullptr);
  return g;
}

}  // namespace norm
}  // namespace gradproof::ops

/// \cond INTERNAL
// Explicit instantiation for float and double: declared here, defined once in normalization.cpp.
#define GRADPROOF_NORM_INSTANTIATE(PREFIX, S)                                                                    \
  PREFIX template void norm::forward_into<S>(const NormSets&, const Tensor<S>&, const Tensor<S>*,               \
                                             const Tensor<S>*, double, Tensor<S>&, NormCache<S>&);              \
  PREFIX template NormForward<S> norm::forward<S>(const NormSets&, const Tensor<S>&, const Tensor<S>*,          \
                                                  const Tensor<S>*, double);                                     \
  PREFIX template NormGrads<S> norm::backward_staged<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,   \
                                                        const NormCache<S>&, const NormTermScales&,             \
                                                        NormStagedTrace<S>*);                                    \
  PREFIX template void norm::backward_into<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,             \
                                              const NormCache<S>&, Tensor<S>&, Tensor<S>*, Tensor<S>*);          \
  PREFIX template NormGrads<S> norm::backward<S>(const Tensor<S>&, const Tensor<S>&, const Tensor<S>*,          \
                                                 const NormCache<S>&);
namespace gradproof::ops {
GRADPROOF_NORM_INSTANTIATE(extern, float)
GRADPROOF_NORM_INSTANTIATE(extern, double)
}  // namespace gradproof::ops
/// \endcond
