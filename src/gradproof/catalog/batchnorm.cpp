// The batch-normalization entries of the catalog: every bn.* formula and the checks that verify it.
#include "gradproof/catalog/catalog.hpp"
#include "gradproof/catalog/support.hpp"
#include "gradproof/ops/batchnorm.hpp"

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using ops::BatchNormConfig;
using ops::BatchNormRunningStats;

// ----------------------------------------------------------------------------------------------
// Problems: an input, parameters and an upstream weight w (L = <w, y>), float-representable.

struct Problem {
  Shape shape;
  ops::NCL d;
  TensorD x, gamma, beta, w;
  BatchNormRunningStats<double> running;  // for eval mode
  BatchNormConfig cfg;
};

Index channel_of(const ops::NCL& d, Index flat) { return (flat / d.L) % d.C; }

// The flat indices of channel c: N chunks of L contiguous values.
std::vector<Index> channel_indices(const ops::NCL& d, Index c) {
  std::vector<Index> idx;
  idx.reserve(static_cast<std::size_t>(d.M()));
  for (Index n = 0; n < d.N; ++n)
    for (Index l = 0; l < d.L; ++l) idx.push_back(d.offset(n, c) + l);
  return idx;
}

Problem make_problem(const Shape& shape, std::uint64_t seed) {
  Rng rng(seed);
  Problem p;
  p.shape = shape;
  p.d = ops::ncl_view(shape, "bn catalog", "shape");
  const Index C = p.d.C;
  // Channels with different means and spreads, so that no statistic is trivially 0 or 1; the
  // sample moments are set exactly (support::set_moments), so |μ|/σ ≤ 6 in every channel.
  p.x = rng.normal_tensor(shape);
  for (Index c = 0; c < C; ++c) {
    const double mean = rng.uniform(-2, 3), sd = rng.uniform(0.5, 2);
    set_moments(p.x, channel_indices(p.d, c), mean, sd);
  }
  p.gamma = TensorD({C});
  p.beta = TensorD({C});
  p.running = BatchNormRunningStats<double>::fresh(C);
  for (Index c = 0; c < C; ++c) {
    p.gamma[c] = rng.signed_uniform(0.5, 1.5);
    p.beta[c] = rng.normal();
    p.running.mean[c] = rng.normal(0.5, 1);
    p.running.var[c] = rng.uniform(0.5, 3);
  }
  p.w = rng.normal_tensor(shape);
  return p;
}


// Small shapes get full Jacobians: ranks 2, 3, 4; C = 1; M = 2 (rank 2 and rank 4); non-square.
const std::vector<Shape>& jacobian_shapes() {
  static const std::vector<Shape> s = {{4, 3}, {3, 2, 5}, {2, 3, 3, 2}, {5, 1, 3}, {2, 2}, {1, 2, 2, 1}};
  return s;
}
// Large shapes get random projections v^T J u: a typical rank-4 batch, N = 1 with large spatial
// extent, and a long rank-3 sequence.
const std::vector<Shape>& projection_shapes() {
  static const std::vector<Shape> s = {{8, 4, 16, 16}, {1, 2, 32, 48}, {16, 3, 37}};
  return s;
}
// Term checks use one shape per rank.
const std::vector<Shape>& term_shapes() {
  static const std::vector<Shape> s = {{4, 3}, {3, 2, 5}, {2, 3, 3, 2}};
  return s;
}

std::uint64_t seed_of(const Shape& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (Index v : s) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
  return h;
}

// The forward pass and cache of a problem in scalar type T.
template <class T>
struct Prepared {
  Tensor<T> x, gamma, beta;
  BatchNormRunningStats<T> running;
  ops::BatchNormForward<T> fwd;
  Prepared(const Problem& p, bool training)
      : x(p.x.cast<T>()),
        gamma(p.gamma.cast<T>()),
        beta(p.beta.cast<T>()),
        running{p.running.mean.cast<T>(), p.running.var.cast<T>(), 0},
        fwd(training ? ops::batchnorm_forward_train<T>(x, &gamma, &beta, nullptr, p.cfg)
                     : ops::batchnorm_forward_eval<T>(x, &gamma, &beta, running, p.cfg)) {}
};

enum class Backward { staged, fused };
const char* name(Backward b) { return b == Backward::staged ? "staged" : "fused"; }

template <class T>
ops::BatchNormGrads<T> run_backward(const Prepared<T>& pr, const Tensor<T>& dy, Backward b) {
  return b == Backward::staged ? ops::batchnorm_backward_staged(dy, pr.x, &pr.gamma, pr.fwd.cache)
                               : ops::batchnorm_backward(dy, pr.x, &pr.gamma, pr.fwd.cache);
}

// ----------------------------------------------------------------------------------------------
// Generic forward maps for the oracles. Each accepts Vec<S> for S = double, complex, dual.

template <class S>
Tensor<S> cast_to(const TensorD& t) {
  return t.cast<S>();
}

// y(x), training or eval.
auto y_of_x(const Problem& p, bool training) {
  return [&p, training](const auto& xv) {
    using S = typename std::decay_t<decltype(xv)>::Scalar;
    const Tensor<S> g = cast_to<S>(p.gamma), b = cast_to<S>(p.beta);
    const Tensor<S> x = from_vec(p.shape, xv);
    if (training) return to_vec(ops::batchnorm_forward_train<S>(x, &g, &b, nullptr, p.cfg).y);
    const BatchNormRunningStats<S> r{cast_to<S>(p.running.mean), cast_to<S>(p.running.var), 0};
    return to_vec(ops::batchnorm_forward_eval<S>(x, &g, &b, r, p.cfg).y);
  };
}

// L = <w, y> as a function of gamma (which = 0) or beta (which = 1).
auto loss_of_param(const Problem& p, bool training, int which) {
  return [&p, training, which](const auto& pv) {
    using S = typename std::decay_t<decltype(pv)>::Scalar;
    const Tensor<S> x = cast_to<S>(p.x), w = cast_to<S>(p.w);
    const Tensor<S> g = which == 0 ? from_vec(Shape{p.d.C}, pv) : cast_to<S>(p.gamma);
    const Tensor<S> b = which == 1 ? from_vec(Shape{p.d.C}, pv) : cast_to<S>(p.beta);
    const BatchNormRunningStats<S> r{cast_to<S>(p.running.mean), cast_to<S>(p.running.var), 0};
    const Tensor<S> y = training ? ops::batchnorm_forward_train<S>(x, &g, &b, nullptr, p.cfg).y
                                 : ops::batchnorm_forward_eval<S>(x, &g, &b, r, p.cfg).y;
    Vec<S> out(1);
    out[0] = (to_vec(y).array() * to_vec(w).array()).sum();
    return out;
  };
}

// ----------------------------------------------------------------------------------------------
// Comparing analytic values with every oracle.

// The dx of one backward implementation as a vector-Jacobian product in dtype T.
template <class T>
Vjp dx_vjp(std::shared_ptr<const Prepared<T>> pr, const Shape& shape, Backward b) {
  return [pr, shape, b](const Eigen::VectorXd& dy) {
    const Tensor<T> dyt = from_vec(shape, Eigen::VectorXd(dy)).template cast<T>();
    return as_f64(run_backward(*pr, dyt, b).dx);
  };
}

// ----------------------------------------------------------------------------------------------
// Tolerance scales. dx is a difference of terms of size |γ|·|dy|/√(σ²+ε) that can cancel almost
// completely (with M = 2 the whole Jacobian is O(ε)), so the absolute part of the tolerance is
// tied to the size of those terms, not to the size of the result.

// One entry of the Jacobian of dx in dy: terms of size |γ_c|/√(σ²_c+ε) at most.
double dx_entry_scale(const Problem& p, const ops::BatchNormCache<double>& cache) {
  double s = 0;
  for (Index c = 0; c < p.d.C; ++c) s = std::max(s, std::abs(p.gamma[c]) * cache.invstd[c]);
  return s;
}

// vᵀJu = Σ_c γ_c/√(σ²_c+ε) (Σ vᵢuᵢ − (Σv)(Σu)/M − (Σx̂v)(Σx̂u)/M) in training, only the first
// term in eval: the sum of the magnitudes of these terms.
ProjectionScale dx_projection_scale(std::shared_ptr<const Prepared<double>> pd, const Problem& p, bool training) {
  return [pd, d = p.d, gamma = p.gamma, training](const Eigen::VectorXd& v, const Eigen::VectorXd& u) {
    const auto& cache = pd->fwd.cache;
    double total = 0;
    for (Index c = 0; c < d.C; ++c) {
      double vu = 0, sv = 0, su = 0, xv = 0, xu = 0;
      for (Index i : channel_indices(d, c)) {
        const double xh = (pd->x[i] - cache.mean[c]) * cache.invstd[c];
        vu += std::abs(v[i] * u[i]);
        sv += v[i];
        su += u[i];
        xv += xh * v[i];
        xu += xh * u[i];
      }
      const double M = static_cast<double>(d.M());
      const double terms = training ? vu + (std::abs(sv * su) + std::abs(xv * xu)) / M : vu;
      total += std::abs(gamma[c]) * cache.invstd[c] * terms;
    }
    return total;
  };
}

// dγ_c = Σᵢ dyᵢ x̂ᵢ and dβ_c = Σᵢ dyᵢ: sums that can cancel; their terms are |dyᵢ x̂ᵢ|, |dyᵢ|.
double param_scale(const Problem& p, const ops::BatchNormCache<double>& cache, const TensorD& dy, int which) {
  Eigen::VectorXd acc = Eigen::VectorXd::Zero(p.d.C);
  for (Index i = 0; i < dy.size(); ++i) {
    const Index c = channel_of(p.d, i);
    acc[c] += std::abs(dy[i]) * (which == 0 ? std::abs(p.x[i] - cache.mean[c]) * cache.invstd[c] : 1.0);
  }
  return acc.maxCoeff();
}

