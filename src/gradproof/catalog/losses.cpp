// The declarations of the element-wise losses (mse_loss.*, bce_with_logits.*, huber_loss.*,
// smooth_l1_loss.*): one generic
// declaration, Loss<Traits>, and per loss a traits struct with what is particular to it (the
// formulas, the element-wise loss in long double, the sizes of its terms, the calls). The harness
// (harness/checks.hpp) makes the forward, oracle, target-gradient, staged = fused and
// negative-control checks; extra() adds the edge cases (large logits, an empty mean), the
// pitfall of the naive BCE, and the gradient at the seam of Huber and smooth L1.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/losses.hpp"

#include <cmath>
#include <memory>
#include <sstream>
#include <type_traits>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;
using ops::Reduction;

struct LossCase {
  Shape shape;
  std::string reduction = "mean";
  Shape weight{};      // BCE: the shape of weight; empty: none
  Shape pos_weight{};  // BCE: the shape of pos_weight; empty: none
  double param = 1.0;  // huber's delta, smooth L1's beta
};

struct LossProblem {
  Shape shape;
  std::string reduction;
  TensorD x, target, w;
  bool has_weight = false, has_pos_weight = false;
  TensorD weight, pos_weight;
  double param = 1.0;
  Index n() const { return x.size(); }
  // ∂y/∂ℓᵢ without dy: 1/n for the mean, else 1
  double s() const { return reduction == "mean" ? 1.0 / static_cast<double>(n()) : 1.0; }
  // the index of y (and of w) that element i feeds
  Index out(Index i) const { return reduction == "none" ? i : 0; }
};

// A broadcast value of a weight at element i of the input (PyTorch's rules; ops::detail::losses).
double at_broadcast(const TensorD& t, const Shape& shape, Index i) {
  std::vector<Index> stride;
  ops::detail::losses::broadcast(t, shape, "test", "w", stride);
  return t[ops::detail::losses::offset(i, shape, stride)];
}

// ----------------------------------------------------------------------------------------------
// The traits of each loss.

struct MseTraits {
  static constexpr const char* op = "mse_loss";
  static constexpr const char* fn = "mse_loss";
  static harness::Formulas formulas() {
    return {{"mse_loss.forward", "mse_loss forward: ℓᵢ = (xᵢ − tᵢ)², reduced by none / mean / sum"},
            {"mse_loss.dreduce", "∂y/∂ℓᵢ: dyᵢ (none), dy (sum), dy/n (mean)"},
            {"mse_loss.dl_dd", "∂ℓᵢ/∂dᵢ = 2dᵢ, d = x − t"},
            {"mse_loss.dx", "∂L/∂xᵢ = (∂L/∂dᵢ)·1 (staged)"},
            {"mse_loss.dtarget", "∂L/∂tᵢ = (∂L/∂dᵢ)·(−1)"},
            {"mse_loss.dx_fused", "mse_loss fused: dx = 2s(x − t), dtarget = −dx"}};
  }
  static harness::Cases<LossCase> cases() {
    return {.jacobian = {{{3, 4}, "mean"}, {{2, 3, 2}, "none"}, {{5}, "sum"}, {{1}, "mean"}, {{2, 2}, "none"}},
            .projection = {{{16, 64}, "mean"}, {{4, 8, 16}, "none"}},
            .ablation = {{{3, 4}, "mean"}, {{2, 3, 2}, "none"}, {{5}, "sum"}},
            .benchmark = {{{1024, 1024}, "mean"}}};
  }
  using Terms = ops::PointwiseLossTermScales;
  static harness::Ablation<Terms> ablation() {
    return {{"mse_loss.dreduce", &Terms::dreduce},
            {"mse_loss.dl_dd", &Terms::dl_dd},
            {"mse_loss.dx", &Terms::dx},
            {"mse_loss.dtarget", &Terms::dtarget}};
  }
  static void sample(LossProblem& p, Rng& rng) {
    p.x = rng.normal_tensor(p.shape);
    p.target = rng.normal_tensor(p.shape);
  }
  static std::vector<std::pair<std::string, double>> options(const LossProblem&) { return {}; }
  template <class S>
  static ops::LossForward<S> forward(const LossProblem& p, const Tensor<S>& x, const Tensor<S>& t,
                                     const Tensor<S>*, const Tensor<S>*) {
    return ops::mse_loss_forward(x, t, {p.reduction});
  }
  template <class T>
  static ops::LossGrads<T> backward(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>& t, const Tensor<T>*,
                                    const Tensor<T>*, const ops::LossCache<T>& c, Pass pass, const Terms& terms) {
    return pass == Pass::staged ? ops::mse_loss_backward_staged(dy, x, t, c, terms) : ops::mse_loss_backward(dy, x, t, c);
  }
  // ℓᵢ in long double, and the size of its terms: (|x| + |t|)², the rounding of d = x − t squared
  static long double ell(const LossProblem& p, Index i, long double& mag) {
    const long double d = static_cast<long double>(p.x[i]) - p.target[i];
    mag = std::pow(std::abs(p.x[i]) + std::abs(p.target[i]), 2.0L);
    return d * d;
  }
  // the size of the terms of ∂ℓᵢ/∂xᵢ and ∂ℓᵢ/∂tᵢ: 2(|x| + |t|) (d cancels)
  static double dmag(const LossProblem& p, Index i, std::size_t) { return 2 * (std::abs(p.x[i]) + std::abs(p.target[i])); }
};

