/// \file
/// \brief The generic harness: from an op's declaration (harness/op.hpp) it makes the whole-op
/// checks, the negative-control table, the bad-input and allocation cases, and registers them in
/// the catalog with their formula ids as test labels. It knows no op.
///
/// What register_op() makes, with the test names it gives (`<op>` is `D::op`):
/// - `<op>.forward`: `<op>/forward/matches_a_long_double_reference` (Jacobian and projection
///   cases) and `..._at_the_benchmark_shape(s)`, float64 and float32;
/// - `<op>.dx`, `<op>.dx_fused` (`dx` is `d` and the name of the first input: `dweight` for
///   embedding): `<op>/dx/staged_dx_matches_oracles`,
///   `<op>/dx_fused/fused_dx_matches_oracles`: full Jacobians (small cases) and random projections
///   (large cases) against all four oracles, float64 and float32;
/// - `<op>.d<param>`: `<op>/params/d<param>_matches_oracles`, both passes;
/// - `<op>.dx_fused`: `<op>/dx_fused/fused_agrees_with_staged` and
///   `<op>/dx_fused/fused_float32_matches_staged_float64_at_the_benchmark_shape(s)`;
/// - each ablated term: `<op>/negative_controls/<term>_drop_and_flip`, and the table itself,
///   under the one rule of ablation();
/// - the declaration's bad inputs and `*_into` cases, which the test runner and the allocation
///   binary turn into tests;
/// - its Jacobian and projection problems as plain data (plain_problem()), which the libtorch
///   oracle (tests/torch/oracle.test.cpp) compares with libtorch's autograd;
/// - its fuzz target (harness/fuzz.hpp), which fuzz/ops.cpp runs under libFuzzer.
#pragma once

#include "gradproof/catalog/catalog.hpp"
#include "gradproof/catalog/support.hpp"
#include "gradproof/harness/fuzz.hpp"
#include "gradproof/harness/op.hpp"
#include "gradproof/harness/plain.hpp"

#include <limits>
#include <memory>
#include <sstream>

namespace gradproof::harness {

using check::ResultRow;
namespace sup = catalog::support;

/// The checks of one op being registered: what a declaration's `extra()` adds to.
template <class D>
class Checks {
 public:
  explicit Checks(catalog::Registry& r) : r_(r) {}
  /// Adds a check of `formula` named `name`; `fn(name)` makes its rows.
  void add(const std::string& formula, const std::string& name,
           std::function<std::vector<ResultRow>(const std::string&)> fn) {
    r_.checks.push_back({formula, name, [fn, name] { return fn(name); }});
  }

