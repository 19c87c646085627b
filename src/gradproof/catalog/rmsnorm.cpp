// The RMS-normalization entries of the catalog: every rms.* formula and the checks that verify it.
// RMS norm is the member of the family without a mean: two paths from x to x̂ instead of three,
// one projection in the fused form, no Σdx = 0, and an ε-corrected moment of the same form as
// the members with a mean.
#include "gradproof/catalog/catalog.hpp"
#include "gradproof/catalog/support.hpp"
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/rmsnorm.hpp"

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using ops::NormSets;

// A case: the input shape and the number of trailing axes normalized over.
struct Case {
  Shape shape;
  Index axes = 1;
};

const std::vector<Case>& jacobian_cases() {
  static const std::vector<Case> c = {{{4, 6}, 1}, {{3, 2, 5}, 2}, {{2, 3, 2, 2}, 3}, {{2, 2}, 1},
                                      {{2, 3, 4}, 1}, {{2, 3}, 2},   {{4, 1}, 1}};
  return c;
}
const std::vector<Case>& projection_cases() {
  static const std::vector<Case> c = {{{16, 128}, 1}, {{4, 8, 32}, 2}, {{2, 4, 8, 8}, 3}};
  return c;
}
const std::vector<Case>& term_cases() {
  static const std::vector<Case> c = {{{4, 6}, 1}, {{3, 2, 5}, 2}, {{2, 3, 2, 2}, 3}};
  return c;
}
const std::vector<Case>& identity_cases() {
  static const std::vector<Case> c = {{{4, 6}, 1}, {{2, 3, 2, 2}, 3}, {{16, 128}, 1}};
  return c;
}

struct Problem {
  Shape shape, normalized;
  NormSets sets;
  std::optional<double> eps = 1e-5;
  TensorD x, gamma, w;
  ops::RMSNormConfig cfg() const { return {normalized, eps}; }
  double eps_value() const { return ops::rmsnorm_eps<double>(cfg()); }
};

std::uint64_t seed_of(const Case& c) {
  std::uint64_t h = 7809847782465536322ull;
  for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
  return (h ^ static_cast<std::uint64_t>(c.axes)) * 1099511628211ull;
}

Problem make_problem(const Case& c, std::uint64_t seed) {
  Problem p;
  p.shape = c.shape;
  p.normalized = Shape(c.shape.end() - c.axes, c.shape.end());
  p.sets = ops::norm::detail::layernorm_sets(c.shape, p.normalized, "rmsnorm");
  Rng rng(seed);
  // Rows with different means and spreads (RMS norm does not centre: a row's mean is part of
  // its root mean square); |mean|/sd ≤ 6 keeps every row's mean square of order one.
  // A row of one value is y = γ·x/√(x² + ε), which turns over within √ε of x = 0: the difference
  // oracles' steps assume features of size one, so such rows keep |x| ≥ 0.5.
  p.x = rng.normal_tensor(p.shape);
  if (p.sets.M == 1)
    for (Index i = 0; i < p.x.size(); ++i) p.x[i] = rng.signed_uniform(0.5, 2);
  for (Index r = 0; r < p.sets.R; ++r) {
    std::vector<Index> idx;
    for (Index i = 0; i < p.sets.M; ++i) idx.push_back(p.sets.offset(r) + i);
    const double mean = rng.uniform(-2, 3), sd = rng.uniform(0.5, 2);
    if (p.sets.M > 1) set_moments(p.x, idx, mean, sd);
  }
  p.gamma = TensorD(p.normalized);
  for (Index k = 0; k < p.gamma.size(); ++k) p.gamma[k] = rng.signed_uniform(0.5, 1.5);
  p.w = rng.normal_tensor(p.shape);
  return p;
}


Index row_of(const Problem& p, Index i) { return i / p.sets.M; }
Index col_of(const Problem& p, Index i) { return i % p.sets.M; }

std::string describe(const Problem& p) {
  std::ostringstream s;
  s << "normalized_shape " << to_string(p.normalized) << ", eps ";
  if (p.eps) s << *p.eps;
  else s << "None = " << p.eps_value();
  return s.str();
}

template <class S>
Tensor<S> cast_to(const TensorD& t) {
  return t.cast<S>();
}

