// The declaration of linear (linear.*): y = x Wᵀ + b. The harness (harness/checks.hpp) makes the
// forward, oracle, parameter, staged = fused and negative-control checks from it; extra() adds
// the batch-sum and reference checks of dW and db, the layout pitfall (Wᵀ where W belongs) and
// the forward without a bias.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/linear.hpp"

#include <cmath>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;

struct Linear {
  static constexpr const char* op = "linear";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"linear.forward", "Linear forward: y = x Wᵀ + b over the last axis of x, W of shape (out, in)"},
        {"linear.dx", "∂L/∂x = dy W (staged loops; W as stored, not Wᵀ)"},
        {"linear.dweight", "∂L/∂W = Σₙ dyₙᵀ xₙ: one outer product per row of the batch, summed over all leading axes"},
        {"linear.dbias", "∂L/∂b = Σₙ dyₙ over all leading axes"},
        {"linear.dx_fused", "Linear fused backward: dx = dy W and dW = dyᵀ x as one GEMM each, db a column sum"}};
    return f;
  }

  struct Case {
    Shape shape;  // x's
    Index out = 1;
  };
  // The benchmark case is smaller than the benchmark's (4096, 1024) × (1024, 1024): the staged
  // backward is three plain loops of N·I·O steps, 4·10⁹ there, minutes in the debug build.
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = {
        .jacobian = {{{3, 4}, 5}, {{2, 3, 4}, 2}, {{1, 6}, 3}, {{4, 1}, 1}, {{2, 5}, 5}},
        .projection = {{{16, 64}, 32}, {{4, 8, 32}, 16}},
        .ablation = {{{3, 4}, 5}, {{2, 3, 4}, 2}},
        .benchmark = {{{512, 512}, 256}}};
    return c;
  }
  struct Problem {
    Shape shape;
    TensorD x, weight, bias, w;
    Index N() const { return x.size() / I(); }
    Index I() const { return shape.back(); }
    Index O() const { return weight.shape()[0]; }
  };
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 11400714819323198485ull;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    return (h ^ static_cast<std::uint64_t>(c.out)) * 1099511628211ull;
  }
  static constexpr std::uint64_t benchmark_seed = 1024;
  static Problem problem(const Case& c, std::uint64_t seed) {
    Rng rng(seed);
    Problem p{c.shape, rng.normal_tensor(c.shape), TensorD({c.out, c.shape.back()}), TensorD({c.out}), {}};
    // nn.Linear's initialisation scale, U(−1/√I, 1/√I), with the values kept away from 0.
    const double s = 1 / std::sqrt(static_cast<double>(c.shape.back()));
    for (Index k = 0; k < p.weight.size(); ++k) p.weight[k] = rng.signed_uniform(0.1 * s, s);
    for (Index k = 0; k < p.bias.size(); ++k) p.bias[k] = rng.normal();
    Shape ys = c.shape;
    ys.back() = c.out;
    p.w = rng.normal_tensor(ys);
    return p;
  }
  // `gradproof check linear`: the user's x (..., I), weight (O, I), bias (O) and dy (..., O); the
  // loss weights are dy (L = <dy, y>). Shapes that do not fit are refused, naming the array.
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in("linear", ua);
    const TensorD &x = in.input(0), &weight = in.input(1), &bias = in.input(2);
    in.not_empty("x", x);
    const Index I = x.shape().back();
    if (weight.rank() != 2 || weight.shape()[1] != I)
      in.fail("weight must be (out_features, " + std::to_string(I) + "), the last extent of x " +
                  to_string(x.shape()),
              to_string(weight.shape()));
    const Index O = weight.shape()[0];
    in.shape("bias", bias.shape(), Shape{O}, "the shape");
    Shape ys = x.shape();
    ys.back() = O;
    in.shape("dy", in.dy().shape(), ys, "the shape of y");
    return Problem{x.shape(), x, weight, bias, in.dy()};
  }
  static std::string describe(const Problem& p) {
    return "x " + to_string(p.shape) + ", weight " + to_string(p.weight.shape()) + ", bias " + to_string(p.bias.shape());
  }

  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}, {"weight"}, {"bias"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t k) { return k == 0 ? p.x : k == 1 ? p.weight : p.bias; }
  template <class S>
  static Tensor<S> forward(const Problem&, const std::vector<Tensor<S>>& in) {
    return ops::linear_forward<S>(in[0], in[1], &in[2]).y;
  }
  template <class T>
  struct Prepared {
    Tensor<T> x, weight, bias;
    ops::LinearForward<T> fwd;
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    auto pr = std::make_shared<Prepared<T>>(Prepared<T>{p.x.cast<T>(), p.weight.cast<T>(), p.bias.cast<T>(), {}});
    pr->fwd = ops::linear_forward<T>(pr->x, pr->weight, &pr->bias);
    return pr;
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  using Terms = ops::LinearTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    auto g = pass == Pass::staged ? ops::linear_backward_staged(dy, pr.x, pr.weight, pr.fwd.cache, t)
                                  : ops::linear_backward(dy, pr.x, pr.weight, pr.fwd.cache);
    return {std::move(g.dx), std::move(g.dweight), std::move(g.dbias)};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {
        {"linear.dx", &Terms::dx}, {"linear.dweight", &Terms::dweight}, {"linear.dbias", &Terms::dbias}};
    return a;
  }
  static std::string ablation_summary() {
    return "Every term is caught: each of dx, dW, db is a term of its own, and no gradient has a term that\n"
           "vanishes. dW and db are caught through their own gradients (dx does not depend on them).";
  }

  // y = x Wᵀ + b in long double; its scale is that of the terms, Σᵢ |xᵢ Wₒᵢ| + |bₒ| (they cancel).
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    const Index N = p.N(), I = p.I(), O = p.O();
    Eigen::VectorXd y(N * O);
    scale = 0;
    for (Index n = 0; n < N; ++n)
      for (Index o = 0; o < O; ++o) {
        long double acc = p.bias[o], mag = std::abs(p.bias[o]);
        for (Index i = 0; i < I; ++i) {
          acc += static_cast<long double>(p.x[n * I + i]) * p.weight[o * I + i];
          mag += std::abs(static_cast<long double>(p.x[n * I + i]) * p.weight[o * I + i]);
        }
        y[n * O + o] = static_cast<double>(acc);
        scale = std::max(scale, static_cast<double>(mag));
      }
    return y;
  }
  // ∂y_{n,o}/∂x_{n,i} = W_{o,i}: the entries are W's, no sum.
  static double jacobian_scale(const Prepared<double>& pd, const Problem&) { return pd.weight.flat().abs().maxCoeff(); }
  // vᵀJu = Σₙ Σₒ vₙₒ Σᵢ Wₒᵢ uₙᵢ: the sum of the magnitudes of its terms.
  static double projection_scale(const Prepared<double>&, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    const Index N = p.N(), I = p.I(), O = p.O();
    double total = 0;
    for (Index n = 0; n < N; ++n)
      for (Index o = 0; o < O; ++o)
        for (Index i = 0; i < I; ++i) total += std::abs(v[n * O + o] * p.weight[o * I + i] * u[n * I + i]);
    return total;
  }
  // dxₙᵢ = Σₒ dyₙₒ Wₒᵢ: the largest Σₒ |dyₙₒ Wₒᵢ|.
  static double dx_scale(const Prepared<double>&, const Problem& p, const TensorD& dy) {
    const Index N = p.N(), I = p.I(), O = p.O();
    double s = 0;
    for (Index n = 0; n < N; ++n)
      for (Index i = 0; i < I; ++i) {
        double a = 0;
        for (Index o = 0; o < O; ++o) a += std::abs(dy[n * O + o] * p.weight[o * I + i]);
        s = std::max(s, a);
      }
    return s;
  }
  // dWₒᵢ = Σₙ dyₙₒ xₙᵢ and dbₒ = Σₙ dyₙₒ: the largest sum of the magnitudes of their terms.
  static double param_scale(const Prepared<double>&, const Problem& p, std::size_t k) {
    const Index N = p.N(), I = p.I(), O = p.O();
    double s = 0;
    for (Index o = 0; o < O; ++o)
      for (Index i = 0; i < (k == 1 ? I : 1); ++i) {
        double a = 0;
        for (Index n = 0; n < N; ++n) a += std::abs(p.w[n * O + o] * (k == 1 ? p.x[n * I + i] : 1.0));
        s = std::max(s, a);
      }
    return s;
  }

  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<Linear>& c);
};

