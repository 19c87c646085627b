// The declarations of the element-wise losses (mse_loss.*, bce_with_logits.*): one generic
// declaration, Loss<Traits>, and per loss a traits struct with what is particular to it (its
// formulas, terms, sampling, per-element loss in long double, the magnitudes of its terms, its
// calls). The harness (harness/checks.hpp) makes the forward, oracle, staged = fused and
// negative-control checks from each; extra() adds the edges and pitfalls.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/losses.hpp"

#include <cmath>
#include <limits>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;
using ops::Reduction;

// An optional operand (BCE's weight, pos_weight): absent, of the input's shape, of its last axis
// (broadcast over the leading axes), or one value.
enum class Operand { none, full, last_axis, scalar };

struct Case {
  Shape shape;
  Reduction reduction = Reduction::mean;
  Operand weight = Operand::none, pos_weight = Operand::none;
};

struct Problem {
  Case c;
  Shape shape;
  TensorD x, target, weight, pos_weight, w;
  bool has_weight() const { return c.weight != Operand::none; }
  bool has_pos_weight() const { return c.pos_weight != Operand::none; }
  Index n() const { return x.size(); }
  double scale() const { return c.reduction == Reduction::mean ? 1.0 / static_cast<double>(n()) : 1.0; }
  // Index of element i's weight / pos_weight and the operand's value (1 when absent).
  static Index at(Operand o, const Shape& s, Index i) {
    return o == Operand::full ? i : o == Operand::last_axis ? i % s.back() : 0;
  }
  double wt(Index i) const { return has_weight() ? weight[at(c.weight, shape, i)] : 1.0; }
  double pw(Index i) const { return has_pos_weight() ? pos_weight[at(c.pos_weight, shape, i)] : 1.0; }
  // ∂L/∂ℓᵢ for the loss weights w: wᵢ (none), w/n (mean), w (sum).
  double c_at(Index i) const { return c.reduction == Reduction::none ? w[i] : w[0] * scale(); }
};

TensorD operand(Operand o, const Shape& s, Rng& rng, double lo, double hi) {
  const Shape os = o == Operand::full ? s : o == Operand::last_axis ? Shape{s.back()} : Shape{1};
  TensorD t(os);
  for (Index k = 0; k < t.size(); ++k) t[k] = rng.uniform(lo, hi);
  return t;
}

std::string describe_operand(Operand o, const TensorD& t) {
  return o == Operand::none ? "None" : to_string(t.shape());
}