template <class T>
struct Prepared {
  Tensor<T> x, gamma;
  ops::RMSNormForward<T> fwd;
  explicit Prepared(const Problem& p)
      : x(p.x.cast<T>()), gamma(p.gamma.cast<T>()), fwd(ops::rmsnorm_forward<T>(x, &gamma, p.cfg())) {}
};

enum class Backward { staged, fused };
const char* name(Backward b) { return b == Backward::staged ? "staged" : "fused"; }

template <class T>
ops::RMSNormGrads<T> run_backward(const Prepared<T>& pr, const Tensor<T>& dy, Backward b,
                                  const ops::RMSNormTermScales& scales = {},
                                  ops::RMSNormStagedTrace<T>* trace = nullptr) {
  return b == Backward::staged ? ops::rmsnorm_backward_staged(dy, pr.x, &pr.gamma, pr.fwd.cache, scales, trace)
                               : ops::rmsnorm_backward(dy, pr.x, &pr.gamma, pr.fwd.cache);
}

// ----------------------------------------------------------------------------------------------
// Tolerance scales: the magnitudes of the terms that cancel.

double xhat_at(const Problem& p, const ops::RMSNormCache<double>& c, Index i) { return p.x[i] * c.invrms[row_of(p, i)]; }

// ∂dxᵢ/∂dy_k = r (γᵢ δ_ik − x̂ᵢ x̂_k γ_k / M): terms of size r|γ| and r|γ| x̂²/M.
double dx_entry_scale(const Problem& p, const ops::RMSNormCache<double>& c) {
  double s = 0;
  for (Index i = 0; i < p.x.size(); ++i) {
    const double xh = xhat_at(p, c, i);
    s = std::max(s, c.invrms[row_of(p, i)] * std::abs(p.gamma[col_of(p, i)]) * (1 + xh * xh));
  }
  return s;
}

// vᵀJu = Σ_r r (Σ γᵢvᵢuᵢ − (Σ γᵢvᵢx̂ᵢ)(Σ x̂ᵢuᵢ)/M): the sum of the magnitudes of the two terms.
double dx_projection_scale(const Prepared<double>& pd, const Problem& p, const Eigen::VectorXd& v,
                           const Eigen::VectorXd& u) {
  const auto& c = pd.fwd.cache;
  double total = 0;
  for (Index r = 0; r < p.sets.R; ++r) {
    double vu = 0, xv = 0, xu = 0;
    for (Index i = p.sets.offset(r), e = i + p.sets.M; i < e; ++i) {
      const double g = p.gamma[col_of(p, i)], xh = xhat_at(p, c, i);
      vu += std::abs(g * v[i] * u[i]);
      xv += g * xh * v[i];
      xu += xh * u[i];
    }
    total += c.invrms[r] * (vu + std::abs(xv * xu) / static_cast<double>(p.sets.M));
  }
  return total;
}

// r (|gᵢ| + |x̂ᵢ|·|mean g x̂|) with g = γ dy: the size of dxᵢ before cancellation.
Eigen::VectorXd dx_term_magnitudes(const Problem& p, const ops::RMSNormCache<double>& c, const TensorD& dy) {
  const NormSets& s = p.sets;
  Eigen::VectorXd t(dy.size());
  for (Index r = 0; r < s.R; ++r) {
    double mgx = 0;
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i)
      mgx += p.gamma[col_of(p, i)] * dy[i] * xhat_at(p, c, i) / static_cast<double>(s.M);
    for (Index i = s.offset(r), e = i + s.M; i < e; ++i)
      t[i] = c.invrms[r] * (std::abs(p.gamma[col_of(p, i)] * dy[i]) + std::abs(xhat_at(p, c, i) * mgx));
  }
  return t;
}

std::vector<long double> ref_ms(const Problem& p) {
  std::vector<long double> ms(static_cast<std::size_t>(p.sets.R), 0);
  for (Index i = 0; i < p.x.size(); ++i)
    ms[static_cast<std::size_t>(row_of(p, i))] += static_cast<long double>(p.x[i]) * p.x[i] / p.sets.M;
  return ms;
}

// ----------------------------------------------------------------------------------------------
// The declaration: what the harness needs to make the whole-op checks (forward, oracles, staged =
// fused, the negative controls) with the ids, names, seeds and tolerance scales of before.