// ----------------------------------------------------------------------------------------------
// Whole-op checks: dx (staged or fused, training or eval) against full Jacobians and projections.

std::vector<ResultRow> dx_against_oracles(const std::string& formula, const std::string& test, Backward b,
                                          bool training) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : jacobian_shapes()) {
    const Problem p = make_problem(shape, seed_of(shape));
    const auto pd = std::make_shared<const Prepared<double>>(p, training);
    const auto pf = std::make_shared<const Prepared<float>>(p, training);
    const Index m = p.x.size();
    std::vector<Analytic> analytic = {{"float64", flat_rowmajor(jacobian_from_vjp(m, dx_vjp(pd, shape, b)))},
                                      {"float32", flat_rowmajor(jacobian_from_vjp(m, dx_vjp(pf, shape, b)))}};
    RowMeta meta{formula, test, "", "", "oracle", shape,
                 std::string("full Jacobian dy/dx (") + (training ? "training" : "eval") + ", " + name(b) +
                     " backward, one vector-Jacobian product per output)"};
    jacobian_rows(rows, meta, y_of_x(p, training), as_f64(p.x), analytic, dx_entry_scale(p, pd->fwd.cache));
  }
  for (const Shape& shape : projection_shapes()) {
    const Problem p = make_problem(shape, seed_of(shape));
    const auto pd = std::make_shared<const Prepared<double>>(p, training);
    const auto pf = std::make_shared<const Prepared<float>>(p, training);
    RowMeta meta{formula, test, "", "", "oracle", shape,
                 std::string("4 random projections v^T J u (") + (training ? "training" : "eval") + ", " + name(b) +
                     " backward)"};
    projection_rows(rows, meta, y_of_x(p, training), as_f64(p.x), p.x.size(),
                    {{"float64", dx_vjp(pd, shape, b)}, {"float32", dx_vjp(pf, shape, b)}}, 4, seed_of(shape) + 7,
                    dx_projection_scale(pd, p, training));
  }
  return rows;
}

// dgamma or dbeta (which = 0 or 1) of both backward implementations against the oracles' gradient
// of L = <w, y> with respect to that parameter.
std::vector<ResultRow> param_against_oracles(const std::string& formula, const std::string& test, int which,
                                             bool training) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : jacobian_shapes()) {
    const Problem p = make_problem(shape, seed_of(shape));
    const Prepared<double> pd(p, training);
    const Prepared<float> pf(p, training);
    for (Backward b : {Backward::staged, Backward::fused}) {
      const auto gd = run_backward(pd, p.w, b);
      const auto gf = run_backward(pf, p.w.cast<float>(), b);
      std::vector<Analytic> analytic = {{"float64", as_f64(which == 0 ? gd.dgamma : gd.dbeta)},
                                        {"float32", as_f64(which == 0 ? gf.dgamma : gf.dbeta)}};
      RowMeta meta{formula, test, "", "", "oracle", shape,
                   std::string("gradient of L = <w, y> in ") + (which == 0 ? "gamma" : "beta") + " (" +
                       (training ? "training" : "eval") + ", " + name(b) + " backward)"};
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
  ops::BatchNormStagedTrace<double> td;
  ops::BatchNormStagedTrace<float> tf;
  Eigen::VectorXd mu;  // batch mean (float64)
};

TermSetup term_setup(const Shape& shape) {
  TermSetup s{make_problem(shape, seed_of(shape) + 1), nullptr, nullptr, {}, {}, {}};
  s.pd = std::make_shared<const Prepared<double>>(s.p, true);
  s.pf = std::make_shared<const Prepared<float>>(s.p, true);
  ops::batchnorm_backward_staged(s.p.w, s.pd->x, &s.pd->gamma, s.pd->fwd.cache, {}, &s.td);
  ops::batchnorm_backward_staged(s.p.w.cast<float>(), s.pf->x, &s.pf->gamma, s.pf->fwd.cache, {}, &s.tf);
  s.mu = as_f64(s.pd->fwd.cache.mean);
  return s;
}

// x̂ as a generic function of (x, μ, σ²) with ε from the config.
template <class S>
Tensor<S> xhat_of(const Problem& p, const Tensor<S>& x, const Vec<S>& mu, const Vec<S>& var) {
  using std::sqrt;
  Tensor<S> xh(p.shape);
  for (Index i = 0; i < x.size(); ++i) {
    const Index c = channel_of(p.d, i);
    xh[i] = (x[i] - mu[c]) / sqrt(var[c] + S(p.cfg.eps));
  }
  return xh;
}

// L = <w, γ x̂ + β> for a given x̂.
template <class S>
Vec<S> loss_of_xhat(const Problem& p, const Tensor<S>& xh) {
  Vec<S> out(1);
  out[0] = S(0);
  for (Index i = 0; i < xh.size(); ++i) {
    const Index c = channel_of(p.d, i);
    out[0] += S(p.w[i]) * (S(p.gamma[c]) * xh[i] + S(p.beta[c]));
  }
  return out;
}

// σ²_c = (1/M) Σ_i (x_i − μ_c)², μ given.
template <class S>
Vec<S> var_of(const Problem& p, const Tensor<S>& x, const Vec<S>& mu) {
  Vec<S> v = Vec<S>::Constant(p.d.C, S(0));
  for (Index i = 0; i < x.size(); ++i) {
    const Index c = channel_of(p.d, i);
    v[c] += (x[i] - mu[c]) * (x[i] - mu[c]);
  }
  return v / S(static_cast<double>(p.d.M()));
}

// μ_c = (1/M) Σ_i x_i.
template <class S>
Vec<S> mean_of(const Problem& p, const Tensor<S>& x) {
  Vec<S> m = Vec<S>::Constant(p.d.C, S(0));
  for (Index i = 0; i < x.size(); ++i) m[channel_of(p.d, i)] += x[i];
  return m / S(static_cast<double>(p.d.M()));
}

template <class S>
Vec<S> cast_vec(const Eigen::VectorXd& v) {
  Vec<S> out(v.size());
  for (Index i = 0; i < v.size(); ++i) out[i] = S(v[i]);
  return out;
}

// A C × n block matrix, row c holding `values` on channel c's elements.
Eigen::VectorXd channel_block(const ops::NCL& d, Index n, const std::function<double(Index)>& value) {
  Eigen::MatrixXd J = Eigen::MatrixXd::Zero(d.C, n);
  for (Index i = 0; i < n; ++i) J(channel_of(d, i), i) = value(i);
  return flat_rowmajor(J);
}

// max over channels of Σ_{i in c} term(i): the size of the terms a per-channel sum is made of.
double channel_sum_scale(const ops::NCL& d, Index n, const std::function<double(Index)>& term) {
  Eigen::VectorXd acc = Eigen::VectorXd::Zero(d.C);
  for (Index i = 0; i < n; ++i) acc[channel_of(d, i)] += std::abs(term(i));
  return acc.maxCoeff();
}

std::vector<ResultRow> check_dl_dxhat(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : term_shapes()) {
    const TermSetup s = term_setup(shape);
    const auto f = [&p = s.p](const auto& xhv) { return loss_of_xhat(p, from_vec(p.shape, xhv)); };
    // The point: x̂ of the forward pass.
    const Eigen::VectorXd at = as_f64(xhat_of<double>(s.p, s.p.x, s.mu, as_f64(s.pd->fwd.cache.var)));
    // γ·dy: a product, no cancellation, so the scale is the size of the result.
    jacobian_rows(rows, {"bn.dl_dxhat", test, "", "", "oracle", shape, "gradient of L = <w, γ x̂ + β> in x̂"}, f, at,
                  {{"float64", as_f64(s.td.dl_dxhat)}, {"float32", as_f64(s.tf.dl_dxhat)}}, -1);
  }
  return rows;
}

std::vector<ResultRow> check_dl_dvar(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : term_shapes()) {
    const TermSetup s = term_setup(shape);
    const auto f = [&s](const auto& varv) {
      using S = typename std::decay_t<decltype(varv)>::Scalar;
      return loss_of_xhat(s.p, xhat_of<S>(s.p, cast_to<S>(s.p.x), cast_vec<S>(s.mu), varv));
    };
    jacobian_rows(rows,
                  {"bn.dl_dvar", test, "", "", "oracle", shape,
                   "gradient of L in σ² with x and μ held fixed (σ² reaches L only through x̂)"},
                  f, as_f64(s.pd->fwd.cache.var), {{"float64", as_f64(s.td.dl_dvar)}, {"float32", as_f64(s.tf.dl_dvar)}},
                  channel_sum_scale(s.p.d, s.p.x.size(), [&s](Index i) {
                    const Index c = channel_of(s.p.d, i);
                    const double is = s.pd->fwd.cache.invstd[c];
                    return 0.5 * is * is * is * s.td.dl_dxhat[i] * (s.p.x[i] - s.mu[c]);
                  }));
  }
  return rows;
}

std::vector<ResultRow> check_dl_dmu(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : term_shapes()) {
    const TermSetup s = term_setup(shape);
    // μ reaches L directly through x̂ and through σ²(x, μ); x is held fixed.
    const auto f = [&s](const auto& muv) {
      using S = typename std::decay_t<decltype(muv)>::Scalar;
      const Tensor<S> x = cast_to<S>(s.p.x);
      return loss_of_xhat(s.p, xhat_of<S>(s.p, x, muv, var_of<S>(s.p, x, muv)));
    };
    jacobian_rows(rows,
                  {"bn.dl_dmu", test, "", "", "oracle", shape,
                   "gradient of L in μ with x fixed, through x̂ directly and through σ²(x, μ)"},
                  f, s.mu, {{"float64", as_f64(s.td.dl_dmu)}, {"float32", as_f64(s.tf.dl_dmu)}},
                  channel_sum_scale(s.p.d, s.p.x.size(), [&s](Index i) {
                    return s.pd->fwd.cache.invstd[channel_of(s.p.d, i)] * s.td.dl_dxhat[i];
                  }));
  }
  return rows;
}