// The generic declaration of an element-wise loss with a reduction; `T` is the loss's traits.
template <class T>
struct Loss {
  static constexpr const char* op = T::op;
  static const harness::Formulas& formulas() { return T::formulas(); }
  using Case = catalog::Case;
  using Problem = catalog::Problem;
  static const harness::Cases<Case>& cases() { return T::cases(); }
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = T::seed_base;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    for (int v : {static_cast<int>(c.reduction), static_cast<int>(c.weight), static_cast<int>(c.pos_weight)})
      h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    return h;
  }
  static constexpr std::uint64_t benchmark_seed = 4096;
  static Problem problem(const Case& c, std::uint64_t seed) {
    Problem p{c, c.shape, TensorD(c.shape), TensorD(c.shape), {}, {}, {}};
    Rng rng(seed);
    T::sample(rng, p);
    if (p.has_weight()) p.weight = operand(c.weight, c.shape, rng, 0.5, 2);
    if (p.has_pos_weight()) p.pos_weight = operand(c.pos_weight, c.shape, rng, 0.5, 3);
    p.w = c.reduction == Reduction::none ? rng.normal_tensor(c.shape) : TensorD(Shape{}, rng.uniform(0.5, 2));
    return p;
  }
  static std::string describe(const Problem& p) {
    std::string s = std::string("reduction ") + ops::name(p.c.reduction);
    if (T::has_operands) s += ", weight " + describe_operand(p.c.weight, p.weight) + ", pos_weight " +
                              describe_operand(p.c.pos_weight, p.pos_weight);
    return s;
  }
  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}, {"target"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t k) { return k == 0 ? p.x : p.target; }
  static std::vector<std::pair<std::string, double>> options(const Problem& p) {
    return {{"reduction", static_cast<double>(p.c.reduction)}};  // 0 none, 1 mean, 2 sum: at::Reduction's values
  }
  static std::vector<std::pair<std::string, TensorD>> constants(const Problem& p) {
    std::vector<std::pair<std::string, TensorD>> out;
    if (p.has_weight()) out.push_back({"weight", p.weight});
    if (p.has_pos_weight()) out.push_back({"pos_weight", p.pos_weight});
    return out;
  }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    const Tensor<S> wt = p.has_weight() ? p.weight.cast<S>() : Tensor<S>(), pw = p.has_pos_weight() ? p.pos_weight.cast<S>() : Tensor<S>();
    return T::forward(in[0], in[1], p.has_weight() ? &wt : nullptr, p.has_pos_weight() ? &pw : nullptr, p.c.reduction).y;
  }
  template <class S>
  struct Prepared {
    Tensor<S> x, target, weight, pos_weight;
    const Tensor<S>* wp = nullptr;
    const Tensor<S>* pp = nullptr;
    ops::LossForward<S> fwd;
  };
  template <class S>
  static std::shared_ptr<const Prepared<S>> prepare(const Problem& p) {
    auto pr = std::make_shared<Prepared<S>>();
    pr->x = p.x.cast<S>();
    pr->target = p.target.cast<S>();
    if (p.has_weight()) pr->weight = p.weight.cast<S>(), pr->wp = &pr->weight;
    if (p.has_pos_weight()) pr->pos_weight = p.pos_weight.cast<S>(), pr->pp = &pr->pos_weight;
    pr->fwd = T::forward(pr->x, pr->target, pr->wp, pr->pp, p.c.reduction);
    return pr;
  }
  template <class S>
  static const Tensor<S>& output(const Prepared<S>& pr) {
    return pr.fwd.y;
  }
  using Terms = typename T::Terms;
  template <class S>
  static std::vector<Tensor<S>> backward(const Prepared<S>& pr, const Tensor<S>& dy, Pass pass, const Terms& t = {}) {
    auto g = T::backward(pr, dy, pass, t);
    return {std::move(g.dx), std::move(g.dtarget)};
  }
  static const harness::Ablation<Terms>& ablation() { return T::ablation(); }
  static std::string ablation_summary() { return T::ablation_summary(); }

  // ℓ in long double per element, then the reduction; the scale is that of the terms that are
  // added (for none, the largest per element).
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    long double acc = 0;
    double mag = 0, big = 0;
    Eigen::VectorXd ell(p.n());
    for (Index i = 0; i < p.n(); ++i) {
      const long double e = T::ell(p.x[i], p.target[i], p.wt(i), p.pw(i), p.has_pos_weight());
      ell[i] = static_cast<double>(e);
      acc += e;
      const double m = T::ell_terms(p.x[i], p.target[i], p.wt(i), p.pw(i));
      mag += m, big = std::max(big, m);
    }
    if (p.c.reduction == Reduction::none) {
      scale = big;
      return ell;
    }
    scale = mag * p.scale();
    Eigen::VectorXd y(1);
    y[0] = static_cast<double>(p.c.reduction == Reduction::mean ? acc / static_cast<long double>(p.n()) : acc);
    return y;
  }
  // Element-wise: ∂yⱼ/∂xᵢ is zero or s·gᵢ (s = 1/n for mean, else 1), gᵢ a sum of terms of size dx_terms.
  static double jacobian_scale(const Prepared<double>&, const Problem& p) {
    double m = 0;
    for (Index i = 0; i < p.n(); ++i) m = std::max(m, T::dx_terms(p.x[i], p.target[i], p.wt(i), p.pw(i)));
    return m * p.scale();
  }
  static double projection_scale(const Prepared<double>&, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    double total = 0;
    for (Index i = 0; i < p.n(); ++i)
      total += std::abs(v[p.c.reduction == Reduction::none ? i : 0] * u[i]) * p.scale() *
               T::dx_terms(p.x[i], p.target[i], p.wt(i), p.pw(i));
    return total;
  }
  static double dx_scale(const Prepared<double>&, const Problem& p, const TensorD&) {
    double m = 0;
    for (Index i = 0; i < p.n(); ++i) m = std::max(m, std::abs(p.c_at(i)) * T::dx_terms(p.x[i], p.target[i], p.wt(i), p.pw(i)));
    return m;
  }
  static double param_scale(const Prepared<double>&, const Problem& p, std::size_t) {
    double m = 0;
    for (Index i = 0; i < p.n(); ++i) m = std::max(m, std::abs(p.c_at(i)) * T::dt_terms(p.x[i], p.target[i], p.wt(i), p.pw(i)));
    return m;
  }
  static std::vector<harness::BadInput> bad_inputs() { return T::bad_inputs(); }
  static std::vector<harness::IntoCase> into_cases() { return T::into_cases(); }
  static void extra(harness::Checks<Loss>& c) { T::extra(c); }
};

// ----------------------------------------------------------------------------------------------
// Checks that are the same for every loss.

