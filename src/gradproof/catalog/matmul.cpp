// The declaration of matmul (matmul.*): Y_t = A_t B_t, 2-D and batched 3-D with PyTorch's
// broadcasting of a 2-D (or batch-1) operand. The harness makes the whole-op checks; extra() adds
// the long-double references of dA and dB at the larger shapes (broadcast included) and the
// batched = per-batch 2-D identity of the forward.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/matmul.hpp"

#include <cmath>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;

struct Matmul {
  static constexpr const char* op = "matmul";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"matmul.forward", "Matmul forward: Y_t = A_t B_t per batch t; a 2-D or batch-1 operand is broadcast"},
        {"matmul.da", "∂L/∂A_t = dY_t B_tᵀ, summed over t when a is broadcast (staged)"},
        {"matmul.db", "∂L/∂B_t = A_tᵀ dY_t, summed over t when b is broadcast"},
        {"matmul.da_fused", "Matmul fused backward: dA and dB as one GEMM per batch, a broadcast operand's accumulated"}};
    return f;
  }

  struct Case {
    Shape shape;    // a's
    Shape b_shape;  // b's
  };
  // The benchmark case is small for the debug build: the staged loops are B·n·k·m steps each.
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = {
        .jacobian = {{{3, 4}, {4, 2}},
                     {{2, 3, 4}, {2, 4, 3}},
                     {{2, 3, 2}, {2, 5}},
                     {{3, 2}, {2, 2, 4}},
                     {{1, 2, 3}, {3, 3, 2}},
                     {{1, 5}, {5, 1}}},
        .projection = {{{4, 16, 32}, {4, 32, 8}}, {{32, 64}, {64, 16}}, {{8, 32, 16}, {16, 24}}},
        .ablation = {{{3, 4}, {4, 2}}, {{2, 3, 4}, {2, 4, 3}}, {{2, 3, 2}, {2, 5}}},
        .benchmark = {{{8, 128, 256}, {8, 256, 128}}}};
    return c;
  }
  struct Problem {
    Shape shape;
    TensorD a, b, w;
    ops::MatmulCache<double> dims;  // the shapes, as the forward sees them
  };
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 7046029254386353131ull;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    for (Index v : c.b_shape) h = (h ^ static_cast<std::uint64_t>(v + 1000)) * 1099511628211ull;
    return h;
  }
  static constexpr std::uint64_t benchmark_seed = 2048;
  static Problem problem(const Case& c, std::uint64_t seed) {
    Rng rng(seed);
    Problem p{c.shape, rng.normal_tensor(c.shape), rng.normal_tensor(c.b_shape), {}, {}};
    p.dims = ops::matmul_forward(p.a, p.b).cache;
    p.w = rng.normal_tensor(p.dims.y_shape);
    return p;
  }
  static std::string describe(const Problem& p) {
    return "a " + to_string(p.a.shape()) + " @ b " + to_string(p.b.shape()) + " = y " + to_string(p.dims.y_shape);
  }

  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"a"}, {"b"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t k) { return k == 0 ? p.a : p.b; }
  // `gradproof check`: torch.matmul's operands a and b (the op refuses shapes it does not take,
  // naming them) and dy of the shape of y.
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in("matmul", ua);
    Problem p{ua.inputs.at(0).shape(), in.input(0), in.input(1), in.dy(), {}};
    p.dims = ops::matmul_forward(p.a, p.b).cache;
    in.shape("dy", in.dy().shape(), p.dims.y_shape, "the shape of y = a @ b");
    return p;
  }
  template <class S>
  static Tensor<S> forward(const Problem&, const std::vector<Tensor<S>>& in) {
    return ops::matmul_forward<S>(in[0], in[1]).y;
  }
  template <class T>
  struct Prepared {
    Tensor<T> a, b;
    ops::MatmulForward<T> fwd;
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    auto pr = std::make_shared<Prepared<T>>(Prepared<T>{p.a.cast<T>(), p.b.cast<T>(), {}});
    pr->fwd = ops::matmul_forward<T>(pr->a, pr->b);
    return pr;
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  using Terms = ops::MatmulTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    auto g = pass == Pass::staged ? ops::matmul_backward_staged(dy, pr.a, pr.b, pr.fwd.cache, t)
                                  : ops::matmul_backward(dy, pr.a, pr.b, pr.fwd.cache);
    return {std::move(g.da), std::move(g.db)};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"matmul.da", &Terms::da}, {"matmul.db", &Terms::db}};
    return a;
  }
  static std::string ablation_summary() {
    return "Both terms are caught, each through its own operand's gradient: dA does not depend on dB's term\n"
           "and the other way round.";
  }

  // Per element of a gradient (k = 0: dA, k = 1: dB) or of y (k = 2): Σ |terms| and the value in
  // long double, following the broadcast as the forward does.
  struct Sums {
    Eigen::VectorXd value, magnitude;
  };
  static Sums sums(const Problem& p, const TensorD& dy, int which) {
    const auto& d = p.dims;
    const Index n = d.n, k = d.k, m = d.m;
    const Index size = which == 0 ? p.a.size() : which == 1 ? p.b.size() : dy.size();
    std::vector<long double> v(static_cast<std::size_t>(size), 0), mag = v;
    for (Index t = 0; t < d.B; ++t) {
      const Index ta = d.Ba == 1 ? 0 : t, tb = d.Bb == 1 ? 0 : t;
      for (Index i = 0; i < n; ++i)
        for (Index p_ = 0; p_ < k; ++p_)
          for (Index j = 0; j < m; ++j) {
            const long double A = p.a[ta * n * k + i * k + p_], Bv = p.b[tb * k * m + p_ * m + j],
                              D = dy[t * n * m + i * m + j];
            const long double term = which == 0 ? D * Bv : which == 1 ? A * D : A * Bv;
            const Index at = which == 0 ? ta * n * k + i * k + p_ : which == 1 ? tb * k * m + p_ * m + j
                                                                               : t * n * m + i * m + j;
            v[static_cast<std::size_t>(at)] += term;
            mag[static_cast<std::size_t>(at)] += std::abs(term);
          }
    }
    Sums s{Eigen::VectorXd(size), Eigen::VectorXd(size)};
    for (Index i = 0; i < size; ++i)
      s.value[i] = static_cast<double>(v[static_cast<std::size_t>(i)]),
      s.magnitude[i] = static_cast<double>(mag[static_cast<std::size_t>(i)]);
    return s;
  }

  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    const Sums s = sums(p, p.w, 2);
    scale = s.magnitude.maxCoeff();
    return s.value;
  }
  // ∂(Y_t)_{i,j}/∂(A_t)_{i,p} = (B_t)_{p,j}: every entry is one of b, no sum.
  static double jacobian_scale(const Prepared<double>&, const Problem& p) {
    return p.b.flat().abs().maxCoeff();
  }
  // vᵀJu = Σ_t Σ_{i,j} v_{t,i,j} Σ_p (B_t)_{p,j} u_{t_a,i,p}: the sum of the magnitudes of its terms.
  static double projection_scale(const Prepared<double>&, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    const auto& d = p.dims;
    double total = 0;
    for (Index t = 0; t < d.B; ++t) {
      const Index ta = d.Ba == 1 ? 0 : t, tb = d.Bb == 1 ? 0 : t;
      for (Index i = 0; i < d.n; ++i)
        for (Index j = 0; j < d.m; ++j)
          for (Index q = 0; q < d.k; ++q)
            total += std::abs(v[t * d.n * d.m + i * d.m + j] * p.b[tb * d.k * d.m + q * d.m + j] *
                              u[ta * d.n * d.k + i * d.k + q]);
    }
    return total;
  }
  static double dx_scale(const Prepared<double>&, const Problem& p, const TensorD& dy) {
    return sums(p, dy, 0).magnitude.maxCoeff();
  }
  static double param_scale(const Prepared<double>&, const Problem& p, std::size_t) {
    return sums(p, p.w, 1).magnitude.maxCoeff();
  }

  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<Matmul>& c);
};

