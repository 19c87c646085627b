// The declaration of softmax (softmax.*): what is particular to it. The harness
// (harness/checks.hpp) makes the forward, oracle, staged = fused and negative-control checks from
// it; extra() adds the term checks, the properties and the pitfall.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/softmax.hpp"

#include <cmath>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;

struct Softmax {
  static constexpr const char* op = "softmax";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"softmax.forward", "Softmax forward: y = exp(x − m) / Σ exp(x − m) along dim, m = max x"},
        {"softmax.dl_de", "∂L/∂eⱼ (direct edge, s held fixed) = dyⱼ / s"},
        {"softmax.dl_ds", "∂L/∂s = −Σⱼ dyⱼ eⱼ / s²"},
        {"softmax.dl_dz", "∂L/∂zⱼ = eⱼ (∂L/∂eⱼ + ∂L/∂s), z = x − m"},
        {"softmax.dshift", "∂L/∂m = −Σⱼ ∂L/∂zⱼ = 0: the max shift carries nothing"},
        {"softmax.dx", "Softmax ∂L/∂x: assembly of z and the shift (staged)"},
        {"softmax.dx_fused", "Softmax dx = y ⊙ (dy − ⟨dy, y⟩): one projection per row"}};
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
    ops::AxisRows rows() const { return ops::axis_rows(shape, dim, "softmax", "x"); }
    Index M() const { return rows().M; }
    Index R() const { return rows().R(); }
  };
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 1469598103934665603ull;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    if (c.dim != -1) h = (h ^ static_cast<std::uint64_t>(c.dim + 64)) * 1099511628211ull;
    return h;
  }
  static constexpr std::uint64_t benchmark_seed = 4096;
  // Rows with different offsets, values spread by 1.5, so no two are within rounding of each
  // other (no max ties). The offsets stay small: the difference oracles scale their step with |x|
  // (StepPolicy), but softmax's features have size one at any offset (y is shift-invariant), so at
  // x ≈ 50 Richardson's h⁴ error is 7e-9, above its 1.4e-9 allowance. Far rows are the pitfall's.
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
    return "softmax over dim " + std::to_string(p.dim) + ", " + std::to_string(p.R()) + " rows of " + std::to_string(p.M());
  }

  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t) { return p.x; }
  static std::vector<std::pair<std::string, double>> options(const Problem& p) {
    return {{"dim", static_cast<double>(p.dim)}};
  }
  // gradproof check: softmax over any axis dim in [-rank, rank), as PyTorch (default -1).
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in("softmax", ua);
    Problem p{in.input(0).shape(), in.integer("dim", -1), in.x_shaped_like_dy(), in.dy()};
    p.rows();  // refuses a dim outside [-rank, rank), naming it
    return p;
  }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    return ops::softmax_forward(in[0], {p.dim}).y;
  }
  template <class T>
  struct Prepared {
    Tensor<T> x;
    ops::SoftmaxForward<T> fwd;
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    Tensor<T> x = p.x.cast<T>();
    auto fwd = ops::softmax_forward(x, {p.dim});
    return std::make_shared<const Prepared<T>>(Prepared<T>{std::move(x), std::move(fwd)});
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  using Terms = ops::SoftmaxTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    if (pass == Pass::staged) return {ops::softmax_backward_staged(dy, pr.x, pr.fwd.cache, t).dx};
    return {ops::softmax_backward(dy, pr.fwd.y, pr.fwd.cache).dx};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"softmax.dl_de", &Terms::dl_de},
                                               {"softmax.dl_ds", &Terms::dl_ds},
                                               {"softmax.dshift", &Terms::dshift, true}};
    return a;
  }
  static std::string ablation_summary() {
    return "Every term is caught except the max shift ∂L/∂m: y does not depend on m, so its gradient is\n"
           "zero and dropping or flipping it changes dx only at the level of rounding.";
  }

  // Per row, y in long double (a ratio of positive sums: no cancellation, so its scale is max y).
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    Eigen::VectorXd y(p.x.size());
    const ops::AxisRows a = p.rows();
    for (Index r = 0; r < a.R(); ++r) {
      const auto x = [&](Index j) { return static_cast<long double>(p.x[a.at(r, j)]); };
      long double m = x(0), s = 0;
      for (Index j = 1; j < a.M; ++j) m = std::max(m, x(j));
      for (Index j = 0; j < a.M; ++j) s += std::exp(x(j) - m);
      for (Index j = 0; j < a.M; ++j) y[a.at(r, j)] = static_cast<double>(std::exp(x(j) - m) / s);
    }
    scale = y.cwiseAbs().maxCoeff();
    return y;
  }
  // ∂yᵢ/∂x_k = yᵢ(δᵢₖ − y_k): terms of size yᵢ and yᵢy_k.
  static double jacobian_scale(const Prepared<double>& pd, const Problem&) {
    const double ym = pd.fwd.y.flat().maxCoeff();
    return ym * (1 + ym);
  }
  // vᵀJu = Σ_r (Σ vⱼyⱼuⱼ − (Σ vⱼyⱼ)(Σ yₖuₖ)): the sum of the magnitudes of the two terms.
  static double projection_scale(const Prepared<double>& pd, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    double total = 0;
    const auto& y = pd.fwd.y;
    const ops::AxisRows a = p.rows();
    for (Index r = 0; r < a.R(); ++r) {
      double vyu = 0, vy = 0, yu = 0;
      for (Index k = 0; k < a.M; ++k) {
        const Index j = a.at(r, k);
        vyu += std::abs(v[j] * y[j] * u[j]), vy += v[j] * y[j], yu += y[j] * u[j];
      }
      total += vyu + std::abs(vy * yu);
    }
    return total;
  }
  // dxⱼ = yⱼ(dyⱼ − ⟨dy, y⟩): the size of its terms, yⱼ(|dyⱼ| + Σ|dy|y).
  static Eigen::VectorXd term_magnitudes(const TensorD& y, const TensorD& dy, const ops::AxisRows& rows) {
    Eigen::VectorXd t(y.size());
    for (Index r = 0; r < rows.R(); ++r) {
      double a = 0;
      for (Index k = 0; k < rows.M; ++k) a += std::abs(dy[rows.at(r, k)]) * y[rows.at(r, k)];
      for (Index k = 0; k < rows.M; ++k) {
        const Index j = rows.at(r, k);
        t[j] = y[j] * (std::abs(dy[j]) + a);
      }
    }
    return t;
  }
  static double dx_scale(const Prepared<double>& pd, const Problem& p, const TensorD& dy) {
    return term_magnitudes(pd.fwd.y, dy, p.rows()).maxCoeff();
  }

  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<Softmax>& c);
};