// ----------------------------------------------------------------------------------------------
// dW and db against long-double recomputations as sums over the batch, both passes and dtypes.

std::vector<ResultRow> param_reference_rows(const std::string& formula, const std::string& test, const Linear::Problem& p,
                                            std::size_t k) {
  const Index N = p.N(), I = p.I(), O = p.O();
  const Index P = k == 1 ? O * I : O;
  Eigen::VectorXd ref(P);
  double scale = 0;
  for (Index j = 0; j < P; ++j) {
    const Index o = k == 1 ? j / I : j, i = k == 1 ? j % I : 0;
    long double acc = 0, mag = 0;
    for (Index n = 0; n < N; ++n) {
      const long double t = static_cast<long double>(p.w[n * O + o]) * (k == 1 ? p.x[n * I + i] : 1.0);
      acc += t;
      mag += std::abs(t);
    }
    ref[j] = static_cast<double>(acc);
    scale = std::max(scale, static_cast<double>(mag));
  }
  std::vector<ResultRow> rows;
  const auto one = [&](auto tag, Pass pass) {
    using T = decltype(tag);
    const auto pr = Linear::prepare<T>(p);
    const Eigen::VectorXd got = as_f64(Linear::backward(*pr, p.w.cast<T>(), pass)[k]);
    rows.push_back(oracle_row({formula, test, "reference", dtype_name<T>(), "property", p.shape,
                               std::string(k == 1 ? "dW = Σₙ dyₙᵀ xₙ" : "db = Σₙ dyₙ") +
                                   " summed over every row of the batch, against a long-double recomputation (" +
                                   harness::name(pass) + " backward, " + Linear::describe(p) + ")"},
                              Oracle::complex_step, got, ref, {P}, scale));
  };
  for (Pass pass : {Pass::staged, Pass::fused}) {
    one(double{}, pass);
    one(float{}, pass);
  }
  return rows;
}

