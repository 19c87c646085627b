// The declaration of dropout (dropout.*): y = m ⊙ x / (1 − p) with a seeded mask. For the
// oracles the mask is fixed (it depends on the seed and the index only), so dropout is a linear
// map. The harness makes the forward, oracle, staged = fused and negative-control checks; extra()
// adds p = 0 and p = 1, eval mode, the determinism of the mask and the dropped fraction.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/dropout.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;

struct Dropout {
  static constexpr const char* op = "dropout";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"dropout.forward", "Dropout forward: y = m ⊙ x / (1 − p) in training (0 for p = 1), y = x in eval"},
        {"dropout.dmask", "∂yᵢ/∂vᵢ = mᵢ: the forward's mask, kept in the cache"},
        {"dropout.dscale", "∂vᵢ/∂xᵢ = 1/(1 − p)"},
        {"dropout.dx", "∂L/∂x = dy ⊙ m / (1 − p) (staged)"},
        {"dropout.dx_fused", "Dropout fused: dx = dy ⊙ (m / (1 − p)) in one pass"}};
    return f;
  }
  struct Case {
    Shape shape;
    double p = 0.5;
  };
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = {.jacobian = {{{4, 6}}, {{3, 2, 5}, 0.2}, {{1, 7}, 0.8}, {{5}, 0.5}},
                                           .projection = {{{16, 128}}, {{4, 8, 32}, 0.1}},
                                           .ablation = {{{4, 6}}, {{3, 2, 5}, 0.2}},
                                           .benchmark = {{{4096, 1024}}}};
    return c;
  }
  struct Problem {
    Shape shape;
    double p = 0.5;
    std::uint64_t seed = 0;
    TensorD x, w;
    std::vector<std::uint8_t> mask = {};  // given by the user (gradproof check); else from seed
  };
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 1099511628211ull;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    return h ^ static_cast<std::uint64_t>(c.p * 1000);
  }
  static constexpr std::uint64_t benchmark_seed = 77;
  static Problem problem(const Case& c, std::uint64_t seed) {
    Rng rng(seed);
    Problem p{c.shape, c.p, seed, rng.normal_tensor(c.shape), {}};
    p.w = rng.normal_tensor(c.shape);
    return p;
  }
  static ops::DropoutConfig config(const Problem& p) { return {p.p, true, p.seed}; }
  static std::string describe(const Problem& p) {
    std::ostringstream s;
    s << "dropout(p=" << p.p << ", training=True), x " << to_string(p.shape);
    if (p.mask.empty())
      s << ", mask seed " << p.seed;
    else
      s << ", the mask given (" << std::count(p.mask.begin(), p.mask.end(), 1) << " of "
        << p.mask.size() << " kept)";
    return s.str();
  }
  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t) { return p.x; }
  static std::vector<std::pair<std::string, double>> options(const Problem& p) { return {{"p", p.p}}; }
  // `gradproof check` (training mode; in eval dropout is the identity, dx = dy): x, dy and p
  // (default 0.5), and the mask in one of three ways. PyTorch does not expose its mask, but y = 0
  // exactly where an element was dropped, so `y` (the output of the same forward) gives the mask
  // wherever x ≠ 0; where x = 0 it cannot tell, and `mask` (1 kept, 0 dropped; e.g.
  // `(y != 0).float()` when x has no zeros) must be given instead. `seed` is gradproof's own
  // generator's (ops/dropout.hpp), for masks made by gradproof.
  static std::vector<std::string> check_options() { return {"p", "seed"}; }
  static std::vector<std::string> check_arrays() { return {"mask", "y"}; }
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in("dropout", ua);
    const TensorD& x = in.x_shaped_like_dy();
    Problem p{x.shape(), in.number_in("p", 0.5, 0.0, 1.0), 0, x, in.dy()};
    const catalog::UserArray *mask = in.array("mask"), *y = in.array("y");
    if ((mask != nullptr) + (y != nullptr) + in.given("seed") != 1)
      in.fail(
          "needs exactly one of mask (1 kept, 0 dropped), y (the output: the mask is where "
          "y ≠ 0) and seed (gradproof's generator)",
          std::to_string((mask != nullptr) + (y != nullptr) + in.given("seed")) + " of them");
    if (in.given("seed")) {
      const Index seed = in.integer("seed", 0);
      if (seed < 0) in.fail("seed must be >= 0", std::to_string(seed));
      p.seed = static_cast<std::uint64_t>(seed);
      return p;
    }
    const TensorD& m = mask ? mask->values : y->values;
    in.shape(mask ? "mask" : "y", m.shape(), x.shape(), "the shape of x");
    p.mask.resize(static_cast<std::size_t>(x.size()));
    const double scale = p.p == 1 ? 0.0 : 1 / (1 - p.p);
    for (Index i = 0; i < x.size(); ++i) {
      const std::string at = " at flat index " + std::to_string(i);
      if (mask) {
        if (m[i] != 0 && m[i] != 1)
          in.fail("mask must hold 0 (dropped) and 1 (kept)", UserInput::num(m[i]) + at);
        p.mask[static_cast<std::size_t>(i)] = m[i] == 1;
        continue;
      }
      if (x[i] == 0)
        in.fail(
            "y cannot give the mask where x = 0 (y = 0 whether kept or dropped): give mask instead",
            "x = 0" + at);
      p.mask[static_cast<std::size_t>(i)] = m[i] != 0;
      // A kept element is x/(1 − p): to the precision of float16 and bfloat16 (2⁻⁸), with margin.
      if (m[i] != 0 && std::abs(m[i] - x[i] * scale) > 1e-2 * std::abs(x[i] * scale))
        in.fail(
            "y must be 0 or x/(1 − p) with p = " + UserInput::num(p.p) + " (is p right?)",
            "y = " + UserInput::num(m[i]) + ", x/(1 − p) = " + UserInput::num(x[i] * scale) + at);
    }
    return p;
  }
  // The mask as a 0/1 tensor: libtorch's generator differs, its oracle multiplies by this one.
  static std::vector<std::pair<std::string, TensorD>> constants(const Problem& p) {
    const auto f = ops::dropout_forward(p.x, config(p));
    TensorD m(p.shape);
    for (Index i = 0; i < m.size(); ++i) m[i] = f.cache.mask[static_cast<std::size_t>(i)];
    return {{"mask", m}};
  }
  // The forward with the problem's mask: the seed's, or the one the user gave.
  template <class S>
  static ops::DropoutForward<S> run(const Problem& p, const Tensor<S>& x) {
    ops::DropoutForward<S> f = ops::dropout_forward(x, config(p));
    if (p.mask.empty()) return f;
    f.cache.mask = p.mask;
    for (Index i = 0; i < x.size(); ++i)
      f.y[i] = p.mask[static_cast<std::size_t>(i)] ? S(x[i] * S(f.cache.scale)) : S(0);
    return f;
  }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    return run(p, in[0]).y;
  }
  template <class T>
  struct Prepared {
    ops::DropoutForward<T> fwd;
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    return std::make_shared<const Prepared<T>>(Prepared<T>{run(p, p.x.cast<T>())});
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  using Terms = ops::DropoutTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    if (pass == Pass::staged) return {ops::dropout_backward_staged(dy, pr.fwd.cache, t).dx};
    return {ops::dropout_backward(dy, pr.fwd.cache).dx};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"dropout.dmask", &Terms::dmask}, {"dropout.dscale", &Terms::dscale}};
    return a;
  }
  static std::string ablation_summary() {
    return "Both terms are caught: without the mask dx has the kept pattern wrong, without 1/(1 − p) it is off by that factor.";
  }
  // y in long double: one product per element, no cancellation
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    const auto f = ops::dropout_forward(p.x, config(p));
    Eigen::VectorXd y(p.x.size());
    for (Index i = 0; i < p.x.size(); ++i)
      y[i] = f.cache.mask[static_cast<std::size_t>(i)] ? static_cast<double>(static_cast<long double>(p.x[i]) / (1 - static_cast<long double>(p.p))) : 0.0;
    scale = y.cwiseAbs().maxCoeff();
    return y;
  }
  static double jacobian_scale(const Prepared<double>& pd, const Problem&) { return pd.fwd.cache.scale; }
  static double projection_scale(const Prepared<double>& pd, const Problem&, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    return pd.fwd.cache.scale * (v.cwiseAbs().array() * u.cwiseAbs().array()).sum();
  }
  static double dx_scale(const Prepared<double>& pd, const Problem&, const TensorD& dy) {
    return pd.fwd.cache.scale * dy.flat().abs().maxCoeff();
  }
  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<Dropout>& c);
};