struct BceTraits {
  static constexpr const char* op = "bce_with_logits";
  static constexpr const char* fn = "binary_cross_entropy_with_logits";
  static harness::Formulas formulas() {
    return {{"bce_with_logits.forward",
             "BCE with logits forward: ℓ = w[(1 − t)x + l·sp(−x)], l = 1 + (p − 1)t; max(x,0) − xt + log(1+e^{−|x|}) "
             "without pos_weight"},
            {"bce_with_logits.dreduce", "∂y/∂ℓᵢ: dyᵢ (none), dy (sum), dy/n (mean)"},
            {"bce_with_logits.weighting", "∂ℓᵢ/∂uᵢ = wᵢ (the weight, a constant)"},
            {"bce_with_logits.du_dx", "∂u/∂x = (1 − t) − l·σ(−x); σ(x) − t without pos_weight"},
            {"bce_with_logits.du_dt", "∂u/∂t = −x + (p − 1)·sp(−x); −x without pos_weight"},
            {"bce_with_logits.dx", "∂L/∂x = s·w·∂u/∂x (staged)"},
            {"bce_with_logits.dtarget", "∂L/∂t = s·w·∂u/∂t (staged)"},
            {"bce_with_logits.dx_fused", "BCE with logits fused: dx = s w (σ(x) − t) (or with l), dtarget = s w ∂u/∂t"}};
  }
  static harness::Cases<LossCase> cases() {
    return {.jacobian = {{{3, 4}, "mean"},
                         {{2, 3, 2}, "none", {2, 3, 2}},
                         {{4, 3}, "sum", {}, {3}},
                         {{2, 3}, "mean", {2, 1}, {3}},
                         {{1}, "none"}},
            .projection = {{{16, 64}, "mean", {64}, {64}}, {{4, 8, 16}, "none"}},
            .ablation = {{{3, 4}, "mean"}, {{2, 3, 2}, "none", {2, 3, 2}}, {{4, 3}, "sum", {}, {3}}},
            .benchmark = {{{1024, 1024}, "mean", {}, {1024}}}};
  }
  using Terms = ops::BCEWithLogitsTermScales;
  static harness::Ablation<Terms> ablation() {
    return {{"bce_with_logits.dreduce", &Terms::dreduce},
            {"bce_with_logits.weighting", &Terms::weighting},
            {"bce_with_logits.du_dx", &Terms::du_dx},
            {"bce_with_logits.du_dt", &Terms::du_dt}};
  }
  // logits spread over ±4, soft targets in (0, 1), weights and pos_weights in (0.5, 2)
  static void sample(LossProblem& p, Rng& rng) {
    p.x = TensorD(p.shape);
    p.target = TensorD(p.shape);
    for (Index i = 0; i < p.x.size(); ++i) p.x[i] = rng.uniform(-4, 4);
    for (Index i = 0; i < p.x.size(); ++i) p.target[i] = rng.uniform(0.05, 0.95);
    for (TensorD* t : {&p.weight, &p.pos_weight})
      for (Index i = 0; i < t->size(); ++i) (*t)[i] = rng.uniform(0.5, 2);
  }
  static std::vector<std::pair<std::string, double>> options(const LossProblem&) { return {}; }
  template <class S>
  static ops::LossForward<S> forward(const LossProblem& p, const Tensor<S>& x, const Tensor<S>& t, const Tensor<S>* w,
                                     const Tensor<S>* pw) {
    return ops::binary_cross_entropy_with_logits_forward(x, t, w, pw, {p.reduction});
  }
  template <class T>
  static ops::LossGrads<T> backward(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>& t, const Tensor<T>* w,
                                    const Tensor<T>* pw, const ops::LossCache<T>& c, Pass pass, const Terms& terms) {
    return pass == Pass::staged ? ops::binary_cross_entropy_with_logits_backward_staged(dy, x, t, w, pw, c, terms)
                                : ops::binary_cross_entropy_with_logits_backward(dy, x, t, w, pw, c);
  }
  static double wt(const LossProblem& p, Index i) { return p.has_weight ? at_broadcast(p.weight, p.shape, i) : 1.0; }
  static double pw(const LossProblem& p, Index i) {
    return p.has_pos_weight ? at_broadcast(p.pos_weight, p.shape, i) : 1.0;
  }
  static long double ell(const LossProblem& p, Index i, long double& mag) {
    const long double x = p.x[i], t = p.target[i], l = 1 + (static_cast<long double>(pw(p, i)) - 1) * t;
    const long double sp = std::max(-x, 0.0L) + std::log1p(std::exp(-std::abs(x)));
    mag = std::abs(wt(p, i)) * (std::abs((1 - t) * x) + std::abs(l) * sp);
    return wt(p, i) * ((1 - t) * x + l * sp);
  }
  static double dmag(const LossProblem& p, Index i, std::size_t k) {
    const double x = p.x[i], t = p.target[i], q = pw(p, i), l = 1 + (q - 1) * t;
    if (k == 0) return std::abs(wt(p, i)) * (std::abs(1 - t) + std::abs(l) / (1 + std::exp(x)));
    return std::abs(wt(p, i)) * (std::abs(x) + std::abs(q - 1) * (std::max(-x, 0.0) + std::log1p(std::exp(-std::abs(x)))));
  }
};

