// The declaration of log-softmax (log_softmax.*): what is particular to it. The harness
// (harness/checks.hpp) makes the forward, oracle, staged = fused and negative-control checks from
// it; extra() adds the term checks, the property and the pitfall. Its page is softmax's.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/log_softmax.hpp"

#include <cmath>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;

struct LogSoftmax {
  static constexpr const char* op = "log_softmax";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"log_softmax.forward", "Log-softmax forward: y = (x − m) − log Σ exp(x − m) along dim, m = max x"},
        {"log_softmax.dl_dlse", "∂L/∂ℓ = −Σⱼ dyⱼ, ℓ = log s (the log-sum-exp)"},
        {"log_softmax.dl_ds", "∂L/∂s = (∂L/∂ℓ) / s"},
        {"log_softmax.dl_dz", "∂L/∂zⱼ = dyⱼ + eⱼ ∂L/∂s, z = x − m"},
        {"log_softmax.dshift", "∂L/∂m = −Σⱼ ∂L/∂zⱼ = 0: the max shift carries nothing"},
        {"log_softmax.dx", "Log-softmax ∂L/∂x: assembly of z and the shift (staged)"},
        {"log_softmax.dx_fused", "Log-softmax dx = dy − softmax(x) Σ dy: one sum per row"}};
    return f;
  }

  struct Case {
    Shape shape;
    Index dim = -1;
  };
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = {.jacobian = {{{4, 6}}, {{3, 2, 5}}, {{1, 7}}, {{2, 1}}, {{5, 2}},
                                                        {{3, 4, 2}, 1}, {{4, 3}, 0}, {{2, 3, 4}, -3}},
                                           .projection = {{{16, 128}}, {{4, 8, 32}}, {{8, 32, 6}, -2}},
                                           .ablation = {{{4, 6}}, {{3, 2, 5}}, {{1, 7}}, {{3, 4, 2}, 1}},
                                           .benchmark = {{{4096, 1024}}}};
    return c;
  }
  struct Problem {
    Shape shape;
    Index dim;
    TensorD x, w;
    ops::AxisRows rows() const { return ops::axis_rows(shape, dim, "log_softmax", "x"); }
    Index M() const { return rows().M; }
    Index R() const { return rows().R(); }
  };
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 1469598103934665603ull ^ 0x15;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    if (c.dim != -1) h = (h ^ static_cast<std::uint64_t>(c.dim + 64)) * 1099511628211ull;
    return h;
  }
  static constexpr std::uint64_t benchmark_seed = 4097;
  // As softmax's: rows with different small offsets, values spread by 1.5 (no max ties).
  static Problem problem(const Case& c, std::uint64_t seed) {
    Problem p{c.shape, c.dim, TensorD(c.shape), TensorD(c.shape)};
    Rng rng(seed);
    const ops::AxisRows a = p.rows();
    for (Index r = 0; r < a.R(); ++r) {
      const double offset = r % 3 == 1 ? rng.uniform(3, 6) : rng.uniform(-3, 3);
      for (Index j = 0; j < a.M; ++j) p.x[a.at(r, j)] = rng.normal(offset, 1.5);
    }
    p.w = rng.normal_tensor(c.shape);
    return p;
  }
  static std::string describe(const Problem& p) {
    return "log_softmax over dim " + std::to_string(p.dim) + ", " + std::to_string(p.R()) + " rows of " +
           std::to_string(p.M());
  }

  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t) { return p.x; }
  static std::vector<std::pair<std::string, double>> options(const Problem& p) {
    return {{"dim", static_cast<double>(p.dim)}};
  }
  // `gradproof check log_softmax`: the user's x and dy, dim as given (PyTorch's default here: -1).
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in("log_softmax", ua);
    Problem p{in.input(0).shape(), in.integer("dim", -1), in.x_shaped_like_dy(), in.dy()};
    p.rows();  // refuses a dim outside [-rank, rank), naming it
    return p;
  }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    return ops::log_softmax_forward(in[0], {p.dim}).y;
  }
  template <class T>
  struct Prepared {
    Tensor<T> x;
    ops::LogSoftmaxForward<T> fwd;
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    Tensor<T> x = p.x.cast<T>();
    auto fwd = ops::log_softmax_forward(x, {p.dim});
    return std::make_shared<const Prepared<T>>(Prepared<T>{std::move(x), std::move(fwd)});
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  using Terms = ops::LogSoftmaxTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    if (pass == Pass::staged) return {ops::log_softmax_backward_staged(dy, pr.x, pr.fwd.cache, t).dx};
    return {ops::log_softmax_backward(dy, pr.fwd.y, pr.fwd.cache).dx};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"log_softmax.dl_dz", &Terms::dl_dz},
                                               {"log_softmax.dl_dlse", &Terms::dl_dlse},
                                               {"log_softmax.dl_ds", &Terms::dl_ds},
                                               {"log_softmax.dshift", &Terms::dshift, true}};
    return a;
  }
  static std::string ablation_summary() {
    return "Every term is caught except the max shift ∂L/∂m: y does not depend on m, so its gradient is\n"
           "zero and dropping or flipping it changes dx only at the level of rounding.";
  }

  // Per row, y in long double. y = z − ℓ subtracts: its scale is max(|z|, ℓ), the larger term.
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    Eigen::VectorXd y(p.x.size());
    const ops::AxisRows a = p.rows();
    scale = 0;
    for (Index r = 0; r < a.R(); ++r) {
      const auto x = [&](Index j) { return static_cast<long double>(p.x[a.at(r, j)]); };
      long double m = x(0), s = 0;
      for (Index j = 1; j < a.M; ++j) m = std::max(m, x(j));
      for (Index j = 0; j < a.M; ++j) s += std::exp(x(j) - m);
      const long double lse = std::log(s);
      for (Index j = 0; j < a.M; ++j) {
        y[a.at(r, j)] = static_cast<double>((x(j) - m) - lse);
        scale = std::max(scale, static_cast<double>(std::max(std::abs(x(j) - m), lse)));
      }
    }
    return y;
  }
  // ∂yᵢ/∂x_k = δᵢₖ − p_k: terms of size 1 and p.
  static double jacobian_scale(const Prepared<double>&, const Problem&) { return 2; }
  // vᵀJu = Σ_r (Σ vⱼuⱼ − (Σ vⱼ)(Σ pₖuₖ)): the sum of the magnitudes of the two terms.
  static double projection_scale(const Prepared<double>& pd, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    double total = 0;
    const auto& y = pd.fwd.y;
    const ops::AxisRows a = p.rows();
    for (Index r = 0; r < a.R(); ++r) {
      double vu = 0, sv = 0, pu = 0;
      for (Index k = 0; k < a.M; ++k) {
        const Index j = a.at(r, k);
        vu += std::abs(v[j] * u[j]), sv += v[j], pu += std::exp(y[j]) * u[j];
      }
      total += vu + std::abs(sv * pu);
    }
    return total;
  }
  // dxⱼ = dyⱼ − pⱼ Σ dy: the size of its terms, |dyⱼ| + pⱼ Σ|dy|.
  static Eigen::VectorXd term_magnitudes(const TensorD& y, const TensorD& dy, const ops::AxisRows& rows) {
    Eigen::VectorXd t(y.size());
    for (Index r = 0; r < rows.R(); ++r) {
      double a = 0;
      for (Index k = 0; k < rows.M; ++k) a += std::abs(dy[rows.at(r, k)]);
      for (Index k = 0; k < rows.M; ++k) {
        const Index j = rows.at(r, k);
        t[j] = std::abs(dy[j]) + std::exp(y[j]) * a;
      }
    }
    return t;
  }
  static double dx_scale(const Prepared<double>& pd, const Problem& p, const TensorD& dy) {
    return term_magnitudes(pd.fwd.y, dy, p.rows()).maxCoeff();
  }

  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<LogSoftmax>& c);
};

