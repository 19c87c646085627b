// libtorch as a fifth oracle (issue 12): every op's gradients of L = <w, y>, both backward passes,
// against libtorch 1.13's float64 autograd of the op's torch forward, on the catalog's own
// problems (catalog::Registry::plain, made by the harness from each declaration). Where the two
// differ beyond check::libtorch_policy(), the long-double gradient decides; its rows (oracle
// `long_double`) say who is closer to it.
//
// Adding an op: one entry in torch_forwards(), the torch forward of the op on a plain problem.
// Ops not yet declared through the harness (bn, ln, gn, in) get their problems from interim()
// below, through their public API; once declared (with `options(p)`), the declaration's
// problems replace these and interim() is to be deleted.
#include "gradproof/catalog/catalog.hpp"
#include "gradproof/catalog/support.hpp"
#include "gradproof/harness/plain.hpp"
#include "gradproof/ops/activations.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/nn/networks.hpp"
#include "support/record.hpp"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/batch_norm.h>
#include <ATen/ops/binary_cross_entropy_with_logits.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/group_norm.h>
#include <ATen/ops/huber_loss.h>
#include <ATen/ops/instance_norm.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/mse_loss.h>
#include <ATen/ops/nll_loss_nd.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/smooth_l1_loss.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/sum.h>
#include <torch/csrc/autograd/autograd.h>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace gradproof;
using catalog::PlainProblem;

namespace {

namespace utf = boost::unit_test;

std::vector<std::int64_t> dims_of(const Shape& s) { return std::vector<std::int64_t>(s.begin(), s.end()); }

// The last `n` axes of x (normalized_shape, or the axes reduced over).
std::vector<std::int64_t> trailing(const at::Tensor& x, std::int64_t n) {
  std::vector<std::int64_t> out;
  for (std::int64_t d = x.dim() - n; d < x.dim(); ++d) out.push_back(d);
  return out;
}

// ---- The torch forward of every op: y from the inputs (x first, then the parameters). ---------
at::Tensor to_torch(const TensorD& t);

// The class-index or class-probability target of a loss (its constant "target").
at::Tensor target_of(const PlainProblem& p) {
  const at::Tensor t = to_torch(p.constant("target"));
  return p.option("probabilities") != 0 ? t : t.to(at::kLong);
}
// The class weights of a cross-entropy or NLL problem, or None when it has none.
c10::optional<at::Tensor> weight_of(const PlainProblem& p) {
  if (p.option("weighted") == 0) return c10::nullopt;
  return to_torch(p.constant("weight"));
}

// A constant of the problem (weight, pos_weight) as a torch tensor, or an undefined one (None).
c10::optional<at::Tensor> constant_or_none(const PlainProblem& p, const std::string& name) {
  for (const auto& [k, v] : p.constants)
    if (k == name) return to_torch(v);
  return c10::nullopt;
}

using TorchForward = std::function<at::Tensor(const std::vector<at::Tensor>&, const PlainProblem&)>;

// ---- The networks (catalog/networks.cpp): θ, one flat vector, cut into the layers' parameters
// in state-dict order, and the network composed of libtorch's functions. ------------------------
struct Slicer {
  const at::Tensor& theta;
  std::int64_t at = 0;
  at::Tensor take(std::vector<std::int64_t> shape) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    at::Tensor t = theta.narrow(0, at, n).view(shape);
    at += n;
    return t;
  }
};

at::Tensor torch_network(const std::string& net, const std::vector<at::Tensor>& in, const PlainProblem& p) {
  const auto H = static_cast<std::int64_t>(p.option("hidden")), O = static_cast<std::int64_t>(p.option("out"));
  const std::int64_t I = in[0].size(1);
  const double eps = p.option("eps");
  Slicer s{in[1]};
  const at::Tensor w1 = s.take({H, I}), b1 = s.take({H});
  at::Tensor h;
  if (net == "mlp_bn") {  // relu(batch_norm(a))
    const at::Tensor g = s.take({H}), b = s.take({H});
    h = at::relu(at::batch_norm(at::linear(in[0], w1, b1), g, b, {}, {}, true, 0.1, eps, false));
  } else if (net == "mlp_ln") {  // gelu(layer_norm(a)), the erf form
    const at::Tensor g = s.take({H}), b = s.take({H});
    h = at::gelu(at::layer_norm(at::linear(in[0], w1, b1), {H}, g, b, eps, false), "none");
  } else {  // resmlp: a + linear(relu(layer_norm(a)))
    const at::Tensor g = s.take({H}), b = s.take({H}), wr = s.take({H, H}), br = s.take({H});
    const at::Tensor a = at::linear(in[0], w1, b1);
    h = a + at::linear(at::relu(at::layer_norm(a, {H}, g, b, eps, false)), wr, br);
  }
  const at::Tensor w2 = s.take({O, H}), b2 = s.take({O});
  // nn.CrossEntropyLoss(): mean over the batch, class-index targets (a constant of the problem)
  return at::cross_entropy_loss(at::linear(h, w2, b2), to_torch(p.constant("target")).to(at::kLong));
}

