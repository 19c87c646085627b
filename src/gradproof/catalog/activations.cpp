// The declarations of the element-wise activations: one generic declaration, Activation<Tr>, and
// a small traits struct per activation (its formulas, terms, parameters, sampling away from its
// kinks, torch options, and its kink and edge checks). The harness (harness/checks.hpp) makes
// the forward, oracle, staged = fused and negative-control checks from each.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/activations.hpp"

#include <cmath>
#include <limits>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;

// Kept away from the kinks by construction: |x| ≥ 0.1, far beyond the largest difference step
// (h ≈ 6e-6·max(1, |x|) for central differences, a few times that for Richardson).
std::string num(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

double away_from_zero(Rng& rng) {
  const double v = rng.normal(0, 2);
  return v < 0 ? v - 0.1 : v + 0.1;
}

template <class Tr>
struct Activation {
  using Config = typename Tr::Config;
  static constexpr const char* op = Tr::op;
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = [] {
      harness::Formulas out = {{std::string(op) + ".forward", Tr::forward_title}};
      for (const auto& t : Tr::terms()) out.push_back(t);
      out.push_back({std::string(op) + ".dx", std::string(Tr::name) + " staged ∂L/∂x = dy · (sum of the terms)"});
      out.push_back({std::string(op) + ".dx_fused", Tr::fused_title});
      return out;
    }();
    return f;
  }

  struct Case {
    Shape shape;
    Config cfg{};
  };
  // The benchmark case is (1024, 1024), not the benchmark's (4096, 4096): the harness's checks
  // there recompute the forward in long double and run the staged loop, seconds in the debug build.
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = [] {
      harness::Cases<Case> out;
      for (const Config& cfg : Tr::configs()) {
        for (Shape s : {Shape{4, 6}, Shape{3, 2, 5}, Shape{1, 7}, Shape{9}}) out.jacobian.push_back({s, cfg});
        out.projection.push_back({{16, 128}, cfg});
        for (Shape s : {Shape{4, 6}, Shape{3, 2, 5}}) out.ablation.push_back({s, cfg});
      }
      out.benchmark.push_back({{1024, 1024}, Config{}});
      return out;
    }();
    return c;
  }
  struct Problem {
    Shape shape;
    Config cfg;
    TensorD x, w;
  };
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 1469598103934665603ull;
    for (const char* s = op; *s; ++s) h = (h ^ static_cast<std::uint64_t>(*s)) * 1099511628211ull;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    return (h ^ Tr::variant(c.cfg)) * 1099511628211ull;
  }
  static constexpr std::uint64_t benchmark_seed = 4096;
  static Problem problem(const Case& c, std::uint64_t seed) {
    Problem p{c.shape, c.cfg, TensorD(c.shape), TensorD(c.shape)};
    Rng rng(seed);
    for (Index i = 0; i < p.x.size(); ++i) p.x[i] = Tr::sample(rng, c.cfg, i);
    p.w = rng.normal_tensor(c.shape);
    return p;
  }
  static std::string describe(const Problem& p) { return Tr::describe(p.cfg) + ", " + std::to_string(p.x.size()) + " values"; }

  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t) { return p.x; }
  static std::vector<std::pair<std::string, double>> options(const Problem& p) { return Tr::options(p.cfg); }
  // `gradproof check`: x and dy of any shape, the activation's options with PyTorch's names and
  // defaults (negative_slope 0.01, alpha 1, approximate 'none', beta 1, threshold 20).
  static std::vector<std::string> check_options() { return Tr::check_options(); }
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in(op, ua);
    Problem p{in.input(0).shape(), Tr::user_config(in), in.x_shaped_like_dy(), in.dy()};
    p.cfg.validate();
    return p;
  }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    return ops::activation_forward(in[0], p.cfg).y;
  }
  template <class T>
  struct Prepared {
    Tensor<T> x;
    ops::ActivationForward<T, Config> fwd;
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    Tensor<T> x = p.x.template cast<T>();
    auto fwd = ops::activation_forward(x, p.cfg);
    return std::make_shared<const Prepared<T>>(Prepared<T>{std::move(x), std::move(fwd)});
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  template <class T>
  static const Tensor<T>& saved(const Prepared<T>& pr) {
    return Config::saves_output ? pr.fwd.y : pr.x;
  }
  using Terms = typename Config::Terms;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    if (pass == Pass::staged) return {ops::activation_backward_staged(dy, pr.x, pr.fwd.cache, t).dx};
    return {ops::activation_backward(dy, saved(pr), pr.fwd.cache).dx};
  }
  static const harness::Ablation<Terms>& ablation() { return Tr::ablation(); }
  static std::string ablation_summary() { return Tr::ablation_summary; }

  // y in long double, the same expression on a wider type (no cancellation: its scale is max |y|).
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    Eigen::VectorXd y(p.x.size());
    for (Index i = 0; i < p.x.size(); ++i) y[i] = static_cast<double>(p.cfg.value(static_cast<long double>(p.x[i])));
    scale = y.size() ? y.cwiseAbs().maxCoeff() : 0.0;
    return y;
  }
  // The size of the derivative's terms at each value: Σ over the terms of |term| (they may cancel,
  // as gelu's Φ(x) and x·φ(x) do for x < 0).
  static Eigen::VectorXd magnitudes(const Problem& p) {
    Eigen::VectorXd m = Eigen::VectorXd::Zero(p.x.size());
    for (const auto& term : ablation()) {
      Terms only;
      for (const auto& other : ablation()) only.*(other.scale) = 0;
      only.*(term.scale) = 1;
      for (Index i = 0; i < p.x.size(); ++i) m[i] += std::abs(p.cfg.staged(p.x[i], 1.0, only));
    }
    return m;
  }
  static double jacobian_scale(const Prepared<double>&, const Problem& p) { return magnitudes(p).maxCoeff(); }
  static double projection_scale(const Prepared<double>&, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    return (v.array() * magnitudes(p).array() * u.array()).abs().sum();
  }
  // The fused pass may form the derivative otherwise than the staged terms (from the saved y, with
  // 1 − y or 1 ± tanh), with terms that cancel where the staged ones do not; its rounding scale is
  // then the larger (Tr::fused_terms). The ops fuzz target found tanh's and gelu-tanh's float32
  // fused dx beyond a scale of the staged terms alone (single values at large |x|).
  static double dx_scale(const Prepared<double>&, const Problem& p, const TensorD& dy) {
    Eigen::VectorXd m = magnitudes(p);
    if constexpr (requires { Tr::fused_terms(p.cfg, 0.0); })
      for (Index i = 0; i < p.x.size(); ++i) m[i] = std::max(m[i], Tr::fused_terms(p.cfg, p.x[i]));
    return (as_f64(dy).array().abs() * m.array()).maxCoeff();
  }

  static std::vector<harness::BadInput> bad_inputs() {
    const std::string dx = std::string(op) + ".dx", fused = std::string(op) + ".dx_fused";
    const std::string fwd_id = std::string(op) + ".forward";
    const auto fwd = [](Shape s) { return ops::activation_forward(TensorD(s, 0.5), Config{}); };
    std::vector<harness::BadInput> out = {
        {"y_of_the_wrong_shape_is_refused", fwd_id,
         [] {
           TensorD y({3, 2});
           ops::ActivationCache<Config> cache;
           ops::activation_forward_into(TensorD({2, 3}), Config{}, y, cache);
         },
         {"y (output) must have shape (2, 3)", "got (3, 2)"}},
        {"dy_of_the_wrong_shape_is_refused", fused,
         [fwd] {
           const auto f = fwd({2, 3});
           ops::activation_backward(TensorD({2, 4}), f.y, f.cache);
         },
         {"dy (must match x) must have shape (2, 3)", "got (2, 4)"}},
        {"dy_of_the_wrong_shape_is_refused_by_the_staged_backward", dx,
         [fwd] {
           const auto f = fwd({2, 3});
           ops::activation_backward_staged(TensorD({3, 2}), TensorD({2, 3}), f.cache);
         },
         {"dy (must match x) must have shape (2, 3)", "got (3, 2)"}},
        {"a_cache_of_another_input_is_refused", dx,
         [fwd] {
           const auto f = fwd({2, 3});
           ops::activation_backward_staged(TensorD({4, 3}), TensorD({4, 3}), f.cache);
         },
         {"cache was made for an input of shape (2, 3)", "x has shape (4, 3)"}},
        {"dx_of_the_wrong_shape_is_refused", fused,
         [fwd] {
           const auto f = fwd({2, 3});
           TensorD dx({3, 3});
           ops::activation_backward_into(f.y, f.y, f.cache, dx);
         },
         {"dx (output) must have shape (2, 3)", "got (3, 3)"}},
    };
    if constexpr (requires { Tr::bad_inputs(); })
      for (auto& b : Tr::bad_inputs()) out.push_back(std::move(b));
    return out;
  }

  template <class T>
  static harness::IntoCase into_case(const std::string& name, bool backward) {
    return {name + (sizeof(T) == 4 ? "_float" : "_double"), [backward] {
              auto st = std::make_shared<std::pair<Tensor<T>, ops::ActivationForward<T, Config>>>(
                  Tensor<T>({64, 1024}), ops::ActivationForward<T, Config>{Tensor<T>({64, 1024}), {}});
              auto dx = std::make_shared<Tensor<T>>(Shape{64, 1024});
              for (Index i = 0; i < st->first.size(); ++i) st->first[i] = T(static_cast<double>(i % 97) / 8 - 6);
              ops::activation_forward_into(st->first, Config{}, st->second.y, st->second.cache);
              if (backward)
                return std::function<void()>([st, dx] {
                  const Tensor<T>& s = Config::saves_output ? st->second.y : st->first;
                  ops::activation_backward_into(st->first, s, st->second.cache, *dx);
                });
              return std::function<void()>(
                  [st] { ops::activation_forward_into(st->first, Config{}, st->second.y, st->second.cache); });
            }};
  }
  static std::vector<harness::IntoCase> into_cases() {
    const std::string f = std::string(op) + "_forward_into", b = std::string(op) + "_backward_into";
    return {into_case<float>(f, false), into_case<double>(f, false), into_case<float>(b, true),
            into_case<double>(b, true)};
  }

  static void extra(harness::Checks<Activation>& c);
};

