// The declaration of embedding (embedding.*): y_q = W[idx_q]. The only differentiable input is
// the weight (the harness's first input, so its formulas are embedding.dweight and
// embedding.dweight_fused); the indices are constants (constants(p), for the libtorch oracle).
// extra() adds the repeated-index, padding-row and thread-count checks.
#include "gradproof/harness/checks.hpp"
#include "gradproof/ops/embedding.hpp"
#include "gradproof/parallel.hpp"

#include <cmath>
#include <memory>
#include <optional>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;
using IndexTensor = Tensor<std::int64_t>;

struct Embedding {
  static constexpr const char* op = "embedding";
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = {
        {"embedding.forward", "Embedding forward: y_q = W[idx_q], the padding row read as a constant"},
        {"embedding.dweight", "∂L/∂W_r = Σ_{q: idx_q = r} dy_q, none for the padding row (staged scatter-add)"},
        {"embedding.dweight_fused", "Embedding fused dW: columns split over threads, positions added in order"}};
    return f;
  }

  struct Case {
    Shape shape;  // the indices'
    Index num = 5, dim = 3;
    std::optional<Index> padding = std::nullopt;
  };
  // Few rows and many positions: every case repeats indices.
  static const harness::Cases<Case> & cases() {
    static const harness::Cases<Case> c = {
        .jacobian = {{{4}, 3, 2}, {{2, 5}, 4, 3, 1}, {{3, 2, 2}, 5, 2, -1}, {{6}, 2, 4}},
        .projection = {{{8, 32}, 16, 24, 0}, {{256}, 40, 8}},
        .ablation = {{{4}, 3, 2}, {{2, 5}, 4, 3, 1}},
        .benchmark = {{{64, 128}, 1000, 64, 0}}};
    return c;
  }
  struct Problem {
    Shape shape;
    ops::EmbeddingConfig cfg;
    IndexTensor indices;
    TensorD weight, w;
  };
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 1099511628211ull * 31;
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    h = (h ^ static_cast<std::uint64_t>(c.num * 1000 + c.dim)) * 1099511628211ull;
    return c.padding ? (h ^ static_cast<std::uint64_t>(*c.padding + 7)) * 1099511628211ull : h;
  }
  static constexpr std::uint64_t benchmark_seed = 64;
  // Indices drawn with repeats, the padding row among them (at position 0 at least).
  static Problem problem(const Case& c, std::uint64_t seed) {
    Rng rng(seed);
    Problem p{c.shape, {c.num, c.dim, c.padding}, IndexTensor(c.shape), rng.normal_tensor({c.num, c.dim}), {}};
    for (Index q = 0; q < p.indices.size(); ++q)
      p.indices[q] = std::min<Index>(c.num - 1, static_cast<Index>(rng.uniform(0, static_cast<double>(c.num))));
    if (c.padding && p.indices.size() > 0) p.indices[0] = *c.padding < 0 ? *c.padding + c.num : *c.padding;
    Shape ys = c.shape;
    ys.push_back(c.dim);
    p.w = rng.normal_tensor(ys);
    return p;
  }
  static std::string describe(const Problem& p) {
    std::ostringstream s;
    s << "indices " << to_string(p.shape) << ", num_embeddings " << p.cfg.num_embeddings << ", embedding_dim "
      << p.cfg.embedding_dim << ", padding_idx ";
    if (p.cfg.padding_idx) s << *p.cfg.padding_idx;
    else s << "None";
    return s.str();
  }

  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"weight"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t) { return p.weight; }
  // For the libtorch oracle: at::embedding's padding_idx, -1 for none (ATen's convention).
  static std::vector<std::pair<std::string, double>> options(const Problem& p) {
    const Index pad = !p.cfg.padding_idx ? -1 : *p.cfg.padding_idx < 0 ? *p.cfg.padding_idx + p.cfg.num_embeddings
                                                                        : *p.cfg.padding_idx;
    return {{"padding_idx", static_cast<double>(pad)}};
  }
  static std::vector<std::pair<std::string, TensorD>> constants(const Problem& p) {
    return {{"indices", p.indices.cast<double>()}};
  }
  // `gradproof check`: weight (num_embeddings, embedding_dim), the indices as an integer array of
  // any shape (F.embedding's input), padding_idx (default None) as PyTorch; dy (..., D).
  static std::vector<std::string> check_options() { return {"padding_idx"}; }
  static std::vector<std::string> check_arrays() { return {"indices"}; }
  static Problem from_arrays(const UserArrays& ua) {
    const UserInput in("embedding", ua);
    const TensorD& weight = in.input(0);
    if (weight.rank() != 2)
      in.fail("weight must be (num_embeddings, embedding_dim)", to_string(weight.shape()));
    const Index V = weight.shape()[0], D = weight.shape()[1];
    const catalog::UserArray& idx = in.required("indices", "the input of F.embedding, integers");
    in.indices("indices", idx, 0, static_cast<double>(V - 1),
               "rows of weight, in [0, " + std::to_string(V) + ")");
    Problem p{
        idx.values.shape(), {V, D, std::nullopt}, IndexTensor(idx.values.shape()), weight, in.dy()};
    for (Index q = 0; q < p.indices.size(); ++q) p.indices[q] = static_cast<Index>(idx.values[q]);
    if (in.given("padding_idx")) p.cfg.padding_idx = in.integer("padding_idx", 0);
    Shape ys = p.shape;
    ys.push_back(D);
    in.shape("dy", in.dy().shape(), ys, "the shape of y, the indices' and embedding_dim");
    return p;
  }
  // The padding row is a constant of the graph: the oracles' function holds it at the problem's
  // value, so that the difference oracles too (which run in double, where the op cannot tell a
  // constant) differentiate the function whose gradient PyTorch's backward gives.
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    Tensor<S> weight = in[0];
    const Index D = p.cfg.embedding_dim, V = p.cfg.num_embeddings;
    if (p.cfg.padding_idx) {
      const Index pad = *p.cfg.padding_idx < 0 ? *p.cfg.padding_idx + V : *p.cfg.padding_idx;
      for (Index d = 0; d < D; ++d) weight[pad * D + d] = S(p.weight[pad * D + d]);
    }
    return ops::embedding_forward<S>(p.indices, weight, p.cfg).y;
  }
  template <class T>
  struct Prepared {
    Tensor<T> weight;
    IndexTensor indices;
    ops::EmbeddingForward<T> fwd;
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    auto pr = std::make_shared<Prepared<T>>(Prepared<T>{p.weight.cast<T>(), p.indices, {}});
    pr->fwd = ops::embedding_forward<T>(p.indices, pr->weight, p.cfg);
    return pr;
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.fwd.y;
  }
  using Terms = ops::EmbeddingTermScales;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass, const Terms& t = {}) {
    if (pass == Pass::staged) return {ops::embedding_backward_staged(dy, pr.indices, pr.fwd.cache, t).dweight};
    return {ops::embedding_backward(dy, pr.indices, pr.fwd.cache).dweight};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = {{"embedding.dweight", &Terms::dweight}};
    return a;
  }
  static std::string ablation_summary() {
    return "The one term, the scatter-add of dy into the rows looked up, is caught when dropped or flipped.";
  }

  // The gathered rows are copies: no arithmetic, scale max |W|.
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    const Index D = p.cfg.embedding_dim;
    Eigen::VectorXd y(p.indices.size() * D);
    for (Index q = 0; q < p.indices.size(); ++q)
      for (Index d = 0; d < D; ++d) y[q * D + d] = p.weight[p.indices[q] * D + d];
    scale = p.weight.flat().abs().maxCoeff();
    return y;
  }
  static double jacobian_scale(const Prepared<double>&, const Problem&) { return 1; }
  // vᵀJu = Σ_q Σ_d v_{q,d} u_{idx_q,d} (none from the padding row).
  static double projection_scale(const Prepared<double>& pd, const Problem& p, const Eigen::VectorXd& v,
                                 const Eigen::VectorXd& u) {
    const Index D = p.cfg.embedding_dim;
    double s = 0;
    for (Index q = 0; q < p.indices.size(); ++q)
      if (p.indices[q] != pd.fwd.cache.padding)
        for (Index d = 0; d < D; ++d) s += std::abs(v[q * D + d] * u[p.indices[q] * D + d]);
    return s;
  }
  // dW_{r,d} = Σ_{q: idx_q = r} dy_{q,d}: the largest Σ |dy| over the positions of one row.
  static double dx_scale(const Prepared<double>&, const Problem& p, const TensorD& dy) {
    const Index D = p.cfg.embedding_dim;
    Eigen::VectorXd acc = Eigen::VectorXd::Zero(p.weight.size());
    for (Index q = 0; q < p.indices.size(); ++q)
      for (Index d = 0; d < D; ++d) acc[p.indices[q] * D + d] += std::abs(dy[q * D + d]);
    return acc.maxCoeff();
  }

  static std::vector<harness::BadInput> bad_inputs();
  static std::vector<harness::IntoCase> into_cases();
  static void extra(harness::Checks<Embedding>& c);
};