 private:
  catalog::Registry& r_;
};

template <class D>
std::string id(const std::string& term) {
  return std::string(D::op) + "." + term;
}
template <class D>
std::string test_name(const std::string& rest) {
  return std::string(D::op) + "/" + rest;
}
/// The gradient of the first input, `d<name>`: `dx` for most ops, `dweight` for embedding (whose
/// indices are not differentiable), `da` for matmul. Its formulas are `<op>.d<name>` (staged) and
/// `<op>.d<name>_fused`.
template <class D>
std::string first_grad() {
  return "d" + D::inputs().front().name;
}

/// A change made to a problem after it is sampled (e.g. a default hyper-parameter).
template <class D>
using Modify = std::function<void(typename D::Problem&)>;

template <class D>
typename D::Problem make(const typename D::Case& c, std::uint64_t salt, const Modify<D>& modify = {}) {
  typename D::Problem p = D::problem(c, D::seed(c) + salt);
  if (modify) modify(p);
  return p;
}

template <class D>
typename D::Problem benchmark_problem(const typename D::Case& c) {
  return D::problem(c, D::benchmark_seed);
}

/// `y` as a function of input `k` (flattened), generic over the oracles' scalars.
template <class D>
auto y_of(const typename D::Problem& p, std::size_t k) {
  return [&p, k](const auto& v) {
    using S = typename std::decay_t<decltype(v)>::Scalar;
    std::vector<Tensor<S>> in;
    for (std::size_t i = 0; i < D::inputs().size(); ++i) in.push_back(D::input(p, i).template cast<S>());
    in[k] = sup::from_vec(in[k].shape(), sup::Vec<S>(v));
    return sup::to_vec(D::forward(p, in));
  };
}

/// The loss \f$L = \langle w, y\rangle\f$ as a function of input `k`.
template <class D>
auto loss_of(const typename D::Problem& p, std::size_t k) {
  return [&p, k](const auto& v) {
    using S = typename std::decay_t<decltype(v)>::Scalar;
    const sup::Vec<S> y = y_of<D>(p, k)(v);
    sup::Vec<S> out(1);
    out[0] = (y.array() * sup::to_vec(p.w.template cast<S>()).array()).sum();
    return out;
  };
}

template <class D, class T>
using PreparedPtr = std::shared_ptr<const typename D::template Prepared<T>>;

/// The vector-Jacobian product of input `k` as the backward pass computes it.
template <class D, class T>
sup::Vjp vjp(PreparedPtr<D, T> pr, const typename D::Problem& p, Pass pass, std::size_t k) {
  return [pr, &p, pass, k](const Eigen::VectorXd& dy) {
    // dy has the output's shape, which is the shape of the loss weights w (not always x's:
    // linear changes the last axis, a reduced loss is a scalar).
    return sup::as_f64(D::backward(*pr, sup::from_vec(p.w.shape(), Eigen::VectorXd(dy)).template cast<T>(), pass)[k]);
  };
}

template <class D>
bool float32_comparable(const typename D::Problem& p) {
  if constexpr (requires { D::float32_comparable(p); }) return D::float32_comparable(p);
  else return true;
}

/// dx of `pass` against every oracle: full Jacobians on the small cases, projections on the large.
template <class D>
std::vector<ResultRow> dx_against_oracles(const std::string& formula, const std::string& test, Pass pass,
                                          const Modify<D>& modify = {}) {
  std::vector<ResultRow> rows;
  for (const auto& c : D::cases().jacobian) {
    const typename D::Problem p = make<D>(c, Salt::oracle, modify);
    const auto pd = D::template prepare<double>(p);
    const auto pf = D::template prepare<float>(p);
    const Index m = p.w.size();  // outputs: y has the shape of w
    std::vector<sup::Analytic> analytic = {{"float64", sup::flat_rowmajor(sup::jacobian_from_vjp(m, vjp<D>(pd, p, pass, 0)))}};
    if (float32_comparable<D>(p))
      analytic.push_back({"float32", sup::flat_rowmajor(sup::jacobian_from_vjp(m, vjp<D>(pf, p, pass, 0)))});
    sup::RowMeta meta{formula, test, "", "", "oracle", p.shape,
                      std::string("full Jacobian dy/dx (") + name(pass) + " backward, " + D::describe(p) + ")"};
    sup::jacobian_rows(rows, meta, y_of<D>(p, 0), sup::as_f64(D::input(p, 0)), analytic, D::jacobian_scale(*pd, p));
  }
  for (const auto& c : D::cases().projection) {
    const typename D::Problem p = make<D>(c, Salt::oracle, modify);
    const auto pd = D::template prepare<double>(p);
    const auto pf = D::template prepare<float>(p);
    std::vector<std::pair<std::string, sup::Vjp>> vjps = {{"float64", vjp<D>(pd, p, pass, 0)}};
    if (float32_comparable<D>(p)) vjps.push_back({"float32", vjp<D>(pf, p, pass, 0)});
    sup::RowMeta meta{formula, test, "", "", "oracle", p.shape,
                      std::string("4 random projections v^T J u (") + name(pass) + " backward, " + D::describe(p) + ")"};
    sup::projection_rows(rows, meta, y_of<D>(p, 0), sup::as_f64(D::input(p, 0)), p.w.size(), vjps, 4,
                         D::seed(c) + Salt::projection,
                         [pd, &p](const Eigen::VectorXd& v, const Eigen::VectorXd& u) {
                           return D::projection_scale(*pd, p, v, u);
                         });
  }
  return rows;
}

/// The gradient of parameter `k` (both passes) against every oracle, on the small cases.
template <class D>
std::vector<ResultRow> param_against_oracles(std::size_t k, const std::string& test) {
  std::vector<ResultRow> rows;
  const std::string& pname = D::inputs()[k].name;
  for (const auto& c : D::cases().jacobian) {
    const typename D::Problem p = make<D>(c, Salt::oracle);
    const auto pd = D::template prepare<double>(p);
    const auto pf = D::template prepare<float>(p);
    for (Pass pass : {Pass::staged, Pass::fused}) {
      std::vector<sup::Analytic> analytic = {{"float64", sup::as_f64(D::backward(*pd, p.w, pass)[k])}};
      if (D::inputs()[k].float32)
        analytic.push_back({"float32", sup::as_f64(D::backward(*pf, p.w.template cast<float>(), pass)[k])});
      sup::jacobian_rows(rows,
                         {id<D>("d" + pname), test, "", "", "oracle", p.shape,
                          "gradient of L = <w, y> in " + pname + " (" + name(pass) + " backward, " + D::describe(p) + ")"},
                         loss_of<D>(p, k), sup::as_f64(D::input(p, k)), analytic, D::param_scale(*pd, p, k));
    }
  }
  return rows;
}

/// The forward in float64 and float32 against the declaration's long-double recomputation.
template <class D>
std::vector<ResultRow> forward_rows(const std::string& test, const typename D::Problem& p) {
  std::vector<ResultRow> rows;
  double scale = 0;
  const Eigen::VectorXd ref = D::reference(p, scale);
  const auto one = [&](auto tag) {
    using T = decltype(tag);
    const auto pr = D::template prepare<T>(p);
    rows.push_back(sup::oracle_row({id<D>("forward"), test, "reference", sup::dtype_name<T>(), "reference", p.shape,
                                    "forward y against a long-double recomputation (" + D::describe(p) + ")"},
                                   check::Oracle::complex_step, sup::as_f64(D::output(*pr)), ref, {ref.size()},
                                   scale));
  };
  one(double{});
  one(float{});
  return rows;
}

/// Fused dx (float64 and float32) against staged dx in float64.
template <class D>
std::vector<ResultRow> staged_equals_fused_rows(const std::string& test, const typename D::Problem& p,
                                                const std::string& what) {
  std::vector<ResultRow> rows;
  const auto pd = D::template prepare<double>(p);
  const auto pf = D::template prepare<float>(p);
  const Eigen::VectorXd ref = sup::as_f64(D::backward(*pd, p.w, Pass::staged)[0]);
  const Eigen::VectorXd fd = sup::as_f64(D::backward(*pd, p.w, Pass::fused)[0]);
  const Eigen::VectorXd ff = sup::as_f64(D::backward(*pf, p.w.template cast<float>(), Pass::fused)[0]);
  const double scale = D::dx_scale(*pd, p, p.w);
  const std::string g = first_grad<D>();
  rows.push_back(sup::oracle_row({id<D>(g + "_fused"), test, "staged_f64", "float64", "agreement", p.shape,
                                  "fused " + g + " against staged " + g + ", both float64 (" + D::describe(p) + ")" + what},
                                 check::Oracle::complex_step, fd, ref, {ref.size()}, scale));
  rows.push_back(sup::oracle_row({id<D>(g + "_fused"), test, "staged_f64", "float32", "agreement", p.shape,
                                  "fused " + g + " in float32 against staged " + g + " in float64 (" + D::describe(p) + ")" + what},
                                 check::Oracle::complex_step, ff, ref, {ref.size()}, scale));
  return rows;
}

/// \brief The negative-control table, one rule for every op: each term of the staged backward is
/// dropped (×0) and flipped (×−1) in turn, and the staged gradient of every input (dx and each
/// parameter's) is compared with the complex-step gradient of \f$L = \langle w, y\rangle\f$ in
/// that input under the float64 exact-oracle policy (check::tolerance_policy(), scale
/// \f$\max_i|n_i|\f$) on the ablation cases. A term must be caught (some element of some
/// gradient outside the tolerance), except a term derived to be zero, which must not be caught
/// *and* must change the gradients by no more than a few units of float64 rounding of their
/// largest element (\f$8\epsilon\max|g|\f$). (A term of a parameter's gradient, such as linear's
/// \f$dW\f$, is caught through that gradient; dx alone would not show it.)
template <class D>
std::vector<check::AblationRow> ablation() {
  std::vector<check::AblationRow> out;
  std::string shapes;
  for (const auto& c : D::cases().ablation) shapes += (shapes.empty() ? "" : ", ") + to_string(c.shape);
  for (const auto& t : D::ablation()) {
    for (const char* change : {"drop", "flip"}) {
      const bool drop = std::string(change) == "drop";
      check::AblationRow row{D::op, t.id, change};
      row.expected_caught = !t.zero;
      double max_change = 0, ref_scale = 0;
      for (const auto& c : D::cases().ablation) {
        const typename D::Problem p = make<D>(c, Salt::oracle);
        const auto pd = D::template prepare<double>(p);
        typename D::Terms scales;
        scales.*(t.scale) = drop ? 0.0 : -1.0;
        const auto ablated = D::backward(*pd, p.w, Pass::staged, scales);
        const auto correct = D::backward(*pd, p.w, Pass::staged);
        for (std::size_t k = 0; k < D::inputs().size(); ++k) {
          const Eigen::VectorXd g = sup::as_f64(ablated[k]), ref = sup::as_f64(correct[k]);
          const Eigen::VectorXd numeric =
              check::jacobian(check::Oracle::complex_step, loss_of<D>(p, k), sup::as_f64(D::input(p, k))).row(0).transpose();
          const double scale = ref.size() ? ref.cwiseAbs().maxCoeff() : 0.0;
          const auto cmp = check::compare(g, numeric,
                                          check::tolerance_policy("float64", check::Oracle::complex_step,
                                                                  numeric.cwiseAbs().maxCoeff()));
          row.caught = row.caught || !cmp.passed;
          row.max_abs_err = std::max(row.max_abs_err, cmp.max_abs_err);
          max_change = std::max(max_change, (g - ref).cwiseAbs().maxCoeff());
          ref_scale = std::max(ref_scale, scale);
        }
      }
      row.max_rel_err = row.max_abs_err / ref_scale;
      const double rounding = 8 * std::numeric_limits<double>::epsilon() * ref_scale;
      std::ostringstream note;
      const std::string grads = D::inputs().size() == 1 ? "d" + D::inputs()[0].name : "gradients of every input";
      note << "staged " << grads << " with the term " << (drop ? "set to 0" : "sign-flipped")
           << ", against the complex-step gradient of L = <w, y> on shapes " << shapes
           << "; largest change from the correct staged backward: " << max_change;
      if (t.zero)
        note << " (must be at most " << rounding << ", 8 units of float64 rounding of the largest element)";
      row.note = note.str();
      row.passed = row.caught == row.expected_caught && (row.expected_caught || max_change <= rounding);
      out.push_back(row);
    }
  }
  return out;
}

/// The negative controls of one term as result rows of that term.
template <class D>
std::vector<ResultRow> negative_control_rows(const std::string& formula, const std::string& test) {
  std::vector<ResultRow> rows;
  for (const auto& a : ablation<D>()) {
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

template <class D>
std::string benchmark_suffix() {
  return D::cases().benchmark.size() == 1 ? "_at_the_benchmark_shape" : "_at_benchmark_shapes";
}

/// Rows of `f(test, problem)` over several kinds of cases, each problem sampled with `salt`.
template <class D, class F>
std::vector<ResultRow> over(const std::string& test, std::uint64_t salt, F&& f,
                            std::initializer_list<const std::vector<typename D::Case>*> kinds) {
  std::vector<ResultRow> rows;
  for (const auto* cases : kinds)
    for (const auto& c : *cases) {
      const auto rr = f(test, make<D>(c, salt));
      rows.insert(rows.end(), rr.begin(), rr.end());
    }
  return rows;
}

/// \brief Problem `p` of `D` as plain data: inputs, options (the declaration's optional
/// `options(p)`, PyTorch's names), `w`, both passes' float64 gradients, the long-double gradients
/// and the scales of their terms (`dx_scale`, `param_scale`).
template <class D>
catalog::PlainProblem plain_problem(const typename D::Problem& p) {
  catalog::PlainProblem out;
  out.op = D::op;
  out.describe = D::describe(p);
  for (std::size_t k = 0; k < D::inputs().size(); ++k) {
    out.names.push_back(D::inputs()[k].name);
    out.inputs.push_back(D::input(p, k));
  }
  if constexpr (requires { D::options(p); }) out.options = D::options(p);
  if constexpr (requires { D::constants(p); }) out.constants = D::constants(p);
  out.w = p.w;
  const auto pd = D::template prepare<double>(p);
  out.staged = D::backward(*pd, p.w, Pass::staged);
  out.fused = D::backward(*pd, p.w, Pass::fused);
  for (std::size_t k = 0; k < out.inputs.size(); ++k) {
    out.exact.push_back(exact_gradient([&p](const auto& in) { return D::forward(p, in); }, out.inputs, k, p.w));
    if constexpr (requires { &D::param_scale; })
      out.scale.push_back(k == 0 ? D::dx_scale(*pd, p, p.w) : D::param_scale(*pd, p, k));
    else
      out.scale.push_back(D::dx_scale(*pd, p, p.w));
  }
  return out;
}

/// Adds the op of declaration `D` to the catalog: its formulas, every generic check, the
/// negative-control table, the bad-input and allocation cases, then the declaration's own checks.
// `gradproof check`: gradproof's float64 forward and fused backward on the problem that the
// declaration makes from user arrays, with the tolerance scale of each gradient.
template <class D>
catalog::UserGradients user_gradients(const catalog::UserArrays& ua) {
  const typename D::Problem p = D::from_arrays(ua);
  const auto pd = D::template prepare<double>(p);
  catalog::UserGradients g{D::output(*pd), D::backward(*pd, p.w, Pass::fused), {}, D::describe(p)};
  for (std::size_t k = 0; k < g.grads.size(); ++k) {
    if constexpr (requires { &D::param_scale; })
      g.scale.push_back(k == 0 ? D::dx_scale(*pd, p, p.w) : D::param_scale(*pd, p, k));
    else
      g.scale.push_back(D::dx_scale(*pd, p, p.w));
  }
  return g;
}

template <class D>
void register_op(catalog::Registry& r) {
  for (const auto& f : D::formulas()) r.formulas.push_back({f.id, D::op, f.title});
  Checks<D> c(r);
  const auto& cases = D::cases();
  // The error-against-step sweep behind the step policy's plot: dL/dx of the first small case
  // (staged, float64), at its largest entry.
  r.sweeps.push_back({std::string(D::op), [] {
    const typename D::Problem p = make<D>(D::cases().jacobian.front(), Salt::oracle);
    const auto pd = D::template prepare<double>(p);
    return sup::sweep_of(y_of<D>(p, 0), D::input(p, 0), p.w, sup::as_f64(D::backward(*pd, p.w, Pass::staged)[0]));
  }});
  c.add(id<D>("forward"), test_name<D>("forward/matches_a_long_double_reference"), [&cases](const std::string& t) {
    return over<D>(t, Salt::forward, forward_rows<D>, {&cases.jacobian, &cases.projection});
  });
  if (!cases.benchmark.empty()) {
    c.add(id<D>("forward"), test_name<D>("forward/matches_a_long_double_reference" + benchmark_suffix<D>()),
          [&cases](const std::string& t) {
            std::vector<ResultRow> rows;
            for (const auto& bc : cases.benchmark) {
              const auto rr = forward_rows<D>(t, benchmark_problem<D>(bc));
              rows.insert(rows.end(), rr.begin(), rr.end());
            }
            return rows;
          });
  }
  const std::string g = first_grad<D>(), gf = g + "_fused";
  c.add(id<D>(g), test_name<D>(g + "/staged_" + g + "_matches_oracles"),
        [g](const std::string& t) { return dx_against_oracles<D>(id<D>(g), t, Pass::staged); });
  c.add(id<D>(gf), test_name<D>(gf + "/fused_" + g + "_matches_oracles"),
        [gf](const std::string& t) { return dx_against_oracles<D>(id<D>(gf), t, Pass::fused); });
  c.add(id<D>(gf), test_name<D>(gf + "/fused_agrees_with_staged"), [&cases](const std::string& t) {
    const auto f = [](const std::string& tt, const typename D::Problem& p) {
      return staged_equals_fused_rows<D>(tt, p, "");
    };
    return over<D>(t, Salt::agreement, f, {&cases.jacobian, &cases.projection});
  });
  if (!cases.benchmark.empty()) {
    c.add(id<D>(gf), test_name<D>(gf + "/fused_float32_matches_staged_float64" + benchmark_suffix<D>()),
          [&cases](const std::string& t) {
            std::vector<ResultRow> rows;
            for (const auto& bc : cases.benchmark) {
              const auto rr = staged_equals_fused_rows<D>(t, benchmark_problem<D>(bc), " (benchmark shape)");
              rows.insert(rows.end(), rr.begin(), rr.end());
            }
            return rows;
          });
  }
  if constexpr (requires { &D::param_scale; }) {  // an op with parameters
    for (std::size_t k = 1; k < D::inputs().size(); ++k) {
      const std::string pname = D::inputs()[k].name;
      c.add(id<D>("d" + pname), test_name<D>("params/d" + pname + "_matches_oracles"),
            [k](const std::string& t) { return param_against_oracles<D>(k, t); });
    }
  }
  catalog::Ablation table{D::op, ablation<D>, D::ablation_summary()};
  for (const auto& term : D::ablation()) {
    const std::string tid = term.id;
    c.add(tid, test_name<D>("negative_controls/" + tid.substr(std::string(D::op).size() + 1) + "_drop_and_flip"),
          [tid](const std::string& t) { return negative_control_rows<D>(tid, t); });
    table.terms.push_back(tid);
    if (term.zero) table.zero_terms.push_back(tid);
  }
  r.ablations.push_back(table);
  std::vector<std::string> input_names;
  for (const auto& in : D::inputs()) input_names.push_back(in.name);
  r.plain.push_back({D::op, input_names, [] {
                       std::vector<catalog::PlainProblem> out;
                       for (const auto* kind : {&D::cases().jacobian, &D::cases().projection})
                         for (const auto& pc : *kind) out.push_back(plain_problem<D>(make<D>(pc, Salt::oracle)));
                       return out;
                     }});
  if constexpr (requires(const catalog::UserArrays& ua) { D::from_arrays(ua); }) {
    std::vector<std::string> option_names, array_names;
    if constexpr (requires { D::check_options(); }) {
      option_names = D::check_options();
    } else if constexpr (requires(const typename D::Problem& p) { D::options(p); }) {
      for (const auto& kv : D::options(make<D>(D::cases().jacobian.front(), Salt::oracle)))
        option_names.push_back(kv.first);
    }
    if constexpr (requires { D::check_arrays(); }) array_names = D::check_arrays();
    r.from_arrays.push_back({D::op, input_names, option_names, array_names,
                             [](const catalog::UserArrays& ua) { return user_gradients<D>(ua); }});
  }
  r.fuzz.push_back({D::op, [](const std::uint8_t* data, std::size_t size, std::int64_t max_values) {
                      fuzz_one<D>(data, size, max_values);
                    }});
  for (auto& b : D::bad_inputs()) r.bad_inputs.push_back({D::op, std::move(b)});
  for (auto& i : D::into_cases()) r.into_cases.push_back({D::op, std::move(i)});
  D::extra(c);
}

}  // namespace gradproof::harness
