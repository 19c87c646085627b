// The normalization family's entries of the catalog: the general core over a set S (norm.*),
// and its instances layer norm (ln.*), group norm (gn.*) and instance norm (in.*). One harness
// serves all four: every member is "normalize contiguous sets", described by ops::NormSets, so a
// term check or a property is written once over the sets and runs for each member.
#include "gradproof/catalog/catalog.hpp"
#include "gradproof/catalog/support.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/normalization.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using ops::NormSets;

// ----------------------------------------------------------------------------------------------
// Members, cases and problems.

enum class Member { core, ln, gn, in };

// One configuration to check: the input shape and the member's parameter. core: shape (R, M),
// a = period, b = run. ln: a = number of trailing axes normalized. gn: a = groups. in: none.
struct Case {
  Shape shape;
  Index a = 0;
  Index b = 0;
};

// Everything the checks of one member need: its op name and the cases of each kind of check.
struct Spec {
  Member member;
  std::string op;
  std::vector<Case> jacobian;    // small: full Jacobians
  std::vector<Case> projection;  // larger: random projections v^T J u
  std::vector<Case> terms;       // one per rank or layout: term checks and negative controls
  std::vector<Case> identity;    // properties and identities
};

const Spec& spec(Member m) {
  // Small cases cover every rank, sets of 2 values, N = 1, C = 1, a single set (R = 1) and,
  // where PyTorch allows it, sets of a single value (layer norm over one element, groups of one
  // value with N > 1: x̂ = 0 and the exact gradient is 0).
  static const Spec core{Member::core,
                         "norm",
                         {{{4, 6}, 2, 2}, {{3, 4}, 3, 1}, {{6, 2}, 2, 2}, {{2, 9}, 1, 3}, {{5, 2}, 1, 1}},
                         {{{16, 64}, 4, 8}, {{8, 96}, 2, 1}},
                         {{{4, 6}, 2, 2}, {{3, 4}, 3, 1}, {{2, 9}, 1, 3}},
                         {{{4, 6}, 2, 2}, {{16, 64}, 4, 8}}};
  static const Spec ln{Member::ln,
                       "ln",
                       {{{4, 6}, 1}, {{3, 2, 5}, 2}, {{2, 3, 2, 2}, 3}, {{2, 2}, 1}, {{2, 3, 4}, 1}, {{2, 3}, 2}, {{4, 1}, 1}},
                       {{{16, 128}, 1}, {{4, 8, 32}, 2}, {{2, 4, 8, 8}, 3}},
                       {{{4, 6}, 1}, {{3, 2, 5}, 2}, {{2, 3, 2, 2}, 3}},
                       {{{4, 6}, 1}, {{2, 3, 2, 2}, 3}, {{16, 128}, 1}}};
  static const Spec gn{Member::gn,
                       "gn",
                       {{{4, 6}, 3}, {{3, 4, 5}, 2}, {{2, 6, 2, 2}, 3}, {{2, 4, 3}, 1}, {{3, 4, 2}, 4}, {{1, 4, 2, 2}, 2}, {{2, 3}, 3}},
                       {{{4, 8, 8, 8}, 4}, {{2, 6, 32}, 2}, {{1, 16, 16, 16}, 8}},
                       {{{4, 6}, 3}, {{3, 4, 5}, 2}, {{2, 6, 2, 2}, 3}},
                       {{{3, 4, 5}, 2}, {{2, 6, 2, 2}, 3}, {{4, 8, 8, 8}, 4}}};
  static const Spec in{Member::in,
                       "in",
                       {{{3, 2, 5}}, {{2, 3, 2, 2}}, {{4, 1, 3}}, {{2, 2, 2}}, {{1, 3, 2, 3}}},
                       {{{8, 4, 16, 16}}, {{1, 2, 32, 48}}, {{16, 3, 37}}},
                       {{{3, 2, 5}}, {{2, 3, 2, 2}}, {{2, 2, 2}}},
                       {{{3, 2, 5}}, {{2, 3, 2, 2}}, {{8, 4, 16, 16}}}};
  switch (m) {
    case Member::core: return core;
    case Member::ln: return ln;
    case Member::gn: return gn;
    case Member::in: return in;
  }
  return core;
}

// A problem: input, parameters, an upstream weight w (L = <w, y>, never all ones) and the
// member's configuration. Every value is float-representable, so float32 and float64 see the
// same input.
struct Problem {
  Member member = Member::core;
  Shape shape;       // of x
  Shape pshape;      // of γ and β
  NormSets sets;
  Shape normalized;  // ln
  Index groups = 0;  // gn
  double eps = 1e-5;
  TensorD x, gamma, beta, w;
  TensorD rmean, rvar;  // in: running statistics for eval
};

std::uint64_t seed_of(Member m, const Case& c) {
  std::uint64_t h = 1469598103934665603ull ^ (static_cast<std::uint64_t>(m) + 17);
  for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
  h = (h ^ static_cast<std::uint64_t>(c.a)) * 1099511628211ull;
  return (h ^ static_cast<std::uint64_t>(c.b)) * 1099511628211ull;
}

std::vector<Index> set_indices(const NormSets& s, Index r) {
  std::vector<Index> idx(static_cast<std::size_t>(s.M));
  for (Index i = 0; i < s.M; ++i) idx[static_cast<std::size_t>(i)] = s.offset(r) + i;
  return idx;
}

Problem make_problem(Member m, const Case& c, std::uint64_t seed) {
  Problem p;
  p.member = m;
  p.shape = c.shape;
  switch (m) {
    case Member::core:
      p.sets = NormSets{c.shape[0], c.shape[1], c.a, c.b};
      p.pshape = {p.sets.params()};
      break;
    case Member::ln:
      p.normalized = Shape(c.shape.end() - c.a, c.shape.end());
      p.sets = ops::norm::detail::layernorm_sets(c.shape, p.normalized);
      p.pshape = p.normalized;
      break;
    case Member::gn:
      p.groups = c.a;
      p.sets = ops::norm::detail::groupnorm_sets(c.shape, c.a);
      p.pshape = {c.shape[1]};
      break;
    case Member::in:
      p.sets = ops::norm::detail::instancenorm_sets(c.shape, true);
      p.pshape = {c.shape[1]};
      break;
  }
  Rng rng(seed);
  // Sets with different means and spreads, so that no statistic is trivially 0 or 1; the sample
  // moments are set exactly (support::set_moments), so |μ|/σ ≤ 6 in every set.
  p.x = rng.normal_tensor(p.shape);
  for (Index r = 0; r < p.sets.R; ++r) {
    const double mean = rng.uniform(-2, 3), sd = rng.uniform(0.5, 2);
    if (p.sets.M > 1) set_moments(p.x, set_indices(p.sets, r), mean, sd);
  }
  p.gamma = TensorD(p.pshape);
  p.beta = TensorD(p.pshape);
  for (Index k = 0; k < p.gamma.size(); ++k) {
    p.gamma[k] = rng.signed_uniform(0.5, 1.5);
    p.beta[k] = rng.normal();
  }
  p.w = rng.normal_tensor(p.shape);
  if (m == Member::in) {
    const Index C = p.shape[1];
    p.rmean = TensorD({C});
    p.rvar = TensorD({C});
    for (Index k = 0; k < C; ++k) {
      p.rmean[k] = rng.normal(0.5, 1);
      p.rvar[k] = rng.uniform(0.5, 3);
    }
  }
  return p;
}

Problem make_problem(Member m, const Case& c) { return make_problem(m, c, seed_of(m, c)); }

Index set_of(const Problem& p, Index flat) { return flat / p.sets.M; }
Index param_of(const Problem& p, Index flat) { return p.sets.param(flat / p.sets.M, flat % p.sets.M); }

std::string describe(const Problem& p) {
  std::ostringstream s;
  switch (p.member) {
    case Member::core:
      s << "sets R = " << p.sets.R << ", M = " << p.sets.M << ", period = " << p.sets.period << ", run = " << p.sets.run;
      break;
    case Member::ln: s << "normalized_shape " << to_string(p.normalized); break;
    case Member::gn: s << "num_groups " << p.groups; break;
    case Member::in: s << "instance statistics over L = " << p.sets.M; break;
  }
  return s.str();
}

// ----------------------------------------------------------------------------------------------
// The ops, dispatched on the member. forward_of runs on every oracle scalar.

template <class S>
Tensor<S> cast_to(const TensorD& t) {
  return t.cast<S>();
}

template <class S>
ops::NormForward<S> forward_of(const Problem& p, const Tensor<S>& x, const Tensor<S>* g, const Tensor<S>* b,
                               bool training) {
  switch (p.member) {
    case Member::core: return ops::norm::forward<S>(p.sets, x, g, b, p.eps);
    case Member::ln: return ops::layernorm_forward<S>(x, g, b, {p.normalized, p.eps});
    case Member::gn: return ops::groupnorm_forward<S>(x, g, b, {p.groups, p.eps});
    case Member::in:
      if (training) return ops::instancenorm_forward_train<S>(x, g, b, nullptr, {p.eps, 0.1});
      return ops::instancenorm_forward_eval<S>(x, g, b, {cast_to<S>(p.rmean), cast_to<S>(p.rvar)}, {p.eps, 0.1});
  }
  throw std::logic_error("forward_of: unknown member");
}

enum class Backward { staged, fused };
const char* name(Backward b) { return b == Backward::staged ? "staged" : "fused"; }

template <class T>
ops::NormGrads<T> backward_of(const Problem& p, const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>* g,
                              const ops::NormCache<T>& cache, Backward b, const ops::NormTermScales& scales = {},
                              ops::NormStagedTrace<T>* trace = nullptr) {
  const bool st = b == Backward::staged;
  switch (p.member) {
    case Member::core:
      return st ? ops::norm::backward_staged(dy, x, g, cache, scales, trace) : ops::norm::backward(dy, x, g, cache);
    case Member::ln:
      return st ? ops::layernorm_backward_staged(dy, x, g, cache, scales, trace) : ops::layernorm_backward(dy, x, g, cache);
    case Member::gn:
      return st ? ops::groupnorm_backward_staged(dy, x, g, cache, scales, trace) : ops::groupnorm_backward(dy, x, g, cache);
    case Member::in:
      return st ? ops::instancenorm_backward_staged(dy, x, g, cache, scales, trace)
                : ops::instancenorm_backward(dy, x, g, cache);
  }
  throw std::logic_error("backward_of: unknown member");
}