// Repeated indices: dW of each row against a long-double sum over its positions (the padding row
// exactly 0), both passes and dtypes; the row counts in the note.
std::vector<ResultRow> check_repeated(const std::string& test) {
  std::vector<ResultRow> rows;
  for (const auto* kind : {&Embedding::cases().jacobian, &Embedding::cases().projection, &Embedding::cases().benchmark})
    for (const auto& c : *kind) {
      const Embedding::Problem p = harness::make<Embedding>(c, 9);
      const Index D = p.cfg.embedding_dim, V = p.cfg.num_embeddings;
      const auto pd = Embedding::prepare<double>(p);
      const Index pad = pd->fwd.cache.padding;
      std::vector<long double> ref(static_cast<std::size_t>(V * D), 0);
      Index max_count = 0;
      std::vector<Index> count(static_cast<std::size_t>(V), 0);
      for (Index q = 0; q < p.indices.size(); ++q) {
        const Index r = p.indices[q];
        max_count = std::max(max_count, ++count[static_cast<std::size_t>(r)]);
        if (r != pad)
          for (Index d = 0; d < D; ++d) ref[static_cast<std::size_t>(r * D + d)] += p.w[q * D + d];
      }
      Eigen::VectorXd refv(V * D);
      for (Index i = 0; i < V * D; ++i) refv[i] = static_cast<double>(ref[static_cast<std::size_t>(i)]);
      const double scale = Embedding::dx_scale(*pd, p, p.w);
      for (Pass pass : {Pass::staged, Pass::fused}) {
        const auto one = [&](auto tag) {
          using T = decltype(tag);
          const auto pr = Embedding::prepare<T>(p);
          const Eigen::VectorXd got = as_f64(Embedding::backward(*pr, p.w.cast<T>(), pass)[0]);
          ResultRow row = oracle_row({"embedding.dweight", test, "reference", dtype_name<T>(), "property", p.shape, ""},
                                     Oracle::complex_step, got, refv, {V, D}, scale);
          bool pad_zero = true;
          if (pad >= 0)
            for (Index d = 0; d < D; ++d) pad_zero = pad_zero && got[pad * D + d] == 0;
          row.passed = row.passed && pad_zero && max_count > 1;
          std::ostringstream note;
          note << "dW_r = Σ over the positions that looked up row r (up to " << max_count
               << " per row here) against a long-double sum";
          if (pad >= 0) note << "; the padding row " << pad << " is exactly 0";
          note << " (" << harness::name(pass) << " backward, " << Embedding::describe(p) << ")";
          row.note = note.str();
          rows.push_back(row);
        };
        one(double{});
        one(float{});
      }
    }
  return rows;
}

