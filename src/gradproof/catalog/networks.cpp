// The declarations of the networks of derivations/backprop.md (mlp_bn, mlp_ln, resmlp): each
// network, assembled from the modules of nn/module.hpp, is declared through the harness as one op
// y = net(x; θ) whose inputs are x and the flat vector θ of all its parameters (nn::parameters()
// order). The harness then checks the network's dx and dθ against every oracle, staged = fused,
// and the negative controls at network level: a layer's term dropped inside the whole network.
#include "gradproof/harness/checks.hpp"
#include "gradproof/nn/networks.hpp"

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
};

// ---- The three networks: what is particular to each -----------------------------------------

struct MlpBnNet {
  static constexpr const char* op = "mlp_bn";
  template <class S>
  using Net = nn::MlpBn<S>;
  static harness::Formulas formulas() {
    return {{"mlp_bn.forward", "MLP linear → batch norm → linear: y = W₂ BN(W₁x + b₁) + b₂"},
            {"mlp_bn.dx",
             "∂L/∂x of the MLP: the layers' VJPs in reverse order, fc2 → bn → fc1 (staged ops)"},
            {"mlp_bn.dx_fused", "∂L/∂x of the MLP with every layer's fused backward"},
            {"mlp_bn.dparams",
             "∂L/∂θ of every parameter (fc1, bn γ β, fc2), accumulated by the layers' backwards"},
            {"mlp_bn.bn_dl_dmu",
             "batch norm's ∂L/∂μ path inside the network (dropping it is caught)"},
            {"mlp_bn.bn_dvar_dmu",
             "batch norm's ∂σ²/∂μ = 0 inside the network (dropping it changes nothing)"}};
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
    return b;
  }
  static harness::Ablation<NetTerms> ablation() {
    return {{"mlp_bn.bn_dl_dmu", &NetTerms::bn_dl_dmu},
            {"mlp_bn.bn_dvar_dmu", &NetTerms::bn_dvar_dmu, true}};
  }
  static std::string ablation_summary() {
    return "Inside the whole network, batch norm's ∂L/∂μ path dropped is caught (by dx and by "
           "fc1's\n"
           "gradients, which it reaches through fc1's backward); ∂σ²/∂μ, derived to be zero, "
           "changes nothing.";
  }
};

struct MlpLnNet {
  static constexpr const char* op = "mlp_ln";
  template <class S>
  using Net = nn::MlpLn<S>;
  static harness::Formulas formulas() {
    return {{"mlp_ln.forward", "MLP linear → layer norm → linear: y = W₂ LN(W₁x + b₁) + b₂"},
            {"mlp_ln.dx", "∂L/∂x of the MLP: fc2 → ln → fc1 in reverse order (staged ops)"},
            {"mlp_ln.dx_fused", "∂L/∂x of the MLP with every layer's fused backward"},
            {"mlp_ln.dparams", "∂L/∂θ of every parameter (fc1, ln γ β, fc2)"},
            {"mlp_ln.ln_dl_dmu",
             "layer norm's ∂L/∂μ path inside the network (dropping it is caught)"},
            {"mlp_ln.ln_dvar_dmu",
             "layer norm's ∂σ²/∂μ = 0 inside the network (dropping it changes nothing)"}};
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
    return b;
  }
  static harness::Ablation<NetTerms> ablation() {
    return {{"mlp_ln.ln_dl_dmu", &NetTerms::ln_dl_dmu},
            {"mlp_ln.ln_dvar_dmu", &NetTerms::ln_dvar_dmu, true}};
  }
  static std::string ablation_summary() {
    return "Inside the whole network, layer norm's ∂L/∂μ path dropped is caught; ∂σ²/∂μ, derived "
           "to be\n"
           "zero, changes nothing.";
  }
};