struct RMSNorm {
  static constexpr const char* op = "rms";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"rms.forward", "RMS norm forward: ms = mean(x²) over normalized_shape, y = γ ⊙ x/√(ms + ε)"},
        {"rms.dl_dxhat", "∂L/∂x̂_{r,j} = γⱼ ∂L/∂y_{r,j}"},
        {"rms.dl_dms", "∂L/∂ms_r = −½ (ms_r+ε)^(−3/2) Σⱼ ∂L/∂x̂_{r,j} x_{r,j}"},
        {"rms.dms_dx", "∂ms_r/∂x_{r,j} = 2x_{r,j}/M"},
        {"rms.dx", "RMS norm ∂L/∂x: assembly of the two paths x → x̂, x → ms (staged)"},
        {"rms.dgamma", "∂L/∂γⱼ = Σ_r dy_{r,j} x̂_{r,j}"},
        {"rms.dx_fused", "RMS norm dx = (ms+ε)^(−1/2) · (g − x̂ Σ g x̂ / M), g = γ ⊙ dy: one projection"}};
    return f;
  }
  using Case = catalog::Case;
  using Problem = catalog::Problem;
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = {jacobian_cases(), projection_cases(), term_cases(), {{{4096, 1024}, 1}}};
    return c;
  }
  static std::uint64_t seed(const Case& c) { return seed_of(c); }
  static constexpr std::uint64_t benchmark_seed = 1024;
  static Problem problem(const Case& c, std::uint64_t seed) { return make_problem(c, seed); }
  static std::string describe(const Problem& p) { return catalog::describe(p); }
  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}, {"gamma"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t k) { return k == 0 ? p.x : p.gamma; }
  // For the libtorch oracle: eps as used (None resolves to float64's machine epsilon).
  static std::vector<std::pair<std::string, double>> options(const Problem& p) {
    return {{"normalized_ndim", static_cast<double>(p.normalized.size())}, {"eps", p.eps_value()}};
  }
  // gradproof check: normalized_ndim trailing axes (default 1), eps (default None, as PyTorch:
  // the machine epsilon of the reference's dtype, float64).
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in("rmsnorm", ua);
    Problem p;
    p.x = in.input(0);
    p.gamma = in.input(1);
    p.w = in.dy();
    p.shape = p.x.shape();
    p.eps = std::nullopt;
    if (in.given("eps")) p.eps = in.number("eps", 0);
    const Index axes = in.integer("normalized_ndim", 1);
    if (axes < 1 || axes > p.x.rank())
      in.fail("normalized_ndim must be an integer in [1, rank of x = " +
                  std::to_string(p.x.rank()) + "]",
              std::to_string(axes));
    p.normalized = Shape(p.shape.end() - axes, p.shape.end());
    p.sets = ops::norm::detail::layernorm_sets(p.shape, p.normalized, "rmsnorm");
    in.shape("gamma", p.gamma.shape(), p.normalized, "the normalized shape");
    in.shape("dy", in.dy().shape(), p.shape, "the shape of x");
    return p;
  }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    return ops::rmsnorm_forward<S>(in[0], &in[1], p.cfg()).y;
  }
  template <class T>
  using Prepared = catalog::Prepared<T>;
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    return std::make_shared<const Prepared<T>>(p);
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  using Terms = ops::RMSNormTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, harness::Pass pass,
                                         const Terms& t = {}) {
    auto g = run_backward(pr, dy, pass == harness::Pass::staged ? Backward::staged : Backward::fused, t);
    return {std::move(g.dx), std::move(g.dgamma)};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"rms.dl_dxhat", &Terms::dl_dxhat},
                                               {"rms.dl_dms", &Terms::dl_dms},
                                               {"rms.dms_dx", &Terms::dms_dx}};
    return a;
  }
  static std::string ablation_summary() {
    return "Every term is caught: without a mean there is no term that vanishes (nothing like\n"
           "∂σ²/∂μ), and each of the two paths x → x̂ and x → ms carries part of the gradient.";
  }
  // y = γ x / √(ms + ε) in long double: a product, no cancellation, so its scale is max |y|.
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    const auto ms = ref_ms(p);
    Eigen::VectorXd ref(p.x.size());
    scale = 0;
    for (Index i = 0; i < p.x.size(); ++i) {
      const long double y =
          p.gamma[col_of(p, i)] * p.x[i] / std::sqrt(ms[static_cast<std::size_t>(row_of(p, i))] + p.eps_value());
      ref[i] = static_cast<double>(y);
      scale = std::max(scale, static_cast<double>(std::abs(y)));
    }
    return ref;
  }
  static double jacobian_scale(const Prepared<double>& pd, const Problem& p) { return dx_entry_scale(p, pd.fwd.cache); }
  static double projection_scale(const Prepared<double>& pd, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    return dx_projection_scale(pd, p, v, u);
  }
  static double dx_scale(const Prepared<double>& pd, const Problem& p, const TensorD& dy) {
    return dx_term_magnitudes(p, pd.fwd.cache, dy).maxCoeff();
  }
  // dγⱼ = Σ_r dy x̂: its terms are |dy x̂|.
  static double param_scale(const Prepared<double>& pd, const Problem& p, std::size_t) {
    Eigen::VectorXd acc = Eigen::VectorXd::Zero(p.gamma.size());
    for (Index i = 0; i < p.x.size(); ++i) acc[col_of(p, i)] += std::abs(p.w[i] * xhat_at(p, pd.fwd.cache, i));
    return acc.maxCoeff();
  }
  // With eps = None the float32 pass uses float32's epsilon, a different function from the
  // float64 oracles' (which use float64's): only the float64 pass is compared then.
  static bool float32_comparable(const Problem& p) { return p.eps.has_value(); }
  // The refused inputs of RMS norm are tested in tests/ops/normalization.test.cpp, its `*_into`
  // calls in tests/alloc/allocation.test.cpp (written before the harness; not repeated here).
  static std::vector<harness::BadInput> bad_inputs() { return {}; }
  static std::vector<harness::IntoCase> into_cases() { return {}; }
  static void extra(harness::Checks<RMSNorm>& c);
};

