// The declarations of nll_loss (nll_loss.*) and cross_entropy (cross_entropy.*): what is
// particular to each. The harness (harness/checks.hpp) makes the forward, oracle, staged = fused
// and negative-control checks; extra() adds the edges and the pitfall. Their page is softmax's.
// Targets and weights are constants of the problem (constants() gives them to the libtorch
// oracle); the loss is `()` for mean and sum, so w is shaped like it.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/cross_entropy.hpp"

#include <cmath>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;
using ops::Reduction;

const char* reduction_name(Reduction r) { return r == Reduction::none ? "none" : r == Reduction::mean ? "mean" : "sum"; }

struct Case {
  Shape shape;
  Reduction reduction = Reduction::mean;
  bool weighted = false;
  bool probs = false;   // class-probability targets (cross_entropy only)
  bool ignore = false;  // ignore_index = 2, every third sample's target is 2
  double eps = 0;       // label_smoothing (cross_entropy only)
};

struct Problem {
  Shape shape;
  Case c;
  TensorD x, w;
  Tensor<Index> target;
  TensorD probs, weight;
  Index ignore_index = -100;
  ops::AxisRows rows() const { return ops::detail::xent::sample_rows(shape, "loss"); }
  ops::CrossEntropyConfig ce() const { return {ignore_index, c.reduction, c.eps}; }
  ops::NllLossConfig nll() const { return {ignore_index, c.reduction}; }
  const TensorD* wp() const { return c.weighted ? &weight : nullptr; }
  // q_{r,c} and Q_r of the problem, in double.
  ops::detail::xent::Targets<double> targets() const {
    if (c.probs) return ops::detail::xent::targets_of(x, probs, wp(), ce());
    return ops::detail::xent::targets_of(x, target, wp(), ce());
  }
};

std::uint64_t seed_of(const Case& c, std::uint64_t h) {
  for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
  const std::uint64_t flags = static_cast<std::uint64_t>(c.reduction) | (c.weighted << 2) | (c.probs << 3) |
                              (c.ignore << 4) | (static_cast<std::uint64_t>(c.eps * 100) << 5);
  return (h ^ flags) * 1099511628211ull;
}

// Logits (cross-entropy) or log-probabilities (NLL) of size one, targets uniform over the classes.
Problem sample(const Case& c, std::uint64_t seed, bool logits) {
  Problem p{c.shape, c, TensorD(c.shape), TensorD(Shape{}), Tensor<Index>(Shape{}), TensorD(Shape{}), TensorD({1})};
  Rng rng(seed);
  const ops::AxisRows a = p.rows();
  const Index R = a.R(), C = a.M;
  for (Index i = 0; i < p.x.size(); ++i) p.x[i] = logits ? rng.normal(0, 1.5) : rng.normal(-1.5, 1);
  const Shape ts = ops::detail::xent::target_shape(c.shape);
  p.target = Tensor<Index>(ts);
  if (c.ignore) p.ignore_index = 2;
  for (Index r = 0; r < R; ++r) {
    p.target[r] = std::min<Index>(C - 1, static_cast<Index>(rng.uniform(0, static_cast<double>(C))));
    if (c.ignore && r % 3 == 1) p.target[r] = p.ignore_index;
  }
  if (c.probs) {
    p.probs = TensorD(c.shape);
    for (Index r = 0; r < R; ++r) {
      double s = 0;
      for (Index k = 0; k < C; ++k) s += (p.probs[a.at(r, k)] = rng.uniform(0.05, 1));
      for (Index k = 0; k < C; ++k) p.probs[a.at(r, k)] /= s;
    }
  }
  if (c.weighted) {
    p.weight = TensorD({C});
    for (Index k = 0; k < C; ++k) p.weight[k] = rng.uniform(0.5, 2);
  }
  p.w = rng.normal_tensor(c.reduction == Reduction::none ? ts : Shape{});
  return p;
}

// `gradproof check`: input x ((C), (N, C) or (N, C, d1, ...); log-probabilities for NLL, logits
// for cross-entropy), target as class indices (an integer array, the shape of x without the class
// axis) or, for cross-entropy, class probabilities (floating point, the shape of x); weight (C)
// optional; reduction, ignore_index and label_smoothing with PyTorch's defaults ('mean', -100, 0).
Problem user_problem(const UserInput& in, bool ce) {
  const TensorD& x = in.input(0);
  if (x.rank() < 1) in.fail("x must have rank >= 1: (C), (N, C) or (N, C, d1, ...)", "shape ()");
  const std::string red = in.reduction();
  Case c{x.shape(), red == "none"  ? Reduction::none
                    : red == "sum" ? Reduction::sum
                                   : Reduction::mean};
  Problem p{x.shape(), c, x, in.dy(), Tensor<Index>(Shape{}), TensorD(Shape{}), TensorD({1})};
  const ops::AxisRows a = p.rows();
  p.ignore_index = in.integer("ignore_index", -100);
  p.c.ignore = p.ignore_index != -100;
  if (ce) p.c.eps = in.number_in("label_smoothing", 0.0, 0.0, 1.0);
  const catalog::UserArray& t =
      in.required("target", ce ? "class indices as integers, or class probabilities"
                               : "class indices as integers");
  const Shape ts = ops::detail::xent::target_shape(x.shape());
  if (t.integer) {
    in.shape("target", t.values.shape(), ts,
             "(class indices) the shape of x without the class axis");
    p.target = Tensor<Index>(ts);
    for (Index r = 0; r < t.values.size(); ++r) {
      const double v = t.values[r];
      if (v != static_cast<double>(p.ignore_index) && (v < 0 || v >= static_cast<double>(a.M)))
        in.fail("target must hold class indices in [0, " + std::to_string(a.M) +
                    ") or ignore_index " + std::to_string(p.ignore_index),
                UserInput::num(v) + " at flat index " + std::to_string(r));
      p.target[r] = static_cast<Index>(v);
    }
  } else {
    if (!ce)
      in.fail("target must be class indices (an integer array: int64 or int32)", "floating point");
    in.shape("target", t.values.shape(), x.shape(), "(class probabilities) the shape of x");
    p.c.probs = true;
    p.probs = t.values;
  }
  if (const catalog::UserArray* w = in.array("weight")) {
    in.shape("weight", w->values.shape(), Shape{a.M}, "one value per class:");
    p.c.weighted = true;
    p.weight = w->values;
  }
  const bool per_sample = c.reduction == Reduction::none;
  in.shape(
      "dy", in.dy().shape(), per_sample ? ts : Shape{},
      per_sample ? "reduction 'none': the shape of the target" : "reduction '" + red + "': shape");
  return p;
}