// The fused dW is the same, bit for bit, at 1 and 2 threads (and the staged one's in float64).
std::vector<ResultRow> check_threads(const std::string& test) {
  std::vector<ResultRow> rows;
  const Embedding::Problem p = harness::benchmark_problem<Embedding>(Embedding::cases().benchmark.front());
  const auto one = [&](auto tag) {
    using T = decltype(tag);
    const auto pr = Embedding::prepare<T>(p);
    const int keep = parallel::max_threads();
    parallel::set_threads(1);
    const Eigen::VectorXd a = as_f64(Embedding::backward(*pr, p.w.cast<T>(), Pass::fused)[0]);
    parallel::set_threads(2);
    const Eigen::VectorXd b = as_f64(Embedding::backward(*pr, p.w.cast<T>(), Pass::fused)[0]);
    parallel::set_threads(keep);
    const Eigen::VectorXd s = as_f64(Embedding::backward(*pr, p.w.cast<T>(), Pass::staged)[0]);
    ResultRow row{"embedding.dweight_fused", test, "identity", dtype_name<T>(), "property", i64(p.shape)};
    row.max_abs_err = std::max((a - b).cwiseAbs().maxCoeff(), (a - s).cwiseAbs().maxCoeff());
    row.passed = row.max_abs_err == 0;
    row.note = "fused dW at 1 and at 2 threads, and the staged dW, equal bit for bit: every element is the same "
               "sum in the order of the positions (" + Embedding::describe(p) + ")";
    rows.push_back(row);
  };
  one(double{});
  one(float{});
  return rows;
}