// ----------------------------------------------------------------------------------------------
// Term checks, with the other nodes of the graph held fixed.

struct TermSetup {
  Problem p;
  std::shared_ptr<const Prepared<double>> pd;
  std::shared_ptr<const Prepared<float>> pf;
  ops::RMSNormStagedTrace<double> td;
  ops::RMSNormStagedTrace<float> tf;
};

TermSetup term_setup(const Case& c) {
  TermSetup s{make_problem(c, seed_of(c) + 1), nullptr, nullptr, {}, {}};
  s.pd = std::make_shared<const Prepared<double>>(s.p);
  s.pf = std::make_shared<const Prepared<float>>(s.p);
  run_backward(*s.pd, s.p.w, Backward::staged, {}, &s.td);
  run_backward(*s.pf, s.p.w.cast<float>(), Backward::staged, {}, &s.tf);
  return s;
}

// L = <w, γ x̂> for a given x̂.
template <class S>
Vec<S> loss_of_xhat(const Problem& p, const Tensor<S>& xh) {
  Vec<S> out(1);
  out[0] = S(0);
  for (Index i = 0; i < xh.size(); ++i) out[0] += S(p.w[i]) * S(p.gamma[col_of(p, i)]) * xh[i];
  return out;
}

// ms_r = (1/M) Σⱼ x_{r,j}².
template <class S>
Vec<S> ms_of(const Problem& p, const Tensor<S>& x) {
  Vec<S> m = Vec<S>::Constant(p.sets.R, S(0));
  for (Index i = 0; i < x.size(); ++i) m[row_of(p, i)] += x[i] * x[i];
  return m / S(static_cast<double>(p.sets.M));
}

std::vector<ResultRow> check_dl_dxhat(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : term_cases()) {
    const TermSetup s = term_setup(c);
    Eigen::VectorXd at(s.p.x.size());
    for (Index i = 0; i < at.size(); ++i) at[i] = xhat_at(s.p, s.pd->fwd.cache, i);
    const auto f = [&p = s.p](const auto& xhv) { return loss_of_xhat(p, from_vec(p.shape, xhv)); };
    jacobian_rows(rows,
                  {"rms.dl_dxhat", test, "", "", "oracle", s.p.shape,
                   "gradient of L = <w, γ x̂> in x̂ (" + describe(s.p) + ")"},
                  f, at, {{"float64", as_f64(s.td.dl_dxhat)}, {"float32", as_f64(s.tf.dl_dxhat)}}, -1);
  }
  return rows;
}