// ---- Kinks: the value used lies between the one-sided difference quotients -------------------

// At each kink x₀ of Tr (a point where the derivative jumps), both passes' derivative at x₀ in
// float64 against the interval of the one-sided quotients (f(x₀) − f(x₀ − h))/h and
// (f(x₀ + h) − f(x₀))/h, computed in long double with h = 1e-6. Their own error is
// h·max|f''|/2 (truncation, ≤ h·β/8 for softplus, 0 for the piecewise linear ones) plus
// rounding (≈ 1e-19·|f|/h), so the interval is widened by h.
template <class Tr>
std::vector<ResultRow> check_kinks(const std::string& test, Pass pass) {
  using A = Activation<Tr>;
  std::vector<ResultRow> rows;
  for (const auto& cfg : Tr::configs())
    for (const double x0 : Tr::kinks(cfg)) {
      const long double h = 1e-6L, xl = x0;
      const long double f0 = cfg.value(xl);
      const double left = static_cast<double>((f0 - cfg.value(xl - h)) / h);
      const double right = static_cast<double>((cfg.value(xl + h) - f0) / h);
      const double lo = std::min(left, right) - 1e-6, hi = std::max(left, right) + 1e-6;
      typename A::Problem p{{1}, cfg, TensorD({1}, x0), TensorD({1}, 1.0)};
      const auto pd = A::template prepare<double>(p);
      {
        const double v = A::backward(*pd, p.w, pass)[0][0];
        ResultRow row{Tr::op + std::string(pass == Pass::staged ? ".dx" : ".dx_fused"), test, "one_sided_quotients",
                      "float64", "kink", {1}};
        row.analytic = v;
        row.numeric = v < lo ? lo : v > hi ? hi : v;
        row.max_abs_err = std::abs(v - row.numeric);
        row.rel_defined = false;
        row.passed = v >= lo && v <= hi;
        std::ostringstream note;
        note.precision(17);
        note << Tr::describe(cfg) << " at the kink x = " << x0 << " (" << harness::name(pass)
             << " backward): the derivative used is " << v << "; one-sided quotients left " << left << ", right "
             << right << " (h = 1e-6, long double); it must lie between them (widened by h)";
        row.note = note.str();
        rows.push_back(row);
      }
    }
  return rows;
}