// The forward pass and cache of a problem in scalar type T.
template <class T>
struct Prepared {
  Tensor<T> x, gamma, beta;
  ops::NormForward<T> fwd;
  Prepared(const Problem& p, bool training)
      : x(p.x.cast<T>()), gamma(p.gamma.cast<T>()), beta(p.beta.cast<T>()),
        fwd(forward_of<T>(p, x, &gamma, &beta, training)) {}
};

template <class T>
ops::NormGrads<T> run_backward(const Problem& p, const Prepared<T>& pr, const Tensor<T>& dy, Backward b,
                               const ops::NormTermScales& scales = {}, ops::NormStagedTrace<T>* trace = nullptr) {
  return backward_of(p, dy, pr.x, &pr.gamma, pr.fwd.cache, b, scales, trace);
}

// y(x) for the oracles, training (instance statistics) or eval (running statistics, in only).
auto y_of_x(const Problem& p, bool training) {
  return [&p, training](const auto& xv) {
    using S = typename std::decay_t<decltype(xv)>::Scalar;
    const Tensor<S> g = cast_to<S>(p.gamma), b = cast_to<S>(p.beta);
    return to_vec(forward_of<S>(p, from_vec(p.shape, xv), &g, &b, training).y);
  };
}

// L = <w, y> as a function of γ (which = 0) or β (which = 1).
auto loss_of_param(const Problem& p, bool training, int which) {
  return [&p, training, which](const auto& pv) {
    using S = typename std::decay_t<decltype(pv)>::Scalar;
    const Tensor<S> x = cast_to<S>(p.x), w = cast_to<S>(p.w);
    const Tensor<S> g = which == 0 ? from_vec(p.pshape, pv) : cast_to<S>(p.gamma);
    const Tensor<S> b = which == 1 ? from_vec(p.pshape, pv) : cast_to<S>(p.beta);
    const Tensor<S> y = forward_of<S>(p, x, &g, &b, training).y;
    Vec<S> out(1);
    out[0] = (to_vec(y).array() * to_vec(w).array()).sum();
    return out;
  };
}

// L = <w, y> as a function of x (for the negative controls).
auto loss_of_x(const Problem& p) {
  return [&p](const auto& xv) {
    using S = typename std::decay_t<decltype(xv)>::Scalar;
    const Vec<S> y = y_of_x(p, true)(xv);
    Vec<S> out(1);
    out[0] = (y.array() * to_vec(cast_to<S>(p.w)).array()).sum();
    return out;
  };
}

template <class T>
Vjp dx_vjp(std::shared_ptr<const Prepared<T>> pr, const Problem& p, Backward b) {
  return [pr, &p, b](const Eigen::VectorXd& dy) {
    const Tensor<T> dyt = from_vec(p.shape, Eigen::VectorXd(dy)).template cast<T>();
    return as_f64(run_backward(p, *pr, dyt, b).dx);
  };
}

// ----------------------------------------------------------------------------------------------
// Tolerance scales: the magnitude of the terms that cancel, not the size of the result.

double xhat_at(const Problem& p, const ops::NormCache<double>& c, Index i) {
  const Index r = set_of(p, i);
  return (p.x[i] - c.mean[r]) * c.invstd[r];
}

// One entry of the Jacobian of dx in dy: terms of size |γ|/√(σ²+ε) at most.
double dx_entry_scale(const Problem& p, const ops::NormCache<double>& c) {
  double s = 0;
  for (Index i = 0; i < p.x.size(); ++i) s = std::max(s, std::abs(p.gamma[param_of(p, i)]) * c.invstd[set_of(p, i)]);
  return s;
}

// vᵀJu = Σ_r invstd_r (Σ γᵢvᵢuᵢ − (Σγᵢvᵢ)(Σuᵢ)/M − (Σγᵢvᵢx̂ᵢ)(Σx̂ᵢuᵢ)/M) in training, only the
// first term with constant statistics: the sum of the magnitudes of these terms.
ProjectionScale dx_projection_scale(std::shared_ptr<const Prepared<double>> pd, const Problem& p, bool training) {
  return [pd, &p, training](const Eigen::VectorXd& v, const Eigen::VectorXd& u) {
    const auto& c = pd->fwd.cache;
    const NormSets& s = p.sets;
    double total = 0;
    for (Index r = 0; r < s.R; ++r) {
      double vu = 0, sv = 0, su = 0, xv = 0, xu = 0;
      for (Index i = s.offset(r), e = i + s.M; i < e; ++i) {
        const double g = p.gamma[param_of(p, i)], xh = xhat_at(p, c, i);
        vu += std::abs(g * v[i] * u[i]);
        sv += g * v[i];
        su += u[i];
        xv += g * xh * v[i];
        xu += xh * u[i];
      }
      const double M = static_cast<double>(s.M);
      total += c.invstd[r] * (training ? vu + (std::abs(sv * su) + std::abs(xv * xu)) / M : vu);
    }
    return total;
  };
}

// dγ_p = Σ dy x̂ and dβ_p = Σ dy over the values parameter p scales: their terms' magnitudes.
double param_scale(const Problem& p, const ops::NormCache<double>& c, const TensorD& dy, int which) {
  Eigen::VectorXd acc = Eigen::VectorXd::Zero(p.gamma.size());
  for (Index i = 0; i < dy.size(); ++i)
    acc[param_of(p, i)] += std::abs(dy[i]) * (which == 0 ? std::abs(xhat_at(p, c, i)) : 1.0);
  return acc.maxCoeff();
}

// The magnitudes of the terms of the fused formula at each element,
// invstd·(|gᵢ| + |mean g| + |x̂ᵢ|·|mean g x̂|) with g = γ dy: the size of dxᵢ before cancellation.
Eigen::VectorXd dx_term_magnitudes(const Problem& p, const ops::NormCache<double>& c, const TensorD& dy,
                                   const TensorD& gamma) {
  const NormSets& s = p.sets;
  Eigen::VectorXd t(dy.size());
  for (Index r = 0; r < s.R; ++r) {
    double mg = 0, mgx = 0;
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i) {
      mg += gamma[param_of(p, i)] * dy[i] / static_cast<double>(s.M);
      mgx += gamma[param_of(p, i)] * dy[i] * xhat_at(p, c, i) / static_cast<double>(s.M);
    }
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i)
      t[i] = c.invstd[r] * (std::abs(gamma[param_of(p, i)] * dy[i]) + std::abs(mg) + std::abs(xhat_at(p, c, i) * mgx));
  }
  return t;
}

// ----------------------------------------------------------------------------------------------
// Whole-op checks: dx against full Jacobians and projections; dγ, dβ against gradients.

std::vector<ResultRow> dx_against_oracles(const Spec& sp, const std::string& formula, const std::string& test,
                                          Backward b, bool training) {
  std::vector<ResultRow> rows;
  const std::string mode = training ? (sp.member == Member::in ? "instance statistics" : "training") : "eval";
  for (const Case& c : sp.jacobian) {
    const Problem p = make_problem(sp.member, c);
    const auto pd = std::make_shared<const Prepared<double>>(p, training);
    const auto pf = std::make_shared<const Prepared<float>>(p, training);
    const Index m = p.x.size();
    std::vector<Analytic> analytic = {{"float64", flat_rowmajor(jacobian_from_vjp(m, dx_vjp(pd, p, b)))},
                                      {"float32", flat_rowmajor(jacobian_from_vjp(m, dx_vjp(pf, p, b)))}};
    RowMeta meta{formula, test, "", "", "oracle", p.shape,
                 "full Jacobian dy/dx (" + mode + ", " + name(b) + " backward, " + describe(p) + ")"};
    jacobian_rows(rows, meta, y_of_x(p, training), as_f64(p.x), analytic, dx_entry_scale(p, pd->fwd.cache));
  }
  for (const Case& c : sp.projection) {
    const Problem p = make_problem(sp.member, c);
    const auto pd = std::make_shared<const Prepared<double>>(p, training);
    const auto pf = std::make_shared<const Prepared<float>>(p, training);
    RowMeta meta{formula, test, "", "", "oracle", p.shape,
                 "4 random projections v^T J u (" + mode + ", " + name(b) + " backward, " + describe(p) + ")"};
    projection_rows(rows, meta, y_of_x(p, training), as_f64(p.x), p.x.size(),
                    {{"float64", dx_vjp(pd, p, b)}, {"float32", dx_vjp(pf, p, b)}}, 4, seed_of(sp.member, c) + 7,
                    dx_projection_scale(pd, p, training));
  }
  return rows;
}