struct ResMlpNet {
  static constexpr const char* op = "resmlp";
  template <class S>
  using Net = nn::ResMlp<S>;
  static harness::Formulas formulas() {
    return {
        {"resmlp.forward", "residual MLP: a = W₁x + b₁, h = a + W_r LN(a) + b_r, y = W₂h + b₂"},
        {"resmlp.dx",
         "∂L/∂x of the residual MLP: fc2 → block → fc1 in reverse order (staged ops)"},
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
    TensorD x, params, w;
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
    Problem p{c.shape, c.hidden, c.out, rng.normal_tensor(c.shape), {}, {}};
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
    p.params = nn::parameters(net);
    p.w = rng.normal_tensor({c.shape[0], c.out});
    return p;
  }
  static std::string describe(const Problem& p) {
    std::ostringstream s;
    s << op << " x " << to_string(p.shape) << ", hidden " << p.H << ", out " << p.O << ", "
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
  template <class S>
  static Tensor<S> forward(const Problem& p, const std::vector<Tensor<S>>& in) {
    Net<S> net = make<S>(p);
    nn::set_parameters(net, in[1]);
    return net.forward(in[0]).y;
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
    pr->out = pr->net.forward(pr->x);
    return pr;
  }
  template <class T>
  static const Tensor<T>& output(const Prepared<T>& pr) {
    return pr.out.y;
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

  // y in long double: the network's own forward on complex<long double> with zero imaginary
  // parts (the scalar the long-double gradient of the libtorch oracle runs on; the norm kernels
  // have no plain long double). Its scale is that of the last layer's terms, max over outputs of
  // Σₕ |hₕ W₂ₒₕ| + |b₂ₒ|, h the last layer's input.
  static Eigen::VectorXd reference(const Problem& p, double& scale) {
    using C = harness::ComplexLD;
    Net<C> net = make<C>(p);
    nn::set_parameters(net, p.params.template cast<C>());
    const auto out = net.forward(p.x.template cast<C>());
    const Tensor<C>& h = out.cache.fc2.x;
    const Tensor<C>& W = net.fc2.weight.value;
    const Index N = p.shape[0], H = p.H, O = p.O;
    scale = 0;
    for (Index n = 0; n < N; ++n)
      for (Index o = 0; o < O; ++o) {
        long double mag = std::abs(net.fc2.bias.value[o].real());
        for (Index j = 0; j < H; ++j) mag += std::abs(h[n * H + j].real() * W[o * H + j].real());
        scale = std::max(scale, static_cast<double>(mag));
      }
    Eigen::VectorXd y(out.y.size());
    for (Index i = 0; i < out.y.size(); ++i) y[i] = static_cast<double>(out.y[i].real());
    return y;
  }

  // Tolerance scales: the network's |J| (float64 staged backward of each unit vector), in x (k =
  // 0) and in θ (k = 1). A network's Jacobian entries are sums over paths through its layers; the
  // scale is the magnitude of the entries, and for a weighted sum Σⱼ cⱼ Jⱼᵢ the sum Σⱼ |cⱼ Jⱼᵢ|.
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
  static double dx_scale(const Prepared<double>& pd, const Problem& p, const TensorD& dy) {
    return (abs_jacobian(pd, p, 0).transpose() * as_f64(dy).cwiseAbs()).maxCoeff();
  }
  static double param_scale(const Prepared<double>& pd, const Problem& p, std::size_t k) {
    return (abs_jacobian(pd, p, k).transpose() * as_f64(p.w).cwiseAbs()).maxCoeff();
  }

  static std::vector<harness::BadInput> bad_inputs() {
    const std::string o = op;
    return {
        {"x_of_the_wrong_width_is_refused", o + ".forward",
         [] {
           Net<double> net(3, 4, 2);
           net.forward(TensorD({4, 5}, 0.5));
         },
         {"last extent of x (in_features) must be 3", "x of shape (4, 5)"}},
        {"params_of_the_wrong_size_is_refused", o + ".forward",
         [] {
           Net<double> net(3, 4, 2);
           nn::set_parameters(net, TensorD({7}, 0.5));
         },
         {"nn::set_parameters", "got a vector of shape (7,)"}},
        {"dy_of_the_wrong_shape_is_refused", o + ".dx",
         [] {
           Net<double> net(3, 4, 2);
           nn::set_parameters(net, TensorD({nn::parameters(net).size()}, 0.5));
           const auto out = net.forward(TensorD({4, 3}, 0.25));
           net.backward(TensorD({4, 3}), out.cache, {});
         },
         {"dy (must match y) must have shape (4, 2)", "got (4, 3)"}},
    };
  }
  // The modules allocate their outputs and caches (the layers' *_into calls are covered by the
  // layers' own allocation cases).
  static std::vector<harness::IntoCase> into_cases() { return {}; }
  static void extra(harness::Checks<Network>&) {}
};

}  // namespace

void register_networks(Registry& r) {
  harness::register_op<Network<MlpBnNet>>(r);
  harness::register_op<Network<MlpLnNet>>(r);
  harness::register_op<Network<ResMlpNet>>(r);
}

}  // namespace gradproof::catalog