// Huber and smooth L1: ℓ(d) quadratic for |d| < b, linear outside. The samples keep |d| away from
// the seam b (second-derivative kink) and, for smooth L1 with β = 0, away from the kink at d = 0:
// |d| ∈ [0.1b, 0.8b] ∪ [1.25b, 3b] (|d| ∈ [0.1, 2] for β = 0).
template <class Self>
struct PiecewiseTraits {
  static void sample(LossProblem& p, Rng& rng) {
    p.x = rng.normal_tensor(p.shape);
    p.target = TensorD(p.shape);
    const double b = p.param;
    for (Index i = 0; i < p.x.size(); ++i) {
      const double ad = b == 0 ? rng.uniform(0.1, 2) : (i % 2 ? rng.uniform(0.1 * b, 0.8 * b) : rng.uniform(1.25 * b, 3 * b));
      p.target[i] = p.x[i] - (rng.uniform(0, 1) < 0.5 ? -ad : ad);
    }
  }
  using Terms = ops::PointwiseLossTermScales;
  static harness::Ablation<Terms> ablation() {
    const std::string o = Self::op;
    return {{o + ".dreduce", &Terms::dreduce}, {o + ".dl_dd", &Terms::dl_dd}, {o + ".dx", &Terms::dx},
            {o + ".dtarget", &Terms::dtarget}};
  }
  static harness::Cases<LossCase> cases() {
    return {.jacobian = {{{3, 4}, "mean"}, {{2, 3, 2}, "none", {}, {}, 0.5}, {{5}, "sum", {}, {}, 2.0}, {{2, 2}, "none"}},
            .projection = {{{16, 64}, "mean"}, {{4, 8, 16}, "none", {}, {}, 0.5}},
            .ablation = {{{3, 4}, "mean"}, {{2, 3, 2}, "none", {}, {}, 0.5}, {{5}, "sum", {}, {}, 2.0}},
            .benchmark = {{{1024, 1024}, "mean"}}};
  }
  static std::vector<std::pair<std::string, double>> options(const LossProblem& p) { return {{Self::param_name, p.param}}; }
  static double dmag(const LossProblem& p, Index i, std::size_t) {
    const double d = p.x[i] - p.target[i], b = p.param;
    if (std::abs(d) < b) return (std::abs(p.x[i]) + std::abs(p.target[i])) * (Self::is_huber ? 1 : 1 / b);
    return Self::is_huber ? b : 1.0;
  }
  static long double ell(const LossProblem& p, Index i, long double& mag) {
    const long double d = static_cast<long double>(p.x[i]) - p.target[i], ad = std::abs(d), b = p.param;
    const long double xt = std::abs(p.x[i]) + std::abs(p.target[i]);
    if (ad < b) {
      mag = 0.5L * xt * xt * (Self::is_huber ? 1 : 1 / b);
      return 0.5L * d * d * (Self::is_huber ? 1 : 1 / b);
    }
    mag = (Self::is_huber ? b : 1) * (xt + 0.5L * b);
    return Self::is_huber ? b * (ad - 0.5L * b) : ad - 0.5L * b;
  }
};

struct HuberTraits : PiecewiseTraits<HuberTraits> {
  static constexpr const char* op = "huber_loss";
  static constexpr const char* fn = "huber_loss";
  static constexpr const char* param_name = "delta";
  static constexpr bool is_huber = true;
  static harness::Formulas formulas() {
    return {{"huber_loss.forward", "huber_loss forward: ℓ = ½d² for |d| < δ, δ(|d| − ½δ) otherwise, d = x − t"},
            {"huber_loss.dreduce", "∂y/∂ℓᵢ: dyᵢ (none), dy (sum), dy/n (mean)"},
            {"huber_loss.dl_dd", "∂ℓ/∂d = clamp(d, −δ, δ) (±δ at |d| = δ, as PyTorch)"},
            {"huber_loss.dx", "∂L/∂xᵢ = (∂L/∂dᵢ)·1 (staged)"},
            {"huber_loss.dtarget", "∂L/∂tᵢ = (∂L/∂dᵢ)·(−1)"},
            {"huber_loss.dx_fused", "huber_loss fused: dx = s·clamp(d, −δ, δ), dtarget = −dx"}};
  }
  template <class S>
  static ops::LossForward<S> forward(const LossProblem& p, const Tensor<S>& x, const Tensor<S>& t, const Tensor<S>*,
                                     const Tensor<S>*) {
    return ops::huber_loss_forward(x, t, {p.reduction, p.param});
  }
  template <class T>
  static ops::LossGrads<T> backward(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>& t, const Tensor<T>*,
                                    const Tensor<T>*, const ops::LossCache<T>& c, Pass pass, const Terms& terms) {
    return pass == Pass::staged ? ops::huber_loss_backward_staged(dy, x, t, c, terms) : ops::huber_loss_backward(dy, x, t, c);
  }
};

struct SmoothL1Traits : PiecewiseTraits<SmoothL1Traits> {
  static constexpr const char* op = "smooth_l1_loss";
  static constexpr const char* fn = "smooth_l1_loss";
  static constexpr const char* param_name = "beta";
  static constexpr bool is_huber = false;
  static harness::Formulas formulas() {
    return {{"smooth_l1_loss.forward", "smooth_l1_loss forward: ℓ = ½d²/β for |d| < β, |d| − ½β otherwise (|d| for β = 0)"},
            {"smooth_l1_loss.dreduce", "∂y/∂ℓᵢ: dyᵢ (none), dy (sum), dy/n (mean)"},
            {"smooth_l1_loss.dl_dd", "∂ℓ/∂d = clamp(d/β, −1, 1) (±1 at |d| = β, as PyTorch)"},
            {"smooth_l1_loss.dx", "∂L/∂xᵢ = (∂L/∂dᵢ)·1 (staged)"},
            {"smooth_l1_loss.dtarget", "∂L/∂tᵢ = (∂L/∂dᵢ)·(−1)"},
            {"smooth_l1_loss.dx_fused", "smooth_l1_loss fused: dx = s·clamp(d/β, −1, 1), dtarget = −dx"}};
  }
  template <class S>
  static ops::LossForward<S> forward(const LossProblem& p, const Tensor<S>& x, const Tensor<S>& t, const Tensor<S>*,
                                     const Tensor<S>*) {
    return ops::smooth_l1_loss_forward(x, t, {p.reduction, p.param});
  }
  template <class T>
  static ops::LossGrads<T> backward(const Tensor<T>& dy, const Tensor<T>& x, const Tensor<T>& t, const Tensor<T>*,
                                    const Tensor<T>*, const ops::LossCache<T>& c, Pass pass, const Terms& terms) {
    return pass == Pass::staged ? ops::smooth_l1_loss_backward_staged(dy, x, t, c, terms)
                                : ops::smooth_l1_loss_backward(dy, x, t, c);
  }
};

// ----------------------------------------------------------------------------------------------
// The generic declaration.

