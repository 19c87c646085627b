// The declarations of the networks of derivations/backprop.md (mlp_bn, mlp_ln, resmlp): each
// network, assembled from the modules of nn/module.hpp and ending in its cross-entropy loss, is
// declared through the harness as one op L = net(x; θ, t) whose inputs are x and the flat vector θ
// of all its parameters (nn::parameters() order); the class targets t are a constant. The harness
// then checks the network's dx and dθ against every oracle, staged = fused, and the negative
// controls at network level: a layer's term dropped inside the whole network.
//
// Kinks. relu (mlp_bn after batch norm, resmlp inside its block) is not differentiable at 0, and a
// central difference whose step crosses 0 sees a slope between 0 and 1. problem() therefore sets
// the bias β of the norm before each relu so that every pre-activation of the problem is at least
// kMargin from 0 (the norm's output without β, per feature, has a gap of width ≥ 2·kMargin, and
// −β is put in its middle); check `<op>/sampling/pre_activations_keep_their_sign_under_every_step`
// measures that no step of the difference oracles moves a pre-activation across 0.
#include "gradproof/check/oracles.hpp"
#include "gradproof/harness/checks.hpp"
#include "gradproof/nn/networks.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>

namespace gradproof::catalog {
namespace {

using namespace support;
using check::ResultRow;
using harness::Pass;

/// The ablation knobs of a network's staged backward (each maps to one layer's term scale).
struct NetTerms {
  double bn_dl_dmu = 1;    ///< batch norm's ∂L/∂μ path
  double bn_dvar_dmu = 1;  ///< batch norm's ∂σ²/∂μ (derived to be 0)
  double ln_dl_dmu = 1;    ///< layer norm's ∂L/∂μ path
  double ln_dvar_dmu = 1;  ///< layer norm's ∂σ²/∂μ (derived to be 0)
  double fan_out = 1;      ///< the residual's skip branch: one of the two uses of its input
  double ce_dlse = 1;      ///< the loss's log-sum-exp edge: the softmax term of the collapse
  double ce_dshift = 1;    ///< the loss's max shift (derived to be 0)
};

/// Every pre-activation of a relu is at least this far from 0 (see the top of this file).
constexpr double kMargin = 0.05;

/// \brief Sets `beta` so that `v + beta`, `v` `(N, H)` the norm's output without its bias, keeps
/// every value at least kMargin from 0: for each feature j, −β_j is put in the middle of a gap of
/// the sorted values v_{·j} of width ≥ 4·kMargin (the one nearest the median, so relu sees both
/// sides), else of the widest gap of width ≥ 2·kMargin, else 2·kMargin below the smallest value.
void place_relu_kinks(const TensorD& v, nn::Parameter<double>& beta) {
  const Index N = v.shape()[0], H = v.shape()[1];
  for (Index j = 0; j < H; ++j) {
    std::vector<double> col(static_cast<std::size_t>(N));
    for (Index n = 0; n < N; ++n) col[static_cast<std::size_t>(n)] = v[n * H + j] - beta.value[j];
    std::sort(col.begin(), col.end());
    double best = 0, best_width = 0;
    std::size_t best_rank = 0;
    bool found = false;
    for (std::size_t i = 0; i + 1 < col.size(); ++i) {
      const double width = col[i + 1] - col[i];
      const std::size_t rank = std::min(i + 1, col.size() - i - 1);  // values on the smaller side
      const bool wide = width >= 4 * kMargin;
      if ((wide && (!found || rank > best_rank || best_width < 4 * kMargin)) ||
          (!wide && width >= 2 * kMargin && best_width < 4 * kMargin && width > best_width)) {
        best = 0.5 * (col[i] + col[i + 1]);
        best_width = width;
        best_rank = rank;
        found = true;
      }
    }
    // No such gap (values packed tightly, as in a wide batch): the kink below them all, so the
    // feature is active on the whole batch, still kMargin away.
    if (!found) best = col.front() - 2 * kMargin;
    beta.value[j] = -best;
  }
}


// ---- The three networks: what is particular to each -----------------------------------------

// ---- The scales of the networks' dx and dθ: the magnitudes of the norm's terms ----------------
// A backward rounds every term of a sum, not only the sum; where the terms cancel, the error is
// set by their magnitudes. A norm's dx cancels by construction, and batch norm over a batch of 2
// is the extreme: x̂ = ±1 whatever x is, so ∂L/∂x is nearly 0 while the norm's terms are O(1). The
// fuzz target found there the float32 fused dx 6 times beyond a policy scaled by |J|ᵀ|dy|, and
// the float64 fused db₁ (exactly 0: Σₙ of a norm's dx) 1.08 times beyond its. So the scales
// (Network::dx_scale, param_scale) take the norm's terms, |γ| r (|g| + mean|g| + |x̂| mean|g x̂|)
// with g the gradient that reaches the norm's output, on through fc1's backward to x, W₁ and b₁.
// The layers above the norm are taken with their values (g is their exact VJP, as backward()
// forms it), fc1 below it with magnitudes (|dx| ≤ |da||W₁|, so the scale is never below |J|ᵀ|dy|).

// cross-entropy, mean over N: dz = dL (p − onehot(t)) / N.
TensorD ce_grad(const nn::CrossEntropyLoss<double>::Cache& c, double dL) {
  const Index N = c.logits.shape()[0], O = c.logits.shape()[1];
  TensorD g({N, O});
  for (Index n = 0; n < N; ++n) {
    double m = c.logits[n * O], sum = 0;
    for (Index o = 1; o < O; ++o) m = std::max(m, c.logits[n * O + o]);
    for (Index o = 0; o < O; ++o) sum += std::exp(c.logits[n * O + o] - m);
    for (Index o = 0; o < O; ++o)
      g[n * O + o] = dL * (std::exp(c.logits[n * O + o] - m) / sum - (o == c.target[n] ? 1 : 0)) /
                     static_cast<double>(N);
  }
  return g;
}
// linear y = x Wᵀ + b: dx = dy W, or with magnitudes |dy| |W|.
TensorD linear_back(const TensorD& G, const nn::Linear<double>& l, bool magnitudes) {
  const TensorD& W = l.weight.value;
  const Index N = G.shape()[0], O = W.shape()[0], I = W.shape()[1];
  TensorD g({N, I}, 0.0);
  for (Index n = 0; n < N; ++n)
    for (Index o = 0; o < O; ++o)
      for (Index i = 0; i < I; ++i)
        g[n * I + i] += magnitudes ? std::abs(G[n * O + o] * W[o * I + i]) : G[n * O + o] * W[o * I + i];
  return g;
}
// relu: dx = dy [x > 0].
TensorD relu_back(const TensorD& G, const TensorD& x) {
  TensorD g(G.shape());
  for (Index i = 0; i < g.size(); ++i) g[i] = x[i] > 0 ? G[i] : 0;
  return g;
}
// gelu (erf form): dx = dy (Φ(x) + x φ(x)).
TensorD gelu_back(const TensorD& G, const TensorD& x) {
  TensorD g(G.shape());
  for (Index i = 0; i < g.size(); ++i) {
    const double Phi = 0.5 * std::erfc(-x[i] / std::sqrt(2.0));
    const double phi = std::exp(-0.5 * x[i] * x[i]) / std::sqrt(2 * 3.14159265358979323846);
    g[i] = G[i] * (Phi + x[i] * phi);
  }
  return g;
}
// The magnitudes of a norm's dx terms over sets of M values (the columns of (N, H) for batch
// norm, the rows for layer norm): dx = γ r (g − mean(g) − x̂ mean(g x̂)), r = 1/√(σ² + ε), the three
// terms of the staged chain (∂L/∂x̂ r, the ∂L/∂μ path, the ∂L/∂σ² path).
TensorD norm_terms(const TensorD& G, const TensorD& x, const TensorD& mean, const TensorD& invstd,
                   const TensorD& gamma, bool columns) {
  const Index N = x.shape()[0], H = x.shape()[1];
  const Index sets = columns ? H : N, M = columns ? N : H;
  TensorD g(G.shape());
  for (Index s = 0; s < sets; ++s) {
    const auto at = [&](Index k) { return columns ? k * H + s : s * H + k; };
    double mg = 0, mgx = 0;
    for (Index k = 0; k < M; ++k) {
      mg += std::abs(G[at(k)]);
      mgx += std::abs(G[at(k)] * (x[at(k)] - mean[s]) * invstd[s]);
    }
    mg /= static_cast<double>(M);
    mgx /= static_cast<double>(M);
    for (Index k = 0; k < M; ++k) {
      const Index i = at(k);
      const double xhat = std::abs((x[i] - mean[s]) * invstd[s]);
      g[i] = std::abs(gamma[columns ? s : k]) * invstd[s] * (std::abs(G[i]) + mg + xhat * mgx);
    }
  }
  return g;
}

struct MlpBnNet {
  static constexpr const char* op = "mlp_bn";
  template <class S>
  using Net = nn::MlpBn<S>;
  static harness::Formulas formulas() {
    return {{"mlp_bn.forward",
             "MLP linear → batch norm → relu → linear → cross-entropy: L = CE(W₂ relu(BN(W₁x + b₁)) + b₂, t)"},
            {"mlp_bn.dx",
             "∂L/∂x of the MLP: the layers' VJPs in reverse order, ce → fc2 → relu → bn → fc1 (staged ops)"},
            {"mlp_bn.dx_fused", "∂L/∂x of the MLP with every layer's fused backward"},
            {"mlp_bn.dparams",
             "∂L/∂θ of every parameter (fc1, bn γ β, fc2), accumulated by the layers' backwards"},
            {"mlp_bn.bn_dl_dmu",
             "batch norm's ∂L/∂μ path inside the network (dropping it is caught)"},
            {"mlp_bn.bn_dvar_dmu",
             "batch norm's ∂σ²/∂μ = 0 inside the network (dropping it changes nothing)"},
            {"mlp_bn.ce_dlse",
             "the loss's log-sum-exp edge, the softmax term of the collapse p − onehot (wrong: caught)"},
            {"mlp_bn.ce_dshift",
             "the loss's max shift, derived to be 0 (dropping it changes nothing)"}};
  }
  static nn::Backward backward_of(Pass pass, const NetTerms& t) {
    //! [mlp_bn.dx_fused]
    nn::Backward b{pass == Pass::staged ? nn::Pass::staged
                                        : nn::Pass::fused};  // every layer's fused backward
    //! [mlp_bn.dx_fused]
    //! [mlp_bn.bn_dl_dmu]
    b.bn.dl_dmu = t.bn_dl_dmu;
    //! [mlp_bn.bn_dl_dmu]
    //! [mlp_bn.bn_dvar_dmu]
    b.bn.dvar_dmu = t.bn_dvar_dmu;
    //! [mlp_bn.bn_dvar_dmu]
    //! [mlp_bn.ce_dlse]
    b.ce.dlse = t.ce_dlse;
    //! [mlp_bn.ce_dlse]
    //! [mlp_bn.ce_dshift]
    b.ce.dshift = t.ce_dshift;
    //! [mlp_bn.ce_dshift]
    return b;
  }
  static harness::Ablation<NetTerms> ablation() {
    return {{"mlp_bn.bn_dl_dmu", &NetTerms::bn_dl_dmu},
            {"mlp_bn.bn_dvar_dmu", &NetTerms::bn_dvar_dmu, true},
            {"mlp_bn.ce_dlse", &NetTerms::ce_dlse},
            {"mlp_bn.ce_dshift", &NetTerms::ce_dshift, true}};
  }
  static std::string ablation_summary() {
    return "Inside the whole network, batch norm's ∂L/∂μ path dropped is caught (by dx and by "
           "fc1's\n"
           "gradients, which it reaches through fc1's backward); ∂σ²/∂μ, derived to be zero, "
           "changes nothing.\n"
           "The loss's softmax term replaced (dropped or negated) is caught; its max shift, zero, "
           "changes nothing.";
  }
  // The relu's pre-activation is batch norm's output: its β places the kinks.
  static nn::Parameter<double>* kink_bias(Net<double>& n) { return &n.bn.bias; }
  static const TensorD* kink_input(const Net<double>::Out& o) { return &o.cache.relu.x; }
  // ce → fc2 → relu → bn → fc1, as backward() runs them.
  static TensorD da_magnitude(const Net<double>& n, const Net<double>::Cache& c, double dL) {
    const TensorD dh = relu_back(linear_back(ce_grad(c.ce, dL), n.fc2, false), c.relu.x);
    return norm_terms(dh, c.bn.x, c.bn.op.mean, c.bn.op.invstd, n.bn.weight.value, true);
  }
};

struct MlpLnNet {
  static constexpr const char* op = "mlp_ln";
  template <class S>
  using Net = nn::MlpLn<S>;
  static harness::Formulas formulas() {
    return {{"mlp_ln.forward",
             "MLP linear → layer norm → gelu → linear → cross-entropy: L = CE(W₂ gelu(LN(W₁x + b₁)) + b₂, t)"},
            {"mlp_ln.dx",
             "∂L/∂x of the MLP: ce → fc2 → gelu → ln → fc1 in reverse order (staged ops)"},
            {"mlp_ln.dx_fused", "∂L/∂x of the MLP with every layer's fused backward"},
            {"mlp_ln.dparams", "∂L/∂θ of every parameter (fc1, ln γ β, fc2)"},
            {"mlp_ln.ln_dl_dmu",
             "layer norm's ∂L/∂μ path inside the network (dropping it is caught)"},
            {"mlp_ln.ln_dvar_dmu",
             "layer norm's ∂σ²/∂μ = 0 inside the network (dropping it changes nothing)"},
            {"mlp_ln.ce_dlse",
             "the loss's log-sum-exp edge, the softmax term of the collapse p − onehot (wrong: caught)"},
            {"mlp_ln.ce_dshift",
             "the loss's max shift, derived to be 0 (dropping it changes nothing)"}};
  }
  static nn::Backward backward_of(Pass pass, const NetTerms& t) {
    //! [mlp_ln.dx_fused]
    nn::Backward b{pass == Pass::staged ? nn::Pass::staged
                                        : nn::Pass::fused};  // every layer's fused backward
    //! [mlp_ln.dx_fused]
    //! [mlp_ln.ln_dl_dmu]
    b.norm.dl_dmu = t.ln_dl_dmu;
    //! [mlp_ln.ln_dl_dmu]
    //! [mlp_ln.ln_dvar_dmu]
    b.norm.dvar_dmu = t.ln_dvar_dmu;
    //! [mlp_ln.ln_dvar_dmu]
    //! [mlp_ln.ce_dlse]
    b.ce.dlse = t.ce_dlse;
    //! [mlp_ln.ce_dlse]
    //! [mlp_ln.ce_dshift]
    b.ce.dshift = t.ce_dshift;
    //! [mlp_ln.ce_dshift]
    return b;
  }
  static harness::Ablation<NetTerms> ablation() {
    return {{"mlp_ln.ln_dl_dmu", &NetTerms::ln_dl_dmu},
            {"mlp_ln.ln_dvar_dmu", &NetTerms::ln_dvar_dmu, true},
            {"mlp_ln.ce_dlse", &NetTerms::ce_dlse},
            {"mlp_ln.ce_dshift", &NetTerms::ce_dshift, true}};
  }
  static std::string ablation_summary() {
    return "Inside the whole network, layer norm's ∂L/∂μ path dropped is caught; ∂σ²/∂μ, derived "
           "to be\n"
           "zero, changes nothing. The loss's softmax term replaced is caught; its max shift, zero, "
           "changes nothing.";
  }
  // gelu is smooth: no kinks to place.
  static nn::Parameter<double>* kink_bias(Net<double>&) { return nullptr; }
  static const TensorD* kink_input(const Net<double>::Out&) { return nullptr; }
  // ce → fc2 → gelu → ln → fc1.
  static TensorD da_magnitude(const Net<double>& n, const Net<double>::Cache& c, double dL) {
    const TensorD dh = gelu_back(linear_back(ce_grad(c.ce, dL), n.fc2, false), c.gelu.x);
    return norm_terms(dh, c.ln.x, c.ln.op.mean, c.ln.op.invstd, n.ln.weight.value, false);
  }
};

struct ResMlpNet {
  static constexpr const char* op = "resmlp";
  template <class S>
  using Net = nn::ResMlp<S>;
  static harness::Formulas formulas() {
    return {
        {"resmlp.forward",
         "residual MLP: a = W₁x + b₁, h = a + W_r relu(LN(a)) + b_r, L = CE(W₂h + b₂, t)"},
        {"resmlp.dx",
         "∂L/∂x of the residual MLP: ce → fc2 → block → fc1 in reverse order (staged ops)"},
        {"resmlp.dx_fused", "∂L/∂x of the residual MLP with every layer's fused backward"},
        {"resmlp.dparams", "∂L/∂θ of every parameter (fc1, block.ln, block.fc, fc2)"},
        {"resmlp.fan_out",
         "fan-out: a, used by the skip and by the body, receives dy + J_fᵀ dy (dropping the "
         "skip's is caught)"},
        {"resmlp.ln_dvar_dmu",
         "layer norm's ∂σ²/∂μ = 0 inside the block (dropping it changes nothing)"}};
  }
  static nn::Backward backward_of(Pass pass, const NetTerms& t) {
    //! [resmlp.dx_fused]
    nn::Backward b{pass == Pass::staged ? nn::Pass::staged
                                        : nn::Pass::fused};  // every layer's fused backward
    //! [resmlp.dx_fused]
    b.skip = t.fan_out;  // the knob of resmlp.fan_out (nn::Residual::backward)
    //! [resmlp.ln_dvar_dmu]
    b.norm.dvar_dmu = t.ln_dvar_dmu;
    //! [resmlp.ln_dvar_dmu]
    return b;
  }
  static harness::Ablation<NetTerms> ablation() {
    return {{"resmlp.fan_out", &NetTerms::fan_out},
            {"resmlp.ln_dvar_dmu", &NetTerms::ln_dvar_dmu, true}};
  }
  static std::string ablation_summary() {
    return "A missing fan-out branch (the skip's dy not added to a's gradient) is caught, by dx "
           "and by\n"
           "fc1's gradients; layer norm's ∂σ²/∂μ, zero, changes nothing.";
  }
  // The relu's pre-activation is the block's layer-norm output: its β places the kinks.
  static nn::Parameter<double>* kink_bias(Net<double>& n) { return &std::get<0>(n.block.body.layers).bias; }
  static const TensorD* kink_input(const Net<double>::Out& o) { return &std::get<1>(o.cache.block).x; }
  // ce → fc2 → block (skip + fc → relu → ln) → fc1.
  static TensorD da_magnitude(const Net<double>& n, const Net<double>::Cache& c, double dL) {
    const auto& ln_c = std::get<0>(c.block);
    const TensorD dh = linear_back(ce_grad(c.ce, dL), n.fc2, false);
    const TensorD dr = relu_back(linear_back(dh, std::get<2>(n.block.body.layers), false), std::get<1>(c.block).x);
    TensorD da = norm_terms(dr, ln_c.x, ln_c.op.mean, ln_c.op.invstd,
                            std::get<0>(n.block.body.layers).weight.value, false);
    da.flat() += dh.flat().abs();  // the skip's use of a
    return da;
  }
};

// ---- One declaration for every network ------------------------------------------------------

template <class Traits>
struct Network {
  static constexpr const char* op = Traits::op;
  template <class S>
  using Net = typename Traits::template Net<S>;
  static const harness::Formulas& formulas() {
    static const harness::Formulas f = Traits::formulas();
    return f;
  }
  struct Case {
    Shape shape;  // x's: (N, I)
    Index hidden = 1;
    Index out = 1;
  };
  // Tiny networks for full Jacobians (the parameters' too); realistic widths for projections.
  // No benchmark case: bench/ times the layers; the networks are their sums.
  static const harness::Cases<Case>& cases() {
    static const harness::Cases<Case> c = {.jacobian = {{{4, 3}, 4, 2}, {{6, 2}, 3, 3}},
                                           .projection = {{{32, 16}, 32, 10}, {{64, 64}, 48, 10}},
                                           .ablation = {{{4, 3}, 4, 2}, {{6, 2}, 3, 3}},
                                           .benchmark = {}};
    return c;
  }
  struct Problem {
    Shape shape;
    Index H = 0, O = 0;
    TensorD x, params, w;   // w: shape (), the loss's upstream gradient
    Tensor<Index> target;   // (N) class indices: a constant of the graph
  };
  static std::uint64_t seed(const Case& c) {
    std::uint64_t h = 1469598103934665603ull ^ std::string_view(op).size();
    for (Index v : c.shape) h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    h = (h ^ static_cast<std::uint64_t>(c.hidden)) * 1099511628211ull;
    return (h ^ static_cast<std::uint64_t>(c.out)) * 1099511628211ull;
  }
  static constexpr std::uint64_t benchmark_seed = 1024;
  template <class S>
  static Net<S> make(const Problem& p) {
    return Net<S>(p.shape[1], p.H, p.O);
  }
  static Problem problem(const Case& c, std::uint64_t seed) {
    Rng rng(seed);
    Problem p{c.shape, c.hidden, c.out, rng.normal_tensor(c.shape), {}, {}, Tensor<Index>({c.shape[0]})};
    for (Index n = 0; n < c.shape[0]; ++n)
      p.target[n] = std::min<Index>(c.out - 1, static_cast<Index>(rng.uniform(0, static_cast<double>(c.out))));
    Net<double> net(c.shape[1], c.hidden, c.out);
    // nn.Linear's scale U(−1/√in, 1/√in), kept away from 0; norm γ in [0.5, 1.5]; biases N(0,
    // 0.5²).
    net.for_each_parameter([&rng](nn::Parameter<double>& q) {
      const bool is_weight = q.name.ends_with("weight");
      for (Index i = 0; i < q.value.size(); ++i) {
        if (is_weight && q.value.rank() == 2) {
          const double s = 1 / std::sqrt(static_cast<double>(q.value.shape()[1]));
          q.value[i] = rng.signed_uniform(0.1 * s, s);
        } else if (is_weight) {
          q.value[i] = rng.uniform(0.5, 1.5);
        } else {
          q.value[i] = rng.normal(0, 0.5);
        }
      }
    });
    if (nn::Parameter<double>* beta = Traits::kink_bias(net)) {
      // β moves the pre-activations and nothing before them: one forward finds them.
      place_relu_kinks(*Traits::kink_input(net.forward(p.x, p.target)), *beta);
    }
    p.params = nn::parameters(net);
    // L̃ = w·L with w of size one, |w| in [0.5, 1.5], either sign: the upstream gradient of the loss.
    p.w = TensorD({}, rng.signed_uniform(0.5, 1.5));
    return p;
  }
  static std::string describe(const Problem& p) {
    std::ostringstream s;
    s << op << " x " << to_string(p.shape) << ", hidden " << p.H << ", " << p.O << " classes, "
      << p.params.size() << " parameters";
    return s.str();
  }
  static const harness::Inputs& inputs() {
    static const harness::Inputs in = {{"x"}, {"params"}};
    return in;
  }
  static const TensorD& input(const Problem& p, std::size_t k) { return k == 0 ? p.x : p.params; }
  // For the libtorch oracle: the widths that slice θ into the layers' parameters.
  static std::vector<std::pair<std::string, double>> options(const Problem& p) {
    return {
        {"hidden", static_cast<double>(p.H)}, {"out", static_cast<double>(p.O)}, {"eps", 1e-5}};
  }
  // The class targets, for the libtorch oracle (as float64; it casts them to int64).
  static std::vector<std::pair<std::string, TensorD>> constants(const Problem& p) {
    TensorD t(p.target.shape());
    for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<double>(p.target[i]);
    return {{"target", t}};
  }
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    Net<S> net = make<S>(p);
    nn::set_parameters(net, in[1]);
    return net.forward(in[0], p.target).loss;
  }
  template <class T>
  struct Prepared {
    Tensor<T> x;
    Net<T> net;
    typename Net<T>::Out out;
    // |J| of y in x and in θ (float64 only, made on first use): the tolerance scales.
    mutable std::vector<Eigen::MatrixXd> abs_jacobian;
  };
  template <class T>
  static std::shared_ptr<const Prepared<T>> prepare(const Problem& p) {
    auto pr =
        std::make_shared<Prepared<T>>(Prepared<T>{p.x.template cast<T>(), make<T>(p), {}, {}});
    nn::set_parameters(pr->net, p.params.template cast<T>());
    pr->out = pr->net.forward(pr->x, p.target);
    return pr;
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.out.loss;
  }
  using Terms = NetTerms;
  template <class T>
  static std::vector<Tensor<T>> backward(const Prepared<T>& pr, const Tensor<T>& dy, Pass pass,
                                         const Terms& t = {}) {
    Net<T> net = pr.net;  // a copy: backward adds to its parameters' grad
    nn::zero_grad(net);
    Tensor<T> dx = net.backward(dy, pr.out.cache, Traits::backward_of(pass, t));
    return {std::move(dx), nn::gradients(net)};
  }
  static const harness::Ablation<Terms>& ablation() {
    static const harness::Ablation<Terms> a = Traits::ablation();
    return a;
  }
  static std::string ablation_summary() { return Traits::ablation_summary(); }