std::vector<ResultRow> check_param_reference(const std::string& formula, const std::string& test, std::size_t k) {
  std::vector<ResultRow> rows;
  for (const auto* kind : {&Linear::cases().projection, &Linear::cases().benchmark})
    for (const auto& c : *kind) {
      const auto rr = param_reference_rows(formula, test, harness::make<Linear>(c, 9), k);
      rows.insert(rows.end(), rr.begin(), rr.end());
    }
  return rows;
}

// The leading axes of x are one batch: x of shape (2, 3, 4) gives the bits of x reshaped to (6, 4).
std::vector<ResultRow> check_leading_axes(const std::string& formula, const std::string& test, std::size_t k) {
  std::vector<ResultRow> rows;
  const Linear::Problem p = harness::make<Linear>({{2, 3, 4}, 5}, 10);
  Linear::Problem flat = p;
  flat.shape = {6, 4};
  flat.x = TensorD(flat.shape, std::vector<double>(p.x.data(), p.x.data() + p.x.size()));
  flat.w = TensorD({6, 5}, std::vector<double>(p.w.data(), p.w.data() + p.w.size()));
  for (Pass pass : {Pass::staged, Pass::fused}) {
    const auto a = as_f64(Linear::backward(*Linear::prepare<double>(p), p.w, pass)[k]);
    const auto b = as_f64(Linear::backward(*Linear::prepare<double>(flat), flat.w, pass)[k]);
    ResultRow row{formula, test, "identity", "float64", "property", i64(p.shape)};
    row.max_abs_err = (a - b).cwiseAbs().maxCoeff();
    row.passed = row.max_abs_err == 0;
    row.analytic = a[0];
    row.numeric = b[0];
    row.note = std::string(k == 1 ? "dW" : "db") + " for x of shape (2, 3, 4) equals, bit for bit, that for x " +
               "reshaped to (6, 4): the sum runs over every leading axis (" + harness::name(pass) + " backward)";
    rows.push_back(row);
  }
  return rows;
}