const std::map<std::string, TorchForward>& torch_forwards() {
  static const std::map<std::string, TorchForward> f = {
      {"softmax", [](const auto& in, const PlainProblem& p) {
         return at::softmax(in[0], static_cast<std::int64_t>(p.option("dim")));
       }},
      {"log_softmax", [](const auto& in, const PlainProblem& p) {
         return at::log_softmax(in[0], static_cast<std::int64_t>(p.option("dim")));
       }},
      // reduction: at::Reduction's values (none 0, mean 1, sum 2), as gradproof's ops::Reduction.
      {"nll_loss", [](const auto& in, const PlainProblem& p) {
         return at::nll_loss_nd(in[0], target_of(p), weight_of(p), static_cast<std::int64_t>(p.option("reduction")),
                                static_cast<std::int64_t>(p.option("ignore_index")));
       }},
      {"cross_entropy", [](const auto& in, const PlainProblem& p) {
         return at::cross_entropy_loss(in[0], target_of(p), weight_of(p), static_cast<std::int64_t>(p.option("reduction")),
                                       static_cast<std::int64_t>(p.option("ignore_index")), p.option("label_smoothing"));
       }},
      // libtorch 1.13 has no rms_norm (added in 2.4): the forward composed of its primitives.
      {"rms", [](const auto& in, const PlainProblem& p) {
         const auto axes = trailing(in[0], static_cast<std::int64_t>(p.option("normalized_ndim")));
         return in[0] * at::rsqrt((in[0] * in[0]).mean(axes, true) + p.option("eps")) * in[1];
       }},
      {"linear", [](const auto& in, const PlainProblem&) { return at::linear(in[0], in[1], in[2]); }},
      {"relu", [](const auto& in, const PlainProblem&) { return at::relu(in[0]); }},
      {"sigmoid", [](const auto& in, const PlainProblem&) { return at::sigmoid(in[0]); }},
      {"tanh", [](const auto& in, const PlainProblem&) { return at::tanh(in[0]); }},
      {"matmul", [](const auto& in, const PlainProblem&) { return at::matmul(in[0], in[1]); }},
      // The losses: input and target are differentiable; weight and pos_weight are constants.
      {"mse_loss", [](const auto& in, const PlainProblem& p) {
         return at::mse_loss(in[0], in[1], static_cast<std::int64_t>(p.option("reduction")));
       }},
      {"bce_with_logits", [](const auto& in, const PlainProblem& p) {
         return at::binary_cross_entropy_with_logits(in[0], in[1], constant_or_none(p, "weight"),
                                                     constant_or_none(p, "pos_weight"),
                                                     static_cast<std::int64_t>(p.option("reduction")));
       }},
      // libtorch's generator differs from gradproof's: the same mask, a constant, and PyTorch's scale.
      {"dropout", [](const auto& in, const PlainProblem& p) {
         const double q = p.option("p");
         return in[0] * to_torch(p.constant("mask")) * (q == 1 ? 0.0 : 1.0 / (1.0 - q));
       }},
      {"huber_loss", [](const auto& in, const PlainProblem& p) {
         return at::huber_loss(in[0], in[1], static_cast<std::int64_t>(p.option("reduction")), p.option("delta"));
       }},
      {"smooth_l1_loss", [](const auto& in, const PlainProblem& p) {
         return at::smooth_l1_loss(in[0], in[1], static_cast<std::int64_t>(p.option("reduction")), p.option("beta"));
       }},
      {"leaky_relu", [](const auto& in, const PlainProblem& p) { return at::leaky_relu(in[0], p.option("negative_slope")); }},
      {"elu", [](const auto& in, const PlainProblem& p) { return at::elu(in[0], p.option("alpha")); }},
      {"gelu", [](const auto& in, const PlainProblem& p) {
         return at::gelu(in[0], p.option("approximate_tanh") != 0 ? "tanh" : "none");
       }},
      {"silu", [](const auto& in, const PlainProblem&) { return at::silu(in[0]); }},
      {"softplus", [](const auto& in, const PlainProblem& p) {
         return at::softplus(in[0], p.option("beta"), p.option("threshold"));
       }},
      // The indices are a constant of the problem (exact doubles), as int64 for at::embedding.
      {"embedding", [](const auto& in, const PlainProblem& p) {
         const TensorD& idx = p.constant("indices");
         std::vector<std::int64_t> v(idx.data(), idx.data() + idx.size());
         const at::Tensor indices =
             at::from_blob(v.data(), dims_of(idx.shape()), at::TensorOptions().dtype(at::kLong)).clone();
         return at::embedding(in[0], indices, static_cast<std::int64_t>(p.option("padding_idx")));
       }},
      {"bn", [](const auto& in, const PlainProblem& p) {
         return at::batch_norm(in[0], in[1], in[2], {}, {}, true, 0.1, p.option("eps"), false);
       }},
      {"ln", [](const auto& in, const PlainProblem& p) {
         const auto axes = trailing(in[0], static_cast<std::int64_t>(p.option("normalized_ndim")));
         std::vector<std::int64_t> shape;
         for (auto d : axes) shape.push_back(in[0].size(d));
         return at::layer_norm(in[0], shape, in[1], in[2], p.option("eps"), false);
       }},
      {"gn", [](const auto& in, const PlainProblem& p) {
         return at::group_norm(in[0], static_cast<std::int64_t>(p.option("num_groups")), in[1], in[2],
                               p.option("eps"), false);
       }},
      {"in", [](const auto& in, const PlainProblem& p) {
         return at::instance_norm(in[0], in[1], in[2], {}, {}, true, 0.1, p.option("eps"), false);
       }},
      {"mlp_bn", [](const auto& in, const PlainProblem& p) { return torch_network("mlp_bn", in, p); }},
      {"mlp_ln", [](const auto& in, const PlainProblem& p) { return torch_network("mlp_ln", in, p); }},
      {"resmlp", [](const auto& in, const PlainProblem& p) { return torch_network("resmlp", in, p); }},
  };
  return f;
}