std::vector<ResultRow> check_dvar_dmu(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : term_shapes()) {
    const TermSetup s = term_setup(shape);
    const ops::NCL& d = s.p.d;
    const Index n = s.p.x.size();
    // The natural size of ∂σ²/∂μ = −(2/M)Σ(xᵢ − μ) is that of its terms, (2/M)Σ|xᵢ − μ|: the
    // absolute tolerance is measured against it, since the value itself is 0.
    double scale = 0;
    {
      Eigen::VectorXd acc = Eigen::VectorXd::Zero(d.C);
      for (Index i = 0; i < n; ++i) acc[channel_of(d, i)] += std::abs(s.p.x[i] - s.mu[channel_of(d, i)]);
      scale = 2.0 * acc.maxCoeff() / static_cast<double>(d.M());
    }
    // 1. The partial: σ²(x, μ) in μ with x fixed, at μ = batch mean. Its Jacobian is diagonal;
    //    the analytic diagonal is the staged step's value (a rounding-level number).
    const auto f = [&s](const auto& muv) {
      using S = typename std::decay_t<decltype(muv)>::Scalar;
      return var_of<S>(s.p, cast_to<S>(s.p.x), muv);
    };
    const auto diag = [](const Eigen::VectorXd& v) { return flat_rowmajor(Eigen::MatrixXd(v.asDiagonal())); };
    jacobian_rows(rows,
                  {"bn.dvar_dmu", test, "", "", "oracle", shape,
                   "partial ∂σ²/∂μ with x fixed, at μ = batch mean: zero up to rounding"},
                  f, s.mu, {{"float64", diag(as_f64(s.td.dvar_dmu))}, {"float32", diag(as_f64(s.tf.dvar_dmu))}},
                  scale);
    // 2. The exact value 0 against the complex-step derivative: the partial really is zero.
    {
      const Eigen::VectorXd numeric = flat_rowmajor(check::jacobian(Oracle::complex_step, f, s.mu));
      rows.push_back(oracle_row({"bn.dvar_dmu", test, "exact_zero", "float64", "property", shape,
                                 "complex-step ∂σ²/∂μ compared with the exact value 0"},
                                Oracle::complex_step, Eigen::VectorXd::Zero(numeric.size()), numeric,
                                {d.C, d.C}, scale));
    }
    // 3. The total derivative dσ²/dxᵢ = 2(xᵢ − μ)/M (μ recomputed from x) is not zero, and equals
    //    the partial ∂σ²/∂xᵢ because the extra path through μ contributes 0.
    const auto total = [&s](const auto& xv) {
      using S = typename std::decay_t<decltype(xv)>::Scalar;
      const Tensor<S> x = from_vec(s.p.shape, xv);
      return var_of<S>(s.p, x, mean_of<S>(s.p, x));
    };
    const Eigen::VectorXd tot = flat_rowmajor(check::jacobian(Oracle::complex_step, total, as_f64(s.p.x)));
    const Eigen::VectorXd expect = channel_block(d, n, [&](Index i) { return s.td.dvar_dx[i]; });
    ResultRow row = oracle_row({"bn.dvar_dmu", test, "complex_step", "float64", "property", shape, ""},
                               Oracle::complex_step, expect, tot, {d.C, n});
    const double size = tot.cwiseAbs().maxCoeff();
    std::ostringstream note;
    note << "total dσ²/dxᵢ (μ recomputed from x) equals 2(xᵢ−μ)/M and is not zero: max |dσ²/dxᵢ| = " << size;
    row.note = note.str();
    row.passed = row.passed && size > 1e3 * row.atol && size > 0.01 * scale;
    rows.push_back(row);
  }
  return rows;
}

// ∂σ²/∂μ is a property of the graph, not of batch normalization. Three graphs of the same
// forward value show it (derivations/batchnorm.md, "Why the answer depends on the graph"):
//  1. one pass, σ² = E[x²] − μ²: the edge μ → σ² carries −2μ ≠ 0, and the edge x → σ² becomes
//     2xᵢ/M; assembled with those edges the backward gives the same dx (against the complex step);
//  2. a μ that is not the mean of the set σ² is taken over (a mask: μ over the first half of
//     each channel only): ∂σ²/∂μ = −(2/M)Σ(xⱼ − μ) is no longer zero;
//  3. and then the line `grad_mean += grad_var * (-2.0 * 0.0)` drops a real path: dx assembled
//     with that term set to 0 misses the complex-step gradient by far more than its tolerance.
std::vector<ResultRow> check_dvar_dmu_depends_on_the_graph(const std::string& test) {
  std::vector<ResultRow> rows;
  const Shape shape{3, 2, 5};
  const TermSetup s = term_setup(shape);
  const ops::NCL& d = s.p.d;
  const Index n = s.p.x.size(), C = d.C;
  const double M = static_cast<double>(d.M());
  const double eps = s.p.cfg.eps;
  // 1a. The one-pass edge μ → σ²: ∂(E[x²] − μ²)/∂μ = −2μ, by the complex step, x fixed.
  const auto one_pass_var = [&s, n, C, M](const auto& muv) {
    using S = typename std::decay_t<decltype(muv)>::Scalar;
    Vec<S> v = Vec<S>::Constant(C, S(0));
    for (Index i = 0; i < n; ++i) v[channel_of(s.p.d, i)] += S(s.p.x[i] * s.p.x[i] / M);
    for (Index c = 0; c < C; ++c) v[c] -= muv[c] * muv[c];
    return v;
  };
  {
    const Eigen::VectorXd numeric = check::jacobian(Oracle::complex_step, one_pass_var, s.mu).diagonal();
    const Eigen::VectorXd analytic = -2.0 * s.mu;
    ResultRow row = oracle_row({"bn.dvar_dmu", test, "complex_step", "float64", "property", shape, ""},
                               Oracle::complex_step, analytic, numeric, {C});
    std::ostringstream note;
    note << "one-pass graph σ² = E[x²] − μ²: the edge μ → σ² carries ∂σ²/∂μ = −2μ, not 0 (max |2μ| = "
         << numeric.cwiseAbs().maxCoeff() << ")";
    row.note = note.str();
    row.passed = row.passed && numeric.cwiseAbs().maxCoeff() > 0.1;
    rows.push_back(row);
  }
  // 1b. dx assembled on the one-pass graph: ∂σ²/∂xᵢ = 2xᵢ/M (μ fixed) and ∂σ²/∂μ = −2μ change
  //     together, and dx is the same as on the two-pass graph.
  {
    Eigen::VectorXd dl_dvar = Eigen::VectorXd::Zero(C), sum_g = Eigen::VectorXd::Zero(C);
    const Eigen::VectorXd var = as_f64(s.pd->fwd.cache.var);
    for (Index i = 0; i < n; ++i) {
      const Index c = channel_of(d, i);
      const double g = s.p.gamma[c] * s.p.w[i];
      dl_dvar[c] += -0.5 * std::pow(var[c] + eps, -1.5) * g * (s.p.x[i] - s.mu[c]);
      sum_g[c] += g;
    }
    Eigen::VectorXd dx(n);
    for (Index i = 0; i < n; ++i) {
      const Index c = channel_of(d, i);
      const double r = 1.0 / std::sqrt(var[c] + eps);
      const double dl_dmu = -r * sum_g[c] + dl_dvar[c] * (-2.0 * s.mu[c]);
      dx[i] = s.p.gamma[c] * s.p.w[i] * r + dl_dvar[c] * 2.0 * s.p.x[i] / M + dl_dmu / M;
    }
    const auto loss = [&s](const auto& xv) {
      using S = typename std::decay_t<decltype(xv)>::Scalar;
      const Vec<S> y = y_of_x(s.p, true)(xv);
      Vec<S> out(1);
      out[0] = S(0);
      for (Index i = 0; i < y.size(); ++i) out[0] += S(s.p.w[i]) * y[i];
      return out;
    };
    const Eigen::VectorXd numeric = check::jacobian(Oracle::complex_step, loss, as_f64(s.p.x)).row(0).transpose();
    rows.push_back(oracle_row({"bn.dvar_dmu", test, "complex_step", "float64", "property", shape,
                               "one-pass graph: dx assembled with ∂σ²/∂xᵢ = 2xᵢ/M and ∂σ²/∂μ = −2μ equals the "
                               "complex-step gradient of L = <w, y>, as on the two-pass graph"},
                              Oracle::complex_step, dx, numeric, {n}, dx_entry_scale(s.p, s.pd->fwd.cache)));
  }
  // 2. A mask: μ is the mean of the first half of each channel's values, σ² is over all of them.
  std::vector<char> in_mask(static_cast<std::size_t>(n), 0);
  for (Index c = 0; c < C; ++c) {
    const auto idx = channel_indices(d, c);
    for (std::size_t k = 0; k < idx.size() / 2; ++k) in_mask[static_cast<std::size_t>(idx[k])] = 1;
  }
  Eigen::VectorXd mu_mask = Eigen::VectorXd::Zero(C), count = Eigen::VectorXd::Zero(C);
  for (Index i = 0; i < n; ++i)
    if (in_mask[static_cast<std::size_t>(i)]) {
      mu_mask[channel_of(d, i)] += s.p.x[i];
      count[channel_of(d, i)] += 1;
    }
  mu_mask = mu_mask.cwiseQuotient(count);
  {
    const auto f = [&s](const auto& muv) {
      using S = typename std::decay_t<decltype(muv)>::Scalar;
      return var_of<S>(s.p, cast_to<S>(s.p.x), muv);
    };
    const Eigen::VectorXd numeric = check::jacobian(Oracle::complex_step, f, mu_mask).diagonal();
    Eigen::VectorXd analytic = Eigen::VectorXd::Zero(C);
    for (Index i = 0; i < n; ++i) analytic[channel_of(d, i)] += -2.0 / M * (s.p.x[i] - mu_mask[channel_of(d, i)]);
    ResultRow row = oracle_row({"bn.dvar_dmu", test, "complex_step", "float64", "property", shape, ""},
                               Oracle::complex_step, analytic, numeric, {C});
    std::ostringstream note;
    note << "μ the mean of half of the set σ² is taken over (a mask): ∂σ²/∂μ = −(2/M)Σ(xⱼ − μ) is not 0 (max |∂σ²/∂μ| = "
         << numeric.cwiseAbs().maxCoeff() << ")";
    row.note = note.str();
    row.passed = row.passed && numeric.cwiseAbs().maxCoeff() > 1e3 * row.atol;
    rows.push_back(row);
  }
  // 3. With the mask, writing 0 for ∂σ²/∂μ drops a path: the dx so assembled misses the gradient.
  {
    const auto masked_loss = [&s, &in_mask, n, C, M, eps](const auto& xv) {
      using S = typename std::decay_t<decltype(xv)>::Scalar;
      using std::sqrt;
      Vec<S> mu = Vec<S>::Constant(C, S(0)), cnt = Vec<S>::Constant(C, S(0)), var = Vec<S>::Constant(C, S(0));
      for (Index i = 0; i < n; ++i) {
        if (in_mask[static_cast<std::size_t>(i)]) {
          mu[channel_of(s.p.d, i)] += xv[i];
          cnt[channel_of(s.p.d, i)] += S(1);
        }
      }
      for (Index c = 0; c < C; ++c) mu[c] /= cnt[c];
      for (Index i = 0; i < n; ++i) {
        const Index c = channel_of(s.p.d, i);
        var[c] += (xv[i] - mu[c]) * (xv[i] - mu[c]) / S(M);
      }
      Vec<S> out(1);
      out[0] = S(0);
      for (Index i = 0; i < n; ++i) {
        const Index c = channel_of(s.p.d, i);
        out[0] += S(s.p.w[i]) * (S(s.p.gamma[c]) * (xv[i] - mu[c]) / sqrt(var[c] + S(eps)) + S(s.p.beta[c]));
      }
      return out;
    };
    const Eigen::VectorXd numeric = check::jacobian(Oracle::complex_step, masked_loss, as_f64(s.p.x)).row(0).transpose();
    // The masked graph's backward with ∂σ²/∂μ replaced by 0, as the line under judgement does.
    Eigen::VectorXd var = Eigen::VectorXd::Zero(C), dl_dvar = Eigen::VectorXd::Zero(C), sum_g = Eigen::VectorXd::Zero(C);
    for (Index i = 0; i < n; ++i) var[channel_of(d, i)] += std::pow(s.p.x[i] - mu_mask[channel_of(d, i)], 2) / M;
    for (Index i = 0; i < n; ++i) {
      const Index c = channel_of(d, i);
      const double g = s.p.gamma[c] * s.p.w[i];
      dl_dvar[c] += -0.5 * std::pow(var[c] + eps, -1.5) * g * (s.p.x[i] - mu_mask[c]);
      sum_g[c] += g;
    }
    Eigen::VectorXd dx(n);
    for (Index i = 0; i < n; ++i) {
      const Index c = channel_of(d, i);
      const double r = 1.0 / std::sqrt(var[c] + eps);
      const double dl_dmu = -r * sum_g[c] + dl_dvar[c] * 0.0;  // grad_var * (-2.0 * 0.0)
      const double dmu_dx = in_mask[static_cast<std::size_t>(i)] ? 1.0 / count[c] : 0.0;
      dx[i] = s.p.gamma[c] * s.p.w[i] * r + dl_dvar[c] * 2.0 * (s.p.x[i] - mu_mask[c]) / M + dl_dmu * dmu_dx;
    }
    ResultRow row = oracle_row({"bn.dvar_dmu", test, "complex_step", "float64", "pitfall", shape, ""},
                               Oracle::complex_step, dx, numeric, {n}, dx_entry_scale(s.p, s.pd->fwd.cache));
    std::ostringstream note;
    note << "with the mask, dx assembled with ∂σ²/∂μ written as 0 misses the complex-step gradient: max error "
         << row.max_abs_err << " (passes when the check catches it, the error over 100× its allowance)";
    row.note = note.str();
    row.passed = !row.passed && row.max_abs_err > 100 * (row.atol + row.rtol * numeric.cwiseAbs().maxCoeff());
    rows.push_back(row);
  }
  return rows;
}