std::string describe_of(const char* op, const Problem& p) {
  std::ostringstream s;
  s << op << ", " << (p.c.probs ? "class probabilities" : "class indices") << ", " << p.rows().R() << " samples of "
    << p.rows().M << " classes, reduction " << reduction_name(p.c.reduction) << (p.c.weighted ? ", weight" : "");
  if (p.c.ignore) s << ", ignore_index " << p.ignore_index;
  if (p.c.eps > 0) s << ", label_smoothing " << p.c.eps;
  return s.str();
}

std::vector<std::pair<std::string, double>> options_of(const Problem& p) {
  return {{"reduction", static_cast<double>(p.c.reduction)},
          {"ignore_index", static_cast<double>(p.ignore_index)},
          {"label_smoothing", p.c.eps},
          {"probabilities", p.c.probs ? 1.0 : 0.0},
          {"weighted", p.c.weighted ? 1.0 : 0.0}};
}

std::vector<std::pair<std::string, TensorD>> constants_of(const Problem& p) {
  std::vector<std::pair<std::string, TensorD>> out;
  if (p.c.probs) out.push_back({"target", p.probs});
  else {
    TensorD t(p.target.shape());
    for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<double>(p.target[i]);
    out.push_back({"target", t});
  }
  if (p.c.weighted) out.push_back({"weight", p.weight});
  return out;
}

// The factor of g_r: 1 (none, sum) or 1/D (mean).
double mean_factor(const Problem& p, const ops::detail::xent::Targets<double>& t) {
  if (p.c.reduction != Reduction::mean) return 1;
  double D = 0;
  for (Index r = 0; r < t.rows.R(); ++r) D += t.mean_weight(r);
  return 1 / D;
}

// Per sample, the magnitude of the terms of ∂ℓ_r/∂x_{r,c} = Q p − q (NLL: −q): Q_r + max q.
Eigen::VectorXd row_magnitudes(const Problem& p, bool softmax) {
  const auto t = p.targets();
  Eigen::VectorXd m(t.rows.R());
  for (Index r = 0; r < m.size(); ++r) {
    double qmax = 0;
    for (Index k = 0; k < t.rows.M; ++k) qmax = std::max(qmax, std::abs(t.q(r, k)));
    m[r] = (softmax ? t.Q(r) : 0) + qmax;
  }
  return m;
}

// g_r for an upstream dy.
double g_of(const Problem& p, const TensorD& dy, Index r, double fac) {
  return p.c.reduction == Reduction::none ? dy[r] : dy[0] * fac;
}

// ℓ_r in long double, from x as log-probabilities (NLL) or logits (cross-entropy), with the
// magnitude of its terms Σ_c |q| (|z| + λ).
Eigen::VectorXd reference_of(const Problem& p, double& scale, bool softmax) {
  const auto t = p.targets();
  const ops::AxisRows& a = t.rows;
  std::vector<long double> ell(static_cast<std::size_t>(a.R())), mag(static_cast<std::size_t>(a.R()));
  for (Index r = 0; r < a.R(); ++r) {
    long double m = 0, lse = 0;
    if (softmax) {
      m = p.x[a.at(r, 0)];
      for (Index k = 1; k < a.M; ++k) m = std::max<long double>(m, p.x[a.at(r, k)]);
      long double s = 0;
      for (Index k = 0; k < a.M; ++k) s += std::exp(static_cast<long double>(p.x[a.at(r, k)]) - m);
      lse = std::log(s);
    }
    long double e = 0, g = 0;
    for (Index k = 0; k < a.M; ++k) {
      const long double lp = (static_cast<long double>(p.x[a.at(r, k)]) - m) - lse;
      e -= static_cast<long double>(t.q(r, k)) * lp;
      g += std::abs(static_cast<long double>(t.q(r, k))) * (std::abs(static_cast<long double>(p.x[a.at(r, k)]) - m) + lse);
    }
    ell[static_cast<std::size_t>(r)] = e;
    mag[static_cast<std::size_t>(r)] = g;
  }
  if (p.c.reduction == Reduction::none) {
    Eigen::VectorXd y(a.R());
    scale = 0;
    for (Index r = 0; r < a.R(); ++r)
      y[r] = static_cast<double>(ell[static_cast<std::size_t>(r)]), scale = std::max(scale, static_cast<double>(mag[static_cast<std::size_t>(r)]));
    return y;
  }
  long double total = 0, D = 0, m = 0;
  for (Index r = 0; r < a.R(); ++r) total += ell[static_cast<std::size_t>(r)], m += mag[static_cast<std::size_t>(r)], D += t.mean_weight(r);
  const long double f = p.c.reduction == Reduction::mean ? 1 / D : 1;
  scale = static_cast<double>(m * f);
  return Eigen::VectorXd::Constant(1, static_cast<double>(total * f));
}

