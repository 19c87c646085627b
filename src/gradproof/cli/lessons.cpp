// The lessons of the teaching kit (see lessons.hpp). Each reference below is the formula of one
// step of a staged backward in ops/, written on plain (rows, columns) arrays; the grader checks it
// against that step's value from ops/ on every problem before it grades anything.
#include "gradproof/cli/lessons.hpp"

#include "gradproof/ops/activations.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/cross_entropy.hpp"
#include "gradproof/ops/dropout.hpp"
#include "gradproof/ops/embedding.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/linear.hpp"
#include "gradproof/ops/losses.hpp"
#include "gradproof/ops/softmax.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace gradproof::cli::teach {
namespace {

// A portable generator (SplitMix64 and Box–Muller): the graded problems, and so the grader's
// printed numbers, are the same with every standard library.
struct Rng {
  std::uint64_t s;
  double uniform() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (static_cast<double>(z >> 11) + 0.5) / 9007199254740992.0;
  }
  double normal() { return std::sqrt(-2 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
  TensorD tensor(const Shape& s, double offset, double spread) {
    TensorD t(s);
    for (Index i = 0; i < t.size(); ++i) t[i] = offset + spread * normal();
    return t;
  }
};

Index rows(const TensorD& t) { return t.rank() >= 1 ? t.shape()[0] : 1; }
Index cols(const TensorD& t) { return t.rank() == 2 ? t.shape()[1] : 1; }
double mabs(double v, bool mag) { return mag ? std::abs(v) : v; }

// ---- batch norm (sets are the columns of (N, C)) and layer norm (the rows of (N, D)) ---------
struct NormLayout {
  bool columns;  // bn: one set per column; ln: one per row
  Index set(Index i, Index C) const { return columns ? i % C : i / C; }
};

std::vector<Term> norm_terms(const std::string& op, bool columns) {
  const NormLayout lay{columns};
  const std::string sets = columns ? "(C)" : "(N)";
  const std::string set_word = columns ? "channel" : "row";
  const auto M_of = [columns](const TensorD& x) { return static_cast<double>(columns ? rows(x) : cols(x)); };
  const auto R_of = [columns](const TensorD& x) { return columns ? cols(x) : rows(x); };
  const std::string zero_mu =
      "μ is the mean of the same values σ² is taken over, so Σᵢ(xᵢ − μ) = 0";
  std::vector<Term> t;
  t.push_back({"dgamma", op + ".dgamma", "∂L/∂γ", {"dy", "xhat"}, columns ? "(C)" : "(D)",
               "y = γ x̂ + β is linear in γ; γⱼ is shared by every value of its column", {{"Σ dy·x̂", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &dy = *a[0], &xh = *a[1];
                 const Index C = cols(dy);
                 TensorD g({C});
                 for (Index i = 0; i < dy.size(); ++i) g[i % C] += mabs(dy[i] * xh[i], mag);
                 return std::vector<TensorD>{g};
               }, {}});
  t.push_back({"dbeta", op + ".dbeta", "∂L/∂β", {"dy"}, columns ? "(C)" : "(D)",
               "y = γ x̂ + β; βⱼ is shared by every value of its column", {{"Σ dy", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD& dy = *a[0];
                 const Index C = cols(dy);
                 TensorD g({C});
                 for (Index i = 0; i < dy.size(); ++i) g[i % C] += mabs(dy[i], mag);
                 return std::vector<TensorD>{g};
               }, {}});
  t.push_back({"dl_dxhat", op + ".dl_dxhat", "∂L/∂x̂", {"dy", "gamma"}, columns ? "(N, C)" : "(N, D)",
               "the gradient arriving at x̂, through y = γ x̂ + β", {{"γ·dy", ""}}, "",
               [](const Args& a, bool) {
                 const TensorD &dy = *a[0], &g = *a[1];
                 TensorD o(dy.shape());
                 for (Index i = 0; i < dy.size(); ++i) o[i] = g[i % cols(dy)] * dy[i];
                 return std::vector<TensorD>{o};
               }, {}});
  t.push_back({"dl_dvar", op + ".dl_dvar", "∂L/∂σ²", {"dl_dxhat", "x", "mu", "invstd"}, sets,
               "σ² of a " + set_word + " reaches L through every x̂ᵢ of it, x̂ᵢ = (xᵢ − μ)(σ² + ε)^(−1/2)",
               {{"Σ ∂L/∂x̂ᵢ·∂x̂ᵢ/∂σ²", ""}}, "",
               [lay, R_of](const Args& a, bool mag) {
                 const TensorD &g = *a[0], &x = *a[1], &mu = *a[2], &is = *a[3];
                 const Index C = cols(x);
                 TensorD o({R_of(x)});
                 for (Index i = 0; i < x.size(); ++i) {
                   const Index k = lay.set(i, C);
                   o[k] += mabs(g[i] * (x[i] - mu[k]) * -0.5 * is[k] * is[k] * is[k], mag);
                 }
                 return std::vector<TensorD>{o};
               },
               {{"the power of (σ² + ε) is −1/2 here: the derivative of (σ² + ε)^(−1/2) is −½(σ² + ε)^(−3/2)",
                 [lay, R_of](const Args& a) {
                   const TensorD &g = *a[0], &x = *a[1], &mu = *a[2], &is = *a[3];
                   TensorD o({R_of(x)});
                   for (Index i = 0; i < x.size(); ++i) {
                     const Index k = lay.set(i, cols(x));
                     o[k] += g[i] * (x[i] - mu[k]) * -0.5 * is[k];
                   }
                   return o;
                 }}}});
  t.push_back({"dvar_dmu", op + ".dvar_dmu", "∂σ²/∂μ", {"x", "mu"}, sets,
               "σ² = (1/M) Σᵢ (xᵢ − μ)² with μ as its own node and x held fixed", {{"−(2/M) Σ (xᵢ − μ)", ""}},
               zero_mu,
               [lay, M_of, R_of](const Args& a, bool mag) {
                 const TensorD &x = *a[0], &mu = *a[1];
                 TensorD o({R_of(x)});
                 for (Index i = 0; i < x.size(); ++i) {
                   const Index k = lay.set(i, cols(x));
                   o[k] += mabs(-2.0 * (x[i] - mu[k]) / M_of(x), mag);
                 }
                 return std::vector<TensorD>{o};
               }, {}});
  t.push_back({"dl_dmu", op + ".dl_dmu", "∂L/∂μ", {"dl_dxhat", "invstd", "dl_dvar", "dvar_dmu"}, sets,
               "μ reaches L directly through every x̂ᵢ, and through σ²",
               {{"the direct term through x̂, Σᵢ ∂L/∂x̂ᵢ·(−1/√(σ² + ε))", ""},
                {"the σ²-path term ∂L/∂σ²·∂σ²/∂μ", zero_mu}},
               "",
               [lay](const Args& a, bool mag) {
                 const TensorD &g = *a[0], &is = *a[1], &dv = *a[2], &dvm = *a[3];
                 const Index R = dv.size();
                 TensorD direct({R}), path({R});
                 for (Index i = 0; i < g.size(); ++i) {
                   const Index k = lay.set(i, cols(g));
                   direct[k] += mabs(-g[i] * is[k], mag);
                 }
                 for (Index k = 0; k < R; ++k) path[k] = mabs(dv[k] * dvm[k], mag);
                 return std::vector<TensorD>{direct, path};
               }, {}});
  t.push_back({"dvar_dx", op + ".dvar_dx", "∂σ²/∂xᵢ", {"x", "mu"}, columns ? "(N, C)" : "(N, D)",
               "the partial derivative of σ² = (1/M) Σⱼ (xⱼ − μ)² in xᵢ, μ held fixed", {{"2(xᵢ − μ)/M", ""}}, "",
               [lay, M_of](const Args& a, bool mag) {
                 const TensorD &x = *a[0], &mu = *a[1];
                 TensorD o(x.shape());
                 for (Index i = 0; i < x.size(); ++i) o[i] = mabs(2 * (x[i] - mu[lay.set(i, cols(x))]) / M_of(x), mag);
                 return std::vector<TensorD>{o};
               },
               {{"it divides by M − 1: the σ² of the normalization is the biased variance (1/M); the unbiased "
                 "one (1/(M − 1)) is only for the running variance",
                 [lay, M_of](const Args& a) {
                   const TensorD &x = *a[0], &mu = *a[1];
                   TensorD o(x.shape());
                   for (Index i = 0; i < x.size(); ++i) o[i] = 2 * (x[i] - mu[lay.set(i, cols(x))]) / (M_of(x) - 1);
                   return o;
                 }}}});
  t.push_back({"dmu_dx", op + ".dmu_dx", "∂μ/∂xᵢ", {"x"}, sets,
               "μ = (1/M) Σᵢ xᵢ: one value per " + set_word + " (the same for every i of it)", {{"1/M", ""}}, "",
               [M_of, R_of](const Args& a, bool) {
                 return std::vector<TensorD>{TensorD({R_of(*a[0])}, 1.0 / M_of(*a[0]))};
               }, {}});
  t.push_back({"dx", op + ".dx", "∂L/∂x", {"dl_dxhat", "invstd", "dl_dvar", "dvar_dx", "dl_dmu", "dmu_dx"},
               columns ? "(N, C)" : "(N, D)", "xᵢ reaches L through x̂ᵢ, through σ² and through μ",
               {{"the x̂ path ∂L/∂x̂ᵢ/√(σ² + ε)", ""},
                {"the σ² path ∂L/∂σ²·∂σ²/∂xᵢ", ""},
                {"the μ path (the mean path) ∂L/∂μ·∂μ/∂xᵢ", ""}},
               "",
               [lay](const Args& a, bool mag) {
                 const TensorD &g = *a[0], &is = *a[1], &dv = *a[2], &dvx = *a[3], &dm = *a[4], &dmx = *a[5];
                 TensorD p1(g.shape()), p2(g.shape()), p3(g.shape());
                 for (Index i = 0; i < g.size(); ++i) {
                   const Index k = lay.set(i, cols(g));
                   p1[i] = mabs(g[i] * is[k], mag);
                   p2[i] = mabs(dv[k] * dvx[i], mag);
                   p3[i] = mabs(dm[k] * dmx[k], mag);
                 }
                 return std::vector<TensorD>{p1, p2, p3};
               }, {}});
  return t;
}

std::vector<Given> norm_given(bool columns) {
  const std::string xs = columns ? "(N, C)" : "(N, D)", ps = columns ? "(C)" : "(D)", ss = columns ? "(C)" : "(N)";
  return {{"x", xs, "the input"},
          {"dy", xs, "the upstream gradient ∂L/∂y"},
          {"gamma", ps, "the scale γ"},
          {"mu", ss, columns ? "the batch mean of each channel" : "the mean of each row"},
          {"invstd", ss, "1/√(σ² + ε), σ² the biased variance", true},
          {"xhat", xs, "x̂ = (x − μ)/√(σ² + ε)"}};
}

Problem bn_problem() {
  Rng r{0x7465616368626eull};
  const Index N = 8, C = 3;
  Problem p;
  TensorD x = r.tensor({N, C}, 0.5, 1.5), dy = r.tensor({N, C}, 0, 1), gamma = r.tensor({C}, 1, 0.3),
          beta = r.tensor({C}, 0, 0.3);
  const auto f = ops::batchnorm_forward_train<double>(x, &gamma, &beta, nullptr, {});
  ops::BatchNormStagedTrace<double> tr;
  const auto g = ops::batchnorm_backward_staged<double>(dy, x, &gamma, f.cache, {}, &tr);
  TensorD xhat(x.shape());
  for (Index i = 0; i < x.size(); ++i) xhat[i] = (x[i] - f.cache.mean[i % C]) * f.cache.invstd[i % C];
  p.given = {{"x", x}, {"dy", dy}, {"gamma", gamma}, {"mu", f.cache.mean}, {"invstd", f.cache.invstd}, {"xhat", xhat}};
  p.verified = {{"dl_dxhat", tr.dl_dxhat}, {"dl_dvar", tr.dl_dvar}, {"dvar_dmu", tr.dvar_dmu}, {"dl_dmu", tr.dl_dmu},
                {"dvar_dx", tr.dvar_dx},   {"dmu_dx", tr.dmu_dx},   {"dx", g.dx},             {"dgamma", g.dgamma},
                {"dbeta", g.dbeta}};
  p.describe = "x (8, 3), training (batch statistics), eps 1e-05, γ and β given";
  return p;
}

Problem ln_problem() {
  Rng r{0x74656163686c6eull};
  const Index N = 4, D = 6;
  Problem p;
  TensorD x = r.tensor({N, D}, 0.5, 1.5), dy = r.tensor({N, D}, 0, 1), gamma = r.tensor({D}, 1, 0.3),
          beta = r.tensor({D}, 0, 0.3);
  ops::LayerNormConfig cfg;
  cfg.normalized_shape = {D};
  const auto f = ops::layernorm_forward<double>(x, &gamma, &beta, cfg);
  ops::NormStagedTrace<double> tr;
  const auto g = ops::layernorm_backward_staged<double>(dy, x, &gamma, f.cache, {}, &tr);
  TensorD xhat(x.shape());
  for (Index i = 0; i < x.size(); ++i) xhat[i] = (x[i] - f.cache.mean[i / D]) * f.cache.invstd[i / D];
  p.given = {{"x", x}, {"dy", dy}, {"gamma", gamma}, {"mu", f.cache.mean}, {"invstd", f.cache.invstd}, {"xhat", xhat}};
  p.verified = {{"dl_dxhat", tr.dl_dxhat}, {"dl_dvar", tr.dl_dvar}, {"dvar_dmu", tr.dvar_dmu}, {"dl_dmu", tr.dl_dmu},
                {"dvar_dx", tr.dvar_dx},   {"dmu_dx", tr.dmu_dx},   {"dx", g.dx},             {"dgamma", g.dgamma},
                {"dbeta", g.dbeta}};
  p.describe = "x (4, 6), normalized_shape (6), eps 1e-05, γ and β given";
  return p;
}

// The last two steps of a max-shifted softmax, the same in softmax and cross-entropy: the shift m's
// gradient −Σ ∂L/∂z, and the assembly of dx from the z path and, at each row's argmax, the shift
// path. `dz` names the term before them, `cls` the letter of the class axis, `j` its subscript.
void push_shift_terms(std::vector<Term>& t, const std::string& op, const std::string& dz,
                      const std::string& cls, const std::string& j, const std::string& zero_m) {
  const std::string zj = "z" + j, xj = "x" + j;
  t.push_back({"dshift", op + ".dshift", "∂L/∂m", {dz}, "(R)",
               "the max shift m reaches every " + zj + " = " + xj + " − m, with ∂" + zj +
                   "/∂m = −1",
               {{"−Σ" + j + " ∂L/∂" + zj, ""}}, zero_m,
               [](const Args& a, bool mag) {
                 const TensorD& dz = *a[0];
                 TensorD o({rows(dz)});
                 for (Index i = 0; i < dz.size(); ++i) o[i / cols(dz)] += mabs(-dz[i], mag);
                 return std::vector<TensorD>{o};
               }, {}});
  t.push_back({"dx", op + ".dx", "∂L/∂x", {dz, "dshift", "is_max"}, "(R, " + cls + ")",
               xj + " reaches " + zj + ", and at the argmax of its row also m",
               {{"the z path ∂L/∂" + zj, ""}, {"the shift path ∂L/∂m at the argmax", zero_m}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &dz = *a[0], &dm = *a[1], &is_max = *a[2];
                 TensorD p1(dz.shape()), p2(dz.shape());
                 for (Index i = 0; i < dz.size(); ++i) {
                   p1[i] = mabs(dz[i], mag);
                   p2[i] = mabs(dm[i / cols(dz)] * is_max[i], mag);
                 }
                 return std::vector<TensorD>{p1, p2};
               }, {}});
}

// ---- softmax over the last axis of (R, M) -----------------------------------------------------
std::vector<Term> softmax_terms() {
  const std::string zero_m = "y does not depend on the shift m: softmax(x − m) = softmax(x), so Σⱼ ∂L/∂zⱼ = 0";
  std::vector<Term> t;
  t.push_back({"dl_de", "softmax.dl_de", "∂L/∂e (s held fixed)", {"dy", "s"}, "(R, M)",
               "the direct edge e → y = e/s, with the row sum s held fixed", {{"dy/s", ""}}, "",
               [](const Args& a, bool) {
                 const TensorD &dy = *a[0], &s = *a[1];
                 TensorD o(dy.shape());
                 for (Index i = 0; i < dy.size(); ++i) o[i] = dy[i] / s[i / cols(dy)];
                 return std::vector<TensorD>{o};
               }, {}});
  t.push_back({"dl_ds", "softmax.dl_ds", "∂L/∂s", {"dy", "e", "s"}, "(R)",
               "the row sum s = Σ eⱼ reaches L through every yⱼ = eⱼ/s", {{"−Σⱼ dyⱼ eⱼ/s²", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &dy = *a[0], &e = *a[1], &s = *a[2];
                 TensorD o({rows(dy)});
                 for (Index i = 0; i < dy.size(); ++i) {
                   const Index r = i / cols(dy);
                   o[r] += mabs(-dy[i] * e[i] / (s[r] * s[r]), mag);
                 }
                 return std::vector<TensorD>{o};
               },
               {{"the sum lost its weights eⱼ: ∂yⱼ/∂s = −eⱼ/s², so each dyⱼ comes with its eⱼ",
                 [](const Args& a) {
                   const TensorD &dy = *a[0], &s = *a[2];
                   TensorD o({rows(dy)});
                   for (Index i = 0; i < dy.size(); ++i) o[i / cols(dy)] -= dy[i] / (s[i / cols(dy)] * s[i / cols(dy)]);
                   return o;
                 }}}});
  t.push_back({"dl_dz", "softmax.dl_dz", "∂L/∂z", {"e", "dl_de", "dl_ds"}, "(R, M)",
               "z = x − m reaches L through e = exp(z): directly, and through s (∂s/∂eⱼ = 1)",
               {{"the direct edge eⱼ·∂L/∂eⱼ", ""}, {"the row-sum edge eⱼ·∂L/∂s", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &e = *a[0], &de = *a[1], &ds = *a[2];
                 TensorD p1(e.shape()), p2(e.shape());
                 for (Index i = 0; i < e.size(); ++i) {
                   p1[i] = mabs(e[i] * de[i], mag);
                   p2[i] = mabs(e[i] * ds[i / cols(e)], mag);
                 }
                 return std::vector<TensorD>{p1, p2};
               },
               {{"the row-sum edge lost its factor eⱼ: s = Σ exp(zⱼ), so ∂s/∂zⱼ = eⱼ, not 1",
                 [](const Args& a) {
                   const TensorD &e = *a[0], &de = *a[1], &ds = *a[2];
                   TensorD o(e.shape());
                   for (Index i = 0; i < e.size(); ++i) o[i] = e[i] * de[i] + ds[i / cols(e)];
                   return o;
                 }}}});
  push_shift_terms(t, "softmax", "dl_dz", "M", "ⱼ", zero_m);
  Term fused{"dx_fused", "softmax.dx_fused", "∂L/∂x, collapsed", {"dy", "y"}, "(R, M)",
             "the staged terms collapsed into one expression in dy and y = e/s",
             {{"yⱼ·dyⱼ", ""}, {"−yⱼ·⟨dy, y⟩", ""}}, "",
             [](const Args& a, bool mag) {
               const TensorD &dy = *a[0], &y = *a[1];
               const Index M = cols(dy);
               TensorD p1(dy.shape()), p2(dy.shape()), dot({rows(dy)});
               for (Index i = 0; i < dy.size(); ++i) dot[i / M] += mabs(dy[i] * y[i], mag);
               for (Index i = 0; i < dy.size(); ++i) {
                 p1[i] = mabs(y[i] * dy[i], mag);
                 p2[i] = mabs(-y[i] * dot[i / M], mag);
               }
               return std::vector<TensorD>{p1, p2};
             },
             {{"the collapse of ∂L/∂s lost its weights: ⟨dy, y⟩ = Σₖ dyₖ yₖ, not Σₖ dyₖ",
               [](const Args& a) {
                 const TensorD &dy = *a[0], &y = *a[1];
                 const Index M = cols(dy);
                 TensorD o(dy.shape()), sum({rows(dy)});
                 for (Index i = 0; i < dy.size(); ++i) sum[i / M] += dy[i];
                 for (Index i = 0; i < dy.size(); ++i) o[i] = y[i] * (dy[i] - sum[i / M]);
                 return o;
               }},
              {"the factor yⱼ outside the bracket is missing: ∂L/∂zⱼ carries eⱼ, which is yⱼ once divided by s",
               [](const Args& a) {
                 const TensorD &dy = *a[0], &y = *a[1];
                 const Index M = cols(dy);
                 TensorD o(dy.shape()), dot({rows(dy)});
                 for (Index i = 0; i < dy.size(); ++i) dot[i / M] += dy[i] * y[i];
                 for (Index i = 0; i < dy.size(); ++i) o[i] = dy[i] - dot[i / M];
                 return o;
               }},
              {"only the diagonal of the Jacobian, yⱼ(1 − yⱼ)·dyⱼ: every yₖ depends on every xⱼ",
               [](const Args& a) {
                 const TensorD &dy = *a[0], &y = *a[1];
                 TensorD o(dy.shape());
                 for (Index i = 0; i < dy.size(); ++i) o[i] = y[i] * (1 - y[i]) * dy[i];
                 return o;
               }}},
             true};
  t.push_back(fused);
  return t;
}

TensorD one_hot_argmax(const Tensor<Index>& argmax, Index R, Index M) {
  TensorD o({R, M});
  for (Index r = 0; r < R; ++r) o[r * M + argmax[r]] = 1;
  return o;
}

Problem softmax_problem() {
  Rng r{0x74656163687378ull};
  const Index R = 4, M = 6;
  Problem p;
  TensorD x = r.tensor({R, M}, 0, 1.5), dy = r.tensor({R, M}, 0, 1);
  const auto f = ops::softmax_forward<double>(x);
  ops::SoftmaxStagedTrace<double> tr;
  const auto g = ops::softmax_backward_staged<double>(dy, x, f.cache, {}, &tr);
  const auto gf = ops::softmax_backward<double>(dy, f.y, f.cache);  // the fused pass reads y
  TensorD e(x.shape());
  for (Index i = 0; i < x.size(); ++i) e[i] = std::exp(x[i] - f.cache.max[i / M]);
  p.given = {{"x", x},         {"dy", dy}, {"e", e}, {"s", f.cache.sum}, {"y", f.y},
             {"is_max", one_hot_argmax(f.cache.argmax, R, M)}};
  p.verified = {{"dl_de", tr.dl_de}, {"dl_ds", tr.dl_ds}, {"dl_dz", tr.dl_dz}, {"dshift", tr.dshift},
                {"dx", g.dx},         {"dx_fused", gf.dx}};
  p.describe = "x (4, 6), dim -1";
  return p;
}

// ---- cross-entropy with class-index targets, reduction 'mean' ---------------------------------
std::vector<Term> xent_terms() {
  const std::string zero_m = "the loss does not depend on the shift m (log-softmax(x − m) = log-softmax(x)), so Σ_c ∂L/∂z_c = 0";
  std::vector<Term> t;
  t.push_back({"dreduce", "cross_entropy.dreduce", "g = ∂L/∂ℓ", {"dy", "q"}, "(R)",
               "the reduction: L = (1/R) Σ_r ℓ_r for reduction='mean' (q tells you R)", {{"dy/R", ""}}, "",
               [](const Args& a, bool mag) {
                 const double dy = (*a[0])[0];
                 const Index R = rows(*a[1]);
                 return std::vector<TensorD>{TensorD({R}, mabs(dy / static_cast<double>(R), mag))};
               },
               {{"dy without the 1/R: reduction='mean' divides the sum of the R losses by R",
                 [](const Args& a) { return TensorD({rows(*a[1])}, (*a[0])[0]); }}}});
  t.push_back({"dlogp", "cross_entropy.dlogp", "∂L/∂log p", {"dreduce", "q"}, "(R, C)",
               "NLL: ℓ_r = −Σ_c q_{r,c} log p_{r,c} (q is the one-hot target)", {{"−g_r q_{r,c}", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &g = *a[0], &q = *a[1];
                 TensorD o(q.shape());
                 for (Index i = 0; i < q.size(); ++i) o[i] = mabs(-g[i / cols(q)] * q[i], mag);
                 return std::vector<TensorD>{o};
               }, {}});
  t.push_back({"dlse", "cross_entropy.dlse", "∂L/∂λ", {"dlogp"}, "(R)",
               "log p_c = z_c − λ with λ = log Σ exp z: λ reaches every log p_c", {{"−Σ_c ∂L/∂log p_c", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD& d = *a[0];
                 TensorD o({rows(d)});
                 for (Index i = 0; i < d.size(); ++i) o[i / cols(d)] += mabs(-d[i], mag);
                 return std::vector<TensorD>{o};
               }, {}});
  t.push_back({"dz", "cross_entropy.dz", "∂L/∂z", {"dlogp", "p", "dlse"}, "(R, C)",
               "z_c reaches log p_c directly, and λ through exp (∂λ/∂z_c = p_c)",
               {{"the NLL edge ∂L/∂log p_c", ""}, {"the log-sum-exp edge p_c·∂L/∂λ", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &d = *a[0], &p = *a[1], &l = *a[2];
                 TensorD p1(d.shape()), p2(d.shape());
                 for (Index i = 0; i < d.size(); ++i) {
                   p1[i] = mabs(d[i], mag);
                   p2[i] = mabs(p[i] * l[i / cols(d)], mag);
                 }
                 return std::vector<TensorD>{p1, p2};
               }, {}});
  push_shift_terms(t, "cross_entropy", "dz", "C", "_c", zero_m);
  t.push_back({"dx_fused", "cross_entropy.dx_fused", "∂L/∂x, collapsed", {"dy", "p", "q"}, "(R, C)",
               "the staged terms collapsed: the softmax minus the target, scaled",
               {{"(dy/R)·p", ""}, {"−(dy/R)·q", ""}}, "",
               [](const Args& a, bool mag) {
                 const double dy = (*a[0])[0];
                 const TensorD &p = *a[1], &q = *a[2];
                 const double g = dy / static_cast<double>(rows(p));
                 TensorD p1(p.shape()), p2(p.shape());
                 for (Index i = 0; i < p.size(); ++i) p1[i] = mabs(g * p[i], mag), p2[i] = mabs(-g * q[i], mag);
                 return std::vector<TensorD>{p1, p2};
               },
               {{"dy·(p − q) without the 1/R of reduction='mean'",
                 [](const Args& a) {
                   const TensorD &p = *a[1], &q = *a[2];
                   TensorD o(p.shape());
                   for (Index i = 0; i < p.size(); ++i) o[i] = (*a[0])[0] * (p[i] - q[i]);
                   return o;
                 }}},
               true});
  return t;
}

Problem xent_problem() {
  Rng r{0x74656163687865ull};
  const Index R = 4, C = 5;
  Problem p;
  TensorD x = r.tensor({R, C}, 0, 1.5);
  Tensor<Index> target({R});
  for (Index k = 0; k < R; ++k) target[k] = (3 * k + 1) % C;
  TensorD dy({}, 1.0 + 0.5 * r.normal());
  ops::CrossEntropyConfig cfg;
  const auto f = ops::cross_entropy_forward<double>(x, target, nullptr, cfg);
  ops::CrossEntropyStagedTrace<double> tr;
  const auto g = ops::cross_entropy_backward_staged<double>(dy, x, target, nullptr, cfg, f.cache, {}, &tr);
  const auto gf = ops::cross_entropy_backward<double>(dy, x, target, nullptr, cfg, f.cache);
  TensorD q({R, C}), prob({R, C});
  for (Index k = 0; k < R; ++k) q[k * C + target[k]] = 1;
  for (Index i = 0; i < x.size(); ++i) prob[i] = std::exp(x[i] - f.cache.max[i / C]) / f.cache.sum[i / C];
  p.given = {{"x", x}, {"dy", dy}, {"q", q}, {"p", prob}, {"is_max", one_hot_argmax(f.cache.argmax, R, C)}};
  p.verified = {{"dreduce", tr.g}, {"dlogp", tr.dlogp}, {"dlse", tr.dlse}, {"dz", tr.dz},
                {"dshift", tr.dshift}, {"dx", g.dx}, {"dx_fused", gf.dx}};
  p.describe = "x (4, 5) logits, class-index targets, reduction 'mean'";
  return p;
}

// ---- linear: y = x Wᵀ + b ---------------------------------------------------------------------
std::vector<Term> linear_terms() {
  std::vector<Term> t;
  t.push_back({"dx", "linear.dx", "∂L/∂x", {"dy", "weight"}, "(N, I)",
               "x_{n,i} reaches every y_{n,o} = Σ_i x_{n,i} W_{o,i} + b_o", {{"Σ_o dy_{n,o} W_{o,i}", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &dy = *a[0], &w = *a[1];
                 const Index N = rows(dy), O = cols(dy), I = cols(w);
                 TensorD o({N, I});
                 for (Index n = 0; n < N; ++n)
                   for (Index i = 0; i < I; ++i)
                     for (Index k = 0; k < O; ++k) o[n * I + i] += mabs(dy[n * O + k] * w[k * I + i], mag);
                 return std::vector<TensorD>{o};
               }, {}});
  t.push_back({"dweight", "linear.dweight", "∂L/∂W", {"dy", "x"}, "(O, I)",
               "W_{o,i} reaches y_{n,o} of every row n of the batch", {{"Σ_n dy_{n,o} x_{n,i}", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &dy = *a[0], &x = *a[1];
                 const Index N = rows(dy), O = cols(dy), I = cols(x);
                 TensorD o({O, I});
                 for (Index n = 0; n < N; ++n)
                   for (Index k = 0; k < O; ++k)
                     for (Index i = 0; i < I; ++i) o[k * I + i] += mabs(dy[n * O + k] * x[n * I + i], mag);
                 return std::vector<TensorD>{o};
               }, {}});
  t.push_back({"dbias", "linear.dbias", "∂L/∂b", {"dy"}, "(O)", "b_o reaches y_{n,o} of every row n",
               {{"Σ_n dy_{n,o}", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD& dy = *a[0];
                 TensorD o({cols(dy)});
                 for (Index i = 0; i < dy.size(); ++i) o[i % cols(dy)] += mabs(dy[i], mag);
                 return std::vector<TensorD>{o};
               }, {}});
  return t;
}

Problem linear_problem() {
  Rng r{0x746561636866636cull};
  const Index N = 5, I = 4, O = 3;
  Problem p;
  TensorD x = r.tensor({N, I}, 0, 1), w = r.tensor({O, I}, 0, 0.5), b = r.tensor({O}, 0, 0.2), dy = r.tensor({N, O}, 0, 1);
  const auto f = ops::linear_forward<double>(x, w, &b);
  const auto g = ops::linear_backward_staged<double>(dy, x, w, f.cache);
  p.given = {{"x", x}, {"weight", w}, {"dy", dy}};
  p.verified = {{"dx", g.dx}, {"dweight", g.dweight}, {"dbias", g.dbias}};
  p.describe = "x (5, 4), weight (3, 4), bias (3)";
  return p;
}

// c·t, or its magnitude with `mag`: a term that passes an earlier one on with a factor.
TensorD scaled(const TensorD& t, double c, bool mag) {
  TensorD o(t.shape());
  for (Index i = 0; i < t.size(); ++i) o[i] = mabs(c * t[i], mag);
  return o;
}
// The element-wise product a ⊙ b (|a ⊙ b| with mag), as a term's one output.
std::vector<TensorD> product(const TensorD& a, const TensorD& b, bool mag) {
  TensorD o(a.shape());
  for (Index i = 0; i < a.size(); ++i) o[i] = mabs(a[i] * b[i], mag);
  return {o};
}

// ---- silu y = x·σ(x), element-wise on (N, D) ------------------------------------------------
std::vector<Term> silu_terms() {
  std::vector<Term> t;
  t.push_back({"dsig", "silu.dsig", "∂L/∂x through the factor σ(x) (x held)", {"dy", "s"}, "(N, D)",
               "y = x·σ(x) is a product: this is the edge of the factor x, the other held fixed",
               {{"dy·σ(x)", ""}}, "",
               [](const Args& a, bool mag) { return product(*a[0], *a[1], mag); },
               {}});
  t.push_back({"dxsig", "silu.dxsig", "∂L/∂x through σ(x) (the factor x held)", {"dy", "x", "s"},
               "(N, D)", "the edge of the factor σ(x), with x in front of it held fixed",
               {{"dy·x·σ'(x)", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &dy = *a[0], &x = *a[1], &s = *a[2];
                 TensorD o(dy.shape());
                 for (Index i = 0; i < dy.size(); ++i) o[i] = mabs(dy[i] * x[i] * s[i] * (1 - s[i]), mag);
                 return std::vector<TensorD>{o};
               },
               {{"the factor x is missing: y = x·σ(x), so the σ edge carries the x in front of it",
                 [](const Args& a) {
                   const TensorD &dy = *a[0], &s = *a[2];
                   TensorD o(dy.shape());
                   for (Index i = 0; i < dy.size(); ++i) o[i] = dy[i] * s[i] * (1 - s[i]);
                   return o;
                 }}}});
  t.push_back({"dx", "silu.dx", "∂L/∂x", {"dsig", "dxsig"}, "(N, D)",
               "x reaches y through both factors of x·σ(x)",
               {{"the edge of the factor x", ""}, {"the edge of the factor σ(x)", ""}}, "",
               [](const Args& a, bool mag) {
                 return std::vector<TensorD>{scaled(*a[0], 1, mag), scaled(*a[1], 1, mag)};
               },
               {}});
  return t;
}

Problem silu_problem() {
  Rng r{0x7465616368736c75ull};
  Problem p;
  TensorD x = r.tensor({4, 5}, 0, 2), dy = r.tensor({4, 5}, 0, 1);
  const auto f = ops::activation_forward(x, ops::SiluConfig{});
  // The staged backward with one term switched on at a time gives each term's value.
  const auto sig = ops::activation_backward_staged(dy, x, f.cache, {1, 0}).dx;
  const auto xsig = ops::activation_backward_staged(dy, x, f.cache, {0, 1}).dx;
  TensorD s(x.shape());
  for (Index i = 0; i < x.size(); ++i) s[i] = 1 / (1 + std::exp(-x[i]));
  p.given = {{"x", x}, {"dy", dy}, {"s", s}};
  p.verified = {{"dsig", sig}, {"dxsig", xsig},
                {"dx", ops::activation_backward_staged(dy, x, f.cache).dx}};
  p.describe = "x (4, 5)";
  return p;
}

// ---- mse_loss, reduction 'mean': L = (1/n) Σ (xᵢ − tᵢ)² ---------------------------------------
std::vector<Term> mse_terms() {
  std::vector<Term> t;
  t.push_back({"dl_dd", "mse_loss.dl_dd", "∂L/∂d, d = x − t", {"dy", "x", "target"}, "(N, D)",
               "the mean of the squares: each dᵢ reaches L through (1/n)·dᵢ² (n: every element)",
               {{"dy·2dᵢ/n", ""}}, "",
               [](const Args& a, bool mag) {
                 const double dy = (*a[0])[0];
                 const TensorD &x = *a[1], &tg = *a[2];
                 const double n = static_cast<double>(x.size());
                 TensorD o(x.shape());
                 for (Index i = 0; i < x.size(); ++i) o[i] = mabs(dy * 2 * (x[i] - tg[i]) / n, mag);
                 return std::vector<TensorD>{o};
               },
               {}});
  t.push_back({"dx", "mse_loss.dx", "∂L/∂x", {"dl_dd"}, "(N, D)", "x reaches L through d = x − t",
               {{"∂L/∂d·∂d/∂x", ""}}, "",
               [](const Args& a, bool mag) {
                 return std::vector<TensorD>{scaled(*a[0], 1, mag)};
               },
               {}});
  t.push_back({"dtarget", "mse_loss.dtarget", "∂L/∂t", {"dl_dd"}, "(N, D)",
               "the target reaches L through d = x − t too (PyTorch differentiates it)",
               {{"∂L/∂d·∂d/∂t", ""}}, "",
               [](const Args& a, bool mag) {
                 return std::vector<TensorD>{scaled(*a[0], -1, mag)};
               },
               {}});
  return t;
}

Problem mse_problem() {
  Rng r{0x746561636d73656cull};
  Problem p;
  TensorD x = r.tensor({3, 4}, 0, 1), tg = r.tensor({3, 4}, 0, 1);
  TensorD dy({}, 1.0 + 0.5 * r.normal());
  const auto f = ops::mse_loss_forward(x, tg);
  const auto g = ops::mse_loss_backward_staged(dy, x, tg, f.cache);
  p.given = {{"x", x}, {"target", tg}, {"dy", dy}};
  // ∂L/∂d is the staged dx before its factor ∂d/∂x = 1 (mse_loss.dx).
  p.verified = {{"dl_dd", g.dx}, {"dx", g.dx}, {"dtarget", g.dtarget}};
  p.describe = "x and target (3, 4), reduction 'mean'";
  return p;
}

// ---- dropout in training, p given: y = m·x/(1 − p), m the kept mask ---------------------------
std::vector<Term> dropout_terms() {
  std::vector<Term> t;
  t.push_back({"dmask", "dropout.dmask", "∂L/∂v, v = x/(1 − p)", {"dy", "mask"}, "(N, D)",
               "y = m·v: the mask drawn in the forward pass is a constant factor of each element",
               {{"m·dy", ""}}, "",
               [](const Args& a, bool mag) { return product(*a[0], *a[1], mag); },
               {{"the mask is not applied: a dropped element (m = 0) took no part in y, so it "
                 "gets no gradient",
                 [](const Args& a) { return *a[0]; }}}});
  t.push_back({"dscale", "dropout.dscale", "∂v/∂x", {"p"}, "()",
               "v = x/(1 − p): the kept values are scaled up in the forward pass",
               {{"1/(1 − p)", ""}}, "",
               [](const Args& a, bool) {
                 return std::vector<TensorD>{TensorD({}, 1 / (1 - (*a[0])[0]))};
               },
               {{"the scale 1/(1 − p) is forgotten: the forward divides the kept values by 1 − p, "
                 "so the backward does too",
                 [](const Args&) { return TensorD({}, 1.0); }}}});
  t.push_back({"dx", "dropout.dx", "∂L/∂x", {"dmask", "dscale"}, "(N, D)",
               "x reaches y through v = x/(1 − p) and then the mask", {{"∂L/∂v·∂v/∂x", ""}}, "",
               [](const Args& a, bool mag) {
                 return std::vector<TensorD>{scaled(*a[0], (*a[1])[0], mag)};
               },
               {{"the scale 1/(1 − p) is forgotten: dx = m·dy/(1 − p), not m·dy",
                 [](const Args& a) { return *a[0]; }}}});
  return t;
}

Problem dropout_problem() {
  Rng r{0x7465616364726f70ull};
  Problem p;
  TensorD x = r.tensor({4, 5}, 0, 1), dy = r.tensor({4, 5}, 0, 1);
  const ops::DropoutConfig cfg{0.25, true, 0x6c657373};
  const auto f = ops::dropout_forward(x, cfg);
  TensorD mask(x.shape());
  for (Index i = 0; i < x.size(); ++i) mask[i] = f.cache.mask[static_cast<std::size_t>(i)];
  // ∂L/∂v is the staged backward with its step 2 multiplying by 1 (the cache's scale set to 1).
  auto unscaled = f.cache;
  unscaled.scale = 1;
  p.given = {{"dy", dy}, {"mask", mask}, {"p", TensorD({}, cfg.p)}};
  p.verified = {{"dmask", ops::dropout_backward_staged(dy, unscaled).dx},
                {"dscale", TensorD({}, f.cache.scale)},
                {"dx", ops::dropout_backward_staged(dy, f.cache).dx}};
  p.describe = "x (4, 5), p = 0.25, training";
  return p;
}

// ---- embedding, padding_idx None: y_q = W[idx_q] ---------------------------------------------
// dW with the rows of dy assigned, not added: at a repeated index one position's row survives.
TensorD assigned_rows(const Args& a, bool last) {
  const TensorD &w = *a[0], &idx = *a[1], &dy = *a[2];
  const Index Q = idx.size(), D = cols(w);
  TensorD o(w.shape());
  for (Index k = 0; k < Q; ++k) {
    const Index q = last ? k : Q - 1 - k;
    const auto r = static_cast<Index>(idx[q]);
    for (Index d = 0; d < D; ++d) o[r * D + d] = dy[q * D + d];
  }
  return o;
}

std::vector<Term> embedding_terms() {
  std::vector<Term> t;
  const std::string assigned =
      "the rows of dy are assigned, not added: a row looked up at several positions gets the "
      "sum of their rows of dy, not one of them (np.add.at adds; dw[idx] += dy keeps one)";
  t.push_back({"dweight", "embedding.dweight", "∂L/∂W", {"weight", "indices", "dy"}, "(V, D)",
               "W[r] reaches y_q of every position q that looked it up, with derivative 1",
               {{"Σ_{q: idx_q = r} dy_q", ""}}, "",
               [](const Args& a, bool mag) {
                 const TensorD &w = *a[0], &idx = *a[1], &dy = *a[2];
                 const Index D = cols(w);
                 TensorD o(w.shape());
                 for (Index q = 0; q < idx.size(); ++q)
                   for (Index d = 0; d < D; ++d)
                     o[static_cast<Index>(idx[q]) * D + d] += mabs(dy[q * D + d], mag);
                 return std::vector<TensorD>{o};
               },
               {{assigned, [](const Args& a) { return assigned_rows(a, true); }},
                {assigned, [](const Args& a) { return assigned_rows(a, false); }}}});
  return t;
}

Problem embedding_problem() {
  Rng r{0x74656163656d6264ull};
  Problem p;
  const Index V = 5, D = 3;
  const std::vector<std::int64_t> rows_of = {2, 0, 2, 4, 1, 2, 0};  // 2 three times, 0 twice
  const auto Q = static_cast<Index>(rows_of.size());
  Tensor<std::int64_t> idx({Q});
  TensorD idx_d({Q});
  for (Index q = 0; q < Q; ++q) idx[q] = rows_of[static_cast<std::size_t>(q)], idx_d[q] = idx[q];
  TensorD w = r.tensor({V, D}, 0, 1), dy = r.tensor({Q, D}, 0, 1);
  const auto f = ops::embedding_forward(idx, w, ops::EmbeddingConfig{V, D});
  p.given = {{"weight", w}, {"indices", idx_d}, {"dy", dy}};
  p.verified = {{"dweight", ops::embedding_backward_staged(dy, idx, f.cache).dweight}};
  p.describe = "indices (7) into weight (5, 3), row 2 three times and row 0 twice";
  return p;
}

}  // namespace

TensorD sum_parts(const std::vector<TensorD>& parts) {
  TensorD s = parts.at(0);
  for (std::size_t k = 1; k < parts.size(); ++k)
    for (Index i = 0; i < s.size(); ++i) s[i] += parts[k][i];
  return s;
}

std::string link(const Lesson& l, const std::string& id) {
  std::string anchor = id;
  for (char& c : anchor)
    if (c == '.' || c == '_') c = '-';
  return "derivations/" + l.page + ".html#" + anchor;
}

const std::vector<Lesson>& lessons() {
  static const std::vector<Lesson> all = [] {
    std::vector<Lesson> v;
    v.push_back({"bn", "batch normalization (training)", "batchnorm", "N = 8 samples, C = 3 channels",
                 norm_given(true), norm_terms("bn", true), {"dx", "dgamma", "dbeta"}, bn_problem});
    v.push_back({"ln", "layer normalization over the last axis", "layernorm", "N = 4 rows, D = 6 features",
                 norm_given(false), norm_terms("ln", false), {"dx", "dgamma", "dbeta"}, ln_problem});
    v.push_back({"softmax", "softmax over the last axis", "softmax", "R = 4 rows, M = 6 values per row",
                 {{"x", "(R, M)", "the input"},
                  {"dy", "(R, M)", "the upstream gradient ∂L/∂y"},
                  {"e", "(R, M)", "e = exp(x − m), m the row maximum", true},
                  {"s", "(R)", "the row sums s = Σⱼ eⱼ", true},
                  {"y", "(R, M)", "y = e/s", true},
                  {"is_max", "(R, M)", "1 at the first maximum of each row, 0 elsewhere", false, true}},
                 softmax_terms(), {"dx"}, softmax_problem});
    v.push_back({"cross_entropy", "cross-entropy with class-index targets, reduction 'mean'", "softmax",
                 "R = 4 samples, C = 5 classes",
                 {{"x", "(R, C)", "the logits"},
                  {"dy", "()", "the upstream gradient of the scalar loss"},
                  {"q", "(R, C)", "the targets, one-hot", false, true},
                  {"p", "(R, C)", "p = softmax(x) per row", true},
                  {"is_max", "(R, C)", "1 at the first maximum of each row, 0 elsewhere", false, true}},
                 xent_terms(), {"dx"}, xent_problem});
    v.push_back({"linear", "linear layer y = x Wᵀ + b", "linear", "N = 5 samples, I = 4 inputs, O = 3 outputs",
                 {{"x", "(N, I)", "the input"},
                  {"weight", "(O, I)", "W, as PyTorch stores it"},
                  {"dy", "(N, O)", "the upstream gradient ∂L/∂y"}},
                 linear_terms(), {"dx", "dweight", "dbias"}, linear_problem});
    v.push_back({"silu", "SiLU y = x·σ(x), element-wise", "activations", "N = 4 rows, D = 5 values",
                 {{"x", "(N, D)", "the input"},
                  {"dy", "(N, D)", "the upstream gradient ∂L/∂y"},
                  {"s", "(N, D)", "s = σ(x), the logistic sigmoid", true}},
                 silu_terms(), {"dx"}, silu_problem});
    v.push_back({"mse_loss", "MSE loss, reduction 'mean'", "losses", "N = 3 rows, D = 4 values",
                 {{"x", "(N, D)", "the input"},
                  {"target", "(N, D)", "the target"},
                  {"dy", "()", "the upstream gradient of the scalar loss"}},
                 mse_terms(), {"dx", "dtarget"}, mse_problem});
    v.push_back({"dropout", "dropout in training, p given", "dropout", "N = 4 rows, D = 5 values",
                 {{"dy", "(N, D)", "the upstream gradient ∂L/∂y"},
                  {"mask", "(N, D)", "m: 1 where the forward pass kept an element, 0 where not",
                   false, true},
                  {"p", "()", "the drop probability", false, true}},
                 dropout_terms(), {"dx"}, dropout_problem});
    v.push_back({"embedding", "embedding y_q = W[idx_q], padding_idx None", "embedding",
                 "Q = 7 positions, V = 5 rows, D = 3 columns",
                 {{"weight", "(V, D)", "the table W (dW has its shape)"},
                  {"indices", "(Q)", "the row each position looked up (whole numbers, as floats)",
                   false, true},
                  {"dy", "(Q, D)", "the upstream gradient ∂L/∂y"}},
                 embedding_terms(), {"dweight"}, embedding_problem});
    return v;
  }();
  return all;
}

const Lesson* find_lesson(const std::string& op) {
  for (const auto& l : lessons())
    if (l.op == op) return &l;
  return nullptr;
}

}  // namespace gradproof::cli::teach