// dA and dB against their long-double recomputations (broadcast sums included), both passes and
// dtypes, on the projection and benchmark cases.
std::vector<ResultRow> check_reference(const std::string& formula, const std::string& test, int which) {
  std::vector<ResultRow> rows;
  for (const auto* kind : {&Matmul::cases().projection, &Matmul::cases().benchmark})
    for (const auto& c : *kind) {
      const Matmul::Problem p = harness::make<Matmul>(c, 9);
      const Matmul::Sums s = Matmul::sums(p, p.w, which);
      const auto one = [&](auto tag, Pass pass) {
        using T = decltype(tag);
        const auto pr = Matmul::prepare<T>(p);
        const Eigen::VectorXd got = as_f64(Matmul::backward(*pr, p.w.cast<T>(), pass)[static_cast<std::size_t>(which)]);
        rows.push_back(oracle_row({formula, test, "reference", dtype_name<T>(), "property", p.shape,
                                   std::string(which == 0 ? "dA = dY Bᵀ" : "dB = Aᵀ dY") +
                                       " (summed over the batch for a broadcast operand) against a long-double "
                                       "recomputation (" + harness::name(pass) + " backward, " + Matmul::describe(p) + ")"},
                                  Oracle::complex_step, got, s.value, {s.value.size()}, s.magnitude.maxCoeff()));
      };
      for (Pass pass : {Pass::staged, Pass::fused}) {
        one(double{}, pass);
        one(float{}, pass);
      }
    }
  return rows;
}