// ---- Edges with exact expectations ------------------------------------------------------------

// At each edge value of Tr: the forward and the staged backward in float64 against long double
// (relative 1e-12, no absolute part: these values are their own scale), and the fused backward
// against Tr's statement of what it gives there.
template <class Tr>
std::vector<ResultRow> check_edges(const std::string& test) {
  using A = Activation<Tr>;
  std::vector<ResultRow> rows;
  const typename Tr::Config cfg{};
  const std::vector<double> xs = Tr::edges();
  const Index n = static_cast<Index>(xs.size());
  typename A::Problem p{{n}, cfg, TensorD({n}), TensorD({n}, 1.0)};
  for (Index i = 0; i < n; ++i) p.x[i] = xs[static_cast<std::size_t>(i)];
  const auto pd = A::template prepare<double>(p);
  Eigen::VectorXd yref(n), dref(n);
  for (Index i = 0; i < n; ++i) {
    yref[i] = static_cast<double>(cfg.value(static_cast<long double>(p.x[i])));
    dref[i] = static_cast<double>(Tr::exact_derivative(cfg, static_cast<long double>(p.x[i])));
  }
  std::ostringstream at;
  at.precision(17);
  for (double v : xs) at << (at.tellp() ? ", " : "") << v;
  rows.push_back(oracle_row({Tr::op + std::string(".forward"), test, "reference", "float64", "edge", {n},
                             "y at x = " + at.str() + " against long double, relative 1e-12"},
                            Oracle::complex_step, as_f64(pd->fwd.y), yref, {n}, 0.0));
  rows.push_back(oracle_row({Tr::op + std::string(".dx"), test, "reference", "float64", "edge", {n},
                             "staged dx at x = " + at.str() + " against the long-double derivative, relative 1e-12"},
                            Oracle::complex_step, as_f64(A::backward(*pd, p.w, Pass::staged)[0]), dref, {n}, 0.0));
  const Eigen::VectorXd fused = as_f64(A::backward(*pd, p.w, Pass::fused)[0]);
  const Eigen::VectorXd expected = Tr::fused_expectation(dref, as_f64(pd->fwd.y));
  ResultRow row = oracle_row({Tr::op + std::string(".dx_fused"), test, "exact", "float64", "edge", {n},
                              "fused dx at x = " + at.str() + ": " + Tr::fused_edge_note},
                             Oracle::complex_step, fused, expected, {n}, 0.0);
  rows.push_back(row);
  return rows;
}