// ----------------------------------------------------------------------------------------------
// Term checks: each term against the oracles with the other nodes of the graph held fixed.

struct TermSetup {
  LogSoftmax::Problem p;
  ops::AxisRows a;
  std::shared_ptr<const LogSoftmax::Prepared<double>> pd;
  ops::LogSoftmaxStagedTrace<double> td;
  ops::LogSoftmaxStagedTrace<float> tf;
  explicit TermSetup(const LogSoftmax::Case& c)
      : p(LogSoftmax::problem(c, LogSoftmax::seed(c) + 1)), a(p.rows()), pd(LogSoftmax::prepare<double>(p)) {
    const auto pf = LogSoftmax::prepare<float>(p);
    ops::log_softmax_backward_staged(p.w, pd->x, pd->fwd.cache, {}, &td);
    ops::log_softmax_backward_staged(p.w.cast<float>(), pf->x, pf->fwd.cache, {}, &tf);
  }
  Index row(Index i) const { return a.row_of(i); }
  double z(Index i) const { return p.x[i] - pd->fwd.cache.max[row(i)]; }
  // L = Σ wⱼ (zⱼ − ℓ_r) with z given, as a function of the per-row ℓ.
  template <class S, class Lse>
  Vec<S> loss(const Lse& lse_at) const {
    Vec<S> out = Vec<S>::Zero(1);
    for (Index i = 0; i < p.x.size(); ++i) out[0] += S(p.w[i]) * (S(z(i)) - lse_at(row(i)));
    return out;
  }
  // The same loss as a function of z (through ℓ = log Σ exp z as well).
  template <class S, class Z>
  Vec<S> loss_of_z(const Z& z_at) const {
    using std::exp;
    using std::log;
    Vec<S> out = Vec<S>::Zero(1);
    for (Index r = 0; r < a.R(); ++r) {
      S s = S(0);
      for (Index k = 0; k < a.M; ++k) s += exp(z_at(a.at(r, k)));
      const S lse = log(s);
      for (Index k = 0; k < a.M; ++k) out[0] += S(p.w[a.at(r, k)]) * (z_at(a.at(r, k)) - lse);
    }
    return out;
  }
};