std::vector<ResultRow> param_against_oracles(const Spec& sp, const std::string& formula, const std::string& test,
                                             int which, bool training) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.jacobian) {
    const Problem p = make_problem(sp.member, c);
    const Prepared<double> pd(p, training);
    const Prepared<float> pf(p, training);
    for (Backward b : {Backward::staged, Backward::fused}) {
      const auto gd = run_backward(p, pd, p.w, b);
      const auto gf = run_backward(p, pf, p.w.cast<float>(), b);
      std::vector<Analytic> analytic = {{"float64", as_f64(which == 0 ? gd.dgamma : gd.dbeta)},
                                        {"float32", as_f64(which == 0 ? gf.dgamma : gf.dbeta)}};
      RowMeta meta{formula, test, "", "", "oracle", p.shape,
                   std::string("gradient of L = <w, y> in ") + (which == 0 ? "gamma " : "beta ") + to_string(p.pshape) +
                       " (" + (training ? "training" : "eval") + ", " + name(b) + " backward, " + describe(p) + ")"};
      jacobian_rows(rows, meta, loss_of_param(p, training, which), as_f64(which == 0 ? p.gamma : p.beta), analytic,
                    param_scale(p, pd.fwd.cache, p.w, which));
    }
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Term checks: each intermediate of the staged backward against the oracles, with the other
// nodes of the graph held fixed exactly as the partial derivative says.

struct TermSetup {
  Problem p;
  std::shared_ptr<const Prepared<double>> pd;
  std::shared_ptr<const Prepared<float>> pf;
  ops::NormStagedTrace<double> td;
  ops::NormStagedTrace<float> tf;
  Eigen::VectorXd mu;  // per-set mean (float64)
};

TermSetup term_setup(Member m, const Case& c) {
  TermSetup s{make_problem(m, c, seed_of(m, c) + 1), nullptr, nullptr, {}, {}, {}};
  s.pd = std::make_shared<const Prepared<double>>(s.p, true);
  s.pf = std::make_shared<const Prepared<float>>(s.p, true);
  run_backward(s.p, *s.pd, s.p.w, Backward::staged, {}, &s.td);
  run_backward(s.p, *s.pf, s.p.w.cast<float>(), Backward::staged, {}, &s.tf);
  s.mu = as_f64(s.pd->fwd.cache.mean);
  return s;
}

template <class S>
Vec<S> cast_vec(const Eigen::VectorXd& v) {
  Vec<S> out(v.size());
  for (Index i = 0; i < v.size(); ++i) out[i] = S(v[i]);
  return out;
}

// x̂ as a generic function of (x, μ, σ²), one μ and σ² per set.
template <class S>
Tensor<S> xhat_of(const Problem& p, const Tensor<S>& x, const Vec<S>& mu, const Vec<S>& var) {
  using std::sqrt;
  Tensor<S> xh(p.shape);
  for (Index i = 0; i < x.size(); ++i) {
    const Index r = set_of(p, i);
    xh[i] = (x[i] - mu[r]) / sqrt(var[r] + S(p.eps));
  }
  return xh;
}

// L = <w, γ x̂ + β> for a given x̂, with γ, β indexed over the sets as the member does.
template <class S>
Vec<S> loss_of_xhat(const Problem& p, const Tensor<S>& xh) {
  Vec<S> out(1);
  out[0] = S(0);
  for (Index i = 0; i < xh.size(); ++i) {
    const Index k = param_of(p, i);
    out[0] += S(p.w[i]) * (S(p.gamma[k]) * xh[i] + S(p.beta[k]));
  }
  return out;
}

// σ²_r = (1/M) Σ_{i∈S_r} (x_i − μ_r)², μ given.
template <class S>
Vec<S> var_of(const Problem& p, const Tensor<S>& x, const Vec<S>& mu) {
  Vec<S> v = Vec<S>::Constant(p.sets.R, S(0));
  for (Index i = 0; i < x.size(); ++i) {
    const Index r = set_of(p, i);
    v[r] += (x[i] - mu[r]) * (x[i] - mu[r]);
  }
  return v / S(static_cast<double>(p.sets.M));
}

// μ_r = (1/M) Σ_{i∈S_r} x_i.
template <class S>
Vec<S> mean_of(const Problem& p, const Tensor<S>& x) {
  Vec<S> m = Vec<S>::Constant(p.sets.R, S(0));
  for (Index i = 0; i < x.size(); ++i) m[set_of(p, i)] += x[i];
  return m / S(static_cast<double>(p.sets.M));
}

// An R × n block matrix, row r holding `value` on set r's elements.
Eigen::VectorXd set_block(const Problem& p, const std::function<double(Index)>& value) {
  const Index n = p.x.size();
  Eigen::MatrixXd J = Eigen::MatrixXd::Zero(p.sets.R, n);
  for (Index i = 0; i < n; ++i) J(set_of(p, i), i) = value(i);
  return flat_rowmajor(J);
}

// max over sets of Σ_{i in S} |term(i)|: the size of the terms a per-set sum is made of.
double set_sum_scale(const Problem& p, const std::function<double(Index)>& term) {
  Eigen::VectorXd acc = Eigen::VectorXd::Zero(p.sets.R);
  for (Index i = 0; i < p.x.size(); ++i) acc[set_of(p, i)] += std::abs(term(i));
  return acc.maxCoeff();
}

std::string term_id(const Spec& sp, const char* term) { return sp.op + "." + term; }

std::vector<ResultRow> check_dl_dxhat(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.terms) {
    const TermSetup s = term_setup(sp.member, c);
    const auto f = [&p = s.p](const auto& xhv) { return loss_of_xhat(p, from_vec(p.shape, xhv)); };
    const Eigen::VectorXd at = as_f64(xhat_of<double>(s.p, s.p.x, s.mu, as_f64(s.pd->fwd.cache.var)));
    // γ·dy: a product, no cancellation, so the scale is the size of the result.
    jacobian_rows(rows,
                  {term_id(sp, "dl_dxhat"), test, "", "", "oracle", s.p.shape,
                   "gradient of L = <w, γ x̂ + β> in x̂ (" + describe(s.p) + ")"},
                  f, at, {{"float64", as_f64(s.td.dl_dxhat)}, {"float32", as_f64(s.tf.dl_dxhat)}}, -1);
  }
  return rows;
}

std::vector<ResultRow> check_dl_dvar(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.terms) {
    const TermSetup s = term_setup(sp.member, c);
    const auto f = [&s](const auto& varv) {
      using S = typename std::decay_t<decltype(varv)>::Scalar;
      return loss_of_xhat(s.p, xhat_of<S>(s.p, cast_to<S>(s.p.x), cast_vec<S>(s.mu), varv));
    };
    jacobian_rows(rows,
                  {term_id(sp, "dl_dvar"), test, "", "", "oracle", s.p.shape,
                   "gradient of L in σ² (one per set) with x and μ held fixed (" + describe(s.p) + ")"},
                  f, as_f64(s.pd->fwd.cache.var), {{"float64", as_f64(s.td.dl_dvar)}, {"float32", as_f64(s.tf.dl_dvar)}},
                  set_sum_scale(s.p, [&s](Index i) {
                    const double is = s.pd->fwd.cache.invstd[set_of(s.p, i)];
                    return 0.5 * is * is * is * s.td.dl_dxhat[i] * (s.p.x[i] - s.mu[set_of(s.p, i)]);
                  }));
  }
  return rows;
}

std::vector<ResultRow> check_dl_dmu(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.terms) {
    const TermSetup s = term_setup(sp.member, c);
    // μ reaches L directly through x̂ and through σ²(x, μ); x is held fixed.
    const auto f = [&s](const auto& muv) {
      using S = typename std::decay_t<decltype(muv)>::Scalar;
      const Tensor<S> x = cast_to<S>(s.p.x);
      return loss_of_xhat(s.p, xhat_of<S>(s.p, x, muv, var_of<S>(s.p, x, muv)));
    };
    jacobian_rows(rows,
                  {term_id(sp, "dl_dmu"), test, "", "", "oracle", s.p.shape,
                   "gradient of L in μ (one per set) with x fixed, through x̂ directly and through σ²(x, μ) (" +
                       describe(s.p) + ")"},
                  f, s.mu, {{"float64", as_f64(s.td.dl_dmu)}, {"float32", as_f64(s.tf.dl_dmu)}},
                  set_sum_scale(s.p, [&s](Index i) { return s.pd->fwd.cache.invstd[set_of(s.p, i)] * s.td.dl_dxhat[i]; }));
  }
  return rows;
}

std::vector<ResultRow> check_dvar_dmu(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  const std::string id = term_id(sp, "dvar_dmu");
  for (const Case& c : sp.terms) {
    const TermSetup s = term_setup(sp.member, c);
    const Index n = s.p.x.size(), R = s.p.sets.R;
    // The natural size of ∂σ²/∂μ = −(2/M)Σ(xᵢ − μ) is that of its terms, (2/M)Σ|xᵢ − μ|: the
    // absolute tolerance is measured against it, since the value itself is 0.
    const double scale = 2.0 / static_cast<double>(s.p.sets.M) *
                         set_sum_scale(s.p, [&s](Index i) { return s.p.x[i] - s.mu[set_of(s.p, i)]; });
    // 1. The partial: σ²(x, μ) in μ with x fixed, at μ = the set means. Its Jacobian is diagonal.
    const auto f = [&s](const auto& muv) {
      using S = typename std::decay_t<decltype(muv)>::Scalar;
      return var_of<S>(s.p, cast_to<S>(s.p.x), muv);
    };
    const auto diag = [](const Eigen::VectorXd& v) { return flat_rowmajor(Eigen::MatrixXd(v.asDiagonal())); };
    jacobian_rows(rows,
                  {id, test, "", "", "oracle", s.p.shape,
                   "partial ∂σ²/∂μ with x fixed, at μ = the set mean: zero up to rounding (" + describe(s.p) + ")"},
                  f, s.mu, {{"float64", diag(as_f64(s.td.dvar_dmu))}, {"float32", diag(as_f64(s.tf.dvar_dmu))}}, scale);
    // 2. The exact value 0 against the complex-step derivative: the partial really is zero.
    const Eigen::VectorXd numeric = flat_rowmajor(check::jacobian(Oracle::complex_step, f, s.mu));
    rows.push_back(oracle_row({id, test, "exact_zero", "float64", "property", s.p.shape,
                               "complex-step ∂σ²/∂μ compared with the exact value 0"},
                              Oracle::complex_step, Eigen::VectorXd::Zero(numeric.size()), numeric, {R, R}, scale));
    // 3. The total derivative dσ²/dxᵢ = 2(xᵢ − μ)/M (μ recomputed from x) is not zero, and equals
    //    the partial ∂σ²/∂xᵢ because the extra path through μ contributes 0.
    const auto total = [&s](const auto& xv) {
      using S = typename std::decay_t<decltype(xv)>::Scalar;
      const Tensor<S> x = from_vec(s.p.shape, xv);
      return var_of<S>(s.p, x, mean_of<S>(s.p, x));
    };
    const Eigen::VectorXd tot = flat_rowmajor(check::jacobian(Oracle::complex_step, total, as_f64(s.p.x)));
    const Eigen::VectorXd expect = set_block(s.p, [&](Index i) { return s.td.dvar_dx[i]; });
    ResultRow row = oracle_row({id, test, "complex_step", "float64", "property", s.p.shape, ""}, Oracle::complex_step,
                               expect, tot, {R, n});
    const double size = tot.cwiseAbs().maxCoeff();
    std::ostringstream note;
    note << "total dσ²/dxᵢ (μ recomputed from x) equals 2(xᵢ−μ)/M and is not zero: max |dσ²/dxᵢ| = " << size;
    row.note = note.str();
    row.passed = row.passed && size > 1e3 * row.atol && size > 0.01 * scale;
    rows.push_back(row);
  }
  return rows;
}