// A mean over no values is NaN, as in PyTorch (torch.nn.functional.mse_loss(empty, empty) is
// nan); a sum is 0; none is empty; the gradients are empty.
template <class T>
std::vector<ResultRow> empty_input_rows(const std::string& test) {
  std::vector<ResultRow> rows;
  for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
    const TensorD x({0, 3}), t({0, 3});
    const TensorD wt({3}, 1.0), pw({3}, 2.0);
    const bool with_ops = T::has_operands;
    const auto f = T::forward(x, t, with_ops ? &wt : nullptr, with_ops ? &pw : nullptr, r);
    const TensorD dy = r == Reduction::none ? TensorD({0, 3}) : TensorD(Shape{}, 1.0);
    typename Loss<T>::template Prepared<double> pr;
    pr.x = x, pr.target = t, pr.weight = wt, pr.pos_weight = pw, pr.fwd = f;
    if (with_ops) pr.wp = &pr.weight, pr.pp = &pr.pos_weight;
    const auto gs = T::backward(pr, dy, Pass::staged, {});
    const auto gf = T::backward(pr, dy, Pass::fused, {});
    ResultRow row{std::string(T::op) + ".forward", test, "pytorch", "float64", "edge", {0, 3}};
    bool ok = gs.dx.size() == 0 && gf.dx.size() == 0 && gs.dtarget.size() == 0;
    std::ostringstream note;
    note << "input of shape (0, 3), reduction " << ops::name(r) << ": ";
    if (r == Reduction::mean) {
      ok = ok && f.y.rank() == 0 && std::isnan(f.y[0]);
      note << "y = " << f.y[0] << " (PyTorch 1.13 returns nan: 0/0)";
    } else if (r == Reduction::sum) {
      ok = ok && f.y.rank() == 0 && f.y[0] == 0;
      note << "y = " << f.y[0] << " (PyTorch: 0)";
    } else {
      ok = ok && f.y.size() == 0 && same_shape(f.y.shape(), x.shape());
      note << "y has shape " << to_string(f.y.shape()) << " (PyTorch: an empty tensor of the input's shape)";
    }
    note << "; dx and dtarget are empty (both passes)";
    row.passed = ok;
    row.rel_defined = false;
    row.note = note.str();
    rows.push_back(row);
  }
  return rows;
}

template <class T, class F>
harness::BadInput bad(const std::string& name, const std::string& formula, F call, std::vector<std::string> expect) {
  return {name, std::string(T::op) + "." + formula, call, std::move(expect)};
}

// The refused inputs shared by every loss: a target of another shape, an unknown reduction (as a
// string and as an enum value), dy and dx of the wrong shape, a cache of another input.
template <class T>
std::vector<harness::BadInput> common_bad_inputs() {
  const auto fwd = [](const TensorD& x, const TensorD& t, Reduction r) { return T::forward(x, t, nullptr, nullptr, r); };
  return {
      bad<T>("target_of_another_shape_is_refused", "forward", [fwd] { fwd(TensorD({2, 3}), TensorD({3, 2}), Reduction::mean); },
             {"target must have the input's shape (2, 3)", "got (3, 2)"}),
      bad<T>("a_broadcast_target_is_refused", "forward", [fwd] { fwd(TensorD({2, 3}), TensorD({1, 3}), Reduction::mean); },
             {"target must have the input's shape (2, 3)", "got (1, 3)"}),
      bad<T>("an_unknown_reduction_string_is_refused", "forward", [] { ops::reduction_from_string("avg"); },
             {"reduction must be 'none', 'mean' or 'sum'", "got 'avg'"}),
      bad<T>("an_unknown_reduction_value_is_refused", "forward",
             [fwd] { fwd(TensorD({2, 3}), TensorD({2, 3}), static_cast<Reduction>(7)); },
             {"reduction must be none, mean or sum", "got the value 7"}),
      bad<T>("dy_of_the_input_shape_for_a_reduced_loss_is_refused", "dx_fused",
             [fwd] {
               const TensorD x({2, 3}, 0.5);
               typename Loss<T>::template Prepared<double> pr;
               pr.x = x, pr.target = x, pr.fwd = fwd(x, x, Reduction::mean);
               T::backward(pr, TensorD({2, 3}), Pass::fused, {});
             },
             {"dy (must match y, reduction mean) must have shape ()", "got (2, 3)"}),
      bad<T>("dy_of_the_wrong_shape_is_refused", "dx",
             [fwd] {
               const TensorD x({2, 3}, 0.5);
               typename Loss<T>::template Prepared<double> pr;
               pr.x = x, pr.target = x, pr.fwd = fwd(x, x, Reduction::none);
               T::backward(pr, TensorD(Shape{}), Pass::staged, {});
             },
             {"dy (must match y, reduction none) must have shape (2, 3)", "got ()"}),
      bad<T>("a_cache_of_another_input_is_refused", "dx",
             [fwd] {
               const TensorD x({2, 3}, 0.5), x2({4, 3}, 0.5);
               typename Loss<T>::template Prepared<double> pr;
               pr.x = x2, pr.target = x2, pr.fwd = fwd(x, x, Reduction::mean);
               T::backward(pr, TensorD(Shape{}, 1.0), Pass::staged, {});
             },
             {"cache was made for an input of shape (2, 3)", "input has shape (4, 3)"}),
      bad<T>("y_of_the_input_shape_for_a_reduced_loss_is_refused", "forward",
             [] {
               const TensorD x({2, 3}, 0.5);
               TensorD y({2, 3});
               ops::LossCache cache;
               T::forward_into(x, x, nullptr, nullptr, Reduction::sum, y, cache);
             },
             {"y (output, reduction sum) must have shape ()", "got (2, 3)"}),
      bad<T>("dx_of_the_wrong_shape_is_refused", "dx_fused",
             [fwd] {
               const TensorD x({2, 3}, 0.5);
               const auto f = fwd(x, x, Reduction::mean);
               TensorD dx({3, 3});
               T::backward_into(TensorD(Shape{}, 1.0), x, x, nullptr, nullptr, f.cache, dx, nullptr);
             },
             {"dx (output) must have shape (2, 3)", "got (3, 3)"}),
  };
}