template <class F>
std::vector<ResultRow> term_rows(const std::string& formula, const std::string& test, const std::string& what, F make) {
  std::vector<ResultRow> rows;
  for (const auto& c : LogSoftmax::cases().ablation) {
    const TermSetup t(c);
    make(rows, RowMeta{formula, test, "", "", "oracle", t.p.shape, what + " (" + LogSoftmax::describe(t.p) + ")"}, t);
  }
  return rows;
}

std::vector<ResultRow> check_dl_dlse(const std::string& test) {
  return term_rows("log_softmax.dl_dlse", test, "gradient of L = Σ w (z − ℓ) in the log-sum-exps ℓ with z held fixed",
                   [](auto& rows, const RowMeta& meta, const TermSetup& t) {
                     Eigen::VectorXd at(t.a.R());
                     for (Index r = 0; r < at.size(); ++r) at[r] = std::log(t.pd->fwd.cache.sum[r]);
                     const auto f = [&t](const auto& lv) {
                       using S = typename std::decay_t<decltype(lv)>::Scalar;
                       return t.loss<S>([&](Index r) { return lv[r]; });
                     };
                     jacobian_rows(rows, meta, f, at, {{"float64", as_f64(t.td.dl_dlse)}, {"float32", as_f64(t.tf.dl_dlse)}}, -1);
                   });
}

std::vector<ResultRow> check_dl_ds(const std::string& test) {
  return term_rows("log_softmax.dl_ds", test, "gradient of L = Σ w (z − log s) in the row sums s with z held fixed",
                   [](auto& rows, const RowMeta& meta, const TermSetup& t) {
                     const auto f = [&t](const auto& sv) {
                       using S = typename std::decay_t<decltype(sv)>::Scalar;
                       using std::log;
                       return t.loss<S>([&](Index r) { return log(sv[r]); });
                     };
                     jacobian_rows(rows, meta, f, as_f64(t.pd->fwd.cache.sum),
                                   {{"float64", as_f64(t.td.dl_ds)}, {"float32", as_f64(t.tf.dl_ds)}}, -1);
                   });
}

std::vector<ResultRow> check_dl_dz(const std::string& test) {
  return term_rows("log_softmax.dl_dz", test, "gradient of L in z = x − m (directly and through ℓ)",
                   [](auto& rows, const RowMeta& meta, const TermSetup& t) {
                     Eigen::VectorXd at(t.p.x.size());
                     for (Index i = 0; i < at.size(); ++i) at[i] = t.z(i);
                     const auto f = [&t](const auto& zv) {
                       using S = typename std::decay_t<decltype(zv)>::Scalar;
                       return t.loss_of_z<S>([&](Index i) -> S { return zv[i]; });
                     };
                     const double scale = LogSoftmax::term_magnitudes(t.pd->fwd.y, t.p.w, t.a).maxCoeff();
                     jacobian_rows(rows, meta, f, at, {{"float64", as_f64(t.td.dl_dz)}, {"float32", as_f64(t.tf.dl_dz)}},
                                   scale);
                   });
}