template <class Tr>
void Activation<Tr>::extra(harness::Checks<Activation>& c) {
  const std::string op_s = Tr::op;
  if constexpr (requires { Tr::kinks(Config{}); }) {
    c.add(op_s + ".dx", op_s + "/kinks/derivative_lies_between_the_one_sided_quotients",
          [](const std::string& t) { return check_kinks<Tr>(t, Pass::staged); });
    c.add(op_s + ".dx_fused", op_s + "/kinks/fused_derivative_lies_between_the_one_sided_quotients",
          [](const std::string& t) { return check_kinks<Tr>(t, Pass::fused); });
  }
  if constexpr (requires { Tr::edges(); }) c.add(op_s + ".forward", op_s + "/edges/match_exact_values", check_edges<Tr>);
}

// ---- The activations' traits ------------------------------------------------------------------

template <class T>
using TermsOf = harness::Ablation<typename T::Terms>;

struct ReluTr {
  using Config = ops::ReluConfig;
  static constexpr const char* op = "relu";
  static constexpr const char* name = "relu";
  static constexpr const char* forward_title = "relu forward: y = max(x, 0)";
  static constexpr const char* fused_title = "relu fused dx = dy where y > 0, else 0 (threshold_backward on y)";
  static harness::Formulas terms() { return {{"relu.dstep", "∂y/∂x = [x > 0]; 0 at the kink x = 0"}}; }
  static const TermsOf<Config>& ablation() {
    static const TermsOf<Config> a = {{"relu.dstep", &Config::Terms::dstep}};
    return a;
  }
  static constexpr const char* ablation_summary = "The one term, the step [x > 0], is caught.";
  static std::vector<Config> configs() { return {{}}; }
  static std::uint64_t variant(const Config&) { return 0; }
  static double sample(Rng& rng, const Config&, Index) { return away_from_zero(rng); }
  static std::string describe(const Config&) { return "relu"; }
  static std::vector<std::string> check_options() { return {}; }
  static Config user_config(const UserInput&) { return {}; }
  static std::vector<std::pair<std::string, double>> options(const Config&) { return {}; }
  static std::vector<double> kinks(const Config&) { return {0.0}; }
};