std::vector<ResultRow> check_dl_dms(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : term_cases()) {
    const TermSetup s = term_setup(c);
    // x̂ = x/√(ms + ε) with x held fixed and ms a node of its own.
    const auto f = [&s](const auto& msv) {
      using S = typename std::decay_t<decltype(msv)>::Scalar;
      using std::sqrt;
      Tensor<S> xh(s.p.shape);
      for (Index i = 0; i < xh.size(); ++i) xh[i] = S(s.p.x[i]) / sqrt(msv[row_of(s.p, i)] + S(s.p.eps_value()));
      return loss_of_xhat(s.p, xh);
    };
    Eigen::VectorXd acc = Eigen::VectorXd::Zero(s.p.sets.R);  // ½ r³ Σ |∂L/∂x̂ᵢ xᵢ|
    for (Index i = 0; i < s.p.x.size(); ++i) {
      const double r = s.pd->fwd.cache.invrms[row_of(s.p, i)];
      acc[row_of(s.p, i)] += 0.5 * r * r * r * std::abs(s.td.dl_dxhat[i] * s.p.x[i]);
    }
    jacobian_rows(rows,
                  {"rms.dl_dms", test, "", "", "oracle", s.p.shape,
                   "gradient of L in the mean square (one per row) with x held fixed (" + describe(s.p) + ")"},
                  f, as_f64(s.pd->fwd.cache.ms), {{"float64", as_f64(s.td.dl_dms)}, {"float32", as_f64(s.tf.dl_dms)}},
                  acc.maxCoeff());
  }
  return rows;
}