// ----------------------------------------------------------------------------------------------
// Term checks: each term against the oracles with the other nodes of the graph held fixed.

struct TermSetup {
  Softmax::Problem p;
  std::shared_ptr<const Softmax::Prepared<double>> pd;
  ops::SoftmaxStagedTrace<double> td;
  ops::SoftmaxStagedTrace<float> tf;
  explicit TermSetup(const Softmax::Case& c)
      : p(Softmax::problem(c, Softmax::seed(c) + 1)), pd(Softmax::prepare<double>(p)) {
    const auto pf = Softmax::prepare<float>(p);
    ops::softmax_backward_staged(p.w, pd->x, pd->fwd.cache, {}, &td);
    ops::softmax_backward_staged(p.w.cast<float>(), pf->x, pf->fwd.cache, {}, &tf);
  }
  Index row(Index i) const { return pd->fwd.cache.rows.row_of(i); }
  double e(Index i) const { return std::exp(p.x[i] - pd->fwd.cache.max[row(i)]); }
  // L = Σ wⱼ eⱼ / s_r as a function of e (s given) or of s (e given).
  template <class S, class E, class Sum>
  Vec<S> loss(const E& e_at, const Sum& s_at) const {
    Vec<S> out = Vec<S>::Zero(1);
    for (Index i = 0; i < p.x.size(); ++i) out[0] += S(p.w[i]) * e_at(i) / s_at(row(i));
    return out;
  }
};

template <class F>
std::vector<ResultRow> term_rows(const std::string& formula, const std::string& test, const std::string& what, F make) {
  std::vector<ResultRow> rows;
  for (const auto& c : Softmax::cases().ablation) {
    const TermSetup t(c);
    make(rows, RowMeta{formula, test, "", "", "oracle", t.p.shape, what + " (" + Softmax::describe(t.p) + ")"}, t);
  }
  return rows;
}