// Ops of the list with no PyTorch counterpart, and why.
const std::map<std::string, std::string>& no_torch_counterpart() {
  static const std::map<std::string, std::string> m = {
      {"norm", "the general normalization over a set is gradproof's own core, not a PyTorch function; "
               "its members bn, ln, gn, in are compared"}};
  return m;
}

// ---- Interim problems of the ops not yet declared through the harness ------------------------
// The shapes of their catalog's Jacobian and projection cases (catalog/batchnorm.cpp,
// catalog/normalization.cpp), inputs sampled as there (float-representable values), our
// gradients from the public API. The scales of the terms, until the declarations give theirs:
// dx: max |γ|·|w|·(1/σ) (each term of dx = (1/σ)(g − mean g − x̂ mean(g x̂)), g = γ dy, is of that
// size or smaller; the values cancel, so max |dx| is not the scale); dγ: Σ |w x̂|, dβ: Σ |w| over
// each parameter's elements.
struct Interim {
  std::vector<TensorD> grads;
  double invstd = 0;  // the largest 1/σ of the forward
  TensorD y;
};

template <class Fwd, class Bwd, class ParamOf>
PlainProblem interim_problem(const std::string& op, const std::string& describe, const Shape& shape, const Shape& pshape,
                             std::vector<std::pair<std::string, double>> options, std::uint64_t seed, const Fwd& fwd,
                             const Bwd& bwd, const ParamOf& param_of) {
  catalog::support::Rng rng(seed);
  PlainProblem p;
  p.op = op;
  p.describe = describe;
  p.names = {"x", "gamma", "beta"};
  TensorD x = rng.normal_tensor(shape), g(pshape), b(pshape);
  for (Index i = 0; i < x.size(); ++i) x[i] = rng.normal(0.5, 1.5);
  for (Index k = 0; k < g.size(); ++k) g[k] = rng.signed_uniform(0.5, 1.5), b[k] = rng.normal();
  p.inputs = {x, g, b};
  p.options = std::move(options);
  p.w = rng.normal_tensor(shape);
  Interim st = bwd(p.inputs, p.w, true), fu = bwd(p.inputs, p.w, false);
  p.staged = std::move(st.grads);
  p.fused = std::move(fu.grads);
  double gmax = 0, wmax = 0;
  for (Index k = 0; k < g.size(); ++k) gmax = std::max(gmax, std::abs(g[k]));
  Eigen::VectorXd dg = Eigen::VectorXd::Zero(g.size()), db = dg;
  for (Index i = 0; i < x.size(); ++i) {
    wmax = std::max(wmax, std::abs(p.w[i]));
    const Index j = param_of(i);
    dg[j] += std::abs(p.w[i] * (st.y[i] - b[j]) / g[j]);
    db[j] += std::abs(p.w[i]);
  }
  p.scale = {gmax * wmax * st.invstd, dg.maxCoeff(), db.maxCoeff()};
  for (std::size_t k = 0; k < 3; ++k) p.exact.push_back(harness::exact_gradient(fwd, p.inputs, k, p.w));
  return p;
}