std::vector<ResultRow> check_dshift(const std::string& test) {
  return term_rows("log_softmax.dshift", test, "gradient of L in the shift m (one per row, x held fixed): 0",
                   [](auto& rows, const RowMeta& meta, const TermSetup& t) {
                     const auto f = [&t](const auto& mv) {
                       using S = typename std::decay_t<decltype(mv)>::Scalar;
                       return t.loss_of_z<S>([&](Index i) -> S { return S(t.p.x[i]) - mv[t.row(i)]; });
                     };
                     // The allowance is that of the sum it is: Σⱼ |∂L/∂zⱼ| per row.
                     Eigen::VectorXd acc = Eigen::VectorXd::Zero(t.a.R());
                     for (Index i = 0; i < t.p.x.size(); ++i) acc[t.row(i)] += std::abs(t.td.dl_dz[i]);
                     jacobian_rows(rows, meta, f, as_f64(t.pd->fwd.cache.max),
                                   {{"float64", as_f64(t.td.dshift)}, {"float32", as_f64(t.tf.dshift)}}, acc.maxCoeff());
                   });
}

// Σⱼ dxⱼ = 0 per row: y shifts by a constant when a row does, so ⟨w, y⟩ moves by c Σw − c Σw.
std::vector<ResultRow> check_dx_sums_to_zero(const std::string& formula, const std::string& test, Pass pass) {
  std::vector<ResultRow> rows;
  for (const auto& c : LogSoftmax::cases().jacobian) {
    const LogSoftmax::Problem p = LogSoftmax::problem(c, LogSoftmax::seed(c) + 3);
    const ops::AxisRows ax = p.rows();
    const Index R = ax.R();
    const auto one = [&](auto tag) {
      using T = decltype(tag);
      const auto pr = LogSoftmax::prepare<T>(p);
      const Tensor<T> dx = LogSoftmax::backward(*pr, p.w.cast<T>(), pass)[0];
      const Eigen::VectorXd terms = LogSoftmax::term_magnitudes(LogSoftmax::prepare<double>(p)->fwd.y, p.w, ax);
      Eigen::VectorXd sum(R), scale = Eigen::VectorXd::Zero(R);
      for (Index r = 0; r < R; ++r) {
        long double a = 0;
        for (Index k = 0; k < ax.M; ++k) a += static_cast<long double>(dx[ax.at(r, k)]), scale[r] += terms[ax.at(r, k)];
        sum[r] = static_cast<double>(a);
      }
      rows.push_back(oracle_row({formula, test, "identity", dtype_name<T>(), "property", p.shape,
                                 std::string("per row Σⱼ dxⱼ = 0 (") + harness::name(pass) + " backward, " +
                                     LogSoftmax::describe(p) + ")"},
                                Oracle::complex_step, sum, Eigen::VectorXd::Zero(R), {R}, scale.maxCoeff()));
    };
    one(double{});
    one(float{});
  }
  return rows;
}

// Without the shift, log Σ exp(x) is log ∞ = ∞ at x ≈ 1000 in float64, and y = x − ∞ = −∞,
// while the shifted forward matches the long-double reference.
std::vector<ResultRow> check_overflow_without_shift(const std::string& test) {
  LogSoftmax::Problem p = LogSoftmax::problem({{3, 5}, -1}, 11);
  for (Index i = 0; i < p.x.size(); ++i) p.x[i] += 1000;
  double scale = 0;
  const Eigen::VectorXd ref = LogSoftmax::reference(p, scale);
  const Eigen::VectorXd y = as_f64(LogSoftmax::prepare<double>(p)->fwd.y);
  Index naive_nonfinite = 0;
  for (Index o = 0; o < p.x.size(); o += p.M()) {
    double s = 0;
    for (Index j = o; j < o + p.M(); ++j) s += std::exp(p.x[j]);
    for (Index j = o; j < o + p.M(); ++j) naive_nonfinite += !std::isfinite(p.x[j] - std::log(s));
  }
  ResultRow row = oracle_row({"log_softmax.forward", test, "reference", "float64", "pitfall", p.shape, ""},
                             Oracle::complex_step, y, ref, {y.size()}, scale);
  row.passed = row.passed && naive_nonfinite == y.size() && y.allFinite();
  std::ostringstream note;
  note << "x ≈ 1000: the unshifted x − log Σexp(x) is not finite in " << naive_nonfinite << " of " << y.size()
       << " values; the shifted forward matches a long-double recomputation";
  row.note = note.str();
  return {row};
}