// Batched = one 2-D product per batch, bit for bit, for equal batches and for each broadcast.
std::vector<ResultRow> check_batched_is_per_batch(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const auto& c : Matmul::cases().jacobian) {
    const Matmul::Problem p = harness::make<Matmul>(c, 13);
    const auto& d = p.dims;
    const TensorD y = ops::matmul_forward(p.a, p.b).y;
    double diff = 0;
    for (Index t = 0; t < d.B; ++t) {
      const Index ta = d.Ba == 1 ? 0 : t, tb = d.Bb == 1 ? 0 : t;
      const TensorD at({d.n, d.k}, std::vector<double>(p.a.data() + ta * d.n * d.k, p.a.data() + (ta + 1) * d.n * d.k));
      const TensorD bt({d.k, d.m}, std::vector<double>(p.b.data() + tb * d.k * d.m, p.b.data() + (tb + 1) * d.k * d.m));
      const TensorD yt = ops::matmul_forward(at, bt).y;
      for (Index i = 0; i < yt.size(); ++i) diff = std::max(diff, std::abs(yt[i] - y[t * d.n * d.m + i]));
    }
    ResultRow row{"matmul.forward", test, "identity", "float64", "property", i64(p.shape)};
    row.max_abs_err = diff;
    row.passed = diff == 0;
    row.note = "every batch of y equals, bit for bit, the 2-D product of its operands' matrices (" +
               Matmul::describe(p) + ")";
    rows.push_back(row);
  }
  return rows;
}

void Matmul::extra(harness::Checks<Matmul>& c) {
  c.add("matmul.da", "matmul/da/da_matches_a_long_double_reference",
        [](const std::string& t) { return check_reference("matmul.da", t, 0); });
  c.add("matmul.db", "matmul/params/db_matches_a_long_double_reference",
        [](const std::string& t) { return check_reference("matmul.db", t, 1); });
  c.add("matmul.forward", "matmul/forward/batched_equals_one_2d_product_per_batch", check_batched_is_per_batch);
}