template <class Tr>
struct Loss {
  static constexpr const char* op = Tr::op;
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = Tr::formulas();
    return f;
  }
  using Case = LossCase;
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = Tr::cases();
    return c;
  }
  using Problem = LossProblem;
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 14695981039346656037ull;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    for (char ch : c.reduction) h = (h ^ static_cast<std::uint64_t>(ch)) * 1099511628211ull;
    return (h ^ (c.weight.size() * 7 + c.pos_weight.size())) * 1099511628211ull;
  }
  static constexpr std::uint64_t benchmark_seed = 2024;
  static Problem problem(const Case& c, std::uint64_t seed) {
    Rng rng(seed);
    Problem p{c.shape, c.reduction, {}, {}, {}, false, false, {}, {}, c.param};
    p.param = c.param;
    p.has_weight = !c.weight.empty();
    p.has_pos_weight = !c.pos_weight.empty();
    p.weight = TensorD(p.has_weight ? c.weight : Shape{0});
    p.pos_weight = TensorD(p.has_pos_weight ? c.pos_weight : Shape{0});
    Tr::sample(p, rng);
    p.w = rng.normal_tensor(c.reduction == "none" ? c.shape : Shape{});
    return p;
  }
  static std::string describe(const Problem& p) {
    std::string s = std::string(Tr::fn) + ", input " + to_string(p.shape) + ", reduction=\"" + p.reduction + "\"";
    if (p.has_weight) s += ", weight " + to_string(p.weight.shape());
    if (p.has_pos_weight) s += ", pos_weight " + to_string(p.pos_weight.shape());
    for (const auto& [k, v] : Tr::options(p)) s += ", " + k + "=" + std::to_string(v).substr(0, 4);
    return s;
  }
  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}, {"target"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t k) { return k == 0 ? p.x : p.target; }
  static std::vector<std::pair<std::string, double>> options(const Problem& p) {
    auto o = Tr::options(p);
    o.push_back({"reduction", p.reduction == "none" ? 0.0 : p.reduction == "mean" ? 1.0 : 2.0});  // at::Reduction
    return o;
  }
  // `gradproof check`: input x and target of one shape (both differentiated), reduction and
  // huber's delta or smooth L1's beta with PyTorch's defaults ('mean', 1.0); BCE's weight and
  // pos_weight as arrays (broadcast as PyTorch does; the op refuses shapes that do not).
  static std::vector<std::string> check_options() {
    if constexpr (requires { Tr::param_name; })
      return {"reduction", Tr::param_name};
    else
      return {"reduction"};
  }
  static std::vector<std::string> check_arrays() {
    if constexpr (std::is_same_v<Tr, BceTraits>)
      return {"weight", "pos_weight"};
    else
      return {};
  }
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in(op, ua);
    const TensorD &x = in.input(0), &t = in.input(1);
    in.not_empty("x", x);
    in.shape("target", t.shape(), x.shape(), "the shape of x");
    Problem p{x.shape(),         in.reduction(),    x,  t, in.dy(), false, false,
              TensorD(Shape{0}), TensorD(Shape{0}), 1.0};
    if constexpr (requires { Tr::param_name; }) p.param = in.number(Tr::param_name, 1.0);
    if constexpr (std::is_same_v<Tr, BceTraits>) {
      if (const auto* w = in.array("weight")) p.has_weight = true, p.weight = w->values;
      if (const auto* pw = in.array("pos_weight"))
        p.has_pos_weight = true, p.pos_weight = pw->values;
    }
    if (p.reduction == "none")
      in.shape("dy", in.dy().shape(), x.shape(), "reduction 'none': the shape of x");
    else
      in.shape("dy", in.dy().shape(), Shape{}, "reduction '" + p.reduction + "': the shape of y");
    return p;
  }
  static std::vector<std::pair<std::string, TensorD>> constants(const Problem& p) {
    std::vector<std::pair<std::string, TensorD>> c;
    if (p.has_weight) c.push_back({"weight", p.weight});
    if (p.has_pos_weight) c.push_back({"pos_weight", p.pos_weight});
    return c;
  }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    const Tensor<S> w = p.weight.cast<S>(), pw = p.pos_weight.cast<S>();
    return Tr::forward(p, in[0], in[1], p.has_weight ? &w : nullptr, p.has_pos_weight ? &pw : nullptr).y;
  }
  template <class T>
  struct Prepared {
    Tensor<T> x, target, weight, pos_weight;
    bool has_weight = false, has_pos_weight = false;
    ops::LossForward<T> fwd;
    const Tensor<T>* w() const { return has_weight ? &weight : nullptr; }
    const Tensor<T>* pw() const { return has_pos_weight ? &pos_weight : nullptr; }
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    auto pr = std::make_shared<Prepared<T>>(Prepared<T>{p.x.cast<T>(), p.target.cast<T>(), p.weight.cast<T>(),
                                                        p.pos_weight.cast<T>(), p.has_weight, p.has_pos_weight, {}});
    pr->fwd = Tr::forward(p, pr->x, pr->target, pr->w(), pr->pw());
    return pr;
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  using Terms = typename Tr::Terms;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    auto g = Tr::backward(dy, pr.x, pr.target, pr.w(), pr.pw(), pr.fwd.cache, pass, t);
    return {std::move(g.dx), std::move(g.dtarget)};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = Tr::ablation();
    return a;
  }
  static std::string ablation_summary() {
    return "Every term is caught: the reduction's scale, each factor of the element-wise derivative, and the\n"
           "last steps of dx and dtarget (each caught through its own gradient).";
  }

  // y in long double; the scale is that of the terms (summed for a reduction).
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    Eigen::VectorXd y = Eigen::VectorXd::Zero(p.reduction == "none" ? p.n() : 1);
    long double acc = 0, magsum = 0;
    scale = 0;
    for (Index i = 0; i < p.n(); ++i) {
      long double mag = 0;
      const long double e = Tr::ell(p, i, mag);
      if (p.reduction == "none") y[i] = static_cast<double>(e), scale = std::max(scale, static_cast<double>(mag));
      acc += e;
      magsum += mag;
    }
    if (p.reduction != "none") {
      y[0] = static_cast<double>(p.reduction == "mean" ? acc / p.n() : acc);
      scale = static_cast<double>(p.reduction == "mean" ? magsum / p.n() : magsum);
    }
    return y;
  }
  // ∂yⱼ/∂xᵢ = s ∂ℓᵢ/∂xᵢ (diagonal for none, one row for a reduction)
  static double jacobian_scale(const Prepared<double>&, const Problem& p) {
    double m = 0;
    for (Index i = 0; i < p.n(); ++i) m = std::max(m, p.s() * Tr::dmag(p, i, 0));
    return m;
  }
  static double projection_scale(const Prepared<double>&, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    double total = 0;
    for (Index i = 0; i < p.n(); ++i) total += std::abs(v[p.out(i)] * u[i]) * p.s() * Tr::dmag(p, i, 0);
    return total;
  }
  static double grad_scale(const Problem& p, const TensorD& dy, std::size_t k) {
    double m = 0;
    for (Index i = 0; i < p.n(); ++i) m = std::max(m, std::abs(dy[p.out(i)]) * p.s() * Tr::dmag(p, i, k));
    return m;
  }
  static double dx_scale(const Prepared<double>&, const Problem& p, const TensorD& dy) { return grad_scale(p, dy, 0); }
  static double param_scale(const Prepared<double>&, const Problem& p, std::size_t k) { return grad_scale(p, p.w, k); }

  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<Loss>& c);
};