std::vector<ResultRow> check_dvar_dx(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.terms) {
    const TermSetup s = term_setup(sp.member, c);
    const auto f = [&s](const auto& xv) {  // μ held fixed: the partial
      using S = typename std::decay_t<decltype(xv)>::Scalar;
      return var_of<S>(s.p, from_vec(s.p.shape, xv), cast_vec<S>(s.mu));
    };
    // 2(xᵢ − μ)/M cancels when xᵢ ≈ μ: its terms are 2|xᵢ|/M and 2|μ|/M.
    double scale = 0;
    for (Index i = 0; i < s.p.x.size(); ++i)
      scale = std::max(scale, 2 * (std::abs(s.p.x[i]) + std::abs(s.mu[set_of(s.p, i)])) / static_cast<double>(s.p.sets.M));
    jacobian_rows(rows,
                  {term_id(sp, "dvar_dx"), test, "", "", "oracle", s.p.shape,
                   "Jacobian of σ²(x, μ) in x with μ fixed (" + describe(s.p) + ")"},
                  f, as_f64(s.p.x),
                  {{"float64", set_block(s.p, [&](Index i) { return s.td.dvar_dx[i]; })},
                   {"float32", set_block(s.p, [&](Index i) { return double(s.tf.dvar_dx[i]); })}},
                  scale);
  }
  return rows;
}

std::vector<ResultRow> check_dmu_dx(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.terms) {
    const TermSetup s = term_setup(sp.member, c);
    const auto f = [&s](const auto& xv) { return mean_of(s.p, from_vec(s.p.shape, xv)); };
    jacobian_rows(rows,
                  {term_id(sp, "dmu_dx"), test, "", "", "oracle", s.p.shape,
                   "Jacobian of the set means μ(x) (" + describe(s.p) + ")"},
                  f, as_f64(s.p.x),
                  {{"float64", set_block(s.p, [&](Index i) { return s.td.dmu_dx[set_of(s.p, i)]; })},
                   {"float32", set_block(s.p, [&](Index i) { return double(s.tf.dmu_dx[set_of(s.p, i)]); })}},
                  -1);
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Long-double references, staged = fused, and the properties that follow from the math.

struct RefStats {
  std::vector<long double> mean, var;  // per set; var is biased
};

RefStats ref_stats(const Problem& p) {
  const NormSets& s = p.sets;
  RefStats st{std::vector<long double>(static_cast<std::size_t>(s.R), 0), {}};
  st.var = st.mean;
  for (Index i = 0; i < p.x.size(); ++i) st.mean[static_cast<std::size_t>(set_of(p, i))] += p.x[i];
  for (auto& v : st.mean) v /= static_cast<long double>(s.M);
  for (Index i = 0; i < p.x.size(); ++i) {
    const auto r = static_cast<std::size_t>(set_of(p, i));
    st.var[r] += (p.x[i] - st.mean[r]) * (p.x[i] - st.mean[r]);
  }
  for (auto& v : st.var) v /= static_cast<long double>(s.M);
  return st;
}

// Fused against staged dx, float64 and float32 fused against float64 staged.
std::vector<ResultRow> staged_equals_fused(const Spec& sp, const std::string& test, const std::vector<Case>& cases,
                                           bool training, const std::string& what) {
  std::vector<ResultRow> rows;
  const std::string formula = term_id(sp, training ? "dx_fused" : "eval_dx");
  for (const Case& c : cases) {
    const Problem p = make_problem(sp.member, c, seed_of(sp.member, c) + 2);
    const Prepared<double> pd(p, training);
    const Prepared<float> pf(p, training);
    const auto ref = run_backward(p, pd, p.w, Backward::staged);
    const auto fd = run_backward(p, pd, p.w, Backward::fused);
    const auto ff = run_backward(p, pf, p.w.cast<float>(), Backward::fused);
    const double scale = dx_term_magnitudes(p, pd.fwd.cache, p.w, p.gamma).maxCoeff();
    // Both sides are exact up to rounding: the policy of the exact oracles applies.
    const std::string mode = training ? "" : ", eval";
    rows.push_back(oracle_row({formula, test, "staged_f64", "float64", "agreement", p.shape,
                               "fused dx against staged dx, both float64 (" + describe(p) + mode + ")" + what},
                              Oracle::complex_step, as_f64(fd.dx), as_f64(ref.dx), {p.x.size()}, scale));
    rows.push_back(oracle_row({formula, test, "staged_f64", "float32", "agreement", p.shape,
                               "fused dx in float32 against staged dx in float64 (" + describe(p) + mode + ")" + what},
                              Oracle::complex_step, as_f64(ff.dx), as_f64(ref.dx), {p.x.size()}, scale));
  }
  return rows;
}

// Per set Σᵢ dxᵢ = 0 exactly (y does not change when x shifts by a constant within a set), and
// Σᵢ dxᵢ x̂ᵢ = ε (σ²+ε)^(−3/2) Σᵢ gᵢ x̂ᵢ with gᵢ = γ_p(i) dyᵢ (scaling x about μ changes x̂ only
// through ε). formula = <op>.dx or <op>.dx_fused.
std::vector<ResultRow> check_dx_properties(const Spec& sp, const std::string& formula, const std::string& test,
                                           Backward b) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.identity) {
    const Problem p = make_problem(sp.member, c, seed_of(sp.member, c) + 3);
    const Prepared<double> ref(p, true);  // float64 statistics for x̂ and the prediction
    const ops::NormCache<double>& rc = ref.fwd.cache;
    const Eigen::VectorXd terms = dx_term_magnitudes(p, rc, p.w, p.gamma);
    const Index R = p.sets.R;
    std::vector<long double> sum_g_xh(static_cast<std::size_t>(R), 0);
    for (Index i = 0; i < p.x.size(); ++i)
      sum_g_xh[static_cast<std::size_t>(set_of(p, i))] +=
          static_cast<long double>(p.gamma[param_of(p, i)]) * p.w[i] * xhat_at(p, rc, i);
    Eigen::VectorXd predicted(R);
    for (Index r = 0; r < R; ++r) {
      const long double is = rc.invstd[r];
      predicted[r] = static_cast<double>(p.eps * is * is * is * sum_g_xh[static_cast<std::size_t>(r)]);
    }
    const auto one = [&](auto tag) {
      using T = decltype(tag);
      const Prepared<T> pr(p, true);
      const Tensor<T> dx = run_backward(p, pr, p.w.cast<T>(), b).dx;
      const SetMoments sm = set_moments(R, dx, terms, [&](Index i) { return set_of(p, i); },
                                        [&](Index i) { return xhat_at(p, rc, i); });
      const std::string dt = dtype_name<T>();
      rows.push_back(oracle_row({formula, test, "identity", dt, "property", p.shape,
                                 std::string("per set Σᵢ dxᵢ = 0 (") + name(b) + " backward, " + describe(p) + ")"},
                                Oracle::complex_step, sm.sum, Eigen::VectorXd::Zero(R), {R}, sm.sum_scale.maxCoeff()));
      rows.push_back(oracle_row({formula, test, "identity", dt, "property", p.shape,
                                 std::string("per set Σᵢ dxᵢ x̂ᵢ = ε (σ²+ε)^(−3/2) Σᵢ γᵢ dyᵢ x̂ᵢ (") + name(b) +
                                     " backward, " + describe(p) + ")"},
                                Oracle::complex_step, sm.moment, predicted, {R}, sm.moment_scale.maxCoeff()));
    };
    one(double{});
    one(float{});
  }
  return rows;
}

// dβ = Σdy and dγ = Σ dy x̂ (which = 1 or 0) of both backward passes in both dtypes, against a
// long-double recomputation.
std::vector<ResultRow> param_identity_rows(const std::string& formula, const std::string& test, int which,
                                           const Problem& p, const std::vector<Backward>& kinds) {
  std::vector<ResultRow> rows;
  const RefStats st = ref_stats(p);
  const Index P = p.gamma.size();
  std::vector<long double> ref(static_cast<std::size_t>(P), 0), mag = ref;
  for (Index i = 0; i < p.x.size(); ++i) {
    const auto r = static_cast<std::size_t>(set_of(p, i));
    const auto k = static_cast<std::size_t>(param_of(p, i));
    const long double term = which == 0 ? p.w[i] * (p.x[i] - st.mean[r]) / std::sqrt(st.var[r] + p.eps) : p.w[i];
    ref[k] += term;
    mag[k] += std::abs(term);
  }
  Eigen::VectorXd refv(P);
  double scale = 0;
  for (Index k = 0; k < P; ++k) {
    refv[k] = static_cast<double>(ref[static_cast<std::size_t>(k)]);
    scale = std::max(scale, static_cast<double>(mag[static_cast<std::size_t>(k)]));
  }
  const auto one = [&](auto tag, Backward b) {
    using T = decltype(tag);
    const Prepared<T> pr(p, true);
    const auto g = run_backward(p, pr, p.w.cast<T>(), b);
    rows.push_back(oracle_row({formula, test, "reference", dtype_name<T>(), "property", p.shape,
                               std::string(which == 0 ? "dγ = Σ dy x̂" : "dβ = Σ dy") +
                                   " against a long-double recomputation (" + name(b) + " backward, " + describe(p) + ")"},
                              Oracle::complex_step, as_f64(which == 0 ? g.dgamma : g.dbeta), refv, {P}, scale));
  };
  for (Backward b : kinds) {
    one(double{}, b);
    one(float{}, b);
  }
  return rows;
}

std::vector<ResultRow> check_param_identities(const Spec& sp, const std::string& formula, const std::string& test,
                                              int which) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.identity) {
    const auto r = param_identity_rows(formula, test, which, make_problem(sp.member, c, seed_of(sp.member, c) + 4),
                                       {Backward::staged, Backward::fused});
    rows.insert(rows.end(), r.begin(), r.end());
  }
  return rows;
}