// Parameter of element i: its channel (bn, gn, in) or its position in normalized_shape (ln).
std::function<Index(Index)> channel_of(const Shape& s) {
  Index L = 1;
  for (std::size_t d = 2; d < s.size(); ++d) L *= s[d];
  const Index C = s[1];
  return [L, C](Index i) { return (i / L) % C; };
}

template <class G, class F>
Interim three(G g, const F& f) {
  return {{std::move(g.dx), std::move(g.dgamma), std::move(g.dbeta)}, f.cache.invstd.flat().maxCoeff(), f.y};
}

std::vector<PlainProblem> interim(const std::string& op) {
  using namespace ops;
  std::vector<PlainProblem> out;
  const double eps = 1e-5;
  std::uint64_t seed = 12000;
  if (op == "bn") {
    for (const Shape& s : std::vector<Shape>{{4, 3}, {3, 2, 5}, {2, 3, 3, 2}, {5, 1, 3}, {2, 2}, {1, 2, 2, 1},
                                            {8, 4, 16, 16}, {1, 2, 32, 48}, {16, 3, 37}}) {
      const auto fwd = [eps](const auto& in) {
        using S = std::decay_t<decltype(in[0][0])>;
        return batchnorm_forward_train<S>(in[0], &in[1], &in[2], nullptr, {eps, 0.1}).y;
      };
      const auto bwd = [eps](const std::vector<TensorD>& in, const TensorD& w, bool staged) {
        const auto f = batchnorm_forward_train<double>(in[0], &in[1], &in[2], nullptr, {eps, 0.1});
        return three(staged ? batchnorm_backward_staged(w, in[0], &in[1], f.cache) : batchnorm_backward(w, in[0], &in[1], f.cache), f);
      };
      out.push_back(interim_problem(op, "training mode, batch statistics", s, {s[1]}, {{"eps", eps}}, ++seed, fwd, bwd, channel_of(s)));
    }
  } else if (op == "ln") {
    for (const auto& [s, a] : std::vector<std::pair<Shape, Index>>{{{4, 6}, 1}, {{3, 2, 5}, 2}, {{2, 3, 2, 2}, 3}, {{2, 2}, 1},
                                                                    {{2, 3, 4}, 1}, {{2, 3}, 2}, {{4, 1}, 1}, {{16, 128}, 1},
                                                                    {{4, 8, 32}, 2}, {{2, 4, 8, 8}, 3}}) {
      const Shape ns(s.end() - a, s.end());
      const auto fwd = [ns, eps](const auto& in) {
        using S = std::decay_t<decltype(in[0][0])>;
        return layernorm_forward<S>(in[0], &in[1], &in[2], {ns, eps}).y;
      };
      const auto bwd = [ns, eps](const std::vector<TensorD>& in, const TensorD& w, bool staged) {
        const auto f = layernorm_forward<double>(in[0], &in[1], &in[2], {ns, eps});
        return three(staged ? layernorm_backward_staged(w, in[0], &in[1], f.cache) : layernorm_backward(w, in[0], &in[1], f.cache), f);
      };
      out.push_back(interim_problem(op, "normalized_shape " + to_string(ns), s, ns,
                                    {{"normalized_ndim", static_cast<double>(a)}, {"eps", eps}}, ++seed, fwd, bwd,
                                    [P = numel(ns)](Index i) { return i % P; }));
    }
  } else if (op == "gn") {
    for (const auto& [s, G] : std::vector<std::pair<Shape, Index>>{{{4, 6}, 3}, {{3, 4, 5}, 2}, {{2, 6, 2, 2}, 3}, {{2, 4, 3}, 1},
                                                                    {{3, 4, 2}, 4}, {{1, 4, 2, 2}, 2}, {{2, 3}, 3}, {{4, 8, 8, 8}, 4},
                                                                    {{2, 6, 32}, 2}, {{1, 16, 16, 16}, 8}}) {
      const auto fwd = [G, eps](const auto& in) {
        using S = std::decay_t<decltype(in[0][0])>;
        return groupnorm_forward<S>(in[0], &in[1], &in[2], {G, eps}).y;
      };
      const auto bwd = [G, eps](const std::vector<TensorD>& in, const TensorD& w, bool staged) {
        const auto f = groupnorm_forward<double>(in[0], &in[1], &in[2], {G, eps});
        return three(staged ? groupnorm_backward_staged(w, in[0], &in[1], f.cache) : groupnorm_backward(w, in[0], &in[1], f.cache), f);
      };
      out.push_back(interim_problem(op, "num_groups " + std::to_string(G), s, {s[1]},
                                    {{"num_groups", static_cast<double>(G)}, {"eps", eps}}, ++seed, fwd, bwd, channel_of(s)));
    }
  } else if (op == "in") {
    for (const Shape& s : std::vector<Shape>{{3, 2, 5}, {2, 3, 2, 2}, {4, 1, 3}, {2, 2, 2}, {1, 3, 2, 3},
                                            {8, 4, 16, 16}, {1, 2, 32, 48}, {16, 3, 37}}) {
      const auto fwd = [eps](const auto& in) {
        using S = std::decay_t<decltype(in[0][0])>;
        return instancenorm_forward_train<S>(in[0], &in[1], &in[2], nullptr, {eps, 0.1}).y;
      };
      const auto bwd = [eps](const std::vector<TensorD>& in, const TensorD& w, bool staged) {
        const auto f = instancenorm_forward_train<double>(in[0], &in[1], &in[2], nullptr, {eps, 0.1});
        return three(staged ? instancenorm_backward_staged(w, in[0], &in[1], f.cache)
                            : instancenorm_backward(w, in[0], &in[1], f.cache), f);
      };
      out.push_back(interim_problem(op, "instance statistics, training mode", s, {s[1]}, {{"eps", eps}}, ++seed, fwd, bwd,
                                    channel_of(s)));
    }
  }
  return out;
}