std::vector<ResultRow> check_dvar_dx(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : term_shapes()) {
    const TermSetup s = term_setup(shape);
    const auto f = [&s](const auto& xv) {  // μ held fixed: the partial
      using S = typename std::decay_t<decltype(xv)>::Scalar;
      return var_of<S>(s.p, from_vec(s.p.shape, xv), cast_vec<S>(s.mu));
    };
    const Index n = s.p.x.size();
    jacobian_rows(rows, {"bn.dvar_dx", test, "", "", "oracle", shape, "Jacobian of σ²(x, μ) in x with μ fixed"}, f,
                  as_f64(s.p.x),
                  {{"float64", channel_block(s.p.d, n, [&](Index i) { return s.td.dvar_dx[i]; })},
                   {"float32", channel_block(s.p.d, n, [&](Index i) { return double(s.tf.dvar_dx[i]); })}},
                  // 2(xᵢ − μ)/M cancels when xᵢ ≈ μ: its terms are 2|xᵢ|/M and 2|μ|/M.
                  [&s, n] {
                    double m = 0;
                    for (Index i = 0; i < n; ++i)
                      m = std::max(m, 2 * (std::abs(s.p.x[i]) + std::abs(s.mu[channel_of(s.p.d, i)])) /
                                          static_cast<double>(s.p.d.M()));
                    return m;
                  }());
  }
  return rows;
}

std::vector<ResultRow> check_dmu_dx(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : term_shapes()) {
    const TermSetup s = term_setup(shape);
    const auto f = [&s](const auto& xv) { return mean_of(s.p, from_vec(s.p.shape, xv)); };
    const Index n = s.p.x.size();
    const ops::NCL& d = s.p.d;
    jacobian_rows(rows, {"bn.dmu_dx", test, "", "", "oracle", shape, "Jacobian of the batch mean μ(x)"}, f,
                  as_f64(s.p.x),
                  {{"float64", channel_block(d, n, [&](Index i) { return s.td.dmu_dx[channel_of(d, i)]; })},
                   {"float32", channel_block(d, n, [&](Index i) { return double(s.tf.dmu_dx[channel_of(d, i)]); })}},
                  -1);
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Staged = fused, and the properties that follow from the math.

// The magnitudes of the three terms of the fused formula at each element,
// |γ|/√(σ²+ε) · (|dyᵢ| + |mean dy| + |x̂ᵢ|·|mean dy x̂|): the natural size of dxᵢ before cancellation.
Eigen::VectorXd dx_term_magnitudes(const Problem& p, const ops::BatchNormCache<double>& cache, const TensorD& dy) {
  const ops::NCL& d = p.d;
  const double M = static_cast<double>(d.M());
  Eigen::VectorXd mean_dy = Eigen::VectorXd::Zero(d.C), mean_dy_xh = mean_dy;
  for (Index i = 0; i < dy.size(); ++i) {
    const Index c = channel_of(d, i);
    mean_dy[c] += dy[i] / M;
    mean_dy_xh[c] += dy[i] * (p.x[i] - cache.mean[c]) * cache.invstd[c] / M;
  }
  Eigen::VectorXd t(dy.size());
  for (Index i = 0; i < dy.size(); ++i) {
    const Index c = channel_of(d, i);
    const double xh = (p.x[i] - cache.mean[c]) * cache.invstd[c];
    t[i] = std::abs(p.gamma[c]) * cache.invstd[c] *
           (std::abs(dy[i]) + std::abs(mean_dy[c]) + std::abs(xh * mean_dy_xh[c]));
  }
  return t;
}

// Fused against staged dx on `shapes`, float64 and float32 fused against float64 staged.
std::vector<ResultRow> staged_equals_fused(const std::string& test, const std::vector<Shape>& shapes,
                                           const std::string& what) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : shapes) {
    const Problem p = make_problem(shape, seed_of(shape) + 2);
    const Prepared<double> pd(p, true);
    const Prepared<float> pf(p, true);
    const Eigen::VectorXd ref = as_f64(run_backward(pd, p.w, Backward::staged).dx);
    const Eigen::VectorXd fd = as_f64(run_backward(pd, p.w, Backward::fused).dx);
    const Eigen::VectorXd ff = as_f64(run_backward(pf, p.w.cast<float>(), Backward::fused).dx);
    const double scale = dx_term_magnitudes(p, pd.fwd.cache, p.w).maxCoeff();
    // Both sides are exact up to rounding: the policy of the exact oracles applies.
    rows.push_back(oracle_row({"bn.dx_fused", test, "staged_f64", "float64", "agreement", shape,
                               "fused dx against staged dx, both float64" + what},
                              Oracle::complex_step, fd, ref, {p.x.size()}, scale));
    rows.push_back(oracle_row({"bn.dx_fused", test, "staged_f64", "float32", "agreement", shape,
                               "fused dx in float32 against staged dx in float64" + what},
                              Oracle::complex_step, ff, ref, {p.x.size()}, scale));
  }
  return rows;
}

std::vector<ResultRow> check_staged_equals_fused(const std::string& test) {
  std::vector<Shape> shapes = jacobian_shapes();
  shapes.insert(shapes.end(), projection_shapes().begin(), projection_shapes().end());
  return staged_equals_fused(test, shapes, "");
}