double jacobian_scale_of(const Problem& p, bool softmax) {
  const auto t = p.targets();
  return mean_factor(p, t) * row_magnitudes(p, softmax).maxCoeff();
}

double projection_scale_of(const Problem& p, const Eigen::VectorXd& v, const Eigen::VectorXd& u, bool softmax) {
  const auto t = p.targets();
  const double fac = mean_factor(p, t);
  const ops::AxisRows& a = t.rows;
  double total = 0;
  for (Index r = 0; r < a.R(); ++r) {
    double s = 0;
    for (Index k = 0; k < a.M; ++k) s += ((softmax ? t.Q(r) : 0) + std::abs(t.q(r, k))) * std::abs(u[a.at(r, k)]);
    total += std::abs(p.c.reduction == Reduction::none ? v[r] : v[0] * fac) * s;
  }
  return total;
}

double dx_scale_of(const Problem& p, const TensorD& dy, bool softmax) {
  const auto t = p.targets();
  const double fac = mean_factor(p, t);
  const Eigen::VectorXd m = row_magnitudes(p, softmax);
  double out = 0;
  for (Index r = 0; r < m.size(); ++r) out = std::max(out, std::abs(g_of(p, dy, r, fac)) * m[r]);
  return out;
}

template <class T>
struct Prepared {
  Tensor<T> x, probs, weight;
  const Problem* p;
  ops::ClassLossForward<T> fwd;
  const Tensor<T>* wp() const { return p->c.weighted ? &weight : nullptr; }
};

template <class T>
Prepared<T> cast_problem(const Problem& p) {
  return Prepared<T>{p.x.cast<T>(), p.probs.cast<T>(), p.weight.cast<T>(), &p, {}};
}

// ================================================================================================
// nll_loss

struct NllLoss {
  static constexpr const char* op = "nll_loss";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"nll_loss.forward", "NLL forward: ℓᵣ = −w_t x_{r,t} (0 where t = ignore_index), reduced none / sum / mean over Σ w_t"},
        {"nll_loss.dreduce", "∂L/∂ℓᵣ = dyᵣ (none), dy (sum), dy / Σ w_t (mean); 0 for an ignored sample"},
        {"nll_loss.dpick", "∂ℓᵣ/∂x_{r,c} = −q_{r,c} = −w_t [c = t]"},
        {"nll_loss.dx", "NLL ∂L/∂x = gᵣ ∂ℓᵣ/∂x (staged)"},
        {"nll_loss.dx_fused", "NLL dx: zeros and −gᵣ w_t at each target entry"}};
    return f;
  }
  using Case = catalog::Case;
  using Problem = catalog::Problem;
  static const harness::Cases<Case>& cases() {
    using R = Reduction;
    static const harness::Cases<Case> c = {
        .jacobian = {{{4, 5}}, {{3, 4}, R::sum, true}, {{3, 4}, R::none, true, false, true}, {{2, 3, 2}, R::mean, true, false, true},
                     {{5}}, {{6, 4}, R::mean, false, false, true}},
        .projection = {{{64, 100}, R::mean, true}, {{8, 10, 16}, R::none, false, false, true}},
        .ablation = {{{4, 5}, R::mean, true}, {{3, 4}, R::none, true, false, true}},
        .benchmark = {{{512, 1000}}}};
    return c;
  }
  static std::uint64_t seed(const Case& c) { return seed_of(c, 1469598103934665603ull ^ 0x11); }
  static constexpr std::uint64_t benchmark_seed = 1200;
  static Problem problem(const Case& c, std::uint64_t seed) { return sample(c, seed, false); }
  static std::string describe(const Problem& p) { return describe_of("nll_loss", p); }
  static std::vector<std::string> check_options() { return {"reduction", "ignore_index"}; }
  static std::vector<std::string> check_arrays() { return {"target", "weight"}; }
  static Problem from_arrays(const UserArrays& ua) {
    return user_problem(UserInput(op, ua), false);
  }
  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t) { return p.x; }
  static std::vector<std::pair<std::string, double>> options(const Problem& p) { return options_of(p); }
  static std::vector<std::pair<std::string, TensorD>> constants(const Problem& p) { return constants_of(p); }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    const Tensor<S> wt = p.weight.cast<S>();
    return ops::nll_loss_forward(in[0], p.target, p.c.weighted ? &wt : nullptr, p.nll()).loss;
  }
  template <class T>
  using Prepared = catalog::Prepared<T>;
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    auto pr = std::make_shared<Prepared<T>>(cast_problem<T>(p));
    pr->fwd = ops::nll_loss_forward(pr->x, p.target, pr->wp(), p.nll());
    return pr;
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.loss;
  }
  using Terms = ops::NllLossTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    const Problem& p = *pr.p;
    if (pass == Pass::staged)
      return {ops::nll_loss_backward_staged(dy, pr.x, p.target, pr.wp(), pr.fwd.cache, p.ignore_index, t).dx};
    return {ops::nll_loss_backward(dy, p.target, pr.wp(), pr.fwd.cache, p.ignore_index).dx};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"nll_loss.dreduce", &Terms::dreduce}, {"nll_loss.dpick", &Terms::dpick}};
    return a;
  }
  static std::string ablation_summary() { return "Both terms are caught: NLL's gradient is their product, and it has no zero term."; }
  static Eigen::VectorXd reference(const Problem& p, double& scale) { return reference_of(p, scale, false); }
  static double jacobian_scale(const Prepared<double>&, const Problem& p) { return jacobian_scale_of(p, false); }
  static double projection_scale(const Prepared<double>&, const Problem& p, const Eigen::VectorXd& v, const Eigen::VectorXd& u) {
    return projection_scale_of(p, v, u, false);
  }
  static double dx_scale(const Prepared<double>&, const Problem& p, const TensorD& dy) { return dx_scale_of(p, dy, false); }
  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<NllLoss>& c);
};