std::vector<ResultRow> check_dms_dx(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : term_cases()) {
    const TermSetup s = term_setup(c);
    const Index n = s.p.x.size(), R = s.p.sets.R;
    const auto block = [&](const auto& t) {
      Eigen::MatrixXd J = Eigen::MatrixXd::Zero(R, n);
      for (Index i = 0; i < n; ++i) J(row_of(s.p, i), i) = static_cast<double>(t[i]);
      return flat_rowmajor(J);
    };
    const auto f = [&s](const auto& xv) { return ms_of(s.p, from_vec(s.p.shape, xv)); };
    // 2xᵢ/M: a product, no cancellation.
    jacobian_rows(rows,
                  {"rms.dms_dx", test, "", "", "oracle", s.p.shape,
                   "Jacobian of the row mean squares ms(x) (" + describe(s.p) + ")"},
                  f, as_f64(s.p.x), {{"float64", block(s.td.dms_dx)}, {"float32", block(s.tf.dms_dx)}}, -1);
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// References, staged = fused and the properties.

// Per row: the one projection identity Σᵢ dxᵢ x̂ᵢ = ε (ms+ε)^(−3/2) Σᵢ gᵢ x̂ᵢ, g = γ dy (the same
// form as the members with a mean), and Σᵢ dxᵢ = r (Σ g − Σx̂ · Σ g x̂ / M), which is not zero:
// without a mean, y is not invariant to shifting x.
std::vector<ResultRow> check_dx_properties(const std::string& formula, const std::string& test, Backward b) {
  std::vector<ResultRow> rows;
  for (const Case& c : identity_cases()) {
    const Problem p = make_problem(c, seed_of(c) + 3);
    const Prepared<double> ref(p);
    const auto& rc = ref.fwd.cache;
    const Eigen::VectorXd terms = dx_term_magnitudes(p, rc, p.w);
    const Index R = p.sets.R;
    const double M = static_cast<double>(p.sets.M);
    Eigen::VectorXd moment_pred(R), sum_pred(R);
    for (Index r = 0; r < R; ++r) {
      long double g = 0, gx = 0, xs = 0;
      for (Index i = p.sets.offset(r), e = i + p.sets.M; i < e; ++i) {
        const long double gi = static_cast<long double>(p.gamma[col_of(p, i)]) * p.w[i];
        g += gi;
        gx += gi * xhat_at(p, rc, i);
        xs += xhat_at(p, rc, i);
      }
      const long double inv = rc.invrms[r];
      moment_pred[r] = static_cast<double>(p.eps_value() * inv * inv * inv * gx);
      sum_pred[r] = static_cast<double>(inv * (g - xs * gx / M));
    }
    const auto one = [&](auto tag) {
      using T = decltype(tag);
      const Prepared<T> pr(p);
      const Tensor<T> dx = run_backward(pr, p.w.cast<T>(), b).dx;
      const SetMoments sm = set_moments(R, dx, terms, [&](Index i) { return row_of(p, i); },
                                        [&](Index i) { return xhat_at(p, rc, i); });
      const std::string dt = dtype_name<T>();
      rows.push_back(oracle_row({formula, test, "identity", dt, "property", p.shape,
                                 std::string("per row Σᵢ dxᵢ x̂ᵢ = ε (ms+ε)^(−3/2) Σᵢ γᵢ dyᵢ x̂ᵢ, the one projection (") +
                                     name(b) + " backward, " + describe(p) + ")"},
                                Oracle::complex_step, sm.moment, moment_pred, {R}, sm.moment_scale.maxCoeff()));
      ResultRow row = oracle_row({formula, test, "identity", dt, "property", p.shape, ""}, Oracle::complex_step, sm.sum,
                                 sum_pred, {R}, sm.sum_scale.maxCoeff());
      const double size = sum_pred.cwiseAbs().maxCoeff();
      std::ostringstream note;
      note << "per row Σᵢ dxᵢ = (ms+ε)^(−1/2) (Σg − Σx̂ · Σgx̂ / M), not zero without a mean: max |Σ dx| = " << size
           << " (" << name(b) << " backward, " << describe(p) << ")";
      row.note = note.str();
      row.passed = row.passed && size > 1e3 * row.atol;
      rows.push_back(row);
    };
    one(double{});
    one(float{});
  }
  return rows;
}

// dγⱼ = Σ_r dy_{r,j} x̂_{r,j} against a long-double recomputation.
std::vector<ResultRow> dgamma_identity_rows(const std::string& test, const Problem& p,
                                            const std::vector<Backward>& kinds) {
  std::vector<ResultRow> rows;
  const auto ms = ref_ms(p);
  const Index P = p.gamma.size();
  std::vector<long double> ref(static_cast<std::size_t>(P), 0), mag = ref;
  for (Index i = 0; i < p.x.size(); ++i) {
    const long double term = p.w[i] * p.x[i] / std::sqrt(ms[static_cast<std::size_t>(row_of(p, i))] + p.eps_value());
    ref[static_cast<std::size_t>(col_of(p, i))] += term;
    mag[static_cast<std::size_t>(col_of(p, i))] += std::abs(term);
  }
  Eigen::VectorXd refv(P);
  double scale = 0;
  for (Index k = 0; k < P; ++k) {
    refv[k] = static_cast<double>(ref[static_cast<std::size_t>(k)]);
    scale = std::max(scale, static_cast<double>(mag[static_cast<std::size_t>(k)]));
  }
  const auto one = [&](auto tag, Backward b) {
    using T = decltype(tag);
    const Prepared<T> pr(p);
    rows.push_back(oracle_row({"rms.dgamma", test, "reference", dtype_name<T>(), "property", p.shape,
                               std::string("dγ = Σ_rows dy x̂ against a long-double recomputation (") + name(b) +
                                   " backward, " + describe(p) + ")"},
                              Oracle::complex_step, as_f64(run_backward(pr, p.w.cast<T>(), b).dgamma), refv, {P},
                              scale));
  };
  for (Backward b : kinds) {
    one(double{}, b);
    one(float{}, b);
  }
  return rows;
}

// L = Σy: with a mean and γ uniform over the set this gradient is exactly 0; RMS norm has no
// mean, so it is r·(γᵢ − x̂ᵢ·mean(γ x̂)) even for uniform γ, and not zero.
std::vector<ResultRow> check_sum_of_y(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Case& c : term_cases()) {
    Problem p = make_problem(c, seed_of(c) + 6);
    for (Index k = 0; k < p.gamma.size(); ++k) p.gamma[k] = p.gamma[0];  // uniform over the row
    const TensorD ones(p.shape, 1.0);
    const Prepared<double> pd(p);
    const auto& cc = pd.fwd.cache;
    Eigen::VectorXd predicted(p.x.size());
    for (Index r = 0; r < p.sets.R; ++r) {
      long double mgx = 0;
      for (Index i = p.sets.offset(r), e = i + p.sets.M; i < e; ++i)
        mgx += static_cast<long double>(p.gamma[col_of(p, i)]) * xhat_at(p, cc, i) / p.sets.M;
      for (Index i = p.sets.offset(r), e = i + p.sets.M; i < e; ++i)
        predicted[i] = static_cast<double>(cc.invrms[r] * (p.gamma[col_of(p, i)] - xhat_at(p, cc, i) * mgx));
    }
    const double scale = dx_term_magnitudes(p, cc, ones).maxCoeff();
    for (Backward b : {Backward::staged, Backward::fused}) {
      const Eigen::VectorXd dx = as_f64(run_backward(pd, ones, b).dx);
      ResultRow row = oracle_row({"rms.dx", test, "closed_form", "float64", "pitfall", p.shape, ""},
                                 Oracle::complex_step, dx, predicted, {dx.size()}, scale);
      const double size = predicted.cwiseAbs().maxCoeff();
      std::ostringstream note;
      note << "L = Σy with γ uniform over the row: " << name(b)
           << " dx against the closed form (ms+ε)^(−1/2)·(γ − x̂ᵢ·mean γx̂), which is not zero without a mean: "
              "max |dx| = "
           << size << " (" << describe(p) << ")";
      row.note = note.str();
      row.passed = row.passed && size > 1e3 * row.atol;
      rows.push_back(row);
    }
  }
  return rows;
}