  // L in long double: the network's own forward on complex<long double> with zero imaginary
  // parts (the scalar the long-double gradient of the libtorch oracle runs on; the norm kernels
  // have no plain long double). Its scale: an error δ in the logits moves the mean cross-entropy
  // by at most 2 max|δ| (its gradient in the logits, (p − onehot)/N, has row sums of |·| ≤ 2/N),
  // and δ is at most rounding of the last layer's terms, max over logits of Σₕ |hₕ W₂ₒₕ| + |b₂ₒ|
  // (h the last layer's input); so 2 · that + |L| for the loss's own rounding.
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    using C = harness::ComplexLD;
    Net<C> net = make<C>(p);
    nn::set_parameters(net, p.params.template cast<C>());
    const auto out = net.forward(p.x.template cast<C>(), p.target);
    const Tensor<C>& h = out.cache.fc2.x;
    const Tensor<C>& W = net.fc2.weight.value;
    const Index N = p.shape[0], H = p.H, O = p.O;
    double zscale = 0;
    for (Index n = 0; n < N; ++n)
      for (Index o = 0; o < O; ++o) {
        long double mag = std::abs(net.fc2.bias.value[o].real());
        for (Index j = 0; j < H; ++j) mag += std::abs(h[n * H + j].real() * W[o * H + j].real());
        zscale = std::max(zscale, static_cast<double>(mag));
      }
    Eigen::VectorXd y(out.loss.size());
    for (Index i = 0; i < out.loss.size(); ++i) y[i] = static_cast<double>(out.loss[i].real());
    scale = 2 * zscale + y.cwiseAbs().maxCoeff();
    return y;
  }