// y against a long-double recomputation, float64 and float32 (and eval for instance norm).
std::vector<ResultRow> forward_rows(const std::string& formula, const std::string& test, const Problem& p, bool training) {
  std::vector<ResultRow> rows;
  const RefStats st = ref_stats(p);
  Eigen::VectorXd ref(p.x.size());
  double scale = 0;  // y = γ x̂ + β: its terms are |γ x̂| and |β|
  for (Index i = 0; i < p.x.size(); ++i) {
    const auto r = static_cast<std::size_t>(set_of(p, i));
    const Index k = param_of(p, i), ch = static_cast<Index>(r) % p.sets.period;
    const long double mu = training ? st.mean[r] : static_cast<long double>(p.rmean[ch]);
    const long double var = training ? st.var[r] : static_cast<long double>(p.rvar[ch]);
    const long double xh = (p.x[i] - mu) / std::sqrt(var + p.eps);
    ref[i] = static_cast<double>(p.gamma[k] * xh + p.beta[k]);
    scale = std::max(scale, static_cast<double>(std::abs(p.gamma[k] * xh) + std::abs(p.beta[k])));
  }
  const auto one = [&](auto tag) {
    using T = decltype(tag);
    const Prepared<T> pr(p, training);
    rows.push_back(oracle_row({formula, test, "reference", dtype_name<T>(), "reference", p.shape,
                               std::string(training ? "" : "eval ") + "forward y against a long-double recomputation (" +
                                   describe(p) + ")"},
                              Oracle::complex_step, as_f64(pr.fwd.y), ref, {p.x.size()}, scale));
  };
  one(double{});
  one(float{});
  return rows;
}