std::vector<ResultRow> check_dl_de(const std::string& test) {
  return term_rows("softmax.dl_de", test, "gradient of L = Σ w e / s in e with s held fixed",
                   [](auto& rows, const RowMeta& meta, const TermSetup& t) {
                     Eigen::VectorXd at(t.p.x.size());
                     for (Index i = 0; i < at.size(); ++i) at[i] = t.e(i);
                     const auto f = [&t](const auto& ev) {
                       using S = typename std::decay_t<decltype(ev)>::Scalar;
                       return t.loss<S>([&](Index i) { return ev[i]; }, [&](Index r) { return S(t.pd->fwd.cache.sum[r]); });
                     };
                     jacobian_rows(rows, meta, f, at, {{"float64", as_f64(t.td.dl_de)}, {"float32", as_f64(t.tf.dl_de)}}, -1);
                   });
}

std::vector<ResultRow> check_dl_ds(const std::string& test) {
  return term_rows("softmax.dl_ds", test, "gradient of L = Σ w e / s in the row sums s with e held fixed",
                   [](auto& rows, const RowMeta& meta, const TermSetup& t) {
                     const auto f = [&t](const auto& sv) {
                       using S = typename std::decay_t<decltype(sv)>::Scalar;
                       return t.loss<S>([&](Index i) { return S(t.e(i)); }, [&](Index r) { return sv[r]; });
                     };
                     jacobian_rows(rows, meta, f, as_f64(t.pd->fwd.cache.sum),
                                   {{"float64", as_f64(t.td.dl_ds)}, {"float32", as_f64(t.tf.dl_ds)}}, -1);
                   });
}

// z ↦ L with z = x − m: y = exp(z)/Σexp(z), through e and s together. With `shift`, the same loss
// as a function of the per-row shift m (x held fixed): the term derived to be zero.
template <class S, class Z>
Vec<S> loss_of_z(const TermSetup& t, const Z& z_at) {
  using std::exp;
  Vec<S> out = Vec<S>::Zero(1);
  const ops::AxisRows a = t.p.rows();
  for (Index r = 0; r < a.R(); ++r) {
    S s = S(0);
    for (Index k = 0; k < a.M; ++k) s += exp(z_at(a.at(r, k)));
    for (Index k = 0; k < a.M; ++k) out[0] += S(t.p.w[a.at(r, k)]) * exp(z_at(a.at(r, k))) / s;
  }
  return out;
}

std::vector<ResultRow> check_dl_dz(const std::string& test) {
  return term_rows("softmax.dl_dz", test, "gradient of L in z = x − m (through e and s)",
                   [](auto& rows, const RowMeta& meta, const TermSetup& t) {
                     Eigen::VectorXd at(t.p.x.size());
                     for (Index i = 0; i < at.size(); ++i) at[i] = t.p.x[i] - t.pd->fwd.cache.max[t.row(i)];
                     const auto f = [&t](const auto& zv) {
                       using S = typename std::decay_t<decltype(zv)>::Scalar;
                       return loss_of_z<S>(t, [&](Index i) -> S { return zv[i]; });
                     };
                     const double scale = Softmax::term_magnitudes(t.pd->fwd.y, t.p.w, t.p.rows()).maxCoeff();
                     jacobian_rows(rows, meta, f, at, {{"float64", as_f64(t.td.dl_dz)}, {"float32", as_f64(t.tf.dl_dz)}},
                                   scale);
                   });
}

std::vector<ResultRow> check_dshift(const std::string& test) {
  return term_rows("softmax.dshift", test, "gradient of L in the shift m (one per row, x held fixed): 0",
                   [](auto& rows, const RowMeta& meta, const TermSetup& t) {
                     const auto f = [&t](const auto& mv) {
                       using S = typename std::decay_t<decltype(mv)>::Scalar;
                       return loss_of_z<S>(t, [&](Index i) -> S { return S(t.p.x[i]) - mv[t.row(i)]; });
                     };
                     // The allowance is that of the sum it is: Σⱼ |∂L/∂zⱼ| per row.
                     Eigen::VectorXd acc = Eigen::VectorXd::Zero(t.pd->fwd.cache.R);
                     for (Index i = 0; i < t.p.x.size(); ++i) acc[t.row(i)] += std::abs(t.td.dl_dz[i]);
                     jacobian_rows(rows, meta, f, as_f64(t.pd->fwd.cache.max),
                                   {{"float64", as_f64(t.td.dshift)}, {"float32", as_f64(t.tf.dshift)}}, acc.maxCoeff());
                   });
}