  // Tolerance scales: the network's |J| (float64 staged backward of each unit vector; the loss is
  // one value, so J is its gradient), in x (k = 0) and in θ (k = 1). A network's Jacobian entries
  // are sums over paths through its layers; the scale is the magnitude of the entries, and for a
  // weighted sum Σⱼ cⱼ Jⱼᵢ the sum Σⱼ |cⱼ Jⱼᵢ|.
  static const Eigen::MatrixXd& abs_jacobian(const Prepared<double>& pd, const Problem& p,
                                             std::size_t k) {
    if (pd.abs_jacobian.empty()) {
      const Index m = p.w.size();
      Eigen::MatrixXd Jx(m, p.x.size()), Jp(m, p.params.size());
      TensorD e(p.w.shape(), 0.0);
      for (Index j = 0; j < m; ++j) {
        e[j] = 1;
        const auto g = backward(pd, e, Pass::staged);
        Jx.row(j) = as_f64(g[0]).cwiseAbs().transpose();
        Jp.row(j) = as_f64(g[1]).cwiseAbs().transpose();
        e[j] = 0;
      }
      pd.abs_jacobian = {Jx, Jp};
    }
    return pd.abs_jacobian[k];
  }
  static double jacobian_scale(const Prepared<double>& pd, const Problem& p) {
    return abs_jacobian(pd, p, 0).maxCoeff();
  }
  static double projection_scale(const Prepared<double>& pd, const Problem& p,
                                 const Eigen::VectorXd& v, const Eigen::VectorXd& u) {
    return v.cwiseAbs().dot(abs_jacobian(pd, p, 0) * u.cwiseAbs());
  }
  // The scales of dx and of fc1's gradients, which the norm's dx reaches through fc1's backward:
  // the magnitudes A of the terms of da = ∂L/∂(fc1's output) (Traits::da_magnitude; see
  // norm_terms) taken on as fc1's backward forms them, dx = da W₁ → A|W₁|, dW₁ = daᵀx → Aᵀ|x|,
  // db₁ = Σₙ da → Σₙ A. They bound |J|ᵀ|dy| already; the max keeps that bound where it is larger.
  static double dx_scale(const Prepared<double>& pd, const Problem& p, const TensorD& dy) {
    const TensorD A = Traits::da_magnitude(pd.net, pd.out.cache, dy[0]);
    const double terms = linear_back(A, pd.net.fc1, true).flat().maxCoeff();
    return std::max(terms, (abs_jacobian(pd, p, 0).transpose() * as_f64(dy).cwiseAbs()).maxCoeff());
  }
  static double param_scale(const Prepared<double>& pd, const Problem& p, std::size_t k) {
    const TensorD A = Traits::da_magnitude(pd.net, pd.out.cache, p.w[0]);
    const TensorD& x = pd.out.cache.fc1.x;
    const Index N = A.shape()[0], H = A.shape()[1], I = x.shape()[1];
    double fc1 = 0;
    for (Index h = 0; h < H; ++h) {
      double db = 0;
      for (Index n = 0; n < N; ++n) db += A[n * H + h];
      fc1 = std::max(fc1, db);
      for (Index i = 0; i < I; ++i) {
        double dw = 0;
        for (Index n = 0; n < N; ++n) dw += A[n * H + h] * std::abs(x[n * I + i]);
        fc1 = std::max(fc1, dw);
      }
    }
    return std::max(fc1, (abs_jacobian(pd, p, k).transpose() * as_f64(p.w).cwiseAbs()).maxCoeff());
  }