template <class T, class S>
harness::IntoCase into_case(const std::string& name, bool backward, Reduction r) {
  return {name + (sizeof(S) == 4 ? "_float" : "_double") + "_" + ops::name(r), [backward, r] {
            struct State {
              Tensor<S> x, t, wt, pw, y, dy, dx, dt;
              ops::LossCache cache;
            };
            const Shape s{64, 256};
            auto st = std::make_shared<State>();
            st->x = Tensor<S>(s), st->t = Tensor<S>(s), st->dx = Tensor<S>(s), st->dt = Tensor<S>(s);
            st->wt = Tensor<S>({256}, S(1.5)), st->pw = Tensor<S>({256}, S(2));
            for (Index i = 0; i < st->x.size(); ++i)
              st->x[i] = S(static_cast<double>(i % 97) / 16 - 3), st->t[i] = S(static_cast<double>(i % 13) / 13);
            st->y = r == Reduction::none ? Tensor<S>(s) : Tensor<S>(Shape{});
            st->dy = r == Reduction::none ? Tensor<S>(s, S(0.5)) : Tensor<S>(Shape{}, S(0.5));
            const bool w = T::has_operands;
            const auto call_fwd = [st, r, w] {
              T::forward_into(st->x, st->t, w ? &st->wt : nullptr, w ? &st->pw : nullptr, r, st->y, st->cache);
            };
            call_fwd();
            if (backward)
              return std::function<void()>([st, w] {
                T::backward_into(st->dy, st->x, st->t, w ? &st->wt : nullptr, w ? &st->pw : nullptr, st->cache, st->dx, &st->dt);
              });
            return std::function<void()>(call_fwd);
          }};
}

template <class T>
std::vector<harness::IntoCase> common_into_cases() {
  std::vector<harness::IntoCase> out;
  for (Reduction r : {Reduction::mean, Reduction::none}) {
    out.push_back(into_case<T, float>(std::string(T::op) + "_forward_into", false, r));
    out.push_back(into_case<T, double>(std::string(T::op) + "_forward_into", false, r));
    out.push_back(into_case<T, float>(std::string(T::op) + "_backward_into", true, r));
    out.push_back(into_case<T, double>(std::string(T::op) + "_backward_into", true, r));
  }
  return out;
}

// ================================================================================================
// mse_loss