// ----------------------------------------------------------------------------------------------
// Edge cases shared by the losses: the mean over an empty input.

// PyTorch: mse_loss(empty, empty) (and every mean-reduced loss) is 0/0 = nan; sum is 0; none is empty.
template <class Tr>
std::vector<ResultRow> check_empty_mean(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const char* red : {"mean", "sum", "none"}) {
    LossProblem p = Loss<Tr>::problem({{0, 3}, red}, 1);
    const auto pr = Loss<Tr>::template prepare<double>(p);
    const auto g = Loss<Tr>::backward(*pr, TensorD(pr->fwd.cache.y_shape, 1.0), Pass::fused);
    ResultRow row{std::string(Tr::op) + ".forward", test, "identity", "float64", "edge", {0, 3}};
    const TensorD& y = pr->fwd.y;
    const std::string r(red);
    row.passed = g[0].size() == 0 && g[1].size() == 0 &&
                 (r == "mean" ? y.size() == 1 && std::isnan(y[0]) : r == "sum" ? y.size() == 1 && y[0] == 0 : y.size() == 0);
    row.analytic = y.size() ? y[0] : 0;
    row.note = std::string("input of shape (0, 3), reduction=\"") + red + "\": y = " +
               (r == "mean" ? "NaN (0/0), as PyTorch gives" : r == "sum" ? "0, as PyTorch gives" : "an empty tensor") +
               "; dx and dtarget are empty";
    rows.push_back(row);
  }
  return rows;
}

// ----------------------------------------------------------------------------------------------
// BCE: logits far from 0, and the naive form's overflow.

// Logits ±1e3 and ±1e4: the stable forward and both gradients are finite and match a long-double
// recomputation (σ(x) − t and −x per element, reduction "none").
std::vector<ResultRow> check_large_logits(const std::string& formula, const std::string& test, std::size_t k) {
  std::vector<ResultRow> rows;
  for (double mag : {1e3, 1e4}) {
    LossProblem p = Loss<BceTraits>::problem({{2, 4}, "none"}, 3);
    for (Index i = 0; i < p.n(); ++i) p.x[i] = (i % 2 ? -mag : mag) * (1 + 0.01 * static_cast<double>(i));
    const auto pr = Loss<BceTraits>::prepare<double>(p);
    Eigen::VectorXd ref(p.n());
    double scale = 0;
    if (formula == "bce_with_logits.forward") {
      ref = Loss<BceTraits>::reference(p, scale);
    } else {
      for (Index i = 0; i < p.n(); ++i) {
        const long double x = p.x[i], t = p.target[i], sig = x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x));
        const long double g = static_cast<long double>(p.w[i]) * (k == 0 ? sig - t : -x);
        ref[i] = static_cast<double>(g);
        scale = std::max(scale, std::abs(p.w[i]) * (k == 0 ? 1.0 : std::abs(p.x[i])));
      }
    }
    for (Pass pass : {Pass::staged, Pass::fused}) {
      const Eigen::VectorXd got =
          formula == "bce_with_logits.forward" ? as_f64(pr->fwd.y) : as_f64(Loss<BceTraits>::backward(*pr, p.w, pass)[k]);
      ResultRow row = oracle_row({formula, test, "reference", "float64", "edge", p.shape, ""}, Oracle::complex_step, got,
                                 ref, {p.n()}, scale);
      row.passed = row.passed && got.allFinite();
      std::ostringstream note;
      note << "logits ±" << mag << ": " << (formula == "bce_with_logits.forward" ? "the stable forward ℓ" : k == 0 ? "dx" : "dtarget")
           << " is finite and matches a long-double recomputation (" << harness::name(pass) << " backward, max error "
           << row.max_abs_err << ")";
      row.note = note.str();
      rows.push_back(row);
      if (formula == "bce_with_logits.forward") break;
    }
  }
  return rows;
}