// p = 0: y = x bit for bit and dx = dy; p = 1: y = 0 and dx = 0 (PyTorch: zeros, not 0·∞ = NaN).
std::vector<ResultRow> check_p_edges(const std::string& formula, const std::string& test) {
  std::vector<ResultRow> rows;
  for (double pv : {0.0, 1.0}) {
    Dropout::Problem p = Dropout::problem({{8, 16}, pv}, 5);
    const auto f = ops::dropout_forward(p.x, Dropout::config(p));
    const TensorD dx = formula == "dropout.forward" ? TensorD() : (formula == "dropout.dx" ? ops::dropout_backward_staged(p.w, f.cache).dx : ops::dropout_backward(p.w, f.cache).dx);
    const TensorD& got = formula == "dropout.forward" ? f.y : dx;
    const TensorD& want_src = formula == "dropout.forward" ? p.x : p.w;
    ResultRow row{formula, test, "identity", "float64", "edge", i64(p.shape)};
    double err = 0;
    for (Index i = 0; i < got.size(); ++i) err = std::max(err, std::abs(got[i] - (pv == 0 ? want_src[i] : 0.0)));
    row.max_abs_err = err;
    row.passed = err == 0 && got.flat().allFinite();
    row.note = std::string("p = ") + (pv == 0 ? "0: " : "1: ") + (formula == "dropout.forward" ? "y" : "dx") +
               (pv == 0 ? " equals " + std::string(formula == "dropout.forward" ? "x" : "dy") + " bit for bit"
                        : " is exactly 0 everywhere (PyTorch returns zeros; no 0·∞ = NaN)");
    rows.push_back(row);
  }
  return rows;
}