struct MSE {
  static constexpr const char* op = "mse_loss";
  static constexpr bool has_operands = false;
  static constexpr std::uint64_t seed_base = 0x6d73656c6f7373ull;
  using Terms = ops::MSELossTermScales;
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"mse_loss.forward", "mse_loss forward: ℓᵢ = (xᵢ − tᵢ)², reduced by none, mean or sum"},
        {"mse_loss.dreduce", "∂L/∂ℓᵢ = dy/n (mean), dy (sum), dyᵢ (none): the reduction's scale"},
        {"mse_loss.dl_dd", "∂L/∂dᵢ = 2dᵢ ∂L/∂ℓᵢ, d = x − t"},
        {"mse_loss.dx", "mse_loss ∂L/∂x = ∂L/∂d (staged)"},
        {"mse_loss.dtarget", "mse_loss ∂L/∂t = −∂L/∂d"},
        {"mse_loss.dx_fused", "mse_loss dx = 2(x − t)·c, dt = −dx, c = ∂L/∂ℓ (fused)"}};
    return f;
  }
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = {
        .jacobian = {{{4, 6}, Reduction::mean}, {{3, 2, 5}, Reduction::sum}, {{2, 3}, Reduction::none}, {{1, 7}, Reduction::mean}, {{5}, Reduction::none}},
        .projection = {{{16, 128}, Reduction::mean}, {{4, 8, 32}, Reduction::none}},
        .ablation = {{{4, 6}, Reduction::mean}, {{3, 5}, Reduction::none}},
        .benchmark = {{{512, 1024}, Reduction::mean}}};
    return c;
  }
  static void sample(Rng& rng, Problem& p) {
    for (Index i = 0; i < p.n(); ++i) p.x[i] = rng.normal(0.5, 1.5), p.target[i] = rng.normal(0, 1);
  }
  template <class S>
  static ops::LossForward<S> forward(const Tensor<S>& x, const Tensor<S>& t, const ops::NoDeduce<Tensor<S>>*, const ops::NoDeduce<Tensor<S>>*, Reduction r) {
    return ops::mse_loss_forward(x, t, {r});
  }
  template <class S>
  static void forward_into(const Tensor<S>& x, const Tensor<S>& t, const ops::NoDeduce<Tensor<S>>*, const ops::NoDeduce<Tensor<S>>*, Reduction r,
                           Tensor<S>& y, ops::LossCache& cache) {
    ops::mse_loss_forward_into(x, t, {r}, y, cache);
  }
  template <class S>
  static void backward_into(const Tensor<S>& dy, const Tensor<S>& x, const Tensor<S>& t, const ops::NoDeduce<Tensor<S>>*, const ops::NoDeduce<Tensor<S>>*,
                            const ops::LossCache& cache, Tensor<S>& dx, ops::NoDeduce<Tensor<S>>* dt) {
    ops::mse_loss_backward_into(dy, x, t, cache, dx, dt);
  }
  template <class Pr, class S>
  static ops::LossGrads<S> backward(const Pr& pr, const Tensor<S>& dy, Pass pass, const Terms& t) {
    if (pass == Pass::staged) return ops::mse_loss_backward_staged(dy, pr.x, pr.target, pr.fwd.cache, t);
    return ops::mse_loss_backward(dy, pr.x, pr.target, pr.fwd.cache);
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"mse_loss.dreduce", &Terms::dreduce}, {"mse_loss.dl_dd", &Terms::dl_dd}};
    return a;
  }
  static std::string ablation_summary() {
    return "Both terms are caught: the reduction's scale and the square's derivative each multiply\n"
           "every element of dx and dtarget.";
  }
  static long double ell(double x, double t, double, double, bool) {
    const long double d = static_cast<long double>(x) - t;
    return d * d;
  }
  static double ell_terms(double x, double t, double, double) { return (std::abs(x) + std::abs(t)) * (std::abs(x) + std::abs(t)); }
  static double dx_terms(double x, double t, double, double) { return 2 * (std::abs(x) + std::abs(t)); }
  static double dt_terms(double x, double t, double w, double p) { return dx_terms(x, t, w, p); }
  static std::vector<harness::BadInput> bad_inputs() { return common_bad_inputs<MSE>(); }
  static std::vector<harness::IntoCase> into_cases() { return common_into_cases<MSE>(); }
  static void extra(harness::Checks<Loss<MSE>>& c) {
    c.add("mse_loss.forward", "mse_loss/edges/mean_of_an_empty_input_is_nan_as_in_pytorch", empty_input_rows<MSE>);
  }
};

// ================================================================================================
// binary_cross_entropy_with_logits