// The naive −[t log σ(x) + (1 − t) log(1 − σ(x))]: at x = 1e3, σ(x) = 1 and log(1 − σ) = −inf;
// at x = −1e3, e^{−x} overflows, σ = 0, log σ = −inf. With t = 1 at x = 1e3 it is 0·(−inf) = NaN.
std::vector<ResultRow> check_naive_bce(const std::string& test) {
  const double xs[] = {1e3, -1e3, 1e3}, ts[] = {0.3, 0.3, 1.0};
  Index bad = 0, nans = 0;
  Eigen::VectorXd stable(3), ref(3);
  for (int i = 0; i < 3; ++i) {
    const double x = xs[i], t = ts[i], sig = 1 / (1 + std::exp(-x));
    const double naive = -(t * std::log(sig) + (1 - t) * std::log(1 - sig));
    bad += !std::isfinite(naive);
    nans += std::isnan(naive);
    const TensorD tx({1}, x), tt({1}, t);
    stable[i] = ops::binary_cross_entropy_with_logits_forward(tx, tt, nullptr, nullptr, {"none"}).y[0];
    const long double lx = x;
    ref[i] = static_cast<double>(std::max(lx, 0.0L) - lx * t + std::log1p(std::exp(-std::abs(lx))));
  }
  ResultRow row = oracle_row({"bce_with_logits.forward", test, "reference", "float64", "pitfall", {3}, ""},
                             Oracle::complex_step, stable, ref, {3}, 1e3);
  row.passed = row.passed && bad == 3 && nans == 1;
  std::ostringstream note;
  note << "x = 1e3, −1e3 (t = 0.3) and 1e3 (t = 1): the naive −[t log σ(x) + (1 − t) log(1 − σ(x))] is not finite in "
       << bad << " of 3 (inf, inf, NaN: " << nans << " NaN); the stable form gives " << stable[0] << ", " << stable[1]
       << ", " << stable[2] << ", matching long double";
  row.note = note.str();
  return {row};
}

template <>
void Loss<MseTraits>::extra(harness::Checks<Loss<MseTraits>>& c) {
  c.add("mse_loss.forward", "mse_loss/edge/mean_over_an_empty_input_is_nan", check_empty_mean<MseTraits>);
}

template <>
void Loss<BceTraits>::extra(harness::Checks<Loss<BceTraits>>& c) {
  c.add("bce_with_logits.forward", "bce_with_logits/edge/mean_over_an_empty_input_is_nan", check_empty_mean<BceTraits>);
  c.add("bce_with_logits.forward", "bce_with_logits/edge/forward_is_finite_at_logits_1e3_and_1e4",
        [](const std::string& t) { return check_large_logits("bce_with_logits.forward", t, 0); });
  c.add("bce_with_logits.dx", "bce_with_logits/edge/dx_is_finite_at_logits_1e3_and_1e4",
        [](const std::string& t) { return check_large_logits("bce_with_logits.dx", t, 0); });
  c.add("bce_with_logits.dtarget", "bce_with_logits/edge/dtarget_is_finite_at_logits_1e3_and_1e4",
        [](const std::string& t) { return check_large_logits("bce_with_logits.dtarget", t, 1); });
  c.add("bce_with_logits.forward", "bce_with_logits/pitfalls/naive_bce_overflows_at_large_logits", check_naive_bce);
}

// ----------------------------------------------------------------------------------------------
// Huber and smooth L1 at the seam |d| = b (and smooth L1's kink at d = 0 for β = 0): the
// gradient used there lies between the one-sided difference quotients of ℓ, computed in long
// double from the definition (not from the code under test).
template <class Tr>
std::vector<ResultRow> check_seam(const std::string& test) {
  std::vector<ResultRow> rows;
  const std::vector<std::pair<double, double>> at = Tr::is_huber
      ? std::vector<std::pair<double, double>>{{1.0, 1.0}, {1.0, -1.0}, {0.5, 0.5}, {0.5, -0.5}}
      : std::vector<std::pair<double, double>>{{1.0, 1.0}, {1.0, -1.0}, {2.0, 2.0}, {0.0, 0.0}};  // (b, d)
  for (const auto& bd : at) {
    // Not a structured binding: clang 14 (the fuzz preset) cannot capture one in a lambda.
    const double b = bd.first, d = bd.second;
    const double t = 0.25, x = t + d;  // exact in binary: d = x − t is ±b exactly
    const auto ell = [b](long double dd) {
      const long double ad = std::abs(dd), bb = b;
      if (Tr::is_huber) return ad < bb ? 0.5L * dd * dd : bb * (ad - 0.5L * bb);
      if (bb == 0) return ad;
      return ad < bb ? 0.5L * dd * dd / bb : ad - 0.5L * bb;
    };
    const long double h = 1e-6L;
    const long double right = (ell(d + h) - ell(d)) / h, left = (ell(d) - ell(d - h)) / h;
    LossProblem p = Loss<Tr>::problem({{1}, "none", {}, {}, b}, 1);
    p.x[0] = x;
    p.target[0] = t;
    p.w[0] = 1;
    const auto pr = Loss<Tr>::template prepare<double>(p);
    for (Pass pass : {Pass::staged, Pass::fused}) {
      const double g = Loss<Tr>::backward(*pr, p.w, pass)[0][0];
      const long double lo = std::min(left, right), hi = std::max(left, right), tol = 1e-12L;
      ResultRow row{std::string(Tr::op) + ".dl_dd", test, "one_sided_quotients", "float64", "kink", {1}};
      row.analytic = g;
      row.numeric = static_cast<double>(0.5L * (lo + hi));
      row.passed = g >= lo - tol && g <= hi + tol;
      std::ostringstream note;
      note << Tr::param_name << " = " << b << ", d = x − t = " << d << (d == 0 ? " (the kink of |d|)" : " (the seam |d| = b)")
           << ": the " << harness::name(pass) << " backward uses ∂ℓ/∂d = " << g << "; the one-sided quotients (h = 1e-6, long double) are "
           << static_cast<double>(left) << " (left) and " << static_cast<double>(right) << " (right)";
      row.note = note.str();
      rows.push_back(row);
    }
  }
  return rows;
}