// The inputs of `op`: its declaration's, else those of the interim ones.
std::vector<std::string> input_names(const std::string& op) {
  for (const auto& pp : catalog::registry().plain)
    if (pp.op == op) return pp.inputs;
  return {"x", "gamma", "beta"};
}

// The problems of `op`: its declaration's, else the interim ones.
std::vector<PlainProblem> problems_of(const std::string& op) {
  for (const auto& pp : catalog::registry().plain)
    if (pp.op == op) return pp.make();
  return interim(op);
}

// ---- The comparison -----------------------------------------------------------------------------
at::Tensor to_torch(const TensorD& t) {
  return at::from_blob(const_cast<double*>(t.data()), dims_of(t.shape()), at::TensorOptions().dtype(at::kDouble)).clone();
}

Eigen::VectorXd flat(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return Eigen::Map<const Eigen::VectorXd>(c.data_ptr<double>(), c.numel());
}

// libtorch's gradients of L = <w, y> in every input.
std::vector<Eigen::VectorXd> torch_gradients(const PlainProblem& p, const TorchForward& fwd) {
  std::vector<at::Tensor> in;
  for (const auto& t : p.inputs) in.push_back(to_torch(t).set_requires_grad(true));
  const at::Tensor loss = (fwd(in, p) * to_torch(p.w)).sum();
  const auto grads = torch::autograd::grad({loss}, in);
  std::vector<Eigen::VectorXd> out;
  for (const auto& g : grads) out.push_back(flat(g));
  return out;
}

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(2);
  s << v;
  return s.str();
}

// Rows of input `k`, pass `staged`, for one problem: gradproof against libtorch, and gradproof
// against the long-double gradient with libtorch's error against it in the note.
void rows_of(std::vector<check::ResultRow>& rows, const std::string& formula, const std::string& test,
             const PlainProblem& p, std::size_t k, bool staged, const Eigen::VectorXd& theirs) {
  const Eigen::VectorXd ours = catalog::support::as_f64(staged ? p.staged[k] : p.fused[k]);
  const Eigen::VectorXd& exact = p.exact[k];
  const auto vs_torch = check::compare(ours, theirs, check::libtorch_policy(p.scale[k]));
  const auto vs_exact = check::compare(ours, exact, check::tolerance_policy("float64", check::Oracle::complex_step, p.scale[k]));
  const double ours_err = (ours - exact).cwiseAbs().maxCoeff(), theirs_err = (theirs - exact).cwiseAbs().maxCoeff();
  const std::string what = "gradient of L = <w, y> in " + p.names[k] + " (" + (staged ? "staged" : "fused") +
                           " backward, " + p.describe + ")";
  const Shape& shape = p.inputs[0].shape();
  check::ResultRow a{formula, test, "libtorch", "float64", "oracle", shape};
  check::fill(a, vs_torch, p.inputs[k].shape());
  // Beyond the policy, the long-double gradient decides.
  a.passed = vs_torch.passed || (vs_exact.passed && ours_err <= theirs_err);
  a.note = what + " against libtorch 1.13's float64 autograd" +
           (vs_torch.passed ? "" : "; they differ beyond the policy and the long-double gradient decides");
  rows.push_back(a);
  const char* closer = ours_err < theirs_err ? "gradproof closer" : ours_err > theirs_err ? "libtorch closer" : "equally close";
  check::ResultRow b{formula, test, "long_double", "float64", "oracle", shape};
  check::fill(b, vs_exact, p.inputs[k].shape());
  b.note = what + " against its long-double complex-step recomputation; largest error ÷ scale of the terms: gradproof " +
           fmt(ours_err / p.scale[k]) + ", libtorch " + fmt(theirs_err / p.scale[k]) + " (" + closer + ")";
  rows.push_back(b);
}