struct BCE {
  static constexpr const char* op = "bce_with_logits";
  static constexpr bool has_operands = true;
  static constexpr std::uint64_t seed_base = 0x626365776c6f67ull;
  using Terms = ops::BCEWithLogitsTermScales;
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"bce_with_logits.forward", "BCE with logits forward: ℓ = w[max(x,0) − xt + log(1 + e^−|x|)]; with pos_weight p, w[(1−t)x + (1 + (p−1)t) softplus(−x)]"},
        {"bce_with_logits.dreduce", "∂L/∂ℓᵢ = dy/n (mean), dy (sum), dyᵢ (none): the reduction's scale"},
        {"bce_with_logits.dl_dh", "∂L/∂hᵢ = wᵢ ∂L/∂ℓᵢ: the weight"},
        {"bce_with_logits.dl_du", "∂L/∂uᵢ = (1 + (pᵢ − 1)tᵢ) ∂L/∂hᵢ, u = softplus(−x): the log weight"},
        {"bce_with_logits.du_dx", "∂uᵢ/∂xᵢ = −σ(−xᵢ)"},
        {"bce_with_logits.dx", "BCE with logits ∂L/∂x = (1 − t) ∂L/∂h + ∂L/∂u ∂u/∂x (staged)"},
        {"bce_with_logits.dtarget", "BCE with logits ∂L/∂t = (−x + (p − 1) softplus(−x)) ∂L/∂h"},
        {"bce_with_logits.dx_fused", "BCE with logits dx = c w ((1 + (p − 1)t) σ(x) − p t) (fused, PyTorch's form)"}};
    return f;
  }
  static const harness::Cases<Case>& cases() {
    using O = Operand;
    static const harness::Cases<Case> c = {
        .jacobian = {{{4, 6}, Reduction::mean},
                     {{3, 2, 5}, Reduction::sum, O::full, O::last_axis},
                     {{2, 3}, Reduction::none, O::last_axis, O::full},
                     {{1, 7}, Reduction::mean, O::none, O::scalar},
                     {{5}, Reduction::sum, O::scalar, O::none}},
        .projection = {{{16, 128}, Reduction::mean, O::last_axis, O::last_axis}, {{4, 8, 32}, Reduction::none}},
        .ablation = {{{4, 6}, Reduction::mean, O::full, O::last_axis}, {{3, 5}, Reduction::none, O::last_axis, O::full}},
        .benchmark = {{{512, 1024}, Reduction::mean, O::none, O::last_axis}}};
    return c;
  }
  // Logits of both signs and up to |x| ≈ 8, targets in (0, 1): the loss is smooth everywhere
  // (the branch at x = 0 joins two forms of one analytic function), so no sample needs to keep
  // away from anything. The edges ±1e3, ±1e4 are tests of their own.
  static void sample(Rng& rng, Problem& p) {
    for (Index i = 0; i < p.n(); ++i) p.x[i] = rng.normal(0, 2.5), p.target[i] = rng.uniform(0, 1);
  }
  template <class S>
  static ops::LossForward<S> forward(const Tensor<S>& x, const Tensor<S>& t, const ops::NoDeduce<Tensor<S>>* w, const ops::NoDeduce<Tensor<S>>* p, Reduction r) {
    return ops::binary_cross_entropy_with_logits_forward(x, t, w, p, {r});
  }
  template <class S>
  static void forward_into(const Tensor<S>& x, const Tensor<S>& t, const ops::NoDeduce<Tensor<S>>* w, const ops::NoDeduce<Tensor<S>>* p, Reduction r,
                           Tensor<S>& y, ops::LossCache& cache) {
    ops::binary_cross_entropy_with_logits_forward_into(x, t, w, p, {r}, y, cache);
  }
  template <class S>
  static void backward_into(const Tensor<S>& dy, const Tensor<S>& x, const Tensor<S>& t, const ops::NoDeduce<Tensor<S>>* w, const ops::NoDeduce<Tensor<S>>* p,
                            const ops::LossCache& cache, Tensor<S>& dx, ops::NoDeduce<Tensor<S>>* dt) {
    ops::binary_cross_entropy_with_logits_backward_into(dy, x, t, w, p, cache, dx, dt);
  }
  template <class Pr, class S>
  static ops::LossGrads<S> backward(const Pr& pr, const Tensor<S>& dy, Pass pass, const Terms& t) {
    if (pass == Pass::staged)
      return ops::binary_cross_entropy_with_logits_backward_staged(dy, pr.x, pr.target, pr.wp, pr.pp, pr.fwd.cache, t);
    return ops::binary_cross_entropy_with_logits_backward(dy, pr.x, pr.target, pr.wp, pr.pp, pr.fwd.cache);
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"bce_with_logits.dreduce", &Terms::dreduce},
                                               {"bce_with_logits.dl_dh", &Terms::dl_dh},
                                               {"bce_with_logits.dl_du", &Terms::dl_du},
                                               {"bce_with_logits.du_dx", &Terms::du_dx}};
    return a;
  }
  static std::string ablation_summary() {
    return "Every term is caught: the reduction's scale and the weight multiply both gradients, and the\n"
           "path through u = softplus(−x) carries the part of dx that makes it σ(x) − t.";
  }
  static long double softplus_neg(long double x) { return x >= 0 ? std::log1p(std::exp(-x)) : -x + std::log1p(std::exp(x)); }
  static long double ell(double x, double t, double w, double p, bool) {
    const long double X = x, Tt = t;
    return w * ((1 - Tt) * X + (1 + (p - 1) * Tt) * softplus_neg(X));
  }
  static double sig(double x) { return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x)); }
  static double ell_terms(double x, double t, double w, double p) {
    const double u = static_cast<double>(softplus_neg(x)), l = std::abs(1 + (p - 1) * t);
    return std::abs(w) * (std::abs(x) + std::abs(x * t) + l * (std::abs(x) + u));
  }
  // The staged form (1 − t) + l·(−σ(−x)) and the fused l·σ(x) − p·t: the larger of their terms.
  static double dx_terms(double x, double t, double w, double p) {
    const double l = std::abs(1 + (p - 1) * t);
    return std::abs(w) * std::max(std::abs(1 - t) + l * sig(-x), l * sig(x) + std::abs(p * t));
  }
  static double dt_terms(double x, double t, double w, double p) {
    (void)t;
    return std::abs(w) * (std::abs(x) + std::abs(p - 1) * static_cast<double>(softplus_neg(x)));
  }
  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases() { return common_into_cases<BCE>(); }
  static void extra(harness::Checks<Loss<BCE>>& c);
};