template <class Tr>
std::vector<harness::BadInput> piecewise_bad_inputs() {
  const std::string o = Tr::op;
  const auto fwd = [](const TensorD& x, const TensorD& t, const std::string& r, double b) {
    if constexpr (Tr::is_huber) ops::huber_loss_forward(x, t, {r, b});
    else ops::smooth_l1_loss_forward(x, t, {r, b});
  };
  std::vector<harness::BadInput> v = {
      {"target_of_another_shape_is_refused", o + ".forward", [fwd] { fwd(TensorD({2, 3}), TensorD({3}), "mean", 1.0); },
       {"target must have the shape of input (2, 3)", "got (3,)"}},
      {"unknown_reduction_is_refused", o + ".forward", [fwd] { fwd(TensorD({2}), TensorD({2}), "max", 1.0); },
       {"reduction must be \"none\", \"mean\" or \"sum\"", "got \"max\""}},
      {"dy_of_the_wrong_shape_is_refused", o + ".dx_fused",
       [] {
         const TensorD x({2, 3}, 0.5), t({2, 3}, 0.25);
         if constexpr (Tr::is_huber) {
           const auto f = ops::huber_loss_forward(x, t);
           ops::huber_loss_backward(TensorD({2, 3}), x, t, f.cache);
         } else {
           const auto f = ops::smooth_l1_loss_forward(x, t);
           ops::smooth_l1_loss_backward(TensorD({2, 3}), x, t, f.cache);
         }
       },
       {"dy (must match y) must have shape ()", "got (2, 3)"}},
  };
  if constexpr (Tr::is_huber) {
    v.push_back({"non_positive_delta_is_refused", o + ".forward", [fwd] { fwd(TensorD({2}), TensorD({2}), "mean", 0.0); },
                 {"huber_loss: delta must be > 0", "got 0"}});
  } else {
    v.push_back({"negative_beta_is_refused", o + ".forward", [fwd] { fwd(TensorD({2}), TensorD({2}), "mean", -0.5); },
                 {"smooth_l1_loss: beta must be >= 0", "got -0.5"}});
  }
  return v;
}

// ----------------------------------------------------------------------------------------------
// Refused inputs and the allocation-free calls.

template <>
std::vector<harness::BadInput> Loss<MseTraits>::bad_inputs() {
  using ops::mse_loss_forward;
  return {
      {"target_of_another_shape_is_refused", "mse_loss.forward", [] { mse_loss_forward(TensorD({2, 3}), TensorD({3, 2})); },
       {"target must have the shape of input (2, 3)", "got (3, 2)"}},
      {"unknown_reduction_is_refused", "mse_loss.forward",
       [] { mse_loss_forward(TensorD({2, 3}), TensorD({2, 3}), {"avg"}); },
       {"reduction must be \"none\", \"mean\" or \"sum\"", "got \"avg\""}},
      {"y_of_the_wrong_shape_is_refused", "mse_loss.forward",
       [] {
         TensorD y({2, 3});
         ops::LossCache<double> c;
         ops::mse_loss_forward_into(TensorD({2, 3}), TensorD({2, 3}), {}, y, c);
       },
       {"y (output) must have shape ()", "got (2, 3)"}},
      {"dy_of_the_wrong_shape_is_refused", "mse_loss.dx_fused",
       [] {
         const TensorD x({2, 3}, 0.5), t({2, 3}, 0.25);
         const auto f = mse_loss_forward(x, t, {"none"});
         ops::mse_loss_backward(TensorD(Shape{}), x, t, f.cache);
       },
       {"dy (must match y) must have shape (2, 3)", "got ()"}},
      {"a_cache_of_another_input_is_refused", "mse_loss.dx",
       [] {
         const TensorD x({2, 3}, 0.5), t({2, 3}, 0.25);
         const auto f = mse_loss_forward(x, t);
         ops::mse_loss_backward_staged(f.y, TensorD({3, 3}), TensorD({3, 3}), f.cache);
       },
       {"cache was made for input of shape (2, 3)", "input has shape (3, 3)"}},
      {"dtarget_of_the_wrong_shape_is_refused", "mse_loss.dx_fused",
       [] {
         const TensorD x({2, 3}, 0.5), t({2, 3}, 0.25);
         const auto f = mse_loss_forward(x, t);
         TensorD dx({2, 3}), dt({6});
         ops::mse_loss_backward_into(f.y, x, t, f.cache, &dx, &dt);
       },
       {"dtarget (output) must have shape (2, 3)", "got (6,)"}},
  };
}

template <>
std::vector<harness::BadInput> Loss<BceTraits>::bad_inputs() {
  using ops::binary_cross_entropy_with_logits_forward;
  return {
      {"target_of_another_shape_is_refused", "bce_with_logits.forward",
       [] { binary_cross_entropy_with_logits_forward(TensorD({2, 3}), TensorD({2, 4})); },
       {"target must have the shape of input (2, 3)", "got (2, 4)"}},
      {"weight_that_does_not_broadcast_is_refused", "bce_with_logits.forward",
       [] {
         const TensorD w({2});
         binary_cross_entropy_with_logits_forward(TensorD({2, 3}), TensorD({2, 3}), &w);
       },
       {"weight of shape (2,) cannot be broadcast to input of shape (2, 3)"}},
      {"pos_weight_that_does_not_broadcast_is_refused", "bce_with_logits.forward",
       [] {
         const TensorD pw({4, 2, 3});
         binary_cross_entropy_with_logits_forward(TensorD({2, 3}), TensorD({2, 3}), nullptr, &pw);
       },
       {"pos_weight of shape (4, 2, 3) cannot be broadcast to input of shape (2, 3)"}},
      {"unknown_reduction_is_refused", "bce_with_logits.forward",
       [] { binary_cross_entropy_with_logits_forward(TensorD({2}), TensorD({2}), nullptr, nullptr, {"elementwise_mean"}); },
       {"reduction must be \"none\", \"mean\" or \"sum\"", "got \"elementwise_mean\""}},
      {"weight_missing_in_the_backward_is_refused", "bce_with_logits.dx_fused",
       [] {
         const TensorD x({2}, 0.5), t({2}, 0.25), w({2}, 1.0);
         const auto f = binary_cross_entropy_with_logits_forward(x, t, &w);
         ops::binary_cross_entropy_with_logits_backward(f.y, x, t, nullptr, nullptr, f.cache);
       },
       {"weight and pos_weight must be given to the backward as to the forward", "weight given"}},
      {"dy_of_the_wrong_shape_is_refused", "bce_with_logits.dx",
       [] {
         const TensorD x({2, 3}, 0.5), t({2, 3}, 0.25);
         const auto f = binary_cross_entropy_with_logits_forward(x, t);
         ops::binary_cross_entropy_with_logits_backward_staged(TensorD({2, 3}), x, t, nullptr, nullptr, f.cache);
       },
       {"dy (must match y) must have shape ()", "got (2, 3)"}},
      {"dx_of_the_wrong_shape_is_refused", "bce_with_logits.dx_fused",
       [] {
         const TensorD x({2, 3}, 0.5), t({2, 3}, 0.25);
         const auto f = binary_cross_entropy_with_logits_forward(x, t);
         TensorD dx({3, 2});
         ops::binary_cross_entropy_with_logits_backward_into(f.y, x, t, nullptr, nullptr, f.cache, &dx, nullptr);
       },
       {"dx (output) must have shape (2, 3)", "got (3, 2)"}},
  };
}