// ================================================================================================
// cross_entropy

struct CrossEntropy {
  static constexpr const char* op = "cross_entropy";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"cross_entropy.forward", "Cross-entropy forward: ℓᵣ = −Σ_c q_{r,c} log_softmax(x)_{r,c}, reduced none / sum / mean"},
        {"cross_entropy.dreduce", "gᵣ = ∂L/∂ℓᵣ = dyᵣ (none), dy (sum), dy / D (mean); 0 for an ignored sample"},
        {"cross_entropy.dlogp", "∂L/∂log p_{r,c} = −gᵣ q_{r,c} (the NLL step)"},
        {"cross_entropy.dlse", "∂L/∂λᵣ = −Σ_c ∂L/∂log p_{r,c} = gᵣ Qᵣ (the log-sum-exp)"},
        {"cross_entropy.dz", "∂L/∂z_{r,c} = ∂L/∂log p_{r,c} + p_{r,c} ∂L/∂λᵣ"},
        {"cross_entropy.dshift", "∂L/∂mᵣ = −Σ_c ∂L/∂z_{r,c} = 0: the max shift carries nothing"},
        {"cross_entropy.dx", "Cross-entropy ∂L/∂x: assembly of z and the shift (staged chain log_softmax → NLL)"},
        {"cross_entropy.dx_fused", "Cross-entropy dx = gᵣ (Qᵣ softmax(x) − q): the softmax minus the target, scaled"}};
    return f;
  }
  using Case = catalog::Case;
  using Problem = catalog::Problem;
  static const harness::Cases<Case>& cases() {
    using R = Reduction;
    static const harness::Cases<Case> c = {
        .jacobian = {{{4, 5}},
                     {{3, 4}, R::sum, true},
                     {{3, 4}, R::none, true, false, true},
                     {{2, 3, 2}, R::mean, true, false, true, 0.1},
                     {{6, 4}, R::mean, false, false, false, 0.2},
                     {{5}},
                     {{4, 5}, R::mean, false, true},
                     {{3, 4}, R::none, true, true, false, 0.2},
                     {{2, 3, 2}, R::sum, false, true}},
        .projection = {{{64, 100}, R::mean, true, false, true, 0.1}, {{8, 10, 16}, R::none, false, true}},
        .ablation = {{{4, 5}, R::mean, true}, {{2, 3, 2}, R::none, true, false, true, 0.1}, {{4, 5}, R::sum, false, true}},
        .benchmark = {{{512, 1000}}}};
    return c;
  }
  static std::uint64_t seed(const Case& c) { return seed_of(c, 1469598103934665603ull ^ 0xce); }
  static constexpr std::uint64_t benchmark_seed = 1201;
  static Problem problem(const Case& c, std::uint64_t seed) { return sample(c, seed, true); }
  static std::string describe(const Problem& p) { return describe_of("cross_entropy", p); }
  static std::vector<std::string> check_options() {
    return {"reduction", "ignore_index", "label_smoothing"};
  }
  static std::vector<std::string> check_arrays() { return {"target", "weight"}; }
  static Problem from_arrays(const UserArrays& ua) { return user_problem(UserInput(op, ua), true); }
  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t) { return p.x; }
  static std::vector<std::pair<std::string, double>> options(const Problem& p) { return options_of(p); }
  static std::vector<std::pair<std::string, TensorD>> constants(const Problem& p) { return constants_of(p); }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    const Tensor<S> wt = p.weight.cast<S>();
    const Tensor<S>* wp = p.c.weighted ? &wt : nullptr;
    if (p.c.probs) return ops::cross_entropy_forward(in[0], p.probs.cast<S>(), wp, p.ce()).loss;
    return ops::cross_entropy_forward(in[0], p.target, wp, p.ce()).loss;
  }
  template <class T>
  using Prepared = catalog::Prepared<T>;
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    auto pr = std::make_shared<Prepared<T>>(cast_problem<T>(p));
    if (p.c.probs) pr->fwd = ops::cross_entropy_forward(pr->x, pr->probs, pr->wp(), p.ce());
    else pr->fwd = ops::cross_entropy_forward(pr->x, p.target, pr->wp(), p.ce());
    return pr;
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.loss;
  }
  using Terms = ops::CrossEntropyTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    const Problem& p = *pr.p;
    const auto run = [&](const auto& target) {
      if (pass == Pass::staged)
        return ops::cross_entropy_backward_staged(dy, pr.x, target, pr.wp(), p.ce(), pr.fwd.cache, t).dx;
      return ops::cross_entropy_backward(dy, pr.x, target, pr.wp(), p.ce(), pr.fwd.cache).dx;
    };
    if (p.c.probs) return {run(pr.probs)};
    return {run(p.target)};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"cross_entropy.dreduce", &Terms::dreduce},
                                               {"cross_entropy.dlogp", &Terms::dlogp},
                                               {"cross_entropy.dlse", &Terms::dlse},
                                               {"cross_entropy.dshift", &Terms::dshift, true}};
    return a;
  }
  static std::string ablation_summary() {
    return "Every term is caught except the max shift ∂L/∂m: the loss does not depend on m, so its\n"
           "gradient is zero and dropping or flipping it changes dx only at the level of rounding.";
  }
  static Eigen::VectorXd reference(const Problem& p, double& scale) { return reference_of(p, scale, true); }
  static double jacobian_scale(const Prepared<double>&, const Problem& p) { return jacobian_scale_of(p, true); }
  static double projection_scale(const Prepared<double>&, const Problem& p, const Eigen::VectorXd& v, const Eigen::VectorXd& u) {
    return projection_scale_of(p, v, u, true);
  }
  static double dx_scale(const Prepared<double>&, const Problem& p, const TensorD& dy) { return dx_scale_of(p, dy, true); }
  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<CrossEntropy>& c);
};