void record_and_check(const std::vector<check::ResultRow>& rows) {
  BOOST_TEST_REQUIRE(!rows.empty(), "no result rows");
  for (const auto& r : rows) {
    testing::record(r);
    BOOST_TEST(r.passed, check::describe(r));
  }
}

// ---- The derivative used at a kink (derivations/activations.md): ours against libtorch's ---------
// Both passes at x₀, dy = 1, against libtorch's autograd there, under libtorch_policy() (scale 1):
// the same branch, up to rounding (softplus's σ(τ) is 1/(1 + e^{−τ}) here, z/(z + 1) in PyTorch).
template <class Config>
void kink_rows(std::vector<check::ResultRow>& rows, const std::string& op, const std::string& test, const Config& cfg,
               double x0, std::vector<std::pair<std::string, double>> options) {
  const TensorD x({1}, x0), dy({1}, 1.0);
  const auto f = ops::activation_forward(x, cfg);
  PlainProblem p;
  p.op = op;
  p.inputs = {x};
  p.w = dy;
  p.options = std::move(options);
  const double theirs = torch_gradients(p, torch_forwards().at(op))[0][0];
  for (const bool staged : {true, false}) {
    const double ours = staged ? ops::activation_backward_staged(dy, x, f.cache).dx[0]
                               : ops::activation_backward(dy, Config::saves_output ? f.y : x, f.cache).dx[0];
    check::ResultRow r{op + (staged ? ".dx" : ".dx_fused"), test, "libtorch", "float64", "kink", {1}};
    r.analytic = ours;
    r.numeric = theirs;
    r.max_abs_err = std::abs(ours - theirs);
    r.rel_defined = false;
    const check::Tolerance tol = check::libtorch_policy(1.0);
    r.atol = tol.atol;
    r.rtol = tol.rtol;
    r.passed = r.max_abs_err <= tol.atol + tol.rtol * std::abs(theirs);
    std::ostringstream note;
    note.precision(17);
    note << (staged ? "staged" : "fused") << " derivative at the kink x = " << x0 << ": " << ours
         << "; libtorch 1.13's autograd: " << theirs << " (must agree within 1e-12: the same branch)";
    r.note = note.str();
    rows.push_back(r);
  }
}

const std::map<std::string, std::function<void(std::vector<check::ResultRow>&, const std::string&)>>& kinks() {
  static const std::map<std::string, std::function<void(std::vector<check::ResultRow>&, const std::string&)>> m = {
      {"relu", [](auto& rows, const std::string& t) { kink_rows(rows, "relu", t, ops::ReluConfig{}, 0.0, {}); }},
      {"leaky_relu",
       [](auto& rows, const std::string& t) {
         for (double s : {0.01, 0.2}) kink_rows(rows, "leaky_relu", t, ops::LeakyReluConfig{s}, 0.0, {{"negative_slope", s}});
       }},
      {"elu",
       [](auto& rows, const std::string& t) {
         for (double a : {1.0, 0.5}) kink_rows(rows, "elu", t, ops::EluConfig{a}, 0.0, {{"alpha", a}});
       }},
      {"softplus", [](auto& rows, const std::string& t) {
         kink_rows(rows, "softplus", t, ops::SoftplusConfig{1, 20}, 20.0, {{"beta", 1}, {"threshold", 20}});
         kink_rows(rows, "softplus", t, ops::SoftplusConfig{2, 5}, 2.5, {{"beta", 2}, {"threshold", 5}});
       }}};
  return m;
}