std::vector<harness::BadInput> BCE::bad_inputs() {
  auto out = common_bad_inputs<BCE>();
  const auto fwd = [](const Shape& w, const Shape& p) {
    const TensorD x({2, 3}, 0.5), wt(w, 1.0), pw(p, 1.0);
    ops::binary_cross_entropy_with_logits_forward(x, x, w.empty() ? nullptr : &wt, p.empty() ? nullptr : &pw);
  };
  out.push_back(bad<BCE>("a_weight_that_does_not_broadcast_is_refused", "forward", [fwd] { fwd({2}, {}); },
                         {"weight of shape (2,) does not broadcast to the input's shape (2, 3)", "equal the input's or be 1"}));
  out.push_back(bad<BCE>("a_weight_with_more_axes_is_refused", "forward", [fwd] { fwd({4, 2, 3}, {}); },
                         {"weight of shape (4, 2, 3) does not broadcast", "more axes than the input"}));
  out.push_back(bad<BCE>("a_pos_weight_that_does_not_broadcast_is_refused", "forward", [fwd] { fwd({}, {2, 2}); },
                         {"pos_weight of shape (2, 2) does not broadcast to the input's shape (2, 3)"}));
  out.push_back(bad<BCE>("a_backward_without_the_forwards_weight_is_refused", "dx_fused",
                         [] {
                           const TensorD x({2, 3}, 0.5), wt({3}, 2.0);
                           const auto f = ops::binary_cross_entropy_with_logits_forward(x, x, &wt);
                           ops::binary_cross_entropy_with_logits_backward(TensorD(Shape{}, 1.0), x, x, nullptr, nullptr, f.cache);
                         },
                         {"the forward had a weight but the backward was given none"}));
  out.push_back(bad<BCE>("a_pos_weight_of_another_shape_in_backward_is_refused", "dx",
                         [] {
                           const TensorD x({2, 3}, 0.5), pw({3}, 2.0), pw2({2, 3}, 2.0);
                           const auto f = ops::binary_cross_entropy_with_logits_forward<double>(x, x, nullptr, &pw);
                           ops::binary_cross_entropy_with_logits_backward_staged(TensorD(Shape{}, 1.0), x, x, nullptr, &pw2,
                                                                                 f.cache);
                         },
                         {"pos_weight has shape (2, 3) but the forward's had shape (3,)"}));
  return out;
}

// ----------------------------------------------------------------------------------------------
// BCE's edges and pitfall.

// The naive form −[t log σ(x) + (1 − t) log(1 − σ(x))] with σ(x) = 1/(1 + e^(−x)), and its
// gradient by the chain rule of that graph: what an implementation without the stable form does.
struct Naive {
  double loss, dx;
};
Naive naive_bce(double x, double t) {
  const double s = 1 / (1 + std::exp(-x));
  const double loss = -(t * std::log(s) + (1 - t) * std::log(1 - s));
  // ∂/∂s = −t/s + (1 − t)/(1 − s), ∂s/∂x = s(1 − s)
  const double dx = (-t / s + (1 - t) / (1 - s)) * (s * (1 - s));
  return {loss, dx};
}

