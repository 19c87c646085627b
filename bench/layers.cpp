// The course layers of issue 12: inputs, float64 references and our `*_into` kernels, float32.
//
// Shapes (the issue's): activations on (4096, 4096); softmax, log_softmax and the fused
// softmax–cross-entropy on (8192, 4096); linear at x (4096, 1024), W (1024, 1024), b (1024).
// Embedding backward: 262144 indices (64 sequences of 4096 tokens) into a table of 30000 rows of
// 256 (a BERT-sized vocabulary), drawn from a Zipf law of exponent 1.1 as token frequencies are:
// the most frequent row receives about 10% of all adds and most rows a few or none, which is the
// "many repeated indices" case. dy is then 256 MiB, 8 times the table and far beyond the caches;
// the 1e6 indices would make dy 1 GiB, whose inputs alone take longer to make than the
// quick profile's whole budget, without a different access pattern.
#include "bench.hpp"

#include "gradproof/ops/activations.hpp"
#include "gradproof/ops/cross_entropy.hpp"
#include "gradproof/ops/embedding.hpp"
#include "gradproof/ops/linear.hpp"
#include "gradproof/ops/log_softmax.hpp"
#include "gradproof/ops/softmax.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>

namespace gradproof::bench {

const std::vector<TensorD>& LayerProblem::ref_forward() const {
  if (!ref_f) ref_f = std::make_shared<std::vector<TensorD>>(make_ref_forward(*this));
  return *ref_f;
}

const std::vector<TensorD>& LayerProblem::ref_backward() const {
  if (!ref_b) ref_b = std::make_shared<std::vector<TensorD>>(make_ref_backward(*this));
  return *ref_b;
}

const std::vector<std::string>& activation_names() {
  static const std::vector<std::string> names{"relu", "leaky_relu", "elu",  "gelu",    "gelu_tanh",
                                              "silu", "sigmoid",    "tanh", "softplus"};
  return names;
}

namespace {

constexpr Index kActRows = 4096, kActCols = 4096;
constexpr Index kSoftmaxRows = 8192, kSoftmaxCols = 4096;
constexpr Index kLinearN = 4096, kLinearI = 1024, kLinearO = 1024;
constexpr Index kEmbedQ = Index(1) << 18, kEmbedV = 30000, kEmbedD = 256;

void fill_normal(TensorF& t, std::mt19937_64& rng, double mean, double stddev) {
  std::normal_distribution<double> dist(mean, stddev);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<float>(dist(rng));
}

void fill_uniform(TensorF& t, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<float> dist(static_cast<float>(lo), static_cast<float>(hi));
  for (Index i = 0; i < t.size(); ++i) t[i] = dist(rng);
}

std::vector<std::int64_t> dims(const Shape& s) { return {s.begin(), s.end()}; }

// Calls f with the activation's config (PyTorch's defaults).
template <class F>
void with_activation(const std::string& op, const F& f) {
  if (op == "relu") f(ops::ReluConfig{});
  else if (op == "leaky_relu") f(ops::LeakyReluConfig{});
  else if (op == "elu") f(ops::EluConfig{});
  else if (op == "gelu") f(ops::GeluConfig{});
  else if (op == "gelu_tanh") f(ops::GeluConfig{.approximate = "tanh"});
  else if (op == "silu") f(ops::SiluConfig{});
  else if (op == "sigmoid") f(ops::SigmoidConfig{});
  else if (op == "tanh") f(ops::TanhConfig{});
  else if (op == "softplus") f(ops::SoftplusConfig{});
  else throw std::invalid_argument("bench: unknown activation " + op);
}

bool is_activation(const std::string& op) {
  const auto& n = activation_names();
  return std::find(n.begin(), n.end(), op) != n.end();
}

// max over the outputs of relative_difference().
double worst(const std::vector<const float*>& got, const std::vector<TensorD>& ref) {
  double d = 0;
  for (std::size_t k = 0; k < got.size(); ++k)
    d = std::max(d, relative_difference(got[k], ref[k].data(), ref[k].size()));
  return d;
}

std::vector<Case> activation_cases(const LayerPtr& p) {
  std::vector<Case> out;
  with_activation(p->op, [&](auto cfg) {
    using Config = decltype(cfg);
    const double n = static_cast<double>(p->x.size());
    struct State {
      TensorF y, dx;
      ops::ActivationCache<Config> cache;
    };
    auto s = std::make_shared<State>(State{TensorF(p->shape), TensorF(p->shape), {}});
    ops::activation_forward_into(p->x, cfg, s->y, s->cache);  // y for the backward case
    auto b = std::make_shared<State>(State{TensorF(p->shape), TensorF(p->shape), {}});
    ops::activation_forward_into(p->x, cfg, b->y, b->cache);
    out.push_back({p->op, "forward", "fused", dims(p->shape), 8 * n,
                   [p, s, cfg] { ops::activation_forward_into(p->x, cfg, s->y, s->cache); },
                   [p, s] { return worst({s->y.data()}, p->ref_forward()); }, {}, "", ""});
    const char* note = Config::saves_output ? "reads y (as PyTorch)" : "reads x (as PyTorch)";
    out.push_back({p->op, "backward", "fused", dims(p->shape), 12 * n,
                   [p, b] {
                     ops::activation_backward_into(p->dy, Config::saves_output ? b->y : p->x,
                                                   b->cache, b->dx);
                   },
                   [p, b] { return worst({b->dx.data()}, p->ref_backward()); }, {}, "", note});
  });
  return out;
}

std::vector<Case> softmax_cases(const LayerPtr& p) {
  const double n = static_cast<double>(p->x.size());
  const bool log = p->op == "log_softmax";
  struct State {
    TensorF y, dx;
    ops::SoftmaxCache<float> sm;
    ops::LogSoftmaxCache<float> lsm;
  };
  const auto fresh = [p, log] {
    auto s = std::make_shared<State>(State{TensorF(p->shape), TensorF(p->shape), {}, {}});
    if (log) ops::log_softmax_forward_into(p->x, {-1}, s->y, s->lsm);
    else ops::softmax_forward_into(p->x, {-1}, s->y, s->sm);
    return s;
  };
  auto f = fresh(), b = fresh();
  return {{p->op, "forward", "fused", dims(p->shape), 8 * n,
           [p, f, log] {
             if (log) ops::log_softmax_forward_into(p->x, {-1}, f->y, f->lsm);
             else ops::softmax_forward_into(p->x, {-1}, f->y, f->sm);
           },
           [p, f] { return worst({f->y.data()}, p->ref_forward()); }, {}, "", ""},
          {p->op, "backward", "fused", dims(p->shape), 12 * n,
           [p, b, log] {
             if (log) ops::log_softmax_backward_into(p->dy, b->y, b->lsm, b->dx);
             else ops::softmax_backward_into(p->dy, b->y, b->sm, b->dx);
           },
           [p, b] { return worst({b->dx.data()}, p->ref_backward()); }, {}, "",
           "reads y and dy, writes dx"}};
}

std::vector<Case> cross_entropy_cases(const LayerPtr& p) {
  const double n = static_cast<double>(p->x.size());
  struct State {
    TensorF loss{Shape{}}, dy{Shape{}, 1.0f}, dx;
    ops::ClassLossCache<float> cache;
  };
  auto s = std::make_shared<State>();
  s->dx = TensorF(p->shape);
  const ops::CrossEntropyConfig cfg{};  // mean over the samples, no weight, no smoothing
  return {{p->op, "forward+backward", "fused", dims(p->shape), 8 * n,
           [p, s, cfg] {
             ops::cross_entropy_forward_into<float>(p->x, p->index, nullptr, cfg, s->loss,
                                                    s->cache);
             ops::cross_entropy_backward_into<float>(s->dy, p->x, p->index, nullptr, cfg,
                                                     s->cache, s->dx);
           },
           [p, s] { return worst({s->loss.data(), s->dx.data()}, p->ref_forward()); }, {}, "",
           "cross_entropy_forward_into then cross_entropy_backward_into: x is read twice"}};
}

std::vector<Case> linear_cases(const LayerPtr& p) {
  const double N = kLinearN, I = kLinearI, O = kLinearO;
  struct State {
    TensorF y, dx, dw, db;
    ops::LinearCache<float> cache;
  };
  auto s = std::make_shared<State>(State{TensorF({kLinearN, kLinearO}), TensorF(p->shape),
                                         TensorF({kLinearO, kLinearI}), TensorF({kLinearO}), {}});
  ops::linear_forward_into<float>(p->x, p->w, &p->b, {}, s->y, s->cache);
  const double fwd_bytes = 4 * (N * I + O * I + O + N * O);
  const double bwd_bytes = 4 * (N * O + N * I + O * I + N * I + O * I + O);
  Case f{"linear", "forward", "fused", dims(p->shape), fwd_bytes,
         [p, s] { ops::linear_forward_into<float>(p->x, p->w, &p->b, {}, s->y, s->cache); },
         [p, s] { return worst({s->y.data()}, p->ref_forward()); }, {}, "",
         "Eigen's GEMM (gemm.hpp), y = x Wᵀ + b"};
  f.flops = 2 * N * I * O + N * O;
  Case b{"linear", "backward", "fused", dims(p->shape), bwd_bytes,
         [p, s] {
           ops::linear_backward_into<float>(p->dy, p->x, p->w, s->cache, &s->dx, &s->dw, &s->db);
         },
         [p, s] { return worst({s->dx.data(), s->dw.data(), s->db.data()}, p->ref_backward()); },
         {}, "", "dx = dy W and dW = dyᵀ x by Eigen's GEMM, db a column sum"};
  b.flops = 4 * N * I * O + N * O;
  return {f, b};
}

std::vector<Case> embedding_cases(const LayerPtr& p) {
  const double Q = kEmbedQ, V = kEmbedV, D = kEmbedD;
  struct State {
    TensorF dw, again;
    ops::EmbeddingCache<float> cache;
  };
  auto s = std::make_shared<State>(State{TensorF({kEmbedV, kEmbedD}), TensorF({kEmbedV, kEmbedD}),
                                         {}});
  ops::detail::embedding::shapes(p->index, p->w, {kEmbedV, kEmbedD, std::nullopt}, s->cache);
  Case c{"embedding", "backward", "fused", dims(p->shape), 4 * Q * D + 8 * Q + 4 * V * D,
         [p, s] { ops::embedding_backward_into(p->dy, p->index, s->cache, s->dw); },
         [p, s] { return worst({s->dw.data()}, p->ref_backward()); }, {}, "",
         "threads own column ranges; each element adds its rows in index order"};
  c.deterministic = [p, s] {
    bool same = true;
    for (int k = 0; k < 2; ++k) {
      ops::embedding_backward_into(p->dy, p->index, s->cache, s->again);
      same = same && std::memcmp(s->again.data(), s->dw.data(),
                                 static_cast<std::size_t>(s->dw.size()) * sizeof(float)) == 0;
    }
    return same;
  };
  return {c};
}

// ---- float64 references -----------------------------------------------------------------------

std::vector<TensorD> softmax_ref(const LayerProblem& p, bool log) {
  TensorD y(p.shape);
  const Index R = p.shape[0], M = p.shape[1];
  for (Index r = 0; r < R; ++r) {
    const float* x = p.x.data() + r * M;
    double m = x[0], s = 0;
    for (Index j = 1; j < M; ++j) m = std::max(m, double(x[j]));
    for (Index j = 0; j < M; ++j) s += std::exp(double(x[j]) - m);
    for (Index j = 0; j < M; ++j)
      y[r * M + j] = log ? double(x[j]) - m - std::log(s) : std::exp(double(x[j]) - m) / s;
  }
  return {std::move(y)};
}

std::vector<TensorD> softmax_ref_backward(const LayerProblem& p, bool log) {
  const TensorD& y = p.ref_forward()[0];
  TensorD dx(p.shape);
  const Index R = p.shape[0], M = p.shape[1];
  for (Index r = 0; r < R; ++r) {
    const float* dy = p.dy.data() + r * M;
    const double* yr = y.data() + r * M;
    double a = 0;
    for (Index j = 0; j < M; ++j) a += log ? double(dy[j]) : double(dy[j]) * yr[j];
    for (Index j = 0; j < M; ++j)
      dx[r * M + j] = log ? dy[j] - std::exp(yr[j]) * a : yr[j] * (dy[j] - a);
  }
  return {std::move(dx)};
}

// Cross-entropy, mean over the R samples: the loss, then dx = (softmax(x) − onehot(t)) / R.
std::vector<TensorD> cross_entropy_ref(const LayerProblem& p) {
  const TensorD prob = softmax_ref(p, false)[0];
  const Index R = p.shape[0], M = p.shape[1];
  TensorD loss(Shape{}), dx(p.shape);
  double total = 0;
  for (Index r = 0; r < R; ++r) {
    const Index t = p.index[r];
    total -= std::log(prob[r * M + t]);
    for (Index j = 0; j < M; ++j) dx[r * M + j] = (prob[r * M + j] - (j == t)) / double(R);
  }
  loss[0] = total / double(R);
  return {std::move(loss), std::move(dx)};
}

}  // namespace

LayerPtr make_layer_problem(const std::string& op) {
  auto p = std::make_shared<LayerProblem>();
  p->op = op;
  std::mt19937_64 rng(20261206 + std::hash<std::string>{}(op) % 1000);
  if (is_activation(op)) {
    p->shape = {kActRows, kActCols};
    p->x = TensorF(p->shape);
    p->dy = TensorF(p->shape);
    fill_normal(p->x, rng, 0.0, 3.0);  // both sides of the kinks, softplus' threshold reached
    fill_uniform(p->dy, rng, -1.0, 1.0);
    p->make_ref_forward = [](const LayerProblem& q) {
      std::vector<TensorD> out{TensorD(q.shape)};
      with_activation(q.op, [&](auto cfg) {
        for (Index i = 0; i < q.x.size(); ++i) out[0][i] = cfg.value(double(q.x[i]));
      });
      return out;
    };
    p->make_ref_backward = [](const LayerProblem& q) {
      std::vector<TensorD> out{TensorD(q.shape)};
      with_activation(q.op, [&](auto cfg) {
        for (Index i = 0; i < q.x.size(); ++i)
          out[0][i] = cfg.staged(double(q.x[i]), double(q.dy[i]), {});
      });
      return out;
    };
  } else if (op == "softmax" || op == "log_softmax" || op == "cross_entropy") {
    p->shape = {kSoftmaxRows, kSoftmaxCols};
    p->x = TensorF(p->shape);
    fill_normal(p->x, rng, 0.0, 2.0);
    const bool log = op == "log_softmax";
    if (op == "cross_entropy") {
      p->index = Tensor<std::int64_t>({kSoftmaxRows});
      std::uniform_int_distribution<std::int64_t> cls(0, kSoftmaxCols - 1);
      for (Index r = 0; r < kSoftmaxRows; ++r) p->index[r] = cls(rng);
      p->make_ref_forward = [](const LayerProblem& q) { return cross_entropy_ref(q); };
    } else {
      p->dy = TensorF(p->shape);
      fill_uniform(p->dy, rng, -1.0, 1.0);
      p->make_ref_forward = [log](const LayerProblem& q) { return softmax_ref(q, log); };
      p->make_ref_backward = [log](const LayerProblem& q) {
        return softmax_ref_backward(q, log);
      };
    }
  } else if (op == "linear") {
    p->shape = {kLinearN, kLinearI};
    p->x = TensorF(p->shape);
    p->dy = TensorF({kLinearN, kLinearO});
    p->w = TensorF({kLinearO, kLinearI});
    p->b = TensorF({kLinearO});
    fill_uniform(p->x, rng, -1.0, 1.0);
    fill_uniform(p->dy, rng, -1.0, 1.0);
    fill_uniform(p->w, rng, -1.0 / 32, 1.0 / 32);  // PyTorch's init bound 1/sqrt(in_features)
    fill_uniform(p->b, rng, -1.0 / 32, 1.0 / 32);
    // The references: our GEMM in double on the float inputs.
    p->make_ref_forward = [](const LayerProblem& q) {
      const TensorD wd = q.w.cast<double>(), bd = q.b.cast<double>();
      return std::vector<TensorD>{ops::linear_forward<double>(q.x.cast<double>(), wd, &bd).y};
    };
    p->make_ref_backward = [](const LayerProblem& q) {
      const TensorD xd = q.x.cast<double>(), wd = q.w.cast<double>(), bd = q.b.cast<double>();
      const auto f = ops::linear_forward<double>(xd, wd, &bd);
      auto g = ops::linear_backward<double>(q.dy.cast<double>(), xd, wd, f.cache);
      return std::vector<TensorD>{std::move(g.dx), std::move(g.dweight), std::move(g.dbias)};
    };
  } else if (op == "embedding") {
    p->shape = {kEmbedQ, kEmbedD};
    p->dy = TensorF(p->shape);
    p->w = TensorF({kEmbedV, kEmbedD});
    fill_uniform(p->dy, rng, -1.0, 1.0);
    // Zipf(1.1) over the rows, the ranks scattered over the table by a fixed permutation.
    std::vector<double> cdf(static_cast<std::size_t>(kEmbedV));
    double acc = 0;
    for (Index k = 0; k < kEmbedV; ++k) cdf[std::size_t(k)] = acc += std::pow(double(k + 1), -1.1);
    std::vector<std::int64_t> row_of(static_cast<std::size_t>(kEmbedV));
    std::iota(row_of.begin(), row_of.end(), 0);
    std::shuffle(row_of.begin(), row_of.end(), rng);
    std::uniform_real_distribution<double> u(0.0, acc);
    p->index = Tensor<std::int64_t>({kEmbedQ});
    for (Index q = 0; q < kEmbedQ; ++q) {
      const auto k = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
      p->index[q] = row_of[std::size_t(std::min<std::ptrdiff_t>(k, kEmbedV - 1))];
    }
    p->make_ref_backward = [](const LayerProblem& q) {
      TensorD dw({kEmbedV, kEmbedD});
      for (Index k = 0; k < kEmbedQ; ++k)
        for (Index d = 0; d < kEmbedD; ++d) dw[q.index[k] * kEmbedD + d] += q.dy[k * kEmbedD + d];
      return std::vector<TensorD>{std::move(dw)};
    };
  } else {
    throw std::invalid_argument("bench: unknown layer " + op);
  }
  return p;
}

std::vector<Case> ours_layer(const LayerPtr& p) {
  std::vector<Case> out;
  if (is_activation(p->op)) out = activation_cases(p);
  else if (p->op == "softmax" || p->op == "log_softmax") out = softmax_cases(p);
  else if (p->op == "cross_entropy") out = cross_entropy_cases(p);
  else if (p->op == "linear") out = linear_cases(p);
  else out = embedding_cases(p);
  return out;
}

}  // namespace gradproof::bench