// ---- 20 steps of SGD, gradproof against libtorch (derivations/backprop.md) ----------------------
// The network of each catalog entry at a realistic size (its first projection case: the same
// initial θ, x and targets as the oracle rows), float64, plain SGD θ ← θ − lr·∇L with lr = 0.1 on
// both sides, each side stepping with its own gradients: at every step the loss and every
// parameter's gradient agree within libtorch_policy() with the scale max |libtorch's values| of
// that tensor: |ours − theirs| ≤ 1e-12 (max |theirs| + |theirs|), i.e. 1e-12 relative. A tensor
// whose gradient is derived to be 0 (`zero`: the bias of the linear layer before batch norm, whose
// output does not depend on a shift of its input) has only rounding on both sides; its scale is the
// largest entry of the whole network's gradient at that step.
template <class Net>
void sgd_rows(std::vector<check::ResultRow>& rows, const std::string& op, const std::string& test, const PlainProblem& p,
              bool staged, const std::vector<std::string>& zero = {}) {
  const Index I = p.inputs[0].shape()[1];
  const auto H = static_cast<Index>(p.option("hidden")), O = static_cast<Index>(p.option("out"));
  const TensorD& x = p.inputs[0];
  const TensorD& tf = p.constant("target");
  Tensor<Index> target(tf.shape());
  for (Index i = 0; i < tf.size(); ++i) target[i] = static_cast<Index>(tf[i]);
  Net net(I, H, O);
  nn::set_parameters(net, p.inputs[1]);
  std::vector<std::string> names;
  std::vector<at::Tensor> leaves;
  net.for_each_parameter([&](auto& q) {
    names.push_back(q.name);
    leaves.push_back(to_torch(q.value).set_requires_grad(true));
  });
  const double lr = 0.1;
  const int steps = 20;
  const at::Tensor tx = to_torch(x);
  // Worst over the steps, per quantity (0: the loss; 1 + j: parameter j's gradient).
  std::vector<double> worst(names.size() + 1, 0.0), worst_rel(names.size() + 1, 0.0);
  std::vector<int> worst_step(names.size() + 1, 0);
  std::vector<bool> ok(names.size() + 1, true);
  double first_loss = 0, last_loss = 0;
  const nn::Backward b{staged ? nn::Pass::staged : nn::Pass::fused};
  const auto note = [&](std::size_t q, double err, double scale, bool pass, int step) {
    worst_rel[q] = std::max(worst_rel[q], err / scale);
    if (err >= worst[q]) worst[q] = err, worst_step[q] = step;
    ok[q] = ok[q] && pass;
  };
  for (int step = 0; step < steps; ++step) {
    nn::zero_grad(net);
    const auto out = net.forward(x, target);
    net.backward(TensorD({}, 1.0), out.cache, b);
    std::vector<at::Tensor> flat_leaves;
    for (const auto& l : leaves) flat_leaves.push_back(l.reshape({-1}));
    const at::Tensor loss = torch_network(op, {tx, at::cat(flat_leaves)}, p);
    const auto grads = torch::autograd::grad({loss}, leaves);
    const double theirs_loss = loss.item<double>();
    if (step == 0) first_loss = theirs_loss;
    last_loss = theirs_loss;
    {
      const Eigen::VectorXd a = Eigen::VectorXd::Constant(1, out.loss[0]), n = Eigen::VectorXd::Constant(1, theirs_loss);
      const auto c = check::compare(a, n, check::libtorch_policy(std::abs(theirs_loss)));
      note(0, c.max_abs_err, std::abs(theirs_loss), c.passed, step);
    }
    double net_scale = 0;
    for (const auto& g : grads) net_scale = std::max(net_scale, flat(g).cwiseAbs().maxCoeff());
    std::size_t j = 0;
    net.for_each_parameter([&](auto& q) {
      const Eigen::VectorXd ours = catalog::support::as_f64(q.grad), theirs = flat(grads[j]);
      const bool derived_zero = std::find(zero.begin(), zero.end(), q.name) != zero.end();
      const double scale = derived_zero ? net_scale : theirs.cwiseAbs().maxCoeff();
      const auto c = check::compare(ours, theirs, check::libtorch_policy(scale));
      note(j + 1, c.max_abs_err, scale, c.passed, step);
      q.value.flat() -= lr * q.grad.flat();  // gradproof's step, with its own gradient
      leaves[j] = (leaves[j].detach() - lr * grads[j]).set_requires_grad(true);  // libtorch's
      ++j;
    });
  }
  const std::string pass = staged ? "staged" : "fused";
  for (std::size_t q = 0; q < worst.size(); ++q) {
    check::ResultRow r{op + (q == 0 ? ".forward" : ".dparams"), test, "libtorch", "float64", "oracle", p.inputs[0].shape()};
    r.max_abs_err = worst[q];
    r.max_rel_err = worst_rel[q];
    r.atol = 1e-12;
    r.rtol = 1e-12;
    r.passed = ok[q];
    std::ostringstream s;
    s.precision(3);
    const bool derived_zero = q > 0 && std::find(zero.begin(), zero.end(), names[q - 1]) != zero.end();
    s << (q == 0 ? std::string("the loss") : "the gradient of " + names[q - 1])
      << (derived_zero ? " (derived to be 0: the scale is the largest entry of the network's gradient)" : "")
      << " at each of " << steps
      << " SGD steps (lr " << lr << ", " << pass << " backward, " << p.describe
      << ") against libtorch 1.13's float64 autograd of the same network; largest error ÷ scale "
      << worst_rel[q] << " at step " << worst_step[q] << "; libtorch's loss went " << first_loss << " → "
      << last_loss;
    r.note = s.str();
    rows.push_back(r);
  }
}