// ------------------------------------------------------------------------------------------------
// Edges and pitfalls, each with exact expectations.

// Logits ±1e4 (signs random, the target's logit among them): the loss is finite and matches the
// long-double reference, and dx (both passes) matches the long-double complex-step gradient.
std::vector<ResultRow> check_huge_logits(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Reduction red : {Reduction::mean, Reduction::none}) {
    Problem p = sample({{4, 5}, red, true}, 77, true);
    Rng rng(78);
    for (Index i = 0; i < p.x.size(); ++i) p.x[i] = (rng.uniform(0, 1) < 0.5 ? -1e4 : 1e4) + rng.normal(0, 1);
    double scale = 0;
    const Eigen::VectorXd ref = CrossEntropy::reference(p, scale);
    const auto pd = CrossEntropy::prepare<double>(p);
    const Eigen::VectorXd loss = as_f64(pd->fwd.loss);
    ResultRow fr = oracle_row({"cross_entropy.forward", test, "reference", "float64", "edge", p.shape,
                               "logits ±1e4: the loss is finite and matches a long-double recomputation (" +
                                   CrossEntropy::describe(p) + ")"},
                              Oracle::complex_step, loss, ref, {ref.size()}, scale);
    fr.passed = fr.passed && loss.allFinite();
    rows.push_back(fr);
    const Eigen::VectorXd exact = harness::exact_gradient(
        [&p](const auto& in) { return CrossEntropy::forward(p, in); }, {p.x}, 0, p.w);
    for (Pass pass : {Pass::staged, Pass::fused}) {
      const Eigen::VectorXd dx = as_f64(CrossEntropy::backward(*pd, p.w, pass)[0]);
      const std::string formula = pass == Pass::staged ? "cross_entropy.dx" : "cross_entropy.dx_fused";
      ResultRow r = oracle_row({formula, test, "long_double", "float64", "edge", p.shape,
                                std::string("logits ±1e4: dx (") + harness::name(pass) +
                                    ") is finite and matches the long-double complex-step gradient (" +
                                    CrossEntropy::describe(p) + ")"},
                               Oracle::complex_step, dx, exact, {dx.size()}, CrossEntropy::dx_scale(*pd, p, p.w));
      r.passed = r.passed && dx.allFinite();
      rows.push_back(r);
    }
  }
  return rows;
}

// One class: log_softmax is 0, so the loss is exactly 0 and dx exactly 0 (p = 1 = target).
template <class D>
std::vector<ResultRow> check_single_class(const std::string& formula, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Reduction red : {Reduction::mean, Reduction::sum, Reduction::none}) {
    const Problem p = D::problem({{4, 1}, red, true}, 5);
    const auto pd = D::template prepare<double>(p);
    const Eigen::VectorXd loss = as_f64(pd->fwd.loss);
    const bool ce = std::string(D::op) == "cross_entropy";
    // NLL of one class is −w x: not zero; its expectation is the reference's.
    double scale = 0;
    const Eigen::VectorXd want = ce ? Eigen::VectorXd::Zero(loss.size()) : D::reference(p, scale);
    ResultRow r{formula, test, "exact", "float64", "edge", p.shape};
    Eigen::VectorXd dxs(2 * p.x.size());
    dxs << as_f64(D::backward(*pd, p.w, Pass::staged)[0]), as_f64(D::backward(*pd, p.w, Pass::fused)[0]);
    const double loss_err = (loss - want).cwiseAbs().maxCoeff();
    r.max_abs_err = ce ? std::max(loss_err, dxs.cwiseAbs().maxCoeff()) : loss_err;
    r.passed = ce ? r.max_abs_err == 0 : loss_err <= 4e-16 * std::max(1.0, scale);
    r.note = std::string("a single class (C = 1), reduction ") + reduction_name(red) +
             (ce ? ": log_softmax = 0, so the loss and dx (both passes) are exactly 0" : ": the loss is −w x at the one class");
    rows.push_back(r);
  }
  return rows;
}