// Logits ±1e3 and ±1e4, reduction none, with and without pos_weight: finite loss, dx and dt in
// float64 that agree with a long-double recomputation; at ±1e3 the naive form is not finite.
std::vector<ResultRow> check_edges(const std::string& formula, const std::string& test, bool naive_row) {
  std::vector<ResultRow> rows;
  for (bool with_pw : {false, true}) {
    const TensorD x({2, 4}, std::vector<double>{1e3, -1e3, 1e4, -1e4, 1e3, -1e3, 1e4, -1e4});
    const TensorD t({2, 4}, std::vector<double>{0.25, 0.25, 0.25, 0.25, 1, 0, 0, 1});
    const TensorD pw({1}, 2.0), dy({2, 4}, 1.0);
    const TensorD* pp = with_pw ? &pw : nullptr;
    const auto f = ops::binary_cross_entropy_with_logits_forward<double>(x, t, nullptr, pp, {Reduction::none});
    const auto gs = ops::binary_cross_entropy_with_logits_backward_staged(dy, x, t, nullptr, pp, f.cache);
    const auto gf = ops::binary_cross_entropy_with_logits_backward(dy, x, t, nullptr, pp, f.cache);
    const double p = with_pw ? 2.0 : 1.0;
    Eigen::VectorXd ly(8), ldx(8), ldt(8), sy(8), sdx(8), sdt(8);
    Index naive_bad = 0;
    for (Index i = 0; i < 8; ++i) {
      const long double X = x[i], T = t[i], l = 1 + (p - 1) * T, u = BCE::softplus_neg(X);
      const long double sig = X >= 0 ? 1 / (1 + std::exp(-X)) : std::exp(X) / (1 + std::exp(X));
      ly[i] = static_cast<double>((1 - T) * X + l * u);
      ldx[i] = static_cast<double>(l * sig - p * T);
      ldt[i] = static_cast<double>(-X + (p - 1) * u);
      sy[i] = BCE::ell_terms(x[i], t[i], 1, p), sdx[i] = BCE::dx_terms(x[i], t[i], 1, p), sdt[i] = BCE::dt_terms(x[i], t[i], 1, p);
      const Naive nv = naive_bce(x[i], t[i]);
      naive_bad += !std::isfinite(nv.loss) || !std::isfinite(nv.dx);
    }
    const std::string pws = with_pw ? ", pos_weight 2" : "";
    const auto row = [&](const char* what, const Eigen::VectorXd& got, const Eigen::VectorXd& ref, const Eigen::VectorXd& sc) {
      ResultRow r = oracle_row({formula, test, "reference", "float64", "edge", x.shape(),
                                std::string(what) + " at logits ±1e3, ±1e4 (targets 0.25, 0, 1" + pws +
                                    ", reduction none) against a long-double recomputation; every value finite"},
                               Oracle::complex_step, got, ref, {got.size()}, sc.maxCoeff());
      r.passed = r.passed && got.allFinite();
      return r;
    };
    if (formula == "bce_with_logits.forward") {
      ResultRow r = row("loss", as_f64(f.y), ly, sy);
      if (naive_row) {
        // The pitfall: the naive form of the same losses is inf or NaN in some value or gradient.
        r.kind = "pitfall";
        std::ostringstream note;
        note << r.note << "; the naive −[t log σ(x) + (1 − t) log(1 − σ(x))] and its chain-rule gradient are not finite in "
             << naive_bad << " of 8 (loss or dx)";
        r.note = note.str();
        r.passed = r.passed && naive_bad == 8;
      }
      rows.push_back(r);
    } else if (formula == "bce_with_logits.dx") {
      rows.push_back(row("staged dx", as_f64(gs.dx), ldx, sdx));
    } else if (formula == "bce_with_logits.dx_fused") {
      rows.push_back(row("fused dx", as_f64(gf.dx), ldx, sdx));
    } else {
      rows.push_back(row("staged dtarget", as_f64(gs.dtarget), ldt, sdt));
      rows.push_back(row("fused dtarget", as_f64(gf.dtarget), ldt, sdt));
    }
  }
  return rows;
}

void BCE::extra(harness::Checks<Loss<BCE>>& c) {
  c.add("bce_with_logits.forward", "bce_with_logits/edges/mean_of_an_empty_input_is_nan_as_in_pytorch", empty_input_rows<BCE>);
  c.add("bce_with_logits.forward", "bce_with_logits/edges/loss_is_finite_at_logits_1e3_and_1e4",
        [](const std::string& t) { return check_edges("bce_with_logits.forward", t, false); });
  c.add("bce_with_logits.dx", "bce_with_logits/edges/staged_dx_is_finite_at_logits_1e3_and_1e4",
        [](const std::string& t) { return check_edges("bce_with_logits.dx", t, false); });
  c.add("bce_with_logits.dx_fused", "bce_with_logits/edges/fused_dx_is_finite_at_logits_1e3_and_1e4",
        [](const std::string& t) { return check_edges("bce_with_logits.dx_fused", t, false); });
  c.add("bce_with_logits.dtarget", "bce_with_logits/edges/dtarget_is_finite_at_logits_1e3_and_1e4",
        [](const std::string& t) { return check_edges("bce_with_logits.dtarget", t, false); });
  c.add("bce_with_logits.forward", "bce_with_logits/pitfalls/the_naive_form_is_not_finite_at_logits_1e3",
        [](const std::string& t) { return check_edges("bce_with_logits.forward", t, true); });
}

}  // namespace

void register_losses(Registry& r) {
  harness::register_op<Loss<MSE>>(r);
  harness::register_op<Loss<BCE>>(r);
}

}  // namespace gradproof::catalog