void RMSNorm::extra(harness::Checks<RMSNorm>& c) {
  const auto default_eps = [](Problem& p) { p.eps = std::nullopt; };
  c.add("rms.forward", "rms/forward/matches_a_long_double_reference_with_the_default_eps", [](const std::string& t) {
    std::vector<ResultRow> rows;
    for (const Case& cs : jacobian_cases()) {
      Problem p = make_problem(cs, seed_of(cs) + 5);
      p.eps = std::nullopt;
      // The float64 pass against a reference with float64's epsilon (the float32 pass would use float32's).
      rows.push_back(harness::forward_rows<RMSNorm>(t, p).front());
    }
    return rows;
  });
  c.add("rms.dl_dxhat", "rms/terms/dl_dxhat_matches_oracles", check_dl_dxhat);
  c.add("rms.dl_dms", "rms/terms/dl_dms_matches_oracles", check_dl_dms);
  c.add("rms.dms_dx", "rms/terms/dms_dx_matches_oracles", check_dms_dx);
  c.add("rms.dx", "rms/dx/staged_dx_obeys_the_one_projection_identity",
        [](const std::string& t) { return check_dx_properties("rms.dx", t, Backward::staged); });
  c.add("rms.dx", "rms/pitfalls/sum_of_y_gradient_does_not_vanish_without_a_mean", check_sum_of_y);
  c.add("rms.dgamma", "rms/params/dgamma_equals_sum_dy_xhat", [](const std::string& t) {
    std::vector<ResultRow> rows;
    for (const Case& cs : identity_cases()) {
      const auto rr = dgamma_identity_rows(t, make_problem(cs, seed_of(cs) + 4), {Backward::staged, Backward::fused});
      rows.insert(rows.end(), rr.begin(), rr.end());
    }
    return rows;
  });
  c.add("rms.dgamma", "rms/params/dgamma_equals_sum_dy_xhat_at_the_benchmark_shape", [](const std::string& t) {
    return dgamma_identity_rows(t, harness::benchmark_problem<RMSNorm>(RMSNorm::cases().benchmark.front()),
                                {Backward::fused});
  });
  c.add("rms.dx_fused", "rms/dx_fused/fused_dx_matches_oracles_with_the_default_eps", [default_eps](const std::string& t) {
    return harness::dx_against_oracles<RMSNorm>("rms.dx_fused", t, harness::Pass::fused, default_eps);
  });
  c.add("rms.dx_fused", "rms/dx_fused/fused_dx_obeys_the_one_projection_identity",
        [](const std::string& t) { return check_dx_properties("rms.dx_fused", t, Backward::fused); });
}

}  // namespace

void register_rmsnorm(Registry& r) { harness::register_op<RMSNorm>(r); }

}  // namespace gradproof::catalog