struct SigmoidTr {
  using Config = ops::SigmoidConfig;
  static constexpr const char* op = "sigmoid";
  static constexpr const char* name = "sigmoid";
  static constexpr const char* forward_title = "sigmoid forward: y = 1 / (1 + exp(−x))";
  static constexpr const char* fused_title = "sigmoid fused dx = dy · y (1 − y), from the output";
  static harness::Formulas terms() { return {{"sigmoid.dlocal", "∂y/∂x = σ(x)(1 − σ(x)) = σ(x)σ(−x)"}}; }
  // The fused pass forms y(1 − y) from the saved y: 1 − y cancels where y → 1 (the terms y, y²).
  static double fused_terms(const Config&, double x) {
    const double y = 1 / (1 + std::exp(-x));
    return y + y * y;
  }
  static const TermsOf<Config>& ablation() {
    static const TermsOf<Config> a = {{"sigmoid.dlocal", &Config::Terms::dlocal}};
    return a;
  }
  static constexpr const char* ablation_summary = "The one term, σ(x)σ(−x), is caught.";
  static std::vector<Config> configs() { return {{}}; }
  static std::uint64_t variant(const Config&) { return 0; }
  static double sample(Rng& rng, const Config&, Index) { return rng.normal(0, 2); }
  static std::string describe(const Config&) { return "sigmoid"; }
  static std::vector<std::string> check_options() { return {}; }
  static Config user_config(const UserInput&) { return {}; }
  static std::vector<std::pair<std::string, double>> options(const Config&) { return {}; }
  static std::vector<double> edges() { return {-100.0, 100.0}; }
  static long double exact_derivative(const Config&, long double x) {
    const long double s = 1 / (1 + std::exp(-x));
    return s * (1 / (1 + std::exp(x)));
  }
  // From the output: y(1 − y) is exact where y = σ(−100) is tiny, and 0 where y rounds to 1.
  static Eigen::VectorXd fused_expectation(const Eigen::VectorXd& exact, const Eigen::VectorXd& y) {
    Eigen::VectorXd e = exact;
    for (Index i = 0; i < e.size(); ++i)
      if (y[i] == 1.0) e[i] = 0.0;
    return e;
  }
  static constexpr const char* fused_edge_note =
      "the exact derivative where y < 1, and exactly 0 at x = 100, where y rounds to 1 and y(1 − y) = 0 "
      "(PyTorch's sigmoid_backward gives the same 0; the exact value 3.7e-44 is kept by the staged σ(x)σ(−x))";
};

struct TanhTr {
  using Config = ops::TanhConfig;
  static constexpr const char* op = "tanh";
  static constexpr const char* name = "tanh";
  static constexpr const char* forward_title = "tanh forward: y = tanh x";
  static constexpr const char* fused_title = "tanh fused dx = dy · (1 − y²), from the output";
  static harness::Formulas terms() { return {{"tanh.dlocal", "∂y/∂x = 1 − tanh²x = 1/cosh²x"}}; }
  // The fused pass forms 1 − y² from the saved y: it cancels at large |x| (the terms 1, y²).
  static double fused_terms(const Config&, double x) {
    const double y = std::tanh(x);
    return 1 + y * y;
  }
  static const TermsOf<Config>& ablation() {
    static const TermsOf<Config> a = {{"tanh.dlocal", &Config::Terms::dlocal}};
    return a;
  }
  static constexpr const char* ablation_summary = "The one term, 1/cosh²x, is caught.";
  static std::vector<Config> configs() { return {{}}; }
  static std::uint64_t variant(const Config&) { return 0; }
  static double sample(Rng& rng, const Config&, Index) { return rng.normal(0, 1.5); }
  static std::string describe(const Config&) { return "tanh"; }
  static std::vector<std::string> check_options() { return {}; }
  static Config user_config(const UserInput&) { return {}; }
  static std::vector<std::pair<std::string, double>> options(const Config&) { return {}; }
  static std::vector<double> edges() { return {-100.0, 100.0}; }
  static long double exact_derivative(const Config&, long double x) {
    const long double c = std::cosh(x);
    return 1 / (c * c);
  }
  static Eigen::VectorXd fused_expectation(const Eigen::VectorXd& exact, const Eigen::VectorXd& y) {
    Eigen::VectorXd e = exact;
    for (Index i = 0; i < e.size(); ++i)
      if (std::abs(y[i]) == 1.0) e[i] = 0.0;
    return e;
  }
  static constexpr const char* fused_edge_note =
      "exactly 0 at x = ±100, where y rounds to ±1 and 1 − y² = 0 (PyTorch's tanh_backward gives the same 0; "
      "the exact value 5.5e-87 is kept by the staged 1/cosh²x)";
};