// In PyTorch's layout, W is (out, in) and dx = dy W. The transpose dy Wᵀ has the right shape only
// when W is square, and then it is silently wrong: against the complex-step gradient it fails by
// far more than rounding.
std::vector<ResultRow> check_transposed_weight(const std::string& test) {
  std::vector<ResultRow> rows;
  const Linear::Problem p = harness::make<Linear>({{3, 5}, 5}, 11);
  const Index N = p.N(), I = p.I(), O = p.O();
  const auto pd = Linear::prepare<double>(p);
  Eigen::VectorXd wrong(N * I);
  for (Index n = 0; n < N; ++n)
    for (Index i = 0; i < I; ++i) {
      double a = 0;
      for (Index o = 0; o < O; ++o) a += p.w[n * O + o] * p.weight[i * I + o];  // Wᵀ: (i, o) where (o, i) belongs
      wrong[n * I + i] = a;
    }
  const Eigen::VectorXd numeric =
      check::jacobian(Oracle::complex_step, harness::loss_of<Linear>(p, 0), as_f64(p.x)).row(0).transpose();
  const Eigen::VectorXd right = as_f64(Linear::backward(*pd, p.w, Pass::staged)[0]);
  const double scale = Linear::dx_scale(*pd, p, p.w);
  ResultRow ok = oracle_row({"linear.dx", test, "complex_step", "float64", "pitfall", p.shape, ""}, Oracle::complex_step,
                            right, numeric, {N * I}, scale);
  ResultRow bad = oracle_row({"linear.dx", test, "complex_step", "float64", "pitfall", p.shape, ""},
                             Oracle::complex_step, wrong, numeric, {N * I}, scale);
  std::ostringstream note;
  note << "square W (5, 5): dx = dy W matches the complex step (max error " << ok.max_abs_err
       << "), dy Wᵀ has the same shape and is off by " << bad.max_abs_err << ", " << bad.max_abs_err / bad.atol
       << "× the allowance; this row passes when the right form passes and the transposed one fails by over 1000×";
  ok.note = note.str();
  ok.passed = ok.passed && bad.max_abs_err > 1e3 * bad.atol;
  rows.push_back(ok);
  return rows;
}

// bias=None: y = x Wᵀ with the bits of a zero bias, and the backward returns no dbias.
std::vector<ResultRow> check_without_bias(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const auto& c : Linear::cases().jacobian) {
    const Linear::Problem p = harness::make<Linear>(c, 12);
    const auto one = [&](auto tag) {
      using T = decltype(tag);
      const Tensor<T> x = p.x.cast<T>(), wt = p.weight.cast<T>(), zero({p.O()}, T(0));
      const auto none = ops::linear_forward<T>(x, wt, nullptr);
      const auto with = ops::linear_forward<T>(x, wt, &zero);
      const auto gs = ops::linear_backward_staged(p.w.cast<T>(), x, wt, none.cache);
      const auto gf = ops::linear_backward(p.w.cast<T>(), x, wt, none.cache);
      ResultRow row{"linear.forward", test, "identity", dtype_name<T>(), "property", i64(p.shape)};
      row.max_abs_err = (as_f64(none.y) - as_f64(with.y)).cwiseAbs().maxCoeff();
      row.passed = row.max_abs_err == 0 && gs.dbias.empty() && gf.dbias.empty() && !none.cache.has_bias;
      row.note = "bias=None: y equals, bit for bit, the forward with a zero bias, and neither backward returns a "
                 "dbias (" + Linear::describe(p) + ")";
      rows.push_back(row);
    };
    one(double{});
    one(float{});
  }
  return rows;
}