// The benchmark shapes: the fast kernels are checked where they are timed.
const std::vector<Shape>& benchmark_shapes() {
  static const std::vector<Shape> s = {{32, 64, 56, 56}, {64, 256, 14, 14}, {8, 32, 128, 128}};
  return s;
}

// Shapes for the identities: one small, one of rank 4, one larger.
const std::vector<Shape>& identity_shapes() {
  static const std::vector<Shape> s = {{4, 3}, {2, 3, 3, 2}, {8, 4, 16, 16}};
  return s;
}

// Per channel Σᵢ dxᵢ = 0 exactly (y does not change when x shifts by a constant), and
// Σᵢ dxᵢ x̂ᵢ = γ ε (σ²+ε)^(−3/2) Σᵢ dyᵢ x̂ᵢ (scaling x about μ changes x̂ only through ε).
// formula = bn.dx or bn.dx_fused.
std::vector<ResultRow> check_dx_properties(const std::string& formula, const std::string& test, Backward b) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : identity_shapes()) {
    const Problem p = make_problem(shape, seed_of(shape) + 3);
    const Prepared<double> ref(p, true);  // float64 statistics for x̂ and the prediction
    const ops::BatchNormCache<double>& rc = ref.fwd.cache;
    const Eigen::VectorXd terms = dx_term_magnitudes(p, rc, p.w);
    const ops::NCL& d = p.d;
    // The predicted moment, in long double from the float64 statistics.
    std::vector<long double> sum_dy_xh(static_cast<std::size_t>(d.C), 0);
    for (Index i = 0; i < p.x.size(); ++i) {
      const Index c = channel_of(d, i);
      sum_dy_xh[static_cast<std::size_t>(c)] += static_cast<long double>(p.w[i]) * (p.x[i] - rc.mean[c]) * rc.invstd[c];
    }
    Eigen::VectorXd predicted(d.C);
    for (Index c = 0; c < d.C; ++c) {
      const long double is = rc.invstd[c];
      predicted[c] = static_cast<double>(p.gamma[c] * p.cfg.eps * is * is * is * sum_dy_xh[static_cast<std::size_t>(c)]);
    }
    const auto one = [&](auto tag) {
      using T = decltype(tag);
      const Prepared<T> pr(p, true);
      const Tensor<T> dx = run_backward(pr, p.w.cast<T>(), b).dx;
      const auto xhat_at = [&](Index i) {
        const Index c = channel_of(d, i);
        return (p.x[i] - rc.mean[c]) * rc.invstd[c];
      };
      const SetMoments sm = set_moments(d.C, dx, terms, [&](Index i) { return channel_of(d, i); }, xhat_at);
      const std::string dt = dtype_name<T>();
      rows.push_back(oracle_row({formula, test, "identity", dt, "property", shape,
                                 std::string("per channel Σᵢ dxᵢ = 0 (") + name(b) + " backward)"},
                                Oracle::complex_step, sm.sum, Eigen::VectorXd::Zero(d.C), {d.C}, sm.sum_scale.maxCoeff()));
      rows.push_back(oracle_row({formula, test, "identity", dt, "property", shape,
                                 std::string("per channel Σᵢ dxᵢ x̂ᵢ = γ ε (σ²+ε)^(−3/2) Σᵢ dyᵢ x̂ᵢ (") + name(b) +
                                     " backward)"},
                                Oracle::complex_step, sm.moment, predicted, {d.C}, sm.moment_scale.maxCoeff()));
    };
    one(double{});
    one(float{});
  }
  return rows;
}

// Batch statistics recomputed in long double, independently of the op.
struct RefStats {
  std::vector<long double> mean, var;  // per channel; var is biased
};

RefStats ref_stats(const Problem& p) {
  const ops::NCL& d = p.d;
  RefStats r{std::vector<long double>(static_cast<std::size_t>(d.C), 0), {}};
  r.var = r.mean;
  for (Index i = 0; i < p.x.size(); ++i) r.mean[static_cast<std::size_t>(channel_of(d, i))] += p.x[i];
  for (auto& v : r.mean) v /= static_cast<long double>(d.M());
  for (Index i = 0; i < p.x.size(); ++i) {
    const auto c = static_cast<std::size_t>(channel_of(d, i));
    r.var[c] += (p.x[i] - r.mean[c]) * (p.x[i] - r.mean[c]);
  }
  for (auto& v : r.var) v /= static_cast<long double>(d.M());
  return r;
}

// dβ = Σdy and dγ = Σ dy x̂ (which = 1 or 0) of both backward passes in both dtypes, against a
// long-double recomputation.
std::vector<ResultRow> check_param_identities(const std::string& formula, const std::string& test, int which,
                                              const std::vector<Shape>& shapes) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : shapes) {
    const Problem p = make_problem(shape, seed_of(shape) + 4);
    const ops::NCL& d = p.d;
    const RefStats st = ref_stats(p);
    std::vector<long double> ref(static_cast<std::size_t>(d.C), 0), mag = ref;
    for (Index i = 0; i < p.x.size(); ++i) {
      const auto c = static_cast<std::size_t>(channel_of(d, i));
      const long double term =
          which == 0 ? p.w[i] * (p.x[i] - st.mean[c]) / std::sqrt(st.var[c] + p.cfg.eps) : p.w[i];
      ref[c] += term;
      mag[c] += std::abs(term);
    }
    Eigen::VectorXd refv(d.C);
    double scale = 0;
    for (Index c = 0; c < d.C; ++c) {
      refv[c] = static_cast<double>(ref[static_cast<std::size_t>(c)]);
      scale = std::max(scale, static_cast<double>(mag[static_cast<std::size_t>(c)]));
    }
    const auto one = [&](auto tag, Backward b) {
      using T = decltype(tag);
      const Prepared<T> pr(p, true);
      const auto g = run_backward(pr, p.w.cast<T>(), b);
      rows.push_back(oracle_row({formula, test, "reference", dtype_name<T>(), "property", shape,
                                 std::string(which == 0 ? "dγ = Σ dy x̂" : "dβ = Σ dy") +
                                     " against a long-double recomputation (" + name(b) + " backward)"},
                                Oracle::complex_step, as_f64(which == 0 ? g.dgamma : g.dbeta), refv, {d.C}, scale));
    };
    for (Backward b : {Backward::staged, Backward::fused}) {
      one(double{}, b);
      one(float{}, b);
    }
  }
  return rows;
}