std::vector<harness::BadInput> Matmul::bad_inputs() {
  using ops::matmul_forward;
  const auto fwd = [] {
    static const TensorD a({2, 3, 4}, 0.5), b({2, 4, 5}, 0.25);
    return std::make_tuple(&a, &b, matmul_forward(a, b));
  };
  return {
      {"rank_1_a_is_refused", "matmul.forward", [] { matmul_forward(TensorD({3}), TensorD({3, 2})); },
       {"a must have rank 2", "got shape (3,)"}},
      {"rank_4_b_is_refused", "matmul.forward", [] { matmul_forward(TensorD({2, 3}), TensorD({1, 2, 3, 2})); },
       {"b must have rank 2", "got shape (1, 2, 3, 2)"}},
      {"inner_extents_that_differ_are_refused", "matmul.forward",
       [] { matmul_forward(TensorD({2, 3}), TensorD({4, 5})); },
       {"inner extents must agree", "a of shape (2, 3) has k = 3", "b of shape (4, 5) has k = 4"}},
      {"batch_extents_that_do_not_broadcast_are_refused", "matmul.forward",
       [] { matmul_forward(TensorD({2, 3, 4}), TensorD({3, 4, 5})); },
       {"do not broadcast", "(2, 3, 4)", "(3, 4, 5)", "2 and 3"}},
      {"y_of_the_wrong_shape_is_refused", "matmul.forward",
       [] {
         TensorD y({2, 3, 4});
         ops::MatmulCache<double> cache;
         ops::matmul_forward_into(TensorD({2, 3, 4}), TensorD({4, 5}), {}, y, cache);
       },
       {"y (output) must have shape (2, 3, 5)", "got (2, 3, 4)"}},
      {"dy_of_the_wrong_shape_is_refused", "matmul.da_fused",
       [fwd] {
         const auto [a, b, f] = fwd();
         ops::matmul_backward(TensorD({2, 3, 4}), *a, *b, f.cache);
       },
       {"dy (must match y) must have shape (2, 3, 5)", "got (2, 3, 4)"}},
      {"a_cache_of_other_operands_is_refused", "matmul.da",
       [fwd] {
         const auto [a, b, f] = fwd();
         ops::matmul_backward_staged(f.y, TensorD({2, 3, 4}), TensorD({4, 5}), f.cache);
       },
       {"cache was made for a of shape (2, 3, 4) and b of shape (2, 4, 5)", "b (4, 5)"}},
      {"da_of_the_wrong_shape_is_refused", "matmul.da_fused",
       [fwd] {
         const auto [a, b, f] = fwd();
         TensorD da({3, 4}), db({2, 4, 5});
         ops::matmul_backward_into(f.y, *a, *b, f.cache, &da, &db);
       },
       {"da (output) must have shape (2, 3, 4)", "got (3, 4)"}},
      {"db_of_the_wrong_shape_is_refused", "matmul.da_fused",
       [fwd] {
         const auto [a, b, f] = fwd();
         TensorD da({2, 3, 4}), db({4, 5});
         ops::matmul_backward_into(f.y, *a, *b, f.cache, &da, &db);
       },
       {"db (output) must have shape (2, 4, 5)", "got (4, 5)"}},
  };
}

// Shapes at which Eigen's GEMM runs on one thread from stack buffers (see the linear page).
template <class T>
harness::IntoCase into_case(const std::string& name, bool backward) {
  return {name + (sizeof(T) == 4 ? "_float" : "_double"), [backward] {
            struct State {
              Tensor<T> a{Shape{2, 16, 24}}, b{Shape{24, 16}}, y{Shape{2, 16, 16}}, da{Shape{2, 16, 24}}, db{Shape{24, 16}};
              ops::MatmulCache<T> cache;
            };
            auto s = std::make_shared<State>();
            for (Index i = 0; i < s->a.size(); ++i) s->a[i] = T(static_cast<double>(i % 97) / 32 - 1);
            for (Index i = 0; i < s->b.size(); ++i) s->b[i] = T(static_cast<double>(i % 89) / 64 - 0.5);
            ops::matmul_forward_into<T>(s->a, s->b, {}, s->y, s->cache);
            if (backward)
              return std::function<void()>([s] { ops::matmul_backward_into<T>(s->y, s->a, s->b, s->cache, &s->da, &s->db); });
            return std::function<void()>([s] { ops::matmul_forward_into<T>(s->a, s->b, {}, s->y, s->cache); });
          }};
}

std::vector<harness::IntoCase> Matmul::into_cases() {
  return {into_case<float>("matmul_forward_into", false), into_case<double>("matmul_forward_into", false),
          into_case<float>("matmul_backward_into", true), into_case<double>("matmul_backward_into", true)};
}

}  // namespace

void register_matmul(Registry& r) { harness::register_op<Matmul>(r); }

}  // namespace gradproof::catalog