struct LeakyReluTr {
  using Config = ops::LeakyReluConfig;
  static constexpr const char* op = "leaky_relu";
  static constexpr const char* name = "leaky_relu";
  static constexpr const char* forward_title = "leaky_relu forward: y = x for x > 0, else negative_slope · x";
  static constexpr const char* fused_title = "leaky_relu fused dx = dy where x > 0, else negative_slope · dy";
  static harness::Formulas terms() {
    return {{"leaky_relu.dpos", "the identity branch: [x > 0]"},
            {"leaky_relu.dneg", "the negative branch: negative_slope · [x ≤ 0]; the kink x = 0 included"}};
  }
  static const TermsOf<Config>& ablation() {
    static const TermsOf<Config> a = {{"leaky_relu.dpos", &Config::Terms::dpos}, {"leaky_relu.dneg", &Config::Terms::dneg}};
    return a;
  }
  static constexpr const char* ablation_summary = "Both branches are caught: the samples have values on each side of 0.";
  static std::vector<Config> configs() { return {{}, {0.2}}; }
  static std::uint64_t variant(const Config& c) { return static_cast<std::uint64_t>(c.negative_slope * 1e6); }
  static double sample(Rng& rng, const Config&, Index) { return away_from_zero(rng); }
  static std::string describe(const Config& c) { return "leaky_relu(negative_slope=" + num(c.negative_slope) + ")"; }
  static std::vector<std::string> check_options() { return {"negative_slope"}; }
  static Config user_config(const UserInput& in) { return {in.number("negative_slope", 0.01)}; }
  static std::vector<std::pair<std::string, double>> options(const Config& c) { return {{"negative_slope", c.negative_slope}}; }
  static std::vector<double> kinks(const Config&) { return {0.0}; }
};

struct EluTr {
  using Config = ops::EluConfig;
  static constexpr const char* op = "elu";
  static constexpr const char* name = "elu";
  static constexpr const char* forward_title = "elu forward: y = x for x > 0, else alpha · (exp(x) − 1)";
  static constexpr const char* fused_title = "elu fused dx = dy where x > 0, else dy · alpha · exp(x)";
  static harness::Formulas terms() {
    return {{"elu.dpos", "the identity branch: [x > 0]"},
            {"elu.dneg", "the exponential branch: alpha · exp(x) · [x ≤ 0]; x = 0 included"}};
  }
  static const TermsOf<Config>& ablation() {
    static const TermsOf<Config> a = {{"elu.dpos", &Config::Terms::dpos}, {"elu.dneg", &Config::Terms::dneg}};
    return a;
  }
  static constexpr const char* ablation_summary = "Both branches are caught: the samples have values on each side of 0.";
  static std::vector<Config> configs() { return {{}, {0.5}}; }
  static std::uint64_t variant(const Config& c) { return static_cast<std::uint64_t>(c.alpha * 1e6); }
  static double sample(Rng& rng, const Config&, Index) { return away_from_zero(rng); }
  static std::string describe(const Config& c) { return "elu(alpha=" + num(c.alpha) + ")"; }
  static std::vector<std::string> check_options() { return {"alpha"}; }
  static Config user_config(const UserInput& in) { return {in.number("alpha", 1.0)}; }
  static std::vector<std::pair<std::string, double>> options(const Config& c) { return {{"alpha", c.alpha}}; }
  static std::vector<double> kinks(const Config&) { return {0.0}; }
};