// Every target ignored: mean is 0/0 = NaN (as PyTorch returns it), sum is 0, none is zeros; dx is
// exactly 0 in both passes (PyTorch's is 0 too: an ignored sample has no edge to x).
template <class D>
std::vector<ResultRow> check_all_ignored(const std::string& formula, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const Reduction red : {Reduction::mean, Reduction::sum, Reduction::none}) {
    Problem p = D::problem({{3, 4}, red, true, false, true}, 9);
    for (Index r = 0; r < p.target.size(); ++r) p.target[r] = p.ignore_index;
    const auto pd = D::template prepare<double>(p);
    const Eigen::VectorXd loss = as_f64(pd->fwd.loss);
    Eigen::VectorXd dxs(2 * p.x.size());
    dxs << as_f64(D::backward(*pd, p.w, Pass::staged)[0]), as_f64(D::backward(*pd, p.w, Pass::fused)[0]);
    ResultRow r{formula, test, "exact", "float64", "edge", p.shape};
    const bool loss_ok = red == Reduction::mean ? std::isnan(loss[0]) : loss.cwiseAbs().maxCoeff() == 0;
    r.max_abs_err = dxs.cwiseAbs().maxCoeff();
    r.passed = loss_ok && r.max_abs_err == 0;
    r.note = std::string("every target = ignore_index, reduction ") + reduction_name(red) + ": the loss is " +
             (red == Reduction::mean ? "NaN (0/0, as PyTorch)" : "0") + " (measured " + std::to_string(loss[0]) +
             "), dx is exactly 0 in both passes";
    rows.push_back(r);
  }
  return rows;
}

// Without the shift, log Σ exp(x) overflows at logits ≈ 1000: the naive loss −x_t + log Σ exp(x)
// is ∞ (or NaN), ours is finite and matches the long-double reference.
std::vector<ResultRow> check_naive_overflows(const std::string& test) {
  Problem p = sample({{4, 5}, Reduction::none}, 13, true);
  for (Index i = 0; i < p.x.size(); ++i) p.x[i] += 1000;
  double scale = 0;
  const Eigen::VectorXd ref = CrossEntropy::reference(p, scale);
  const Eigen::VectorXd loss = as_f64(CrossEntropy::prepare<double>(p)->fwd.loss);
  Index naive_nonfinite = 0;
  for (Index r = 0; r < 4; ++r) {
    double s = 0;
    for (Index k = 0; k < 5; ++k) s += std::exp(p.x[r * 5 + k]);
    naive_nonfinite += !std::isfinite(-p.x[r * 5 + p.target[r]] + std::log(s));
  }
  ResultRow row = oracle_row({"cross_entropy.forward", test, "reference", "float64", "pitfall", p.shape, ""},
                             Oracle::complex_step, loss, ref, {ref.size()}, scale);
  row.passed = row.passed && naive_nonfinite == 4 && loss.allFinite();
  row.note = "logits ≈ 1000: the unshifted −x_t + log Σ exp(x) is not finite for " + std::to_string(naive_nonfinite) +
             " of 4 samples; ours is finite and matches a long-double recomputation";
  return {row};
}

// Cross-entropy is NLL of log_softmax: the two ops of this page composed give the same loss.
std::vector<ResultRow> check_equals_nll_of_log_softmax(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const auto& c : CrossEntropy::cases().jacobian) {
    if (c.probs || c.eps > 0) continue;
    const Problem p = CrossEntropy::problem(c, CrossEntropy::seed(c));
    const auto ls = ops::log_softmax_forward(p.x, {p.shape.size() == 1 ? 0 : 1});
    const auto nll = ops::nll_loss_forward(ls.y, p.target, p.wp(), p.nll());
    double scale = 0;
    CrossEntropy::reference(p, scale);
    rows.push_back(oracle_row({"cross_entropy.forward", test, "composition", "float64", "property", p.shape,
                               "cross_entropy(x) against nll_loss(log_softmax(x, 1)) (" + CrossEntropy::describe(p) + ")"},
                              Oracle::complex_step, as_f64(CrossEntropy::prepare<double>(p)->fwd.loss), as_f64(nll.loss),
                              {nll.loss.size()}, scale));
  }
  return rows;
}