using Training = std::function<void(std::vector<check::ResultRow>&, const std::string&, const PlainProblem&)>;
const std::map<std::string, Training>& trainings() {
  static const std::map<std::string, Training> m = {
      {"mlp_bn",
       [](auto& rows, const std::string& t, const PlainProblem& p) {
         for (bool st : {false, true}) sgd_rows<nn::MlpBn<double>>(rows, "mlp_bn", t, p, st, {"fc1.bias"});
       }},
      {"mlp_ln",
       [](auto& rows, const std::string& t, const PlainProblem& p) {
         for (bool st : {false, true}) sgd_rows<nn::MlpLn<double>>(rows, "mlp_ln", t, p, st);
       }},
      {"resmlp", [](auto& rows, const std::string& t, const PlainProblem& p) {
         for (bool st : {false, true}) sgd_rows<nn::ResMlp<double>>(rows, "resmlp", t, p, st);
       }}};
  return m;
}

// `<op>/libtorch/staged_dx_matches_libtorch` and `fused_dx_...` (x), `d<name>_matches_libtorch`
// (each parameter, both passes).
void register_op(const std::string& op) {
  const auto it = torch_forwards().find(op);
  auto* top = new utf::test_suite(op, __FILE__, __LINE__);
  utf::framework::master_test_suite().add(top);
  auto* suite = new utf::test_suite("libtorch", __FILE__, __LINE__);
  top->add(suite);
  if (it == torch_forwards().end()) {
    suite->add(utf::make_test_case([op] { BOOST_ERROR("no torch forward for op '" << op << "' in torch_forwards()"); },
                                   "has_a_torch_forward", __FILE__, __LINE__));
    return;
  }
  // One run of the problems and of libtorch per op, shared by its tests.
  struct Shared {
    std::vector<PlainProblem> problems;
    std::vector<std::vector<Eigen::VectorXd>> torch;
  };
  auto shared = std::make_shared<Shared>();
  const auto get = [shared, op, fwd = it->second]() -> const Shared& {
    if (shared->problems.empty()) {
      shared->problems = problems_of(op);
      for (const auto& p : shared->problems) shared->torch.push_back(torch_gradients(p, fwd));
    }
    return *shared;
  };
  const std::vector<std::string> names = input_names(op);
  for (std::size_t k = 0; k < names.size(); ++k) {
    for (int f = 0; f < (k == 0 ? 2 : 1); ++f) {
      const bool staged_only = k == 0 && f == 0, fused_only = k == 0 && f == 1;
      // The first input's gradient has a staged and a fused formula (`dx`, `dx_fused`; `dweight` for
      // embedding), each parameter's one for both passes.
      const std::string g = "d" + names[k];
      const std::string formula = op + "." + (k == 0 && fused_only ? g + "_fused" : g);
      const std::string leaf = k == 0 ? (fused_only ? "fused_" : "staged_") + g + "_matches_libtorch"
                                      : g + "_matches_libtorch";
      const std::string test = op + "/libtorch/" + leaf;
      auto* tc = utf::make_test_case(
          [=] {
            const Shared& s = get();
            std::vector<check::ResultRow> rows;
            for (std::size_t i = 0; i < s.problems.size(); ++i) {
              if (!staged_only) rows_of(rows, formula, test, s.problems[i], k, false, s.torch[i][k]);
              if (!fused_only) rows_of(rows, formula, test, s.problems[i], k, true, s.torch[i][k]);
            }
            record_and_check(rows);
          },
          leaf, __FILE__, __LINE__);
      tc->add_label(formula);
      suite->add(tc);
    }
  }
  if (const auto k = kinks().find(op); k != kinks().end()) {
    const std::string test = op + "/libtorch/kink_derivative_matches_libtorch";
    auto* tc = utf::make_test_case(
        [fn = k->second, test] {
          std::vector<check::ResultRow> rows;
          fn(rows, test);
          record_and_check(rows);
        },
        "kink_derivative_matches_libtorch", __FILE__, __LINE__);
    tc->add_label(op + ".dx");
    suite->add(tc);
  }
  if (const auto t = trainings().find(op); t != trainings().end()) {
    const std::string test = op + "/libtorch/sgd_20_steps_match_libtorch";
    auto* tc = utf::make_test_case(
        [fn = t->second, test, get] {
          std::vector<check::ResultRow> rows;
          // The problems are the Jacobian cases, then the projection cases: [2] is (32, 16).
          fn(rows, test, get().problems.at(2));
          record_and_check(rows);
        },
        "sgd_20_steps_match_libtorch", __FILE__, __LINE__);
    tc->add_label(op + ".dparams");
    tc->add_label(op + ".forward");
    suite->add(tc);
  }
}

bool init() {
  for (const auto& e : catalog::ops())
    if (!no_torch_counterpart().count(e.id)) register_op(e.id);
  return true;
}

}  // namespace

int main(int argc, char* argv[]) {
  const int status = utf::unit_test_main(&init, argc, argv);
  if (const char* part = std::getenv("GRADPROOF_RESULTS_PART")) testing::write_part(part);
  return status;
}