struct GeluTr {
  using Config = ops::GeluConfig;
  static constexpr const char* op = "gelu";
  static constexpr const char* name = "gelu";
  static constexpr const char* forward_title = "gelu forward: y = x Φ(x) (approximate none), or ½x(1 + tanh(√(2/π)(x + 0.044715x³)))";
  static constexpr const char* fused_title = "gelu fused dx = dy · (c(x) + x c'(x)) in one vectorized expression";
  static harness::Formulas terms() {
    return {{"gelu.dcdf", "the factor c held: Φ(x), or ½(1 + tanh u)"},
            {"gelu.dpdf", "x · c'(x): x φ(x), or ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)"}};
  }
  // The fused pass forms 0.5(1 + erf) + x φ, or with the tanh form 0.5(1 + t) + 0.5β x (1 − t²)
  // (1 + 3κx²): 1 + erf and 1 + t cancel for x < 0, 1 − t² at large |x| (each term's magnitude).
  static double fused_terms(const Config& c, double x) {
    if (!c.tanh_form())
      return 0.5 * (1 + std::abs(std::erf(x * M_SQRT1_2))) +
             std::abs(x) * std::exp(-0.5 * x * x) * 0.5 * M_2_SQRTPI * M_SQRT1_2;  // |x| φ(x)
    const double b = Config::kBeta, k = Config::kKappa, t = std::tanh(b * (x + k * x * x * x));
    return 0.5 * (1 + std::abs(t)) + 0.5 * b * std::abs(x) * (1 + t * t) * (1 + 3 * k * x * x);
  }
  static const TermsOf<Config>& ablation() {
    static const TermsOf<Config> a = {{"gelu.dcdf", &Config::Terms::dcdf}, {"gelu.dpdf", &Config::Terms::dpdf}};
    return a;
  }
  static constexpr const char* ablation_summary = "Both terms are caught, in both forms (approximate none and tanh).";
  static std::vector<Config> configs() { return {{"none"}, {"tanh"}}; }
  static std::uint64_t variant(const Config& c) { return c.tanh_form() ? 1 : 0; }
  static double sample(Rng& rng, const Config&, Index) { return rng.normal(0, 2); }
  static std::string describe(const Config& c) { return "gelu(approximate='" + c.approximate + "')"; }
  static std::vector<std::string> check_options() { return {"approximate"}; }
  static Config user_config(const UserInput& in) {
    return {in.word("approximate", "none", {"none", "tanh"})};
  }
  static std::vector<std::pair<std::string, double>> options(const Config& c) {
    return {{"approximate_tanh", c.tanh_form() ? 1.0 : 0.0}};
  }
  static std::vector<harness::BadInput> bad_inputs() {
    return {{"approximate_other_than_none_or_tanh_is_refused", "gelu.forward",
             [] { ops::activation_forward(TensorD({2, 3}), ops::GeluConfig{"erf"}); },
             {"approximate must be 'none' or 'tanh'", "got 'erf'"}}};
  }
};

struct SiluTr {
  using Config = ops::SiluConfig;
  static constexpr const char* op = "silu";
  static constexpr const char* name = "silu";
  static constexpr const char* forward_title = "silu forward: y = x σ(x)";
  static constexpr const char* fused_title = "silu fused dx = dy · σ(x)(1 + x(1 − σ(x)))";
  static harness::Formulas terms() {
    return {{"silu.dsig", "the factor x held: σ(x)"}, {"silu.dxsig", "x σ'(x) = x σ(x)σ(−x)"}};
  }
  // The fused pass forms s(1 + x(1 − s)): 1 − s cancels where s → 1 (the terms s, |x| s (1 + s)).
  static double fused_terms(const Config&, double x) {
    const double sg = 1 / (1 + std::exp(-x));
    return sg * (1 + std::abs(x) * (1 + sg));
  }
  static const TermsOf<Config>& ablation() {
    static const TermsOf<Config> a = {{"silu.dsig", &Config::Terms::dsig}, {"silu.dxsig", &Config::Terms::dxsig}};
    return a;
  }
  static constexpr const char* ablation_summary = "Both terms are caught.";
  static std::vector<Config> configs() { return {{}}; }
  static std::uint64_t variant(const Config&) { return 0; }
  static double sample(Rng& rng, const Config&, Index) { return rng.normal(0, 2); }
  static std::string describe(const Config&) { return "silu"; }
  static std::vector<std::string> check_options() { return {}; }
  static Config user_config(const UserInput&) { return {}; }
  static std::vector<std::pair<std::string, double>> options(const Config&) { return {}; }
};