// The term ∂L/∂z of the staged chain against the oracles: L as a function of z = x − m with the
// shift m held fixed (the forward at z, since log_softmax(z + m) = log_softmax(z)).
std::vector<ResultRow> check_dz(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const auto& c : CrossEntropy::cases().ablation) {
    const Problem p = CrossEntropy::problem(c, CrossEntropy::seed(c) + 1);
    const auto pd = CrossEntropy::prepare<double>(p);
    const auto pf = CrossEntropy::prepare<float>(p);
    ops::CrossEntropyStagedTrace<double> td;
    ops::CrossEntropyStagedTrace<float> tf;
    const auto run = [&](const auto& pr, const auto& dy, auto* trace) {
      if (p.c.probs) ops::cross_entropy_backward_staged(dy, pr->x, pr->probs, pr->wp(), p.ce(), pr->fwd.cache, {}, trace);
      else ops::cross_entropy_backward_staged(dy, pr->x, p.target, pr->wp(), p.ce(), pr->fwd.cache, {}, trace);
    };
    run(pd, p.w, &td);
    run(pf, p.w.cast<float>(), &tf);
    const ops::AxisRows a = p.rows();
    Eigen::VectorXd z(p.x.size());
    for (Index i = 0; i < z.size(); ++i) z[i] = p.x[i] - pd->fwd.cache.max[a.row_of(i)];
    const auto f = [&p](const auto& zv) {
      using S = typename std::decay_t<decltype(zv)>::Scalar;
      const Tensor<S> y = CrossEntropy::forward(p, std::vector<Tensor<S>>{from_vec(p.shape, Vec<S>(zv))});
      Vec<S> out = Vec<S>::Zero(1);
      for (Index i = 0; i < y.size(); ++i) out[0] += S(p.w[i]) * y[i];
      return out;
    };
    jacobian_rows(rows,
                  {"cross_entropy.dz", test, "", "", "oracle", p.shape,
                   "gradient of L in z = x − m with m held fixed (" + CrossEntropy::describe(p) + ")"},
                  f, z, {{"float64", as_f64(td.dz)}, {"float32", as_f64(tf.dz)}}, CrossEntropy::dx_scale(*pd, p, p.w));
  }
  return rows;
}

void NllLoss::extra(harness::Checks<NllLoss>& c) {
  c.add("nll_loss.forward", "nll_loss/edges/a_single_class",
        [](const std::string& t) { return check_single_class<NllLoss>("nll_loss.forward", t); });
  c.add("nll_loss.dx", "nll_loss/edges/every_target_ignored_gives_nan_mean_and_zero_dx",
        [](const std::string& t) { return check_all_ignored<NllLoss>("nll_loss.dx", t); });
}

void CrossEntropy::extra(harness::Checks<CrossEntropy>& c) {
  c.add("cross_entropy.dz", "cross_entropy/terms/dz_matches_oracles", check_dz);
  c.add("cross_entropy.forward", "cross_entropy/edges/logits_1e4_give_a_finite_loss_and_gradient", check_huge_logits);
  c.add("cross_entropy.forward", "cross_entropy/edges/a_single_class_gives_zero_loss_and_gradient",
        [](const std::string& t) { return check_single_class<CrossEntropy>("cross_entropy.forward", t); });
  c.add("cross_entropy.dx", "cross_entropy/edges/every_target_ignored_gives_nan_mean_and_zero_dx",
        [](const std::string& t) { return check_all_ignored<CrossEntropy>("cross_entropy.dx", t); });
  c.add("cross_entropy.forward", "cross_entropy/pitfalls/without_the_max_shift_the_loss_overflows", check_naive_overflows);
  c.add("cross_entropy.forward", "cross_entropy/forward/equals_nll_of_log_softmax", check_equals_nll_of_log_softmax);
}

// ------------------------------------------------------------------------------------------------
// Refused inputs and the allocation-free calls.

TensorD logits(Shape s) { return TensorD(std::move(s), 0.5); }
Tensor<Index> classes(Shape s, Index v = 1) { return Tensor<Index>(std::move(s), v); }

std::vector<harness::BadInput> NllLoss::bad_inputs() {
  using ops::nll_loss_forward;
  return {
      {"target_of_the_wrong_shape_is_refused", "nll_loss.forward", [] { nll_loss_forward(logits({4, 3}), classes({3})); },
       {"target (class indices) must have shape (4,)", "input of shape (4, 3)", "got (3,)"}},
      {"class_index_out_of_range_is_refused", "nll_loss.forward", [] { nll_loss_forward(logits({4, 3}), classes({4}, 3)); },
       {"target value 3 at flat index 0 is out of range [0, 3)", "ignore_index = -100"}},
      {"negative_class_index_is_refused", "nll_loss.forward", [] { nll_loss_forward(logits({4, 3}), classes({4}, -1)); },
       {"target value -1", "out of range [0, 3)"}},
      {"weight_of_the_wrong_size_is_refused", "nll_loss.forward",
       [] {
         const TensorD w({4}, 1.0);
         nll_loss_forward(logits({4, 3}), classes({4}), &w);
       },
       {"weight (one per class, C) must have shape (3,)", "got (4,)"}},
      {"dy_of_the_wrong_shape_is_refused", "nll_loss.dx_fused",
       [] {
         const auto f = nll_loss_forward(logits({4, 3}), classes({4}));
         ops::nll_loss_backward(TensorD({4}), classes({4}), nullptr, f.cache);
       },
       {"dy (must match the loss) must have shape ()", "got (4,)"}},
  };
}