void LogSoftmax::extra(harness::Checks<LogSoftmax>& c) {
  c.add("log_softmax.dl_dlse", "log_softmax/terms/dl_dlse_matches_oracles", check_dl_dlse);
  c.add("log_softmax.dl_ds", "log_softmax/terms/dl_ds_matches_oracles", check_dl_ds);
  c.add("log_softmax.dl_dz", "log_softmax/terms/dl_dz_matches_oracles", check_dl_dz);
  c.add("log_softmax.dshift", "log_softmax/terms/dshift_is_zero_at_any_shift", check_dshift);
  c.add("log_softmax.dx", "log_softmax/dx/staged_dx_sums_to_zero_over_each_row",
        [](const std::string& t) { return check_dx_sums_to_zero("log_softmax.dx", t, Pass::staged); });
  c.add("log_softmax.dx_fused", "log_softmax/dx_fused/fused_dx_sums_to_zero_over_each_row",
        [](const std::string& t) { return check_dx_sums_to_zero("log_softmax.dx_fused", t, Pass::fused); });
  c.add("log_softmax.forward", "log_softmax/pitfalls/without_the_max_shift_log_sum_exp_overflows",
        check_overflow_without_shift);
}

// ----------------------------------------------------------------------------------------------
// Refused inputs and the allocation-free calls.

std::vector<harness::BadInput> LogSoftmax::bad_inputs() {
  using ops::log_softmax_forward;
  const auto fwd = [](Shape s) { return log_softmax_forward(TensorD(s, 0.5)); };
  return {
      {"rank_0_is_refused", "log_softmax.forward", [] { log_softmax_forward(TensorD(Shape{})); },
       {"log_softmax: x must have rank >= 1", "()"}},
      {"empty_x_is_refused", "log_softmax.forward", [] { log_softmax_forward(TensorD({3, 0})); },
       {"must not be empty", "(3, 0)"}},
      {"dim_out_of_range_is_refused", "log_softmax.forward", [] { log_softmax_forward(TensorD({2, 3}), {-3}); },
       {"dim must be in [-2, 1]", "(2, 3)", "got -3"}},
      {"y_of_the_wrong_shape_is_refused", "log_softmax.forward",
       [] {
         TensorD y({3, 2});
         ops::LogSoftmaxCache<double> cache;
         ops::log_softmax_forward_into(TensorD({2, 3}), {}, y, cache);
       },
       {"y (output) must have shape (2, 3)", "got (3, 2)"}},
      {"dy_of_the_wrong_shape_is_refused", "log_softmax.dx_fused",
       [fwd] {
         const auto f = fwd({2, 3});
         ops::log_softmax_backward(TensorD({2, 4}), f.y, f.cache);
       },
       {"dy (must match x) must have shape (2, 3)", "got (2, 4)"}},
      {"a_cache_of_another_input_is_refused", "log_softmax.dx",
       [fwd] {
         const auto f = fwd({2, 3});
         ops::log_softmax_backward_staged(TensorD({4, 3}), TensorD({4, 3}), f.cache);
       },
       {"cache was made for an input of shape (2, 3)", "x has shape (4, 3)"}},
      {"dx_of_the_wrong_shape_is_refused", "log_softmax.dx_fused",
       [fwd] {
         const auto f = fwd({2, 3});
         TensorD dx({3, 3});
         ops::log_softmax_backward_into(f.y, f.y, f.cache, dx);
       },
       {"dx (output) must have shape (2, 3)", "got (3, 3)"}},
  };
}

template <class T>
harness::IntoCase into_case(const std::string& name, bool backward) {
  return {name + (sizeof(T) == 4 ? "_float" : "_double"), [backward] {
            auto st = std::make_shared<std::pair<Tensor<T>, ops::LogSoftmaxForward<T>>>(
                Tensor<T>({64, 1024}, T(0.25)), ops::LogSoftmaxForward<T>{Tensor<T>({64, 1024}), {}});
            auto dx = std::make_shared<Tensor<T>>(Shape{64, 1024});
            for (Index i = 0; i < st->first.size(); ++i) st->first[i] = T(static_cast<double>(i % 97) / 32);
            ops::log_softmax_forward_into(st->first, {}, st->second.y, st->second.cache);
            if (backward)
              return std::function<void()>(
                  [st, dx] { ops::log_softmax_backward_into(st->first, st->second.y, st->second.cache, *dx); });
            return std::function<void()>([st] { ops::log_softmax_forward_into(st->first, {}, st->second.y, st->second.cache); });
          }};
}

std::vector<harness::IntoCase> LogSoftmax::into_cases() {
  return {into_case<float>("log_softmax_forward_into", false), into_case<double>("log_softmax_forward_into", false),
          into_case<float>("log_softmax_backward_into", true), into_case<double>("log_softmax_backward_into", true)};
}

}  // namespace

void register_log_softmax(Registry& r) { harness::register_op<LogSoftmax>(r); }

}  // namespace gradproof::catalog