void Linear::extra(harness::Checks<Linear>& c) {
  c.add("linear.dweight", "linear/params/dweight_is_the_batch_sum_of_outer_products",
        [](const std::string& t) { return check_param_reference("linear.dweight", t, 1); });
  c.add("linear.dbias", "linear/params/dbias_is_the_batch_sum_of_dy",
        [](const std::string& t) { return check_param_reference("linear.dbias", t, 2); });
  c.add("linear.dweight", "linear/params/dweight_sums_over_every_leading_axis",
        [](const std::string& t) { return check_leading_axes("linear.dweight", t, 1); });
  c.add("linear.dbias", "linear/params/dbias_sums_over_every_leading_axis",
        [](const std::string& t) { return check_leading_axes("linear.dbias", t, 2); });
  c.add("linear.dx", "linear/pitfalls/dx_with_the_transposed_weight_is_caught", check_transposed_weight);
  c.add("linear.forward", "linear/forward/without_bias_equals_a_zero_bias", check_without_bias);
}

// ----------------------------------------------------------------------------------------------
// Refused inputs and the allocation-free calls.

std::vector<harness::BadInput> Linear::bad_inputs() {
  using ops::linear_forward;
  const auto fwd = [] {
    static const TensorD x({2, 3}, 0.5), w({4, 3}, 0.25), b({4}, 0.1);
    return std::make_tuple(&x, &w, &b, linear_forward(x, w, &b));
  };
  return {
      {"rank_0_x_is_refused", "linear.forward", [] { linear_forward(TensorD(Shape{}), TensorD({4, 3})); },
       {"x must have rank >= 1", "()"}},
      {"weight_not_of_rank_2_is_refused", "linear.forward", [] { linear_forward(TensorD({2, 3}), TensorD({3})); },
       {"weight must have rank 2", "(3,)"}},
      {"in_features_mismatch_is_refused", "linear.forward", [] { linear_forward(TensorD({2, 5}), TensorD({4, 3})); },
       {"last extent of x (in_features) must be 3", "(4, 3)", "x of shape (2, 5)"}},
      {"bias_of_the_wrong_size_is_refused", "linear.forward",
       [] {
         const TensorD b({5});
         linear_forward(TensorD({2, 3}), TensorD({4, 3}), &b);
       },
       {"bias (out_features,) must have shape (4,)", "got (5,)"}},
      {"config_other_than_weight_is_refused", "linear.forward",
       [] { linear_forward(TensorD({2, 3}), TensorD({4, 3}), nullptr, {3, 5}); },
       {"weight of shape (4, 3)", "out_features = 5"}},
      {"y_of_the_wrong_shape_is_refused", "linear.forward",
       [] {
         TensorD y({2, 3});
         ops::LinearCache<double> cache;
         ops::linear_forward_into(TensorD({2, 3}), TensorD({4, 3}), nullptr, {}, y, cache);
       },
       {"y (output) must have shape (2, 4)", "got (2, 3)"}},
      {"dy_of_the_wrong_shape_is_refused", "linear.dx_fused",
       [fwd] {
         const auto [x, w, b, f] = fwd();
         ops::linear_backward(TensorD({2, 3}), *x, *w, f.cache);
       },
       {"dy (must match y) must have shape (2, 4)", "got (2, 3)"}},
      {"a_cache_of_another_x_is_refused", "linear.dx",
       [fwd] {
         const auto [x, w, b, f] = fwd();
         ops::linear_backward_staged(TensorD({2, 4}), TensorD({5, 3}), *w, f.cache);
       },
       {"cache was made for x of shape (2, 3)", "x has shape (5, 3)"}},
      {"dx_of_the_wrong_shape_is_refused", "linear.dx_fused",
       [fwd] {
         const auto [x, w, b, f] = fwd();
         TensorD dx({3, 3}), dw({4, 3}), db({4});
         ops::linear_backward_into(f.y, *x, *w, f.cache, &dx, &dw, &db);
       },
       {"dx (output) must have shape (2, 3)", "got (3, 3)"}},
      {"dweight_of_the_wrong_shape_is_refused", "linear.dx_fused",
       [fwd] {
         const auto [x, w, b, f] = fwd();
         TensorD dx({2, 3}), dw({3, 4}), db({4});
         ops::linear_backward_into(f.y, *x, *w, f.cache, &dx, &dw, &db);
       },
       {"dweight (output) must have shape (4, 3)", "got (3, 4)"}},
      {"dbias_of_the_wrong_size_is_refused", "linear.dx_fused",
       [fwd] {
         const auto [x, w, b, f] = fwd();
         TensorD dx({2, 3}), dw({4, 3}), db({3});
         ops::linear_backward_into(f.y, *x, *w, f.cache, &dx, &dw, &db);
       },
       {"dbias (output) must have shape (4,)", "got (3,)"}},
      {"dbias_without_a_bias_is_refused", "linear.dx_fused",
       [] {
         const TensorD x({2, 3}, 0.5), w({4, 3}, 0.25);
         const auto f = linear_forward(x, w);
         TensorD db({4});
         ops::linear_backward_into(f.y, x, w, f.cache, nullptr, nullptr, &db);
       },
       {"dbias was given but the forward pass had no bias"}},
  };
}