  static std::vector<harness::BadInput> bad_inputs() {
    const std::string o = op;
    const Tensor<Index> t({4}, std::vector<Index>{0, 1, 1, 0});
    return {
        {"x_of_the_wrong_width_is_refused", o + ".forward",
         [t] {
           Net<double> net(3, 4, 2);
           net.forward(TensorD({4, 5}, 0.5), t);
         },
         {"last extent of x (in_features) must be 3", "x of shape (4, 5)"}},
        {"a_target_class_out_of_range_is_refused", o + ".forward",
         [] {
           Net<double> net(3, 4, 2);
           nn::set_parameters(net, TensorD({nn::parameters(net).size()}, 0.5));
           net.forward(TensorD({4, 3}, 0.25), Tensor<Index>({4}, std::vector<Index>{0, 1, 2, 0}));
         },
         {"cross_entropy", "target value 2", "out of range [0, 2"}},
        {"params_of_the_wrong_size_is_refused", o + ".forward",
         [] {
           Net<double> net(3, 4, 2);
           nn::set_parameters(net, TensorD({7}, 0.5));
         },
         {"nn::set_parameters", "got a vector of shape (7,)"}},
        {"dy_of_the_wrong_shape_is_refused", o + ".dx",
         [t] {
           Net<double> net(3, 4, 2);
           nn::set_parameters(net, TensorD({nn::parameters(net).size()}, 0.5));
           const auto out = net.forward(TensorD({4, 3}, 0.25), t);
           net.backward(TensorD({4, 2}), out.cache, {});
         },
         {"cross_entropy", "dy (must match the loss) must have shape ()", "got (4, 2)"}},
    };
  }
  // The modules allocate their outputs and caches (the layers' *_into calls are covered by the
  // layers' own allocation cases).
  static std::vector<harness::IntoCase> into_cases() { return {}; }
  // The pre-activations of the relus at θ' = θ + s·h·u, for the input k (x or θ) moved.
  static TensorD kinks_at(const Problem& p, std::size_t k, const Eigen::VectorXd& moved) {
    Net<double> net = make<double>(p);
    nn::set_parameters(net, k == 1 ? sup_from(p.params.shape(), moved) : p.params);
    const auto out = net.forward(k == 0 ? sup_from(p.x.shape(), moved) : p.x, p.target);
    return *Traits::kink_input(out);
  }
  static TensorD sup_from(const Shape& s, const Eigen::VectorXd& v) {
    return from_vec(s, Vec<double>(v));
  }
  // The sampling's promise, measured: under every step the difference oracles take (central
  // differences and Richardson's h and h/2, at the largest of them, Richardson's h; on every unit
  // direction of the Jacobian cases and on 8 random directions of the projection cases, in x and
  // in θ), no relu pre-activation changes sign. The row's error is the largest move of a
  // pre-activation; it must stay below kMargin, and below the smallest |pre-activation|.
  static void extra(harness::Checks<Network>& c) {
    Net<double> probe(1, 1, 1);
    if (!Traits::kink_bias(probe)) return;
    c.add(harness::id<Network>("dx"),
          harness::test_name<Network>("sampling/pre_activations_keep_their_sign_under_every_step"),
          [](const std::string& test) {
            std::vector<ResultRow> rows;
            const auto one = [&](const Case& cs, bool full) {
              const Problem p = harness::make<Network>(cs, harness::Salt::oracle);
              const TensorD a0 = kinks_at(p, 0, as_f64(p.x));
              const double smallest = a0.flat().abs().minCoeff();
              double moved = 0;
              bool flipped = false;
              Rng rng(seed(cs) + 11);
              for (std::size_t k = 0; k < 2; ++k) {
                const Eigen::VectorXd x = as_f64(k == 0 ? p.x : p.params);
                const Index dirs = full ? x.size() : 8;
                for (Index d = 0; d < dirs; ++d) {
                  Eigen::VectorXd u = Eigen::VectorXd::Zero(x.size());
                  if (full) u[d] = 1;
                  else for (Index i = 0; i < x.size(); ++i) u[i] = rng.normal(0, 1);
                  const double h = check::StepPolicy::step(check::StepPolicy::richardson_base(), x, u);
                  for (double sgn : {-1.0, 1.0}) {
                    const TensorD a = kinks_at(p, k, x + sgn * h * u);
                    for (Index i = 0; i < a.size(); ++i) {
                      moved = std::max(moved, std::abs(a[i] - a0[i]));
                      flipped = flipped || (a[i] > 0) != (a0[i] > 0);
                    }
                  }
                }
              }
              ResultRow r{harness::id<Network>("dx"), test, "richardson", "float64", "property", p.shape};
              r.max_abs_err = moved;
              r.rel_defined = false;
              r.atol = kMargin;
              r.passed = !flipped && moved < kMargin && moved < smallest && smallest >= kMargin;
              std::ostringstream note;
              note << "largest move of a relu pre-activation under the difference oracles' steps ("
                   << (full ? "every unit direction" : "8 random directions") << " of x and θ, "
                   << describe(p) << "); smallest |pre-activation| " << smallest << ", margin " << kMargin
                   << "; sign changes: " << (flipped ? "some" : "none");
              r.note = note.str();
              rows.push_back(r);
            };
            for (const auto& cs : cases().jacobian) one(cs, true);
            for (const auto& cs : cases().projection) one(cs, false);
            return rows;
          });
  }
};

}  // namespace

void register_networks(Registry& r) {
  harness::register_op<Network<MlpBnNet>>(r);
  harness::register_op<Network<MlpLnNet>>(r);
  harness::register_op<Network<ResMlpNet>>(r);
}

}  // namespace gradproof::catalog