std::vector<ResultRow> check_forward(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  std::vector<Case> cases = sp.jacobian;
  cases.insert(cases.end(), sp.projection.begin(), sp.projection.end());
  for (const Case& c : cases) {
    const Problem p = make_problem(sp.member, c, seed_of(sp.member, c) + 5);
    for (bool training : {true, false}) {
      if (!training && sp.member != Member::in) continue;
      const auto r = forward_rows(term_id(sp, "forward"), test, p, training);
      rows.insert(rows.end(), r.begin(), r.end());
    }
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Pitfalls.

// L = Σy (dy = 1): dxᵢ = invstd·(γᵢ − mean_S γ − x̂ᵢ·mean_S(γ x̂)). It vanishes exactly when γ is
// constant over every set S (then Σ_S x̂ = 0 kills both sums); with γ varying over S it does not.
std::vector<ResultRow> check_sum_of_y(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : sp.terms) {
    Problem p = make_problem(sp.member, c, seed_of(sp.member, c) + 6);
    const TensorD ones(p.shape, 1.0);
    const NormSets& s = p.sets;
    for (bool uniform : {true, false}) {
      // Uniform over every set: each parameter takes the value of the first parameter of its set.
      // (Instance norm's γ is always uniform over a set; so is the core's when run = M.)
      if (uniform) {
        for (Index k = 0; k < p.gamma.size(); ++k) p.gamma[k] = p.gamma[(k / s.per_set()) * s.per_set()];
      } else {
        p.gamma = make_problem(sp.member, c, seed_of(sp.member, c) + 6).gamma;
        if (s.per_set() == 1) continue;  // γ cannot vary over a set of this member
      }
      const Prepared<double> pd(p, true);
      const ops::NormCache<double>& cc = pd.fwd.cache;
      // The prediction, in long double from the float64 statistics.
      Eigen::VectorXd predicted(p.x.size());
      for (Index r = 0; r < s.R; ++r) {
        long double mg = 0, mgx = 0;
        for (Index i = s.offset(r), e = i + s.M; i < e; ++i) {
          mg += static_cast<long double>(p.gamma[param_of(p, i)]) / s.M;
          mgx += static_cast<long double>(p.gamma[param_of(p, i)]) * xhat_at(p, cc, i) / s.M;
        }
        for (Index i = s.offset(r), e = i + s.M; i < e; ++i)
          predicted[i] = static_cast<double>(cc.invstd[r] * (p.gamma[param_of(p, i)] - mg - xhat_at(p, cc, i) * mgx));
      }
      const double scale = dx_term_magnitudes(p, cc, ones, p.gamma).maxCoeff();
      for (Backward b : {Backward::staged, Backward::fused}) {
        const Eigen::VectorXd dx = as_f64(run_backward(p, pd, ones, b).dx);
        if (uniform) {
          const std::string how = s.per_set() == 1 ? "γ (one value per set here, so uniform over every set whatever "
                                                     "its values)"
                                                   : "γ made uniform over every set";
          rows.push_back(oracle_row({term_id(sp, "dx"), test, "exact_zero", "float64", "pitfall", p.shape,
                                     "L = Σy with " + how + ": " + name(b) +
                                         " dx equals the exact value 0 up to rounding (" + describe(p) + ")"},
                                    Oracle::complex_step, dx, Eigen::VectorXd::Zero(dx.size()), {dx.size()}, scale));
        } else {
          ResultRow row = oracle_row({term_id(sp, "dx"), test, "closed_form", "float64", "pitfall", p.shape, ""},
                                     Oracle::complex_step, dx, predicted, {dx.size()}, scale);
          const double size = predicted.cwiseAbs().maxCoeff();
          std::ostringstream note;
          note << "L = Σy with γ varying over the set (" << describe(p) << "): " << name(b)
               << " dx against the closed form invstd·(γᵢ − mean γ − x̂ᵢ·mean γx̂), which is not zero: max |dx| = "
               << size << " (passes when it matches and exceeds 1000x the rounding allowance)";
          row.note = note.str();
          row.passed = row.passed && size > 1e3 * row.atol;
          rows.push_back(row);
        }
      }
    }
  }
  return rows;
}

// The often-quoted Σᵢ dxᵢ x̂ᵢ = 0 is exact only at ε = 0: for ε > 0 the moment is
// ε (σ²+ε)^(−3/2) Σᵢ gᵢ x̂ᵢ, proportional to ε while ε ≪ σ².
std::vector<ResultRow> check_xhat_moment_pitfall(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  Problem p = make_problem(sp.member, sp.identity.front(), 123);
  std::vector<double> per_eps;
  for (double eps : {1e-1, 1e-3, 1e-5}) {
    p.eps = eps;
    const Prepared<double> pd(p, true);
    const Eigen::VectorXd dx = as_f64(run_backward(p, pd, p.w, Backward::staged).dx);
    const Eigen::VectorXd terms = dx_term_magnitudes(p, pd.fwd.cache, p.w, p.gamma);
    Eigen::VectorXd moment = Eigen::VectorXd::Zero(p.sets.R), mag = moment;
    for (Index i = 0; i < dx.size(); ++i) {
      const double xh = xhat_at(p, pd.fwd.cache, i);
      moment[set_of(p, i)] += dx[i] * xh;
      mag[set_of(p, i)] += terms[i] * std::abs(xh);
    }
    rows.push_back(naive_moment_zero_row(term_id(sp, "dx"), test, p.shape, eps, moment, mag));
    per_eps.push_back(rows.back().max_abs_err / eps);
  }
  rows.push_back(moment_linear_in_eps_row(term_id(sp, "dx"), test, p.shape, per_eps));
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Instance norm: running statistics against PyTorch's update rule recomputed in long double.

std::vector<ResultRow> check_in_running_stats(const std::string& test, const Shape& shape) {
  std::vector<ResultRow> rows;
  const Index N = shape[0], C = shape[1];
  for (const double momentum : {0.1, 1.0}) {
    ops::InstanceNormConfig cfg;
    cfg.momentum = momentum;
    auto run64 = ops::InstanceNormRunningStats<double>::fresh(C);
    auto run32 = ops::InstanceNormRunningStats<float>::fresh(C);
    std::vector<long double> rm(static_cast<std::size_t>(C), 0.0L), rv(static_cast<std::size_t>(C), 1.0L);
    for (int t = 1; t <= 3; ++t) {
      const Problem p = make_problem(Member::in, {shape}, 2000 + static_cast<std::uint64_t>(t));
      ops::instancenorm_forward_train<double>(p.x, &p.gamma, &p.beta, &run64, cfg);
      const TensorF x32 = p.x.cast<float>(), g32 = p.gamma.cast<float>(), b32 = p.beta.cast<float>();
      ops::instancenorm_forward_train<float>(x32, &g32, &b32, &run32, cfg);
      const RefStats st = ref_stats(p);
      const long double L = static_cast<long double>(p.sets.M);
      for (Index c = 0; c < C; ++c) {
        long double m = 0, v = 0;
        for (Index n = 0; n < N; ++n) {
          m += st.mean[static_cast<std::size_t>(n * C + c)] / N;
          v += st.var[static_cast<std::size_t>(n * C + c)] * L / (L - 1) / N;  // unbiased per instance
        }
        const auto uc = static_cast<std::size_t>(c);
        rm[uc] = (1 - momentum) * rm[uc] + momentum * m;
        rv[uc] = (1 - momentum) * rv[uc] + momentum * v;
      }
    }
    Eigen::VectorXd want(2 * C), got64(2 * C), got32(2 * C);
    for (Index c = 0; c < C; ++c) {
      want[c] = static_cast<double>(rm[static_cast<std::size_t>(c)]);
      want[C + c] = static_cast<double>(rv[static_cast<std::size_t>(c)]);
      got64[c] = run64.mean[c];
      got64[C + c] = run64.var[c];
      got32[c] = run32.mean[c];
      got32[C + c] = run32.var[c];
    }
    std::ostringstream note;
    note << "running mean (first C) and running var (last C, batch average of the unbiased instance variances) "
            "after 3 batches, momentum "
         << momentum;
    // A convex combination of averages: no cancellation, so the scale is the size of the values.
    rows.push_back(oracle_row({"in.running_stats", test, "reference", "float64", "reference", shape, note.str()},
                              Oracle::complex_step, got64, want, {2, C}));
    rows.push_back(oracle_row({"in.running_stats", test, "reference", "float32", "reference", shape, note.str()},
                              Oracle::complex_step, got32, want, {2, C}));
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Group norm identities: G = 1 is layer norm over (C, L) with γ repeated over L; G = C is
// instance norm. Forward, both backward passes and the parameter gradients.

enum class Quantity { y, dx_staged, dx_fused, dgamma, dbeta };

std::vector<ResultRow> check_gn_identity(const std::string& formula, const std::string& test, bool one_group,
                                         Quantity q) {
  std::vector<ResultRow> rows;
  const std::vector<Shape> shapes = {{3, 4}, {4, 6, 5}, {2, 3, 4, 2}, {8, 4, 16, 16}};
  for (const Shape& shape : shapes) {
    const Index C = shape[1], L = numel(shape) / (shape[0] * C);
    if (!one_group && L < 2) continue;  // instance statistics need L > 1
    const Problem p = make_problem(Member::gn, {shape, one_group ? 1 : C}, seed_of(Member::gn, {shape, 7}));
    const Shape chw(shape.begin() + 1, shape.end());
    // The other op's parameters: γ_LN[c, l] = γ_GN[c] (layer norm), or the same (C) vectors.
    TensorD g2 = p.gamma, b2 = p.beta;
    if (one_group) {
      g2 = TensorD(chw);
      b2 = TensorD(chw);
      for (Index k = 0; k < g2.size(); ++k) g2[k] = p.gamma[k / L], b2[k] = p.beta[k / L];
    }
    const auto one = [&](auto tag) {
      using T = decltype(tag);
      const Tensor<T> x = p.x.cast<T>(), g = p.gamma.cast<T>(), b = p.beta.cast<T>(), w = p.w.cast<T>();
      const Tensor<T> go = g2.cast<T>(), bo = b2.cast<T>();
      const auto fg = ops::groupnorm_forward<T>(x, &g, &b, {p.groups, p.eps});
      const auto fo = one_group ? ops::layernorm_forward<T>(x, &go, &bo, {chw, p.eps})
                                : ops::instancenorm_forward_train<T>(x, &go, &bo, nullptr, {p.eps, 0.1});
      const bool staged = q == Quantity::dx_staged;
      const auto gg = staged ? ops::groupnorm_backward_staged(w, x, &g, fg.cache) : ops::groupnorm_backward(w, x, &g, fg.cache);
      const auto go_ = one_group ? (staged ? ops::layernorm_backward_staged(w, x, &go, fo.cache)
                                           : ops::layernorm_backward(w, x, &go, fo.cache))
                                 : (staged ? ops::instancenorm_backward_staged(w, x, &go, fo.cache)
                                           : ops::instancenorm_backward(w, x, &go, fo.cache));
      Eigen::VectorXd a, o;
      double scale = 0;
      std::string what;
      const ops::NormCache<double> cd = Prepared<double>(p, true).fwd.cache;
      switch (q) {
        case Quantity::y:
          a = as_f64(fg.y), o = as_f64(fo.y), what = "y";
          for (Index i = 0; i < p.x.size(); ++i)
            scale = std::max(scale, std::abs(p.gamma[param_of(p, i)] * xhat_at(p, cd, i)) + std::abs(p.beta[param_of(p, i)]));
          break;
        case Quantity::dx_staged:
        case Quantity::dx_fused:
          a = as_f64(gg.dx), o = as_f64(go_.dx), what = std::string("dx (") + (staged ? "staged" : "fused") + ")";
          scale = dx_term_magnitudes(p, cd, p.w, p.gamma).maxCoeff();
          break;
        case Quantity::dgamma:
        case Quantity::dbeta: {
          const bool gam = q == Quantity::dgamma;
          a = as_f64(gam ? gg.dgamma : gg.dbeta);
          const Eigen::VectorXd full = as_f64(gam ? go_.dgamma : go_.dbeta);
          o = Eigen::VectorXd::Zero(C);  // layer norm's per-element gradient summed over each channel
          for (Index k = 0; k < full.size(); ++k) o[one_group ? k / L : k] += full[k];
          what = gam ? "dγ (fused; layer norm's dγ[c, l] summed over l)" : "dβ (fused; layer norm's dβ[c, l] summed over l)";
          if (!one_group) what = gam ? "dγ (fused)" : "dβ (fused)";
          scale = param_scale(p, cd, p.w, gam ? 0 : 1);
          break;
        }
      }
      // Both sides compute the same function with the same sets; they differ only in rounding
      // (the order of the parameter runs), so the exact-oracle policy applies.
      rows.push_back(oracle_row({formula, test, one_group ? "layernorm" : "instancenorm", dtype_name<T>(), "identity",
                                 shape,
                                 "group norm with G = " + std::string(one_group ? "1" : "C") + " against " +
                                     (one_group ? "layer norm over (C, L) with γ, β repeated over L" : "instance norm (affine)") +
                                     ": " + what},
                                Oracle::complex_step, a, o, {a.size()}, scale));
    };
    one(double{});
    one(float{});
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Negative controls.

struct Term {
  const char* name;
  double ops::NormTermScales::*scale;
};
const Term kTerms[] = {{"dl_dxhat", &ops::NormTermScales::dl_dxhat}, {"dl_dvar", &ops::NormTermScales::dl_dvar},
                       {"dvar_dmu", &ops::NormTermScales::dvar_dmu}, {"dl_dmu", &ops::NormTermScales::dl_dmu},
                       {"dvar_dx", &ops::NormTermScales::dvar_dx},   {"dmu_dx", &ops::NormTermScales::dmu_dx}};

std::vector<check::AblationRow> family_ablation(const Spec& sp) {
  std::vector<check::AblationRow> out;
  std::ostringstream shapes;
  for (std::size_t k = 0; k < sp.terms.size(); ++k) shapes << (k ? ", " : "") << to_string(sp.terms[k].shape);
  for (const Term& t : kTerms) {
    for (const char* change : {"drop", "flip"}) {
      check::AblationRow row{sp.op, term_id(sp, t.name), change};
      row.expected_caught = std::string(t.name) != "dvar_dmu";
      double max_change = 0, ref_scale = 0, term_scale = 0;
      for (const Case& c : sp.terms) {
        const Problem p = make_problem(sp.member, c);
        const Prepared<double> pd(p, true);
        ops::NormTermScales scales;
        scales.*(t.scale) = std::string(change) == "drop" ? 0.0 : -1.0;
        const Eigen::VectorXd dx = as_f64(run_backward(p, pd, p.w, Backward::staged, scales).dx);
        const Eigen::VectorXd ref = as_f64(run_backward(p, pd, p.w, Backward::staged).dx);
        // The oracle: complex-step gradient of L = <w, y>, under the float64 exact-oracle policy with
        // the scale of the terms dx is made of (with sets of 2 values the gradient itself is O(ε)).
        const Eigen::VectorXd numeric = check::jacobian(Oracle::complex_step, loss_of_x(p), as_f64(p.x)).row(0).transpose();
        const double terms = dx_term_magnitudes(p, pd.fwd.cache, p.w, p.gamma).maxCoeff();
        const auto cmp = check::compare(dx, numeric, check::tolerance_policy("float64", Oracle::complex_step, terms));
        row.caught = row.caught || !cmp.passed;
        row.max_abs_err = std::max(row.max_abs_err, cmp.max_abs_err);
        max_change = std::max(max_change, (dx - ref).cwiseAbs().maxCoeff());
        ref_scale = std::max(ref_scale, ref.cwiseAbs().maxCoeff());
        term_scale = std::max(term_scale, terms);
      }
      row.max_rel_err = row.max_abs_err / ref_scale;
      // "Identical within rounding": a few units of float64 rounding of the largest dx term.
      const double rounding = 8 * std::numeric_limits<double>::epsilon() * term_scale;
      std::ostringstream note;
      note << "staged dx with the term " << (std::string(change) == "drop" ? "set to 0" : "sign-flipped")
           << ", against the complex-step gradient of L = <w, y> on shapes " << shapes.str()
           << "; largest change of dx from the correct staged dx: " << max_change;
      row.note = note.str();
      row.passed = row.caught == row.expected_caught && (row.expected_caught || max_change <= rounding);
      out.push_back(row);
    }
  }
  return out;
}

std::vector<ResultRow> check_negative_controls(const Spec& sp, const std::string& formula, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const auto& a : family_ablation(sp)) {
    if (a.term != formula) continue;
    ResultRow r{formula, test, "complex_step", "float64", "negative_control", {}};
    r.max_abs_err = a.max_abs_err;
    r.max_rel_err = a.max_rel_err;
    r.passed = a.passed;
    r.note = a.change + ": " + (a.caught ? "caught by the oracle check" : "not caught (no change)") +
             (a.expected_caught ? "; must be caught" : "; must change nothing") + ". " + a.note;
    rows.push_back(r);
  }
  return rows;
}

// float32 with a large mean, |μ| ≫ σ (issue 10, defect 6): rounded to float32, μ is off by up
// to 2⁻²⁴|μ|, which x − μ carried into every x̂ until the cache kept the residual μ − float32(μ)
// (NormCache::mean_residual). Sets with means of ±mean and mean/2 and σ = 1; the input is rounded
// to float32 first, so the float64 reference sees the same values.
Problem large_mean_problem(const Spec& sp, double mean) {
  const Case& c = sp.projection.front();
  Problem p = make_problem(sp.member, c, seed_of(sp.member, c) + 10);
  const double means[] = {mean, -mean, 0.5 * mean};
  for (Index r = 0; r < p.sets.R; ++r) set_moments(p.x, set_indices(p.sets, r), means[r % 3], 1.0);
  p.x = p.x.cast<float>().cast<double>();
  return p;
}

// The allowances, in u32 = 2⁻²⁴ of the scale of the compared values (as for bn): y, 8 u32 of
// max|y| (one rounding of y, and one each for x − mean, the product and β: 60x below the error
// of a float32 mean at 1e4); fused dx, 16 u32 of its term scale (the rounding of its three terms
// and of the float32 partial sums); staged dx sums in float32 sequentially over the set, about
// √M roundings for random rounding (M = 64 to 256 here): 32 u32.
// "y in float32 against float64 ..., set means ..." for the rows of large_mean_row().
std::string large_mean_what(const std::string& what, const Problem& p, double mean) {
  std::ostringstream s;
  s << what << " in float32 against float64 on the same (float32) input, set means " << mean << ", " << -mean
    << ", " << 0.5 * mean << " and σ = 1" << " (" << describe(p) << ")";
  return s.str();
}

std::vector<ResultRow> check_large_mean_forward(const Spec& sp, const std::string& test) {
  std::vector<ResultRow> rows;
  for (double mean : {1e4, 1e6}) {
    const Problem p = large_mean_problem(sp, mean);
    const Prepared<double> pd(p, true);
    const Prepared<float> pf(p, true);
    const Eigen::VectorXd want = as_f64(pd.fwd.y);
    rows.push_back(large_mean_row(term_id(sp, "forward"), test, p.shape, as_f64(pf.fwd.y), want,
                                  want.cwiseAbs().maxCoeff(), 8, large_mean_what("y", p, mean)));
  }
  return rows;
}

std::vector<ResultRow> check_large_mean_dx(const Spec& sp, const std::string& test, Backward b) {
  std::vector<ResultRow> rows;
  for (double mean : {1e4, 1e6}) {
    const Problem p = large_mean_problem(sp, mean);
    const Prepared<double> pd(p, true);
    const Prepared<float> pf(p, true);
    const Eigen::VectorXd want = as_f64(run_backward(p, pd, p.w, Backward::staged).dx);
    const Eigen::VectorXd got = as_f64(run_backward(p, pf, p.w.cast<float>(), b).dx);
    const double scale = dx_term_magnitudes(p, pd.fwd.cache, p.w, p.gamma).maxCoeff();
    rows.push_back(large_mean_row(term_id(sp, b == Backward::fused ? "dx_fused" : "dx"), test, p.shape, got, want, scale,
                                  b == Backward::fused ? 16 : 32, large_mean_what(std::string(name(b)) + " dx", p, mean)));
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Layer norm at the benchmark shape: the fast kernels are checked where they are timed.

const Problem& ln_benchmark_problem() {
  static const Problem p = make_problem(Member::ln, {{4096, 1024}, 1}, 4096);
  return p;
}

std::vector<ResultRow> check_ln_benchmark(const std::string& formula, const std::string& test) {
  const Problem& p = ln_benchmark_problem();
  if (formula == "ln.forward") return forward_rows(formula, test, p, true);
  if (formula == "ln.dgamma") return param_identity_rows(formula, test, 0, p, {Backward::fused});
  if (formula == "ln.dbeta") return param_identity_rows(formula, test, 1, p, {Backward::fused});
  std::vector<ResultRow> rows;
  const Prepared<double> pd(p, true);
  const Prepared<float> pf(p, true);
  const auto ref = run_backward(p, pd, p.w, Backward::staged);
  const auto fd = run_backward(p, pd, p.w, Backward::fused);
  const auto ff = run_backward(p, pf, p.w.cast<float>(), Backward::fused);
  const double scale = dx_term_magnitudes(p, pd.fwd.cache, p.w, p.gamma).maxCoeff();
  rows.push_back(oracle_row({formula, test, "staged_f64", "float64", "agreement", p.shape,
                             "fused dx against staged dx, both float64 (benchmark shape, normalized_shape (1024,))"},
                            Oracle::complex_step, as_f64(fd.dx), as_f64(ref.dx), {p.x.size()}, scale));
  rows.push_back(oracle_row({formula, test, "staged_f64", "float32", "agreement", p.shape,
                             "fused dx in float32 against staged dx in float64 (benchmark shape, normalized_shape (1024,))"},
                            Oracle::complex_step, as_f64(ff.dx), as_f64(ref.dx), {p.x.size()}, scale));
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Registration.

void register_family(Registry& r, Member m) {
  const Spec& sp = spec(m);
  const std::string op = sp.op;
  const auto id = [&op](const char* term) { return op + "." + term; };
  const auto add = [&r](const std::string& formula, const std::string& name,
                        std::function<std::vector<ResultRow>(const std::string&)> fn) {
    r.checks.push_back({formula, name, [fn, name] { return fn(name); }});
  };
  const Member mm = m;
  add(id("forward"), op + "/forward/matches_a_long_double_reference",
      [mm](const std::string& t) { return check_forward(spec(mm), t); });
  add(id("dl_dxhat"), op + "/terms/dl_dxhat_matches_oracles", [mm](const std::string& t) { return check_dl_dxhat(spec(mm), t); });
  add(id("dl_dvar"), op + "/terms/dl_dvar_matches_oracles", [mm](const std::string& t) { return check_dl_dvar(spec(mm), t); });
  add(id("dvar_dmu"), op + "/terms/dvar_dmu_is_zero_at_the_set_mean",
      [mm](const std::string& t) { return check_dvar_dmu(spec(mm), t); });
  add(id("dl_dmu"), op + "/terms/dl_dmu_matches_oracles", [mm](const std::string& t) { return check_dl_dmu(spec(mm), t); });
  add(id("dvar_dx"), op + "/terms/dvar_dx_matches_oracles", [mm](const std::string& t) { return check_dvar_dx(spec(mm), t); });
  add(id("dmu_dx"), op + "/terms/dmu_dx_matches_oracles", [mm](const std::string& t) { return check_dmu_dx(spec(mm), t); });
  add(id("dx"), op + "/dx/staged_dx_matches_oracles", [mm, f = id("dx")](const std::string& t) {
    return dx_against_oracles(spec(mm), f, t, Backward::staged, true);
  });
  add(id("dx"), op + "/dx/staged_dx_sums_to_zero_and_xhat_moment_is_the_eps_term", [mm, f = id("dx")](const std::string& t) {
    return check_dx_properties(spec(mm), f, t, Backward::staged);
  });
  add(id("dx"), op + "/pitfalls/sum_of_y_gradient_vanishes_only_for_gamma_uniform_over_the_set",
      [mm](const std::string& t) { return check_sum_of_y(spec(mm), t); });
  add(id("forward"), op + "/pitfalls/float32_large_mean_forward_keeps_the_mean_residual",
      [mm](const std::string& t) { return check_large_mean_forward(spec(mm), t); });
  add(id("dx"), op + "/pitfalls/float32_large_mean_staged_dx_keeps_the_mean_residual",
      [mm](const std::string& t) { return check_large_mean_dx(spec(mm), t, Backward::staged); });
  add(id("dx_fused"), op + "/pitfalls/float32_large_mean_fused_dx_keeps_the_mean_residual",
      [mm](const std::string& t) { return check_large_mean_dx(spec(mm), t, Backward::fused); });
  if (m == Member::core)
    add(id("dx"), op + "/pitfalls/xhat_orthogonality_holds_only_as_eps_goes_to_zero",
        [mm](const std::string& t) { return check_xhat_moment_pitfall(spec(mm), t); });
  add(id("dgamma"), op + "/params/dgamma_matches_oracles", [mm, f = id("dgamma")](const std::string& t) {
    return param_against_oracles(spec(mm), f, t, 0, true);
  });
  add(id("dgamma"), op + "/params/dgamma_equals_sum_dy_xhat", [mm, f = id("dgamma")](const std::string& t) {
    return check_param_identities(spec(mm), f, t, 0);
  });
  add(id("dbeta"), op + "/params/dbeta_matches_oracles", [mm, f = id("dbeta")](const std::string& t) {
    return param_against_oracles(spec(mm), f, t, 1, true);
  });
  add(id("dbeta"), op + "/params/dbeta_equals_sum_dy", [mm, f = id("dbeta")](const std::string& t) {
    return check_param_identities(spec(mm), f, t, 1);
  });
  add(id("dx_fused"), op + "/dx_fused/fused_dx_matches_oracles", [mm, f = id("dx_fused")](const std::string& t) {
    return dx_against_oracles(spec(mm), f, t, Backward::fused, true);
  });
  add(id("dx_fused"), op + "/dx_fused/fused_agrees_with_staged", [mm](const std::string& t) {
    std::vector<Case> cases = spec(mm).jacobian;
    cases.insert(cases.end(), spec(mm).projection.begin(), spec(mm).projection.end());
    return staged_equals_fused(spec(mm), t, cases, true, "");
  });
  add(id("dx_fused"), op + "/dx_fused/fused_dx_sums_to_zero_and_xhat_moment_is_the_eps_term",
      [mm, f = id("dx_fused")](const std::string& t) { return check_dx_properties(spec(mm), f, t, Backward::fused); });
  for (const Term& term : kTerms) {
    const std::string tid = id(term.name);
    add(tid, op + "/negative_controls/" + term.name + "_drop_and_flip",
        [mm, tid](const std::string& t) { return check_negative_controls(spec(mm), tid, t); });
  }
  r.sweeps.push_back({op, [mm] {
    // The first small case whose sets have at least 4 values (with M = 2 the gradient is O(ε)).
    const auto& cases = spec(mm).jacobian;
    const auto it = std::find_if(cases.begin(), cases.end(), [mm](const Case& c) { return make_problem(mm, c).sets.M >= 4; });
    const Problem p = make_problem(mm, it != cases.end() ? *it : cases.front());
    const Prepared<double> pd(p, true);
    return sweep_of(y_of_x(p, true), p.x, p.w, as_f64(run_backward(p, pd, p.w, Backward::staged).dx));
  }});
  r.ablations.push_back(
      {op, [mm] { return family_ablation(spec(mm)); },
       "Every term is caught except ∂σ²/∂μ: it is −(2/M)·Σ(xᵢ − μ) over the very set μ is the mean of, so it is\n"
       "zero, and dropping or flipping it changes dx only at the level of rounding."});
}

}  // namespace

void register_normalization(Registry& r) {
  r.formulas.insert(
      r.formulas.end(),
      {{"norm.forward", "norm", "General normalization over a set S: x̂ = (x−μ_S)/√(σ²_S+ε), y = γ_p(i) x̂ + β_p(i)"},
       {"norm.dl_dxhat", "norm", "∂L/∂x̂ᵢ = γ_p(i) ∂L/∂yᵢ (γ may vary over S)"},
       {"norm.dl_dvar", "norm", "∂L/∂σ² = −½ (σ²+ε)^(−3/2) Σ_{i∈S} ∂L/∂x̂ᵢ (xᵢ−μ)"},
       {"norm.dvar_dmu", "norm", "∂σ²/∂μ = −(2/M) Σ_{i∈S} (xᵢ−μ) = 0 at the set mean"},
       {"norm.dl_dmu", "norm", "∂L/∂μ = −(σ²+ε)^(−1/2) Σ_{i∈S} ∂L/∂x̂ᵢ + ∂L/∂σ² · ∂σ²/∂μ"},
       {"norm.dvar_dx", "norm", "∂σ²/∂xᵢ = 2(xᵢ−μ)/M, M = |S|"},
       {"norm.dmu_dx", "norm", "∂μ/∂xᵢ = 1/M"},
       {"norm.dx", "norm", "∂L/∂xᵢ: assembly of the three paths x → x̂, σ², μ (staged)"},
       {"norm.dgamma", "norm", "∂L/∂γ_p = Σ dyᵢ x̂ᵢ over every value γ_p scales"},
       {"norm.dbeta", "norm", "∂L/∂β_p = Σ dyᵢ over every value β_p shifts"},
       {"norm.dx_fused", "norm", "dx = (1/(M√(σ²+ε))) · (M g − Σ_S g − x̂ Σ_S g x̂), g = γ ⊙ dy"},

       {"ln.forward", "ln", "Layer norm forward: statistics over the trailing normalized_shape, y = γ ⊙ x̂ + β elementwise"},
       {"ln.dl_dxhat", "ln", "∂L/∂x̂_{r,j} = γⱼ ∂L/∂y_{r,j} (γ elementwise over the row)"},
       {"ln.dl_dvar", "ln", "∂L/∂σ²_r = −½ (σ²_r+ε)^(−3/2) Σⱼ ∂L/∂x̂_{r,j} (x_{r,j}−μ_r)"},
       {"ln.dvar_dmu", "ln", "∂σ²_r/∂μ_r = −(2/M) Σⱼ (x_{r,j}−μ_r) = 0 at the row mean"},
       {"ln.dl_dmu", "ln", "∂L/∂μ_r = −(σ²_r+ε)^(−1/2) Σⱼ ∂L/∂x̂_{r,j} + ∂L/∂σ²_r · ∂σ²_r/∂μ_r"},
       {"ln.dvar_dx", "ln", "∂σ²_r/∂x_{r,j} = 2(x_{r,j}−μ_r)/M, M = prod(normalized_shape)"},
       {"ln.dmu_dx", "ln", "∂μ_r/∂x_{r,j} = 1/M"},
       {"ln.dx", "ln", "Layer norm ∂L/∂x: assembly of the three paths (staged)"},
       {"ln.dgamma", "ln", "∂L/∂γⱼ = Σ_r dy_{r,j} x̂_{r,j} (summed over the rows)"},
       {"ln.dbeta", "ln", "∂L/∂βⱼ = Σ_r dy_{r,j}"},
       {"ln.dx_fused", "ln", "Layer norm dx = (1/(M√(σ²+ε))) · (M g − Σg − x̂ Σ g x̂), g = γ ⊙ dy per row"},

       {"gn.forward", "gn", "Group norm forward: statistics over the (C/G)·L values of each (sample, group), γ, β per channel"},
       {"gn.dl_dxhat", "gn", "∂L/∂x̂ᵢ = γ_c(i) ∂L/∂yᵢ (γ per channel, varying across a group)"},
       {"gn.dl_dvar", "gn", "∂L/∂σ²_ng = −½ (σ²_ng+ε)^(−3/2) Σ_{i∈(n,g)} ∂L/∂x̂ᵢ (xᵢ−μ_ng)"},
       {"gn.dvar_dmu", "gn", "∂σ²_ng/∂μ_ng = −(2/M) Σ_{i∈(n,g)} (xᵢ−μ_ng) = 0 at the group mean"},
       {"gn.dl_dmu", "gn", "∂L/∂μ_ng = −(σ²_ng+ε)^(−1/2) Σ_{i∈(n,g)} ∂L/∂x̂ᵢ + ∂L/∂σ²_ng · ∂σ²_ng/∂μ_ng"},
       {"gn.dvar_dx", "gn", "∂σ²_ng/∂xᵢ = 2(xᵢ−μ_ng)/M, M = (C/G)·L"},
       {"gn.dmu_dx", "gn", "∂μ_ng/∂xᵢ = 1/M"},
       {"gn.dx", "gn", "Group norm ∂L/∂x: assembly of the three paths (staged)"},
       {"gn.dgamma", "gn", "∂L/∂γ_c = Σ_{n,l} dy_{n,c,l} x̂_{n,c,l} (x̂ from c's group statistics)"},
       {"gn.dbeta", "gn", "∂L/∂β_c = Σ_{n,l} dy_{n,c,l}"},
       {"gn.dx_fused", "gn", "Group norm dx = (1/(M√(σ²+ε))) · (M g − Σg − x̂ Σ g x̂) per group, g = γ_c dy"},

       {"in.forward", "in", "Instance norm forward: statistics over the L values of each (sample, channel), or running statistics (eval)"},
       {"in.running_stats", "in", "Running statistics: momentum update with the batch average of the instance mean and unbiased variance"},
       {"in.dl_dxhat", "in", "∂L/∂x̂_{ncl} = γ_c ∂L/∂y_{ncl} (γ constant over the set)"},
       {"in.dl_dvar", "in", "∂L/∂σ²_nc = −½ (σ²_nc+ε)^(−3/2) Σ_l ∂L/∂x̂_{ncl} (x_{ncl}−μ_nc)"},
       {"in.dvar_dmu", "in", "∂σ²_nc/∂μ_nc = −(2/L) Σ_l (x_{ncl}−μ_nc) = 0 at the instance mean"},
       {"in.dl_dmu", "in", "∂L/∂μ_nc = −(σ²_nc+ε)^(−1/2) Σ_l ∂L/∂x̂_{ncl} + ∂L/∂σ²_nc · ∂σ²_nc/∂μ_nc"},
       {"in.dvar_dx", "in", "∂σ²_nc/∂x_{ncl} = 2(x_{ncl}−μ_nc)/L"},
       {"in.dmu_dx", "in", "∂μ_nc/∂x_{ncl} = 1/L"},
       {"in.dx", "in", "Instance norm ∂L/∂x: assembly of the three paths (staged)"},
       {"in.dgamma", "in", "∂L/∂γ_c = Σ_{n,l} dy_{n,c,l} x̂_{n,c,l}"},
       {"in.dbeta", "in", "∂L/∂β_c = Σ_{n,l} dy_{n,c,l} (training and eval)"},
       {"in.dx_fused", "in", "Instance norm dx = γ_c/(L√(σ²+ε)) · (L dy − Σdy − x̂ Σ dy x̂) per (sample, channel)"},
       {"in.eval_dx", "in", "Eval mode (running statistics): dx = γ_c dy / √(r_σ²_c + ε)"},
       {"in.eval_dgamma", "in", "Eval mode: dγ_c = Σ dy x̂ with the running statistics"}});

  for (Member m : {Member::core, Member::ln, Member::gn, Member::in}) register_family(r, m);

  const auto add = [&r](const std::string& formula, const std::string& name,
                        std::function<std::vector<ResultRow>(const std::string&)> fn) {
    r.checks.push_back({formula, name, [fn, name] { return fn(name); }});
  };
  // Layer norm at the benchmark shape (4096, 1024): forward, dx fused float32 vs staged float64, dγ, dβ.
  add("ln.forward", "ln/forward/matches_a_long_double_reference_at_the_benchmark_shape",
      [](const std::string& t) { return check_ln_benchmark("ln.forward", t); });
  add("ln.dx_fused", "ln/dx_fused/fused_float32_matches_staged_float64_at_the_benchmark_shape",
      [](const std::string& t) { return check_ln_benchmark("ln.dx_fused", t); });
  add("ln.dgamma", "ln/params/dgamma_equals_sum_dy_xhat_at_the_benchmark_shape",
      [](const std::string& t) { return check_ln_benchmark("ln.dgamma", t); });
  add("ln.dbeta", "ln/params/dbeta_equals_sum_dy_at_the_benchmark_shape",
      [](const std::string& t) { return check_ln_benchmark("ln.dbeta", t); });

  // Instance norm with running statistics: the update, and eval mode.
  add("in.running_stats", "in/running_stats/match_the_momentum_update_of_batch_averaged_instance_statistics",
      [](const std::string& t) { return check_in_running_stats(t, {4, 3, 5}); });
  add("in.running_stats", "in/running_stats/match_the_momentum_update_on_a_2d_input",
      [](const std::string& t) { return check_in_running_stats(t, {2, 3, 4, 3}); });
  add("in.forward", "in/eval/eval_forward_matches_a_long_double_reference", [](const std::string& t) {
    std::vector<ResultRow> rows;
    for (const Case& c : spec(Member::in).jacobian) {
      const auto r = forward_rows("in.forward", t, make_problem(Member::in, c, 99), false);
      rows.insert(rows.end(), r.begin(), r.end());
    }
    return rows;
  });
  add("in.eval_dx", "in/eval/staged_eval_dx_matches_oracles", [](const std::string& t) {
    return dx_against_oracles(spec(Member::in), "in.eval_dx", t, Backward::staged, false);
  });
  add("in.eval_dx", "in/eval/fused_eval_dx_matches_oracles", [](const std::string& t) {
    return dx_against_oracles(spec(Member::in), "in.eval_dx", t, Backward::fused, false);
  });
  add("in.eval_dx", "in/eval/fused_eval_dx_agrees_with_staged", [](const std::string& t) {
    return staged_equals_fused(spec(Member::in), t, spec(Member::in).jacobian, false, "");
  });
  add("in.eval_dgamma", "in/eval/eval_dgamma_matches_oracles",
      [](const std::string& t) { return param_against_oracles(spec(Member::in), "in.eval_dgamma", t, 0, false); });
  add("in.dbeta", "in/eval/eval_dbeta_matches_oracles",
      [](const std::string& t) { return param_against_oracles(spec(Member::in), "in.dbeta", t, 1, false); });

  // Group norm identities: G = 1 is layer norm over (C, L); G = C is instance norm.
  const std::pair<Quantity, const char*> quantities[] = {{Quantity::y, "gn.forward"},
                                                         {Quantity::dx_staged, "gn.dx"},
                                                         {Quantity::dx_fused, "gn.dx_fused"},
                                                         {Quantity::dgamma, "gn.dgamma"},
                                                         {Quantity::dbeta, "gn.dbeta"}};
  for (const auto& [q, formula] : quantities) {
    const std::string f = formula, what = f.substr(3);
    add(f, "gn/identities/one_group_equals_layernorm_over_c_and_spatial_" + what,
        [f, q = q](const std::string& t) { return check_gn_identity(f, t, true, q); });
    add(f, "gn/identities/one_group_per_channel_equals_instancenorm_" + what,
        [f, q = q](const std::string& t) { return check_gn_identity(f, t, false, q); });
  }
}

}  // namespace gradproof::catalog