std::vector<harness::BadInput> CrossEntropy::bad_inputs() {
  using ops::cross_entropy_forward;
  const auto smoothing = [](double eps) {
    return [eps] { cross_entropy_forward(logits({4, 3}), classes({4}), nullptr, {-100, Reduction::mean, eps}); };
  };
  return {
      {"target_of_the_wrong_shape_is_refused", "cross_entropy.forward",
       [] { cross_entropy_forward(logits({2, 3, 5}), classes({2, 3})); },
       {"target (class indices) must have shape (2, 5)", "input of shape (2, 3, 5)", "got (2, 3)"}},
      {"class_index_out_of_range_is_refused", "cross_entropy.forward",
       [] { cross_entropy_forward(logits({4, 3}), classes({4}, 7)); }, {"target value 7", "out of range [0, 3)"}},
      {"weight_of_the_wrong_size_is_refused", "cross_entropy.forward",
       [] {
         const TensorD w({2}, 1.0);
         cross_entropy_forward(logits({4, 3}), classes({4}), &w);
       },
       {"weight (one per class, C) must have shape (3,)", "got (2,)"}},
      {"label_smoothing_below_0_is_refused", "cross_entropy.forward", smoothing(-0.1),
       {"label_smoothing must be in [0, 1]", "got -0.1"}},
      {"label_smoothing_above_1_is_refused", "cross_entropy.forward", smoothing(1.5),
       {"label_smoothing must be in [0, 1]", "got 1.5"}},
      {"probability_targets_of_the_wrong_shape_are_refused", "cross_entropy.forward",
       [] { cross_entropy_forward(logits({4, 3}), TensorD({4, 4}, 0.25)); },
       {"target (class probabilities) must have the shape of input (4, 3)", "got (4, 4)"}},
      {"probability_targets_with_an_ignore_index_are_refused", "cross_entropy.forward",
       [] { cross_entropy_forward(logits({4, 3}), TensorD({4, 3}, 0.25), nullptr, {0}); },
       {"ignore_index is not supported for class-probability targets", "got 0"}},
      {"dy_of_the_wrong_shape_is_refused", "cross_entropy.dx_fused",
       [] {
         const auto f = cross_entropy_forward(logits({4, 3}), classes({4}), nullptr, {-100, Reduction::none});
         ops::cross_entropy_backward(TensorD(Shape{}), logits({4, 3}), classes({4}), nullptr,
                                     {-100, Reduction::none}, f.cache);
       },
       {"dy (must match the loss) must have shape (4,)", "got ()"}},
  };
}

template <class T, class Fwd, class Bwd>
harness::IntoCase into_case(const std::string& name, bool backward, Fwd fwd, Bwd bwd) {
  return {name + (sizeof(T) == 4 ? "_float" : "_double"), [=] {
            struct State {
              Tensor<T> x{Shape{64, 100}}, dx{Shape{64, 100}}, loss{Shape{}}, dy{Shape{}, T(1)}, weight{Shape{100}, T(1.5)};
              Tensor<Index> target{Shape{64}};
              ops::ClassLossCache<T> cache;
            };
            auto st = std::make_shared<State>();
            for (Index i = 0; i < st->x.size(); ++i) st->x[i] = T(static_cast<double>(i % 97) / 32);
            for (Index r = 0; r < 64; ++r) st->target[r] = (r * 7) % 100;
            fwd(*st);
            if (backward) return std::function<void()>([st, bwd] { bwd(*st); });
            return std::function<void()>([st, fwd] { fwd(*st); });
          }};
}

std::vector<harness::IntoCase> NllLoss::into_cases() {
  std::vector<harness::IntoCase> out;
  const auto add = [&](auto tag) {
    using T = decltype(tag);
    const auto fwd = [](auto& s) { ops::nll_loss_forward_into<T>(s.x, s.target, &s.weight, {}, s.loss, s.cache); };
    const auto bwd = [](auto& s) { ops::nll_loss_backward_into<T>(s.dy, s.target, &s.weight, s.cache, s.dx); };
    out.push_back(into_case<T>("nll_loss_forward_into", false, fwd, bwd));
    out.push_back(into_case<T>("nll_loss_backward_into", true, fwd, bwd));
  };
  add(float{});
  add(double{});
  return out;
}

std::vector<harness::IntoCase> CrossEntropy::into_cases() {
  std::vector<harness::IntoCase> out;
  const auto add = [&](auto tag) {
    using T = decltype(tag);
    const ops::CrossEntropyConfig cfg{-100, Reduction::mean, 0.1};
    const auto fwd = [cfg](auto& s) { ops::cross_entropy_forward_into<T>(s.x, s.target, &s.weight, cfg, s.loss, s.cache); };
    const auto bwd = [cfg](auto& s) {
      ops::cross_entropy_backward_into<T>(s.dy, s.x, s.target, &s.weight, cfg, s.cache, s.dx);
    };
    out.push_back(into_case<T>("cross_entropy_forward_into", false, fwd, bwd));
    out.push_back(into_case<T>("cross_entropy_backward_into", true, fwd, bwd));
  };
  add(float{});
  add(double{});
  return out;
}

}  // namespace

void register_cross_entropy(Registry& r) {
  harness::register_op<NllLoss>(r);
  harness::register_op<CrossEntropy>(r);
}

}  // namespace gradproof::catalog