struct SoftplusTr {
  using Config = ops::SoftplusConfig;
  static constexpr const char* op = "softplus";
  static constexpr const char* name = "softplus";
  static constexpr const char* forward_title = "softplus forward: y = log(1 + exp(βx))/β, and y = x where βx > threshold";
  static constexpr const char* fused_title = "softplus fused dx = dy where βx > threshold, else dy · σ(βx)";
  static harness::Formulas terms() {
    return {{"softplus.dsigmoid", "σ(βx) where βx ≤ threshold (the threshold itself included)"},
            {"softplus.didentity", "1 where βx > threshold"}};
  }
  static const TermsOf<Config>& ablation() {
    static const TermsOf<Config> a = {{"softplus.dsigmoid", &Config::Terms::dsigmoid},
                                      {"softplus.didentity", &Config::Terms::didentity}};
    return a;
  }
  static constexpr const char* ablation_summary =
      "Both branches are caught: every fourth sample lies above the threshold.";
  static std::vector<Config> configs() { return {{}, {2.0, 5.0}}; }
  static std::uint64_t variant(const Config& c) { return static_cast<std::uint64_t>(c.beta * 1e3 + c.threshold * 1e6); }
  // Every fourth value on the identity branch (βx in threshold + [1, 5]); all at least 0.5/β
  // from the threshold.
  static double sample(Rng& rng, const Config& c, Index i) {
    const double x0 = c.threshold / c.beta;
    if (i % 4 == 3) return rng.uniform(x0 + 1 / c.beta, x0 + 5 / c.beta);
    double v = rng.normal(0, 2);
    if (std::abs(c.beta * v - c.threshold) < 0.5) v = x0 - 0.5 / c.beta;
    return v;
  }
  static std::string describe(const Config& c) {
    return "softplus(beta=" + num(c.beta) + ", threshold=" + num(c.threshold) + ")";
  }
  static std::vector<std::string> check_options() { return {"beta", "threshold"}; }
  static Config user_config(const UserInput& in) {
    return {in.number("beta", 1.0), in.number("threshold", 20.0)};
  }
  static std::vector<std::pair<std::string, double>> options(const Config& c) {
    return {{"beta", c.beta}, {"threshold", c.threshold}};
  }
  static std::vector<double> kinks(const Config& c) { return {c.threshold / c.beta}; }
  static std::vector<double> edges() {
    return {std::nextafter(20.0, 0.0), 20.0, std::nextafter(20.0, 40.0), 19.5, 20.5};
  }
  static long double exact_derivative(const Config& c, long double x) {
    return c.beta * x > c.threshold ? 1.0L : 1 / (1 + std::exp(-c.beta * x));
  }
  static Eigen::VectorXd fused_expectation(const Eigen::VectorXd& exact, const Eigen::VectorXd&) { return exact; }
  static constexpr const char* fused_edge_note =
      "the long-double derivative: σ(x) at and just below the threshold 20, exactly 1 just above";
  static std::vector<harness::BadInput> bad_inputs() {
    return {{"beta_zero_is_refused", "softplus.forward",
             [] { ops::activation_forward(TensorD({2, 3}), ops::SoftplusConfig{0.0, 20.0}); },
             {"beta must be finite and nonzero", "got beta 0"}}};
  }
};

}  // namespace

void register_activations(Registry& r) {
  harness::register_op<Activation<ReluTr>>(r);
  harness::register_op<Activation<SigmoidTr>>(r);
  harness::register_op<Activation<TanhTr>>(r);
  harness::register_op<Activation<LeakyReluTr>>(r);
  harness::register_op<Activation<EluTr>>(r);
  harness::register_op<Activation<GeluTr>>(r);
  harness::register_op<Activation<SiluTr>>(r);
  harness::register_op<Activation<SoftplusTr>>(r);
}

}  // namespace gradproof::catalog