// Eigen's GEMM takes its packing buffers from the heap when they exceed its stack allowance
// (128 KiB) and always when it runs on several threads (above about 5·10⁴ multiply-adds): the
// allocation-free guarantee of linear holds below that, at this shape (32·32·48 = 49152), and the
// page says so (derivations/linear.md, "The fused form").
template <class T>
harness::IntoCase into_case(const std::string& name, bool backward) {
  return {name + (sizeof(T) == 4 ? "_float" : "_double"), [backward] {
            struct State {
              Tensor<T> x{Shape{32, 48}}, w{Shape{32, 48}}, b{Shape{32}}, y{Shape{32, 32}};
              Tensor<T> dx{Shape{32, 48}}, dw{Shape{32, 48}}, db{Shape{32}};
              ops::LinearCache<T> cache;
            };
            auto s = std::make_shared<State>();
            for (Index i = 0; i < s->x.size(); ++i) s->x[i] = T(static_cast<double>(i % 97) / 32 - 1);
            for (Index i = 0; i < s->w.size(); ++i) s->w[i] = T(static_cast<double>(i % 89) / 64 - 0.5);
            ops::linear_forward_into<T>(s->x, s->w, &s->b, {}, s->y, s->cache);
            if (backward)
              return std::function<void()>(
                  [s] { ops::linear_backward_into<T>(s->y, s->x, s->w, s->cache, &s->dx, &s->dw, &s->db); });
            return std::function<void()>([s] { ops::linear_forward_into<T>(s->x, s->w, &s->b, {}, s->y, s->cache); });
          }};
}

std::vector<harness::IntoCase> Linear::into_cases() {
  return {into_case<float>("linear_forward_into", false), into_case<double>("linear_forward_into", false),
          into_case<float>("linear_backward_into", true), into_case<double>("linear_backward_into", true)};
}

}  // namespace

void register_linear(Registry& r) { harness::register_op<Linear>(r); }

}  // namespace gradproof::catalog