// Σⱼ dxⱼ = 0 per row: y is invariant to adding a constant to a row (it is what makes ∂L/∂m zero).
std::vector<ResultRow> check_dx_sums_to_zero(const std::string& formula, const std::string& test, Pass pass) {
  std::vector<ResultRow> rows;
  for (const auto& c : Softmax::cases().jacobian) {
    const Softmax::Problem p = Softmax::problem(c, Softmax::seed(c) + 3);
    const ops::AxisRows ax = p.rows();
    const Index R = ax.R();
    const auto one = [&](auto tag) {
      using T = decltype(tag);
      const auto pr = Softmax::prepare<T>(p);
      const Tensor<T> dx = Softmax::backward(*pr, p.w.cast<T>(), pass)[0];
      const Eigen::VectorXd terms = Softmax::term_magnitudes(Softmax::prepare<double>(p)->fwd.y, p.w, ax);
      Eigen::VectorXd sum(R), scale = Eigen::VectorXd::Zero(R);
      for (Index r = 0; r < R; ++r) {
        long double a = 0;
        for (Index k = 0; k < ax.M; ++k) a += static_cast<long double>(dx[ax.at(r, k)]), scale[r] += terms[ax.at(r, k)];
        sum[r] = static_cast<double>(a);
      }
      rows.push_back(oracle_row({formula, test, "identity", dtype_name<T>(), "property", p.shape,
                                 std::string("per row Σⱼ dxⱼ = 0 (") + harness::name(pass) + " backward, " +
                                     Softmax::describe(p) + ")"},
                                Oracle::complex_step, sum, Eigen::VectorXd::Zero(R), {R}, scale.maxCoeff()));
    };
    one(double{});
    one(float{});
  }
  return rows;
}

// Without the shift, exp overflows: rows near 1000 make exp(x)/Σexp(x) = inf/inf in float64,
// while the shifted forward matches the long-double reference.
std::vector<ResultRow> check_overflow_without_shift(const std::string& test) {
  Softmax::Problem p = Softmax::problem({{3, 5}, -1}, 11);
  for (Index i = 0; i < p.x.size(); ++i) p.x[i] += 1000;
  double scale = 0;
  const Eigen::VectorXd ref = Softmax::reference(p, scale);
  const Eigen::VectorXd y = as_f64(Softmax::prepare<double>(p)->fwd.y);
  Index naive_nonfinite = 0;
  for (Index o = 0; o < p.x.size(); o += p.M()) {
    double s = 0;
    for (Index j = o; j < o + p.M(); ++j) s += std::exp(p.x[j]);
    for (Index j = o; j < o + p.M(); ++j) naive_nonfinite += !std::isfinite(std::exp(p.x[j]) / s);
  }
  ResultRow row = oracle_row({"softmax.forward", test, "reference", "float64", "pitfall", p.shape, ""},
                             Oracle::complex_step, y, ref, {y.size()}, scale);
  row.passed = row.passed && naive_nonfinite == y.size();
  std::ostringstream note;
  note << "x ≈ 1000: the unshifted exp(x)/Σexp(x) is not finite in " << naive_nonfinite << " of " << y.size()
       << " values; the shifted forward matches a long-double recomputation";
  row.note = note.str();
  return {row};
}

void Softmax::extra(harness::Checks<Softmax>& c) {
  c.add("softmax.dl_de", "softmax/terms/dl_de_matches_oracles", check_dl_de);
  c.add("softmax.dl_ds", "softmax/terms/dl_ds_matches_oracles", check_dl_ds);
  c.add("softmax.dl_dz", "softmax/terms/dl_dz_matches_oracles", check_dl_dz);
  c.add("softmax.dshift", "softmax/terms/dshift_is_zero_at_any_shift", check_dshift);
  c.add("softmax.dx", "softmax/dx/staged_dx_sums_to_zero_over_each_row",
        [](const std::string& t) { return check_dx_sums_to_zero("softmax.dx", t, Pass::staged); });
  c.add("softmax.dx_fused", "softmax/dx_fused/fused_dx_sums_to_zero_over_each_row",
        [](const std::string& t) { return check_dx_sums_to_zero("softmax.dx_fused", t, Pass::fused); });
  c.add("softmax.forward", "softmax/pitfalls/without_the_max_shift_exp_overflows", check_overflow_without_shift);
}