template <>
void Loss<HuberTraits>::extra(harness::Checks<Loss<HuberTraits>>& c) {
  c.add("huber_loss.forward", "huber_loss/edge/mean_over_an_empty_input_is_nan", check_empty_mean<HuberTraits>);
  c.add("huber_loss.dl_dd", "huber_loss/kinks/gradient_at_the_seam_lies_between_the_one_sided_quotients",
        check_seam<HuberTraits>);
}
template <>
void Loss<SmoothL1Traits>::extra(harness::Checks<Loss<SmoothL1Traits>>& c) {
  c.add("smooth_l1_loss.forward", "smooth_l1_loss/edge/mean_over_an_empty_input_is_nan", check_empty_mean<SmoothL1Traits>);
  c.add("smooth_l1_loss.dl_dd", "smooth_l1_loss/kinks/gradient_at_the_seam_lies_between_the_one_sided_quotients",
        check_seam<SmoothL1Traits>);
}
template <>
std::vector<harness::BadInput> Loss<HuberTraits>::bad_inputs() { return piecewise_bad_inputs<HuberTraits>(); }
template <>
std::vector<harness::BadInput> Loss<SmoothL1Traits>::bad_inputs() { return piecewise_bad_inputs<SmoothL1Traits>(); }

template <class Tr, class T>
harness::IntoCase loss_into_case(const std::string& name, bool backward) {
  return {name + (sizeof(T) == 4 ? "_float" : "_double"), [backward] {
            struct State {
              Tensor<T> x{Shape{64, 256}}, t{Shape{64, 256}}, pw{Shape{256}}, y{Shape{}};
              Tensor<T> dx{Shape{64, 256}}, dt{Shape{64, 256}};
              ops::LossCache<T> cache;
              void fwd() {
                if constexpr (std::is_same_v<Tr, MseTraits>) ops::mse_loss_forward_into<T>(x, t, {}, y, cache);
                else if constexpr (std::is_same_v<Tr, HuberTraits>) ops::huber_loss_forward_into<T>(x, t, {}, y, cache);
                else if constexpr (std::is_same_v<Tr, SmoothL1Traits>) ops::smooth_l1_loss_forward_into<T>(x, t, {}, y, cache);
                else ops::binary_cross_entropy_with_logits_forward_into<T>(x, t, nullptr, &pw, {}, y, cache);
              }
              void bwd() {
                if constexpr (std::is_same_v<Tr, MseTraits>) ops::mse_loss_backward_into<T>(y, x, t, cache, &dx, &dt);
                else if constexpr (std::is_same_v<Tr, HuberTraits>) ops::huber_loss_backward_into<T>(y, x, t, cache, &dx, &dt);
                else if constexpr (std::is_same_v<Tr, SmoothL1Traits>) ops::smooth_l1_loss_backward_into<T>(y, x, t, cache, &dx, &dt);
                else ops::binary_cross_entropy_with_logits_backward_into<T>(y, x, t, nullptr, &pw, cache, &dx, &dt);
              }
            };
            auto s = std::make_shared<State>();
            for (Index i = 0; i < s->x.size(); ++i) s->x[i] = T(static_cast<double>(i % 97) / 32 - 1.5);
            for (Index i = 0; i < s->t.size(); ++i) s->t[i] = T(static_cast<double>(i % 89) / 89);
            for (Index i = 0; i < s->pw.size(); ++i) s->pw[i] = T(1.5);
            s->fwd();
            if (backward) return std::function<void()>([s] { s->bwd(); });
            return std::function<void()>([s] { s->fwd(); });
          }};
}

template <class Tr>
std::vector<harness::IntoCase> loss_into_cases() {
  const std::string f = std::string(Tr::fn);
  return {loss_into_case<Tr, float>(f + "_forward_into", false), loss_into_case<Tr, double>(f + "_forward_into", false),
          loss_into_case<Tr, float>(f + "_backward_into", true), loss_into_case<Tr, double>(f + "_backward_into", true)};
}
template <>
std::vector<harness::IntoCase> Loss<MseTraits>::into_cases() { return loss_into_cases<MseTraits>(); }
template <>
std::vector<harness::IntoCase> Loss<BceTraits>::into_cases() { return loss_into_cases<BceTraits>(); }
template <>
std::vector<harness::IntoCase> Loss<HuberTraits>::into_cases() { return loss_into_cases<HuberTraits>(); }
template <>
std::vector<harness::IntoCase> Loss<SmoothL1Traits>::into_cases() { return loss_into_cases<SmoothL1Traits>(); }

}  // namespace

void register_losses(Registry& r) {
  harness::register_op<Loss<MseTraits>>(r);
  harness::register_op<Loss<BceTraits>>(r);
  harness::register_op<Loss<HuberTraits>>(r);
  harness::register_op<Loss<SmoothL1Traits>>(r);
}

}  // namespace gradproof::catalog