// training=false: the identity, forward and backward, whatever p.
std::vector<ResultRow> check_eval(const std::string& test) {
  Dropout::Problem p = Dropout::problem({{8, 16}, 0.7}, 6);
  ops::DropoutConfig cfg = Dropout::config(p);
  cfg.training = false;
  const auto f = ops::dropout_forward(p.x, cfg);
  const auto gs = ops::dropout_backward_staged(p.w, f.cache).dx, gf = ops::dropout_backward(p.w, f.cache).dx;
  ResultRow row{"dropout.forward", test, "identity", "float64", "property", i64(p.shape)};
  row.max_abs_err = std::max({(f.y.flat() - p.x.flat()).abs().maxCoeff(), (gs.flat() - p.w.flat()).abs().maxCoeff(),
                              (gf.flat() - p.w.flat()).abs().maxCoeff()});
  row.passed = row.max_abs_err == 0;
  row.note = "training=False, p = 0.7: y = x and dx = dy (both passes) bit for bit";
  return {row};
}

// The mask is a function of the seed and the index: the same seed gives the same mask, another
// seed another; float and double get the same mask.
std::vector<ResultRow> check_mask_determinism(const std::string& test) {
  Dropout::Problem p = Dropout::problem({{64, 64}, 0.5}, 7);
  const auto a = ops::dropout_forward(p.x, Dropout::config(p));
  const auto b = ops::dropout_forward(p.x, Dropout::config(p));
  const auto f = ops::dropout_forward(p.x.cast<float>(), Dropout::config(p));
  ops::DropoutConfig other = Dropout::config(p);
  other.seed += 1;
  const auto c = ops::dropout_forward(p.x, other);
  Index differ = 0;
  for (std::size_t i = 0; i < a.cache.mask.size(); ++i) differ += a.cache.mask[i] != c.cache.mask[i];
  ResultRow row{"dropout.forward", test, "identity", "float64", "property", i64(p.shape)};
  row.passed = a.cache.mask == b.cache.mask && a.cache.mask == f.cache.mask && differ > 0;
  std::ostringstream note;
  note << "seed " << p.seed << ": two calls and the float32 call give the same mask; seed + 1 changes " << differ
       << " of " << a.cache.mask.size() << " elements";
  row.note = note.str();
  return {row};
}

// The dropped count K of n = 10⁶ elements is Binomial(n, p). Hoeffding: P(|K/n − p| ≥ ε) ≤
// 2 exp(−2nε²); with ε = √(ln(2/α)/(2n)) the false-alarm probability is at most α = 10⁻⁶.
std::vector<ResultRow> check_dropped_fraction(const std::string& test) {
  std::vector<ResultRow> rows;
  const Index n = 1000000;
  const double alpha = 1e-6, eps = std::sqrt(std::log(2 / alpha) / (2.0 * static_cast<double>(n)));
  for (double pv : {0.1, 0.5, 0.9}) {
    ops::DropoutCache<double> cache;
    TensorD x({n}, 1.0), y({n});
    ops::dropout_forward_into(x, {pv, true, 12345}, y, cache);
    Index dropped = 0;
    for (auto m : cache.mask) dropped += m == 0;
    const double frac = static_cast<double>(dropped) / static_cast<double>(n);
    ResultRow row{"dropout.forward", test, "binomial_bound", "float64", "property", {n}};
    row.analytic = frac;
    row.numeric = pv;
    row.max_abs_err = std::abs(frac - pv);
    row.atol = eps;
    row.passed = row.max_abs_err < eps;
    std::ostringstream note;
    note << "p = " << pv << ", seed 12345, n = 10⁶: dropped fraction " << frac << ", |K/n − p| = " << row.max_abs_err
         << " < ε = " << eps << " (Hoeffding, false-alarm probability ≤ 1e-6)";
    row.note = note.str();
    rows.push_back(row);
  }
  return rows;
}