// ----------------------------------------------------------------------------------------------
// Refused inputs and the allocation-free calls.

std::vector<harness::BadInput> Softmax::bad_inputs() {
  using ops::softmax_forward;
  const auto fwd = [](Shape s) { return softmax_forward(TensorD(s, 0.5)); };
  return {
      {"rank_0_is_refused", "softmax.forward", [] { softmax_forward(TensorD(Shape{})); }, {"x must have rank >= 1", "()"}},
      {"empty_x_is_refused", "softmax.forward", [] { softmax_forward(TensorD({3, 0})); }, {"must not be empty", "(3, 0)"}},
      {"dim_out_of_range_is_refused", "softmax.forward", [] { softmax_forward(TensorD({2, 3}), {2}); },
       {"dim must be in [-2, 1]", "(2, 3)", "got 2"}},
      {"negative_dim_out_of_range_is_refused", "softmax.forward", [] { softmax_forward(TensorD({2, 3}), {-3}); },
       {"dim must be in [-2, 1]", "(2, 3)", "got -3"}},
      {"y_of_the_wrong_shape_is_refused", "softmax.forward",
       [] {
         TensorD y({3, 2});
         ops::SoftmaxCache<double> cache;
         ops::softmax_forward_into(TensorD({2, 3}), {}, y, cache);
       },
       {"y (output) must have shape (2, 3)", "got (3, 2)"}},
      {"dy_of_the_wrong_shape_is_refused", "softmax.dx_fused",
       [fwd] {
         const auto f = fwd({2, 3});
         ops::softmax_backward(TensorD({2, 4}), f.y, f.cache);
       },
       {"dy (must match x) must have shape (2, 3)", "got (2, 4)"}},
      {"a_cache_of_another_input_is_refused", "softmax.dx",
       [fwd] {
         const auto f = fwd({2, 3});
         ops::softmax_backward_staged(TensorD({4, 3}), TensorD({4, 3}), f.cache);
       },
       {"cache was made for an input of shape (2, 3)", "x has shape (4, 3)"}},
      {"dx_of_the_wrong_shape_is_refused", "softmax.dx_fused",
       [fwd] {
         const auto f = fwd({2, 3});
         TensorD dx({3, 3});
         ops::softmax_backward_into(f.y, f.y, f.cache, dx);
       },
       {"dx (output) must have shape (2, 3)", "got (3, 3)"}},
  };
}

template <class T>
harness::IntoCase into_case(const std::string& name, bool backward) {
  return {name + (sizeof(T) == 4 ? "_float" : "_double"), [backward] {
            auto st = std::make_shared<std::pair<Tensor<T>, ops::SoftmaxForward<T>>>(
                Tensor<T>({64, 1024}, T(0.25)), ops::SoftmaxForward<T>{Tensor<T>({64, 1024}), {}});
            auto dx = std::make_shared<Tensor<T>>(Shape{64, 1024});
            for (Index i = 0; i < st->first.size(); ++i) st->first[i] = T(static_cast<double>(i % 97) / 32);
            ops::softmax_forward_into(st->first, {}, st->second.y, st->second.cache);
            if (backward)
              return std::function<void()>([st, dx] { ops::softmax_backward_into(st->first, st->second.y, st->second.cache, *dx); });
            return std::function<void()>([st] { ops::softmax_forward_into(st->first, {}, st->second.y, st->second.cache); });
          }};
}

std::vector<harness::IntoCase> Softmax::into_cases() {
  return {into_case<float>("softmax_forward_into", false), into_case<double>("softmax_forward_into", false),
          into_case<float>("softmax_backward_into", true), into_case<double>("softmax_backward_into", true)};
}

}  // namespace

void register_softmax(Registry& r) { harness::register_op<Softmax>(r); }

}  // namespace gradproof::catalog