// The forward pass, training and eval, float64 and float32, against y recomputed in long double.
std::vector<ResultRow> check_forward(const std::string& test, const std::vector<Shape>& shapes) {
  std::vector<ResultRow> rows;
  for (const Shape& shape : shapes) {
    const Problem p = make_problem(shape, seed_of(shape) + 5);
    const RefStats st = ref_stats(p);
    for (bool training : {true, false}) {
      Eigen::VectorXd ref(p.x.size());
      double scale = 0;  // y = γ x̂ + β: its terms are |γ x̂| and |β|
      for (Index i = 0; i < p.x.size(); ++i) {
        const Index c = channel_of(p.d, i);
        const auto uc = static_cast<std::size_t>(c);
        const long double mu = training ? st.mean[uc] : static_cast<long double>(p.running.mean[c]);
        const long double var = training ? st.var[uc] : static_cast<long double>(p.running.var[c]);
        const long double xh = (p.x[i] - mu) / std::sqrt(var + p.cfg.eps);
        ref[i] = static_cast<double>(p.gamma[c] * xh + p.beta[c]);
        scale = std::max(scale, static_cast<double>(std::abs(p.gamma[c] * xh) + std::abs(p.beta[c])));
      }
      const auto one = [&](auto tag) {
        using T = decltype(tag);
        const Prepared<T> pr(p, training);
        rows.push_back(oracle_row({"bn.forward", test, "reference", dtype_name<T>(), "reference", shape,
                                   std::string(training ? "training" : "eval") +
                                       " forward y against a long-double recomputation"},
                                  Oracle::complex_step, as_f64(pr.fwd.y), ref, {p.x.size()}, scale));
      };
      one(double{});
      one(float{});
    }
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Running statistics against PyTorch's update rule recomputed in long double.

// Three training batches with momentum 0.1 and with momentum = none (cumulative average), in
// float64 and float32, against the update rule recomputed in long double from exact statistics.
std::vector<ResultRow> check_running_stats(const std::string& test, const Shape& shape) {
  std::vector<ResultRow> rows;
  const Index C = shape[1];
  for (const std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    BatchNormConfig cfg;
    cfg.momentum = momentum;
    auto run64 = BatchNormRunningStats<double>::fresh(C);
    auto run32 = BatchNormRunningStats<float>::fresh(C);
    std::vector<long double> rm(static_cast<std::size_t>(C), 0.0L), rv(static_cast<std::size_t>(C), 1.0L);
    for (int t = 1; t <= 3; ++t) {
      const Problem p = make_problem(shape, 1000 + static_cast<std::uint64_t>(t));
      ops::batchnorm_forward_train<double>(p.x, &p.gamma, &p.beta, &run64, cfg);
      const TensorF x32 = p.x.cast<float>(), g32 = p.gamma.cast<float>(), b32 = p.beta.cast<float>();
      ops::batchnorm_forward_train<float>(x32, &g32, &b32, &run32, cfg);
      const RefStats st = ref_stats(p);
      const long double wgt = momentum ? static_cast<long double>(*momentum) : 1.0L / t;
      const long double M = static_cast<long double>(p.d.M());
      for (std::size_t c = 0; c < rm.size(); ++c) {
        rm[c] = (1 - wgt) * rm[c] + wgt * st.mean[c];
        rv[c] = (1 - wgt) * rv[c] + wgt * st.var[c] * M / (M - 1);  // unbiased
      }
    }
    // Compared: the C running means, then the C running variances.
    Eigen::VectorXd want(2 * C), got64(2 * C), got32(2 * C);
    for (Index c = 0; c < C; ++c) {
      want[c] = static_cast<double>(rm[static_cast<std::size_t>(c)]);
      want[C + c] = static_cast<double>(rv[static_cast<std::size_t>(c)]);
      got64[c] = run64.mean[c];
      got64[C + c] = run64.var[c];
      got32[c] = run32.mean[c];
      got32[C + c] = run32.var[c];
    }
    // Scale: the running values are O(|μ| + σ²); no cancellation in a convex combination.
    const std::string note = std::string("running mean (first C) and unbiased running var (last C) after 3 batches, ") +
                             "momentum " + (momentum ? "0.1" : "none (cumulative average)");
    rows.push_back(oracle_row({"bn.running_stats", test, "reference", "float64", "reference", shape, note},
                              Oracle::complex_step, got64, want, {2, C}));
    rows.push_back(oracle_row({"bn.running_stats", test, "reference", "float32", "reference", shape, note},
                              Oracle::complex_step, got32, want, {2, C}));
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Pitfalls, as exact teaching checks.

// With L = Σy (w = 1) the true dx is exactly 0: Σ_j x̂_j = 0 identically.
std::vector<ResultRow> check_uniform_upstream(const std::string& test) {
  std::vector<ResultRow> rows;
  const Shape shape{4, 3, 5};
  const Problem p = make_problem(shape, 77);
  const Prepared<double> pd(p, true);
  const TensorD ones(shape, 1.0);
  const Eigen::VectorXd dx = as_f64(ops::batchnorm_backward_staged(ones, pd.x, &pd.gamma, pd.fwd.cache).dx);
  // Scale: the size of each of the three terms that cancel, |γ|·invstd·max|dy|.
  double term = 0;
  for (Index c = 0; c < p.d.C; ++c) term = std::max(term, std::abs(p.gamma[c]) * pd.fwd.cache.invstd[c]);
  const Index n = p.x.size();
  rows.push_back(oracle_row({"bn.dx", test, "exact_zero", "float64", "pitfall", shape,
                             "L = Σy (w = 1): the analytic dx equals the exact value 0 up to rounding"},
                            Oracle::complex_step, dx, Eigen::VectorXd::Zero(n), {n}, term));

  // Central differences in float32 return rounding noise of size ~ u32·Σ|yᵢ|/h instead of 0.
  const Tensor<float> xf = p.x.cast<float>(), gf = p.gamma.cast<float>(), bf = p.beta.cast<float>();
  const auto loss = [&](const Tensor<float>& x) {
    const Tensor<float> y = ops::batchnorm_forward_train<float>(x, &gf, &bf, nullptr, p.cfg).y;
    float s = 0;
    for (Index i = 0; i < y.size(); ++i) s += y[i];
    return s;
  };
  double sum_abs_y = 0;
  {
    const Tensor<float> y = ops::batchnorm_forward_train<float>(xf, &gf, &bf, nullptr, p.cfg).y;
    for (Index i = 0; i < y.size(); ++i) sum_abs_y += std::abs(double(y[i]));
  }
  const double u32 = std::numeric_limits<float>::epsilon() / 2;
  Eigen::VectorXd fd(n);
  double h_min = std::numeric_limits<double>::infinity();
  for (Index j = 0; j < n; ++j) {
    const float h = std::cbrt(std::numeric_limits<float>::epsilon()) * std::max(1.0f, std::abs(xf[j]));
    Tensor<float> xp = xf, xm = xf;
    xp[j] += h;
    xm[j] -= h;
    const float hh = xp[j] - xf[j];  // the step actually taken
    fd[j] = (double(loss(xp)) - double(loss(xm))) / (2.0 * hh);
    h_min = std::min(h_min, double(hh));
  }
  const double noise = fd.cwiseAbs().maxCoeff();
  const double predicted = u32 * sum_abs_y / h_min;
  ResultRow row{"bn.dx", test, "central_f32", "float32", "pitfall", i64(shape)};
  row.max_abs_err = noise;
  row.max_rel_err = noise / std::max(dx.cwiseAbs().maxCoeff(), std::numeric_limits<double>::min());
  row.atol = predicted;
  row.rtol = 0;
  Eigen::Index worst = 0;
  fd.cwiseAbs().maxCoeff(&worst);
  row.worst_index = check::unravel(worst, i64(shape));
  row.analytic = dx[worst];
  row.numeric = fd[worst];
  std::ostringstream note;
  note << "float32 central differences of Σy return noise instead of the true 0: max |fd| = " << noise
       << ", predicted u32·Σ|y|/h = " << predicted << ", " << row.max_rel_err
       << "x the float64 analytic |dx| (passes when the noise is within 100x of the prediction "
          "and over 1000x the analytic value)";
  row.note = note.str();
  row.passed = noise > 1e3 * dx.cwiseAbs().maxCoeff() && noise < 100 * predicted && noise > predicted / 100;
  rows.push_back(row);
  return rows;
}

// The often-quoted Σᵢ dxᵢ x̂ᵢ = 0 is exact only at ε = 0: for ε > 0 the moment is
// γ ε (σ²+ε)^(−3/2) Σᵢ dyᵢ x̂ᵢ, proportional to ε while ε ≪ σ². A test asserting the zero would
// fail by far more than rounding at the default ε.
std::vector<ResultRow> check_xhat_moment_pitfall(const std::string& test) {
  std::vector<ResultRow> rows;
  const Shape shape{8, 3, 5};
  Problem p = make_problem(shape, 123);
  std::vector<double> per_eps;  // max_c |Σ dx x̂| / ε
  for (double eps : {1e-1, 1e-3, 1e-5}) {
    p.cfg.eps = eps;
    const Prepared<double> pd(p, true);
    const Eigen::VectorXd dx = as_f64(run_backward(pd, p.w, Backward::staged).dx);
    const Eigen::VectorXd terms = dx_term_magnitudes(p, pd.fwd.cache, p.w);
    Eigen::VectorXd moment = Eigen::VectorXd::Zero(p.d.C), mag = moment;
    for (Index i = 0; i < dx.size(); ++i) {
      const Index c = channel_of(p.d, i);
      const double xh = (p.x[i] - pd.fwd.cache.mean[c]) * pd.fwd.cache.invstd[c];
      moment[c] += dx[i] * xh;
      mag[c] += terms[i] * std::abs(xh);
    }
    // The naive check "Σ dx x̂ = 0 within float64 rounding", as a test would write it.
    rows.push_back(naive_moment_zero_row("bn.dx", test, shape, eps, moment, mag));
    per_eps.push_back(rows.back().max_abs_err / eps);
  }
  rows.push_back(moment_linear_in_eps_row("bn.dx", test, shape, per_eps));
  return rows;
}

// Central differences evaluated in float32 need a float32 step. The float64-optimal
// h = ε64^(1/3)·max(1,|x|) ≈ 6e-6 makes the rounding error u32·|L|/h of the float32 loss
// dominate; h = ε32^(1/3)·max(1,|x|) ≈ 5e-3 balances it with the truncation error.
std::vector<ResultRow> check_float32_step_pitfall(const std::string& test) {
  std::vector<ResultRow> rows;
  const Shape shape{4, 3, 5};
  const Problem p = make_problem(shape, 321);
  const Prepared<double> pd(p, true);
  const Eigen::VectorXd dx = as_f64(run_backward(pd, p.w, Backward::staged).dx);
  const double scale = dx_term_magnitudes(p, pd.fwd.cache, p.w).maxCoeff();
  const TensorF xf = p.x.cast<float>(), gf = p.gamma.cast<float>(), bf = p.beta.cast<float>(), wf = p.w.cast<float>();
  const auto loss = [&](const TensorF& x) {  // L = <w, y> evaluated in float32, as a float32 model would
    const TensorF y = ops::batchnorm_forward_train<float>(x, &gf, &bf, nullptr, p.cfg).y;
    float s = 0;
    for (Index i = 0; i < y.size(); ++i) s += wf[i] * y[i];
    return s;
  };
  const auto fd_error = [&](double base) {
    Eigen::VectorXd fd(dx.size());
    for (Index j = 0; j < dx.size(); ++j) {
      const float h = static_cast<float>(base * std::max(1.0, std::abs(p.x[j])));
      TensorF xp = xf, xm = xf;
      xp[j] += h;
      xm[j] -= h;
      fd[j] = (double(loss(xp)) - double(loss(xm))) / double(xp[j] - xm[j]);  // the step actually taken
    }
    return (fd - dx).cwiseAbs().maxCoeff();
  };
  const double base64 = std::cbrt(std::numeric_limits<double>::epsilon());
  const double base32 = std::cbrt(static_cast<double>(std::numeric_limits<float>::epsilon()));
  const double err64 = fd_error(base64), err32 = fd_error(base32);
  // Error model at the float32 step: rounding and truncation both near ε32^(2/3) ≈ 2.4e-5 relative
  // (times O(10) for the size of L and the curvature of x̂); allow 1e-3 of the term scale.
  ResultRow good{"bn.dx", test, "central_f32", "float32", "pitfall", i64(shape)};
  good.max_abs_err = err32;
  good.max_rel_err = err32 / scale;
  good.atol = 1e-3 * scale;
  good.passed = err32 <= good.atol;
  std::ostringstream n1;
  n1 << "float32 central differences with h = ε32^(1/3)·max(1,|x|) = " << base32 << "·max(1,|x|): max error " << err32
     << " against the float64 analytic dx (term scale " << scale << ")";
  good.note = n1.str();
  rows.push_back(good);
  ResultRow bad{"bn.dx", test, "central_f32", "float32", "pitfall", i64(shape)};
  bad.max_abs_err = err64;
  bad.max_rel_err = err64 / scale;
  bad.atol = 30 * err32;
  bad.passed = err64 > 30 * err32;  // shown when the float64 step is over 30x worse
  std::ostringstream n2;
  n2 << "the same with the float64 step h = ε64^(1/3)·max(1,|x|) = " << base64 << "·max(1,|x|): max error " << err64
     << ", " << err64 / err32 << "x the error at the float32 step (this row passes when it is over 30x worse)";
  bad.note = n2.str();
  rows.push_back(bad);
  return rows;
}

// L = Σy²: dL/dxᵢ = 2γ²ε(xᵢ − μ)/(σ² + ε)², which vanishes with ε.
std::vector<ResultRow> check_sum_of_squares_loss(const std::string& test) {
  std::vector<ResultRow> rows;
  const Shape shape{6, 2, 4};
  Problem p = make_problem(shape, 99);
  std::vector<double> ratio;  // max|dx| / ε for each ε
  for (double eps : {1e-3, 1e-5, 1e-7}) {
    p.cfg.eps = eps;
    const Prepared<double> pd(p, true);
    TensorD dy(shape);
    for (Index i = 0; i < dy.size(); ++i) dy[i] = 2 * pd.fwd.y[i];  // ∂(Σy²)/∂y
    const Eigen::VectorXd dx = as_f64(ops::batchnorm_backward_staged(dy, pd.x, &pd.gamma, pd.fwd.cache).dx);
    Eigen::VectorXd closed(dx.size());
    double term = 0;
    for (Index i = 0; i < dx.size(); ++i) {
      const Index c = channel_of(p.d, i);
      const double v = pd.fwd.cache.var[c], g = p.gamma[c];
      closed[i] = 2 * g * g * eps * (p.x[i] - pd.fwd.cache.mean[c]) / ((v + eps) * (v + eps));
      term = std::max(term, std::abs(dy[i] * g) * pd.fwd.cache.invstd[c]);
    }
    std::ostringstream note;
    note << "L = Σy², ε = " << eps << ": staged dx against the closed form 2γ²ε(x−μ)/(σ²+ε)²; max |dx| = "
         << dx.cwiseAbs().maxCoeff();
    // dx is a difference of terms of size |dy γ|/√(σ²+ε): the absolute tolerance is scaled to them.
    rows.push_back(oracle_row({"bn.dx", test, "closed_form", "float64", "pitfall", shape, note.str()},
                              Oracle::complex_step, dx, closed, {dx.size()}, term));
    ratio.push_back(dx.cwiseAbs().maxCoeff() / eps);
  }
  // max|dx| ∝ ε while ε ≪ σ²: the ratios agree to well under 1%.
  const double spread = (*std::max_element(ratio.begin(), ratio.end()) - *std::min_element(ratio.begin(), ratio.end())) /
                        *std::max_element(ratio.begin(), ratio.end());
  ResultRow row{"bn.dx", test, "closed_form", "float64", "pitfall", i64(shape)};
  row.max_rel_err = spread;
  row.rtol = 0.01;
  row.passed = spread < 0.01;
  std::ostringstream note;
  note << "max |dx| / ε for ε = 1e-3, 1e-5, 1e-7: " << ratio[0] << ", " << ratio[1] << ", " << ratio[2]
       << " (relative spread " << spread << "): the gradient of Σy² vanishes linearly as ε → 0";
  row.note = note.str();
  rows.push_back(row);
  return rows;
}

// float32 with a large mean, |μ| ≫ σ. Rounded to float32, μ is off by up to 2⁻²⁴|μ|, and
// x − μ carries that into every x̂: with channel means of 1e4 and σ = 1, y was off by 4.8e-4 and
// dx by 3.2e-5 before the cache kept the residual μ − float32(μ) (issue 10, defect 6). The input
// is rounded to float32 first, so the float64 reference sees the same values.
Problem large_mean_problem(double mean) {
  const Shape shape{8, 3, 64};
  Problem p = make_problem(shape, 2026);
  const double means[] = {mean, -mean, 0.5 * mean};
  for (Index c = 0; c < p.d.C; ++c) set_moments(p.x, channel_indices(p.d, c), means[c], 1.0);
  p.x = p.x.cast<float>().cast<double>();
  return p;
}

// Float32 rounding allowances of the large-mean rows, in units of u32 = 2⁻²⁴ of the scale of the
// compared values: y is rounded once (½ ulp), and x − mean, the product and the shift by β add a
// rounding each, so a few u32·max|y|; 8 u32 leaves room and is 60x below the error the float32
// mean gave at 1e4. dx (fused): its three terms are each rounded and the sums carry about √16
// float32 roundings per flush (kernels::Sums2), 16 u32 of its term scale. The staged dx sums in
// float32 sequentially over M = 512 values, about √M = 22 roundings for random rounding: 32 u32.
// "y in float32 against float64 ..., channel means ..." for the rows of large_mean_row().
std::string large_mean_what(const std::string& what, double mean) {
  std::ostringstream s;
  s << what << " in float32 against float64 on the same (float32) input, channel means " << mean << ", " << -mean
    << ", " << 0.5 * mean << " and σ = 1";
  return s.str();
}

std::vector<ResultRow> check_large_mean_forward(const std::string& test) {
  std::vector<ResultRow> rows;
  for (double mean : {1e4, 1e6}) {
    const Problem p = large_mean_problem(mean);
    const Prepared<double> pd(p, true);
    const Prepared<float> pf(p, true);
    const Eigen::VectorXd want = as_f64(pd.fwd.y);
    rows.push_back(large_mean_row("bn.forward", test, p.shape, as_f64(pf.fwd.y), want, want.cwiseAbs().maxCoeff(), 8,
                                  large_mean_what("y", mean)));
  }
  return rows;
}

std::vector<ResultRow> check_large_mean_dx(const std::string& formula, const std::string& test, Backward b) {
  std::vector<ResultRow> rows;
  for (double mean : {1e4, 1e6}) {
    const Problem p = large_mean_problem(mean);
    const Prepared<double> pd(p, true);
    const Prepared<float> pf(p, true);
    const Eigen::VectorXd want = as_f64(run_backward(pd, p.w, Backward::staged).dx);
    const Eigen::VectorXd got = as_f64(run_backward(pf, p.w.cast<float>(), b).dx);
    const double scale = dx_term_magnitudes(p, pd.fwd.cache, p.w).maxCoeff();
    rows.push_back(large_mean_row(formula, test, p.shape, got, want, scale, b == Backward::fused ? 16 : 32,
                                  large_mean_what(std::string(name(b)) + " dx", mean)));
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// Negative controls.

std::vector<check::AblationRow> bn_ablation() {
  struct Term {
    const char* id;
    double ops::BatchNormTermScales::*scale;
  };
  const Term terms[] = {{"bn.dl_dxhat", &ops::BatchNormTermScales::dl_dxhat},
                        {"bn.dl_dvar", &ops::BatchNormTermScales::dl_dvar},
                        {"bn.dvar_dmu", &ops::BatchNormTermScales::dvar_dmu},
                        {"bn.dl_dmu", &ops::BatchNormTermScales::dl_dmu},
                        {"bn.dvar_dx", &ops::BatchNormTermScales::dvar_dx},
                        {"bn.dmu_dx", &ops::BatchNormTermScales::dmu_dx}};
  std::vector<check::AblationRow> out;
  const std::vector<Shape> shapes = {{4, 3}, {3, 2, 5}, {2, 3, 3, 2}};
  for (const Term& t : terms) {
    for (const char* change : {"drop", "flip"}) {
      check::AblationRow row{"bn", t.id, change};
      row.expected_caught = std::string(t.id) != "bn.dvar_dmu";
      double max_change = 0, ref_scale = 0;
      for (const Shape& shape : shapes) {
        const Problem p = make_problem(shape, seed_of(shape));
        const Prepared<double> pd(p, true);
        ops::BatchNormTermScales scales;
        scales.*(t.scale) = std::string(change) == "drop" ? 0.0 : -1.0;
        const Eigen::VectorXd dx =
            as_f64(ops::batchnorm_backward_staged(p.w, pd.x, &pd.gamma, pd.fwd.cache, scales).dx);
        const Eigen::VectorXd ref = as_f64(ops::batchnorm_backward_staged(p.w, pd.x, &pd.gamma, pd.fwd.cache).dx);
        // The oracle: complex-step gradient of L = <w, y>, under the float64 exact-oracle policy.
        const auto loss = [&p](const auto& xv) {
          using S = typename std::decay_t<decltype(xv)>::Scalar;
          const Vec<S> y = y_of_x(p, true)(xv);
          Vec<S> out(1);
          out[0] = (y.array() * to_vec(cast_to<S>(p.w)).array()).sum();
          return out;
        };
        const Eigen::VectorXd numeric = check::jacobian(Oracle::complex_step, loss, as_f64(p.x)).row(0).transpose();
        const auto cmp = check::compare(dx, numeric,
                                        check::tolerance_policy("float64", Oracle::complex_step,
                                                                numeric.cwiseAbs().maxCoeff()));
        row.caught = row.caught || !cmp.passed;
        row.max_abs_err = std::max(row.max_abs_err, cmp.max_abs_err);
        max_change = std::max(max_change, (dx - ref).cwiseAbs().maxCoeff());
        ref_scale = std::max(ref_scale, ref.cwiseAbs().maxCoeff());
      }
      row.max_rel_err = row.max_abs_err / ref_scale;
      // "Identical within rounding": a few units of float64 rounding of the largest dx.
      const double rounding = 8 * std::numeric_limits<double>::epsilon() * ref_scale;
      std::ostringstream note;
      note << "staged dx with the term " << (std::string(change) == "drop" ? "set to 0" : "sign-flipped")
           << ", against the complex-step gradient of L = <w, y> on shapes (4, 3), (3, 2, 5), (2, 3, 3, 2); "
           << "largest change of dx from the correct staged dx: " << max_change;
      row.note = note.str();
      row.passed = row.caught == row.expected_caught && (row.expected_caught || max_change <= rounding);
      out.push_back(row);
    }
  }
  return out;
}

// Negative controls also appear as result rows of the term they change.
std::vector<ResultRow> check_negative_controls(const std::string& formula, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const auto& a : bn_ablation()) {
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

}  // namespace

void register_batchnorm(Registry& r) {
  r.formulas.insert(r.formulas.end(),
                    {{"bn.forward", "bn", "Forward: x̂ = (x−μ)/√(σ²+ε), y = γx̂ + β (batch or running statistics)"},
                     {"bn.running_stats", "bn", "Running statistics: momentum update with the unbiased variance"},
                     {"bn.dl_dxhat", "bn", "∂L/∂x̂ᵢ = γ ∂L/∂yᵢ"},
                     {"bn.dl_dvar", "bn", "∂L/∂σ² = −½ (σ²+ε)^(−3/2) Σᵢ ∂L/∂x̂ᵢ (xᵢ−μ)"},
                     {"bn.dvar_dmu", "bn", "∂σ²/∂μ = −(2/M) Σᵢ (xᵢ−μ) = 0 at the batch mean"},
                     {"bn.dl_dmu", "bn", "∂L/∂μ = −(σ²+ε)^(−1/2) Σᵢ ∂L/∂x̂ᵢ + ∂L/∂σ² · ∂σ²/∂μ"},
                     {"bn.dvar_dx", "bn", "∂σ²/∂xᵢ = 2(xᵢ−μ)/M"},
                     {"bn.dmu_dx", "bn", "∂μ/∂xᵢ = 1/M"},
                     {"bn.dx", "bn", "∂L/∂xᵢ: assembly of the three paths (staged)"},
                     {"bn.dgamma", "bn", "∂L/∂γ = Σᵢ dyᵢ x̂ᵢ"},
                     {"bn.dbeta", "bn", "∂L/∂β = Σᵢ dyᵢ"},
                     {"bn.dx_fused", "bn", "dx = γ/(M√(σ²+ε)) · (M dy − Σdy − x̂ Σ dy x̂)"},
                     {"bn.eval_dx", "bn", "Eval mode: dx = dy γ / √(r_σ² + ε)"},
                     {"bn.eval_dgamma", "bn", "Eval mode: dγ = Σ dy x̂ with the running statistics"}});

  const auto add = [&r](const std::string& formula, const std::string& name,
                        std::function<std::vector<ResultRow>(const std::string&)> fn) {
    r.checks.push_back({formula, name, [fn, name] { return fn(name); }});
  };
  add("bn.forward", "bn/forward/matches_a_long_double_reference", [](const std::string& t) {
    std::vector<Shape> shapes = jacobian_shapes();
    shapes.insert(shapes.end(), projection_shapes().begin(), projection_shapes().end());
    return check_forward(t, shapes);
  });
  add("bn.forward", "bn/forward/matches_a_long_double_reference_at_benchmark_shapes",
      [](const std::string& t) { return check_forward(t, benchmark_shapes()); });
  add("bn.running_stats", "bn/running_stats/match_the_momentum_update_with_unbiased_variance",
      [](const std::string& t) { return check_running_stats(t, {6, 3, 4}); });
  add("bn.running_stats", "bn/running_stats/match_the_momentum_update_at_a_benchmark_shape",
      [](const std::string& t) { return check_running_stats(t, benchmark_shapes()[1]); });
  add("bn.dl_dxhat", "bn/terms/dl_dxhat_matches_oracles", check_dl_dxhat);
  add("bn.dl_dvar", "bn/terms/dl_dvar_matches_oracles", check_dl_dvar);
  add("bn.dvar_dmu", "bn/terms/dvar_dmu_is_zero_at_batch_mean", check_dvar_dmu);
  add("bn.dvar_dmu", "bn/terms/dvar_dmu_depends_on_the_graph_one_pass_and_masked_mean",
      check_dvar_dmu_depends_on_the_graph);
  add("bn.dl_dmu", "bn/terms/dl_dmu_matches_oracles", check_dl_dmu);
  add("bn.dvar_dx", "bn/terms/dvar_dx_matches_oracles", check_dvar_dx);
  add("bn.dmu_dx", "bn/terms/dmu_dx_matches_oracles", check_dmu_dx);
  add("bn.dx", "bn/dx/staged_dx_matches_oracles", [](const std::string& t) {
    return dx_against_oracles("bn.dx", t, Backward::staged, true);
  });
  add("bn.dx", "bn/dx/staged_dx_sum_is_zero_and_xhat_moment_is_the_eps_term", [](const std::string& t) {
    return check_dx_properties("bn.dx", t, Backward::staged);
  });
  add("bn.dx", "bn/pitfalls/uniform_upstream_gradient_gives_zero_dx", check_uniform_upstream);
  add("bn.dx", "bn/pitfalls/sum_of_squares_loss_gradient_vanishes_with_eps", check_sum_of_squares_loss);
  add("bn.dx", "bn/pitfalls/xhat_orthogonality_holds_only_as_eps_goes_to_zero", check_xhat_moment_pitfall);
  add("bn.dx", "bn/pitfalls/float32_central_differences_need_a_larger_step", check_float32_step_pitfall);
  add("bn.dx", "bn/pitfalls/float32_large_mean_staged_dx_keeps_the_mean_residual",
      [](const std::string& t) { return check_large_mean_dx("bn.dx", t, Backward::staged); });
  add("bn.forward", "bn/pitfalls/float32_large_mean_forward_keeps_the_mean_residual", check_large_mean_forward);
  add("bn.dx_fused", "bn/pitfalls/float32_large_mean_fused_dx_keeps_the_mean_residual",
      [](const std::string& t) { return check_large_mean_dx("bn.dx_fused", t, Backward::fused); });
  add("bn.dgamma", "bn/params/dgamma_matches_oracles",
      [](const std::string& t) { return param_against_oracles("bn.dgamma", t, 0, true); });
  add("bn.dgamma", "bn/params/dgamma_equals_sum_dy_xhat",
      [](const std::string& t) { return check_param_identities("bn.dgamma", t, 0, identity_shapes()); });
  add("bn.dgamma", "bn/params/dgamma_equals_sum_dy_xhat_at_benchmark_shapes",
      [](const std::string& t) { return check_param_identities("bn.dgamma", t, 0, benchmark_shapes()); });
  add("bn.dbeta", "bn/params/dbeta_matches_oracles",
      [](const std::string& t) { return param_against_oracles("bn.dbeta", t, 1, true); });
  add("bn.dbeta", "bn/params/dbeta_equals_sum_dy",
      [](const std::string& t) { return check_param_identities("bn.dbeta", t, 1, identity_shapes()); });
  add("bn.dbeta", "bn/params/dbeta_equals_sum_dy_at_benchmark_shapes",
      [](const std::string& t) { return check_param_identities("bn.dbeta", t, 1, benchmark_shapes()); });
  add("bn.dx_fused", "bn/dx_fused/fused_dx_matches_oracles", [](const std::string& t) {
    return dx_against_oracles("bn.dx_fused", t, Backward::fused, true);
  });
  add("bn.dx_fused", "bn/dx_fused/fused_agrees_with_staged", check_staged_equals_fused);
  add("bn.dx_fused", "bn/dx_fused/fused_float32_matches_staged_float64_at_benchmark_shapes",
      [](const std::string& t) { return staged_equals_fused(t, benchmark_shapes(), " (benchmark shape)"); });
  add("bn.dx_fused", "bn/dx_fused/fused_dx_sum_is_zero_and_xhat_moment_is_the_eps_term", [](const std::string& t) {
    return check_dx_properties("bn.dx_fused", t, Backward::fused);
  });
  add("bn.eval_dx", "bn/eval/staged_eval_dx_matches_oracles", [](const std::string& t) {
    return dx_against_oracles("bn.eval_dx", t, Backward::staged, false);
  });
  add("bn.eval_dx", "bn/eval/fused_eval_dx_matches_oracles", [](const std::string& t) {
    return dx_against_oracles("bn.eval_dx", t, Backward::fused, false);
  });
  add("bn.eval_dgamma", "bn/eval/eval_dgamma_matches_oracles",
      [](const std::string& t) { return param_against_oracles("bn.eval_dgamma", t, 0, false); });
  add("bn.dbeta", "bn/eval/eval_dbeta_matches_oracles",
      [](const std::string& t) { return param_against_oracles("bn.dbeta", t, 1, false); });
  for (const char* term : {"bn.dl_dxhat", "bn.dl_dvar", "bn.dvar_dmu", "bn.dl_dmu", "bn.dvar_dx", "bn.dmu_dx"}) {
    const std::string id = term;
    add(id, "bn/negative_controls/" + id.substr(3) + "_drop_and_flip",
        [id](const std::string& t) { return check_negative_controls(id, t); });
  }
  r.sweeps.push_back({"bn", [] {
    const Shape shape = jacobian_shapes()[1];
    const Problem p = make_problem(shape, seed_of(shape));
    const Prepared<double> pd(p, true);
    return sweep_of(y_of_x(p, true), p.x, p.w, as_f64(run_backward(pd, p.w, Backward::staged).dx));
  }});
  r.ablations.push_back({"bn", bn_ablation,
                         "Every term is caught except ∂σ²/∂μ: it is zero at the batch mean, so dropping or\n"
                         "flipping it changes dx only at the level of rounding. `grad_mean += grad_var * (-2.0 * 0.0)`\n"
                         "is not a bug; it is a term that happens to be zero."});
}

}  // namespace gradproof::catalog