void Dropout::extra(harness::Checks<Dropout>& c) {
  c.add("dropout.forward", "dropout/edge/p_0_and_p_1_forward_as_pytorch",
        [](const std::string& t) { return check_p_edges("dropout.forward", t); });
  c.add("dropout.dx", "dropout/edge/p_0_and_p_1_staged_dx_as_pytorch",
        [](const std::string& t) { return check_p_edges("dropout.dx", t); });
  c.add("dropout.dx_fused", "dropout/edge/p_0_and_p_1_fused_dx_as_pytorch",
        [](const std::string& t) { return check_p_edges("dropout.dx_fused", t); });
  c.add("dropout.forward", "dropout/forward/eval_mode_is_the_identity", check_eval);
  c.add("dropout.dmask", "dropout/mask/is_a_function_of_the_seed_and_the_index", check_mask_determinism);
  c.add("dropout.forward", "dropout/mask/dropped_fraction_is_consistent_with_p", check_dropped_fraction);
}

std::vector<harness::BadInput> Dropout::bad_inputs() {
  return {
      {"p_above_1_is_refused", "dropout.forward", [] { ops::dropout_forward(TensorD({2, 3}), {1.5}); },
       {"p (the drop probability) must be in [0, 1]", "got 1.5"}},
      {"negative_p_is_refused", "dropout.forward", [] { ops::dropout_forward(TensorD({2, 3}), {-0.1}); },
       {"p (the drop probability) must be in [0, 1]", "got -0.1"}},
      {"nan_p_is_refused", "dropout.forward", [] { ops::dropout_forward(TensorD({2, 3}), {std::nan("")}); },
       {"p (the drop probability) must be in [0, 1]", "got nan"}},
      {"y_of_the_wrong_shape_is_refused", "dropout.forward",
       [] {
         TensorD y({3, 2});
         ops::DropoutCache<double> c;
         ops::dropout_forward_into(TensorD({2, 3}), {}, y, c);
       },
       {"y (output) must have shape (2, 3)", "got (3, 2)"}},
      {"dy_of_the_wrong_shape_is_refused", "dropout.dx_fused",
       [] {
         const auto f = ops::dropout_forward(TensorD({2, 3}, 1.0));
         ops::dropout_backward(TensorD({2, 4}), f.cache);
       },
       {"dy (must match x) must have shape (2, 3)", "got (2, 4)"}},
      {"dx_of_the_wrong_shape_is_refused", "dropout.dx_fused",
       [] {
         const auto f = ops::dropout_forward(TensorD({2, 3}, 1.0));
         TensorD dx({6});
         ops::dropout_backward_into(f.y, f.cache, dx);
       },
       {"dx (output) must have shape (2, 3)", "got (6,)"}},
  };
}

template <class T>
harness::IntoCase into_case(const std::string& name, bool backward) {
  return {name + (sizeof(T) == 4 ? "_float" : "_double"), [backward] {
            struct State {
              Tensor<T> x{Shape{64, 1024}}, y{Shape{64, 1024}}, dx{Shape{64, 1024}};
              ops::DropoutCache<T> cache;
            };
            auto s = std::make_shared<State>();
            for (Index i = 0; i < s->x.size(); ++i) s->x[i] = T(static_cast<double>(i % 97) / 32);
            ops::dropout_forward_into<T>(s->x, {0.3, true, 9}, s->y, s->cache);
            if (backward) return std::function<void()>([s] { ops::dropout_backward_into<T>(s->y, s->cache, s->dx); });
            return std::function<void()>([s] { ops::dropout_forward_into<T>(s->x, {0.3, true, 9}, s->y, s->cache); });
          }};
}

std::vector<harness::IntoCase> Dropout::into_cases() {
  return {into_case<float>("dropout_forward_into", false), into_case<double>("dropout_forward_into", false),
          into_case<float>("dropout_backward_into", true), into_case<double>("dropout_backward_into", true)};
}

}  // namespace

void register_dropout(Registry& r) { harness::register_op<Dropout>(r); }

}  // namespace gradproof::catalog