void Embedding::extra(harness::Checks<Embedding>& c) {
  c.add("embedding.dweight", "embedding/dweight/repeated_indices_accumulate_and_the_padding_row_gets_none",
        check_repeated);
  c.add("embedding.dweight_fused", "embedding/dweight_fused/same_bits_at_1_and_2_threads", check_threads);
}

std::vector<harness::BadInput> Embedding::bad_inputs() {
  using ops::embedding_forward;
  const auto fwd = [] {
    static const IndexTensor idx({2, 3}, 1);
    static const TensorD w({4, 3}, 0.5);
    return std::make_tuple(&idx, embedding_forward(idx, w, {4, 3}));
  };
  return {
      {"index_out_of_range_is_refused", "embedding.forward",
       [] {
         IndexTensor idx({2, 2}, 1);
         idx[3] = 7;
         embedding_forward(idx, TensorD({5, 2}), {5, 2});
       },
       {"index 7 at flat position 3", "out of range [0, 5)"}},
      {"negative_index_is_refused", "embedding.forward",
       [] { embedding_forward(IndexTensor({3}, -1), TensorD({5, 2}), {5, 2}); },
       {"index -1 at flat position 0", "out of range [0, 5)"}},
      {"padding_idx_out_of_range_is_refused", "embedding.forward",
       [] { embedding_forward(IndexTensor({3}, 0), TensorD({5, 2}), {5, 2, 5}); },
       {"padding_idx must be within num_embeddings", "[-5, 5)", "got 5"}},
      {"weight_of_another_shape_is_refused", "embedding.forward",
       [] { embedding_forward(IndexTensor({3}, 0), TensorD({4, 2}), {5, 2}); },
       {"weight (num_embeddings, embedding_dim) must have shape (5, 2)", "got (4, 2)"}},
      {"y_of_the_wrong_shape_is_refused", "embedding.forward",
       [] {
         TensorD y({3, 3});
         ops::EmbeddingCache<double> cache;
         ops::embedding_forward_into(IndexTensor({3}, 0), TensorD({5, 2}), {5, 2}, y, cache);
       },
       {"y (output) must have shape (3, 2)", "got (3, 3)"}},
      {"dy_of_the_wrong_shape_is_refused", "embedding.dweight_fused",
       [fwd] {
         const auto [idx, f] = fwd();
         ops::embedding_backward(TensorD({2, 3, 4}), *idx, f.cache);
       },
       {"dy (must match y) must have shape (2, 3, 3)", "got (2, 3, 4)"}},
      {"indices_of_another_shape_are_refused", "embedding.dweight",
       [fwd] {
         const auto [idx, f] = fwd();
         ops::embedding_backward_staged(f.y, IndexTensor({6}, 1), f.cache);
       },
       {"cache was made for indices of shape (2, 3)", "indices has shape (6,)"}},
      {"dweight_of_the_wrong_shape_is_refused", "embedding.dweight_fused",
       [fwd] {
         const auto [idx, f] = fwd();
         TensorD dw({3, 4});
         ops::embedding_backward_into(f.y, *idx, f.cache, dw);
       },
       {"dweight (output) must have shape (4, 3)", "got (3, 4)"}},
  };
}

template <class T>
harness::IntoCase into_case(const std::string& name, bool backward) {
  return {name + (sizeof(T) == 4 ? "_float" : "_double"), [backward] {
            struct State {
              IndexTensor idx{Shape{64, 128}};
              Tensor<T> w{Shape{1000, 64}}, y{Shape{64, 128, 64}}, dw{Shape{1000, 64}};
              ops::EmbeddingCache<T> cache;
            };
            auto s = std::make_shared<State>();
            for (Index q = 0; q < s->idx.size(); ++q) s->idx[q] = (q * 7919) % 1000;
            const ops::EmbeddingConfig cfg{1000, 64, 0};
            ops::embedding_forward_into<T>(s->idx, s->w, cfg, s->y, s->cache);
            if (backward)
              return std::function<void()>([s] { ops::embedding_backward_into<T>(s->y, s->idx, s->cache, s->dw); });
            return std::function<void()>([s, cfg] { ops::embedding_forward_into<T>(s->idx, s->w, cfg, s->y, s->cache); });
          }};
}

std::vector<harness::IntoCase> Embedding::into_cases() {
  return {into_case<float>("embedding_forward_into", false), into_case<double>("embedding_forward_into", false),
          into_case<float>("embedding_backward_into", true), into_case<double>("embedding_backward_into", true)};
}

}  // namespace

void register_embedding(Registry& r) { harness::register_op<Embedding>(r); }

}  // namespace gradproof::catalog
