// What a wrong dx of the normalization family looks like (see diagnose.hpp).
#include "gradproof/cli/diagnose.hpp"

#include <cmath>
#include <cstdio>
#include <functional>
#include <iomanip>
#include <sstream>

namespace gradproof::cli {
namespace {

struct SetStats {
  std::vector<double> mean, var, s, M;  // per set; var biased
};

SetStats stats(const DiagSets& d) {
  SetStats st;
  const auto S = static_cast<std::size_t>(d.sets);
  st.mean.assign(S, 0), st.var.assign(S, 0), st.s.assign(S, 0), st.M.assign(S, 0);
  for (Index i = 0; i < d.x.size(); ++i) st.mean[d.set_of[i]] += d.x[i], st.M[d.set_of[i]] += 1;
  for (std::size_t k = 0; k < S; ++k) st.mean[k] /= st.M[k];
  for (Index i = 0; i < d.x.size(); ++i) {
    const double c = d.x[i] - st.mean[d.set_of[i]];
    st.var[d.set_of[i]] += c * c;
  }
  for (std::size_t k = 0; k < S; ++k) st.var[k] /= st.M[k], st.s[k] = 1 / std::sqrt(st.var[k] + d.eps);
  return st;
}

// dx of the sets for a variant of the formula: invstd per set, g and whether each path is kept.
struct Variant {
  bool gamma = true, mean_path = true, var_path = true;
  double var_divisor_minus = 0;  // the variance path's mean over M − this (1: the unbiased divisor)
  bool unbiased_invstd = false;  // s from the unbiased variance
};

std::vector<double> variant_dx(const DiagSets& d, const SetStats& st, const Variant& v) {
  const auto S = static_cast<std::size_t>(d.sets);
  std::vector<double> s(S), mg(S, 0), mgx(S, 0), out(static_cast<std::size_t>(d.x.size()));
  for (std::size_t k = 0; k < S; ++k)
    s[k] = v.unbiased_invstd ? 1 / std::sqrt(st.var[k] * st.M[k] / (st.M[k] - 1) + d.eps) : st.s[k];
  const auto g = [&](Index i) { return (v.gamma ? d.gamma[i] : 1.0) * d.dy[i]; };
  const auto xhat = [&](Index i) { const auto k = d.set_of[i]; return (d.x[i] - st.mean[k]) * s[k]; };
  for (Index i = 0; i < d.x.size(); ++i) mg[d.set_of[i]] += g(i), mgx[d.set_of[i]] += g(i) * xhat(i);
  for (std::size_t k = 0; k < S; ++k) mg[k] /= st.M[k], mgx[k] /= st.M[k] - v.var_divisor_minus;
  for (Index i = 0; i < d.x.size(); ++i) {
    const auto k = d.set_of[i];
    out[i] = s[k] * (g(i) - (v.mean_path ? mg[k] : 0) - (v.var_path ? xhat(i) * mgx[k] : 0));
  }
  return out;
}

std::string pct(double f) {
  char b[32];
  const double v = 100 * f;
  std::snprintf(b, sizeof b, v >= 0.1 || v == 0 ? "%.1f%%" : "%.1g%%", v);
  return b;
}

}  // namespace

Diagnosis diagnose_norm_dx(const DiagSets& d, const TensorD& dx_ref, const TensorD& dx_yours) {
  const SetStats st = stats(d);
  const Index n = d.x.size();
  const auto S = static_cast<std::size_t>(d.sets);
  double err2 = 0;
  for (Index i = 0; i < n; ++i) err2 += (dx_yours[i] - dx_ref[i]) * (dx_yours[i] - dx_ref[i]);
  Diagnosis out;
  if (err2 == 0) {
    out.kind = "none";
    out.text = "dx equals the reference";
    return out;
  }

  // Projection of each set's error onto span{1, x̂}: e ≈ a + b x̂ (1 and x̂ are orthogonal).
  std::vector<double> a(S, 0), b(S, 0), xx(S, 0);
  const auto xhat = [&](Index i) { const auto k = d.set_of[i]; return (d.x[i] - st.mean[k]) * st.s[k]; };
  for (Index i = 0; i < n; ++i) {
    const auto k = d.set_of[i];
    const double e = dx_yours[i] - dx_ref[i];
    a[k] += e, b[k] += e * xhat(i), xx[k] += xhat(i) * xhat(i);
  }
  double const_part = 0, xhat_part = 0;
  for (std::size_t k = 0; k < S; ++k) {
    a[k] /= st.M[k];
    b[k] = xx[k] > 0 ? b[k] / xx[k] : 0;
    const_part += a[k] * a[k] * st.M[k];
    xhat_part += b[k] * b[k] * xx[k];
  }
  out.in_span = (const_part + xhat_part) / err2;

  // The named bugs: the dx each gives, against the user's.
  struct Named {
    const char* kind;
    const char* text;
    std::function<std::vector<double>()> predict;
  };
  const std::vector<Named> named = {
      {"stats_constant",
       "μ and σ² treated as constants: dx = γ·dy/√(σ²+ε), without the mean and variance paths",
       [&] { return variant_dx(d, st, {.mean_path = false, .var_path = false}); }},
      {"sign", "−dx: a sign error (the whole gradient is negated)",
       [&] {
         std::vector<double> p(static_cast<std::size_t>(n));
         for (Index i = 0; i < n; ++i) p[i] = -dx_ref[i];
         return p;
       }},
      {"gamma_missing", "γ missing: dx computed from dy instead of γ·dy", [&] { return variant_dx(d, st, {.gamma = false}); }},
      {"variance_bias", "biased/unbiased variance swapped: 1/√(σ²+ε) from the unbiased variance Σ(x−μ)²/(M−1)",
       [&] { return variant_dx(d, st, {.unbiased_invstd = true}); }},
      {"variance_bias",
       "biased/unbiased variance swapped: ∂σ²/∂x = 2(x−μ)/(M−1) (the unbiased divisor) in the variance path",
       [&] { return variant_dx(d, st, {.var_divisor_minus = 1}); }},
      {"mean_path", "a constant offset per set: the mean path is missing (−mean(γ·dy)/√(σ²+ε) not subtracted)",
       [&] { return variant_dx(d, st, {.mean_path = false}); }},
      {"variance_path", "a multiple of x̂ per set: the variance path is missing (−x̂·mean(γ·dy·x̂)/√(σ²+ε) not subtracted)",
       [&] { return variant_dx(d, st, {.var_path = false}); }},
  };
  const Named* best = nullptr;
  for (const auto& c : named) {
    const auto p = c.predict();
    double r2 = 0;
    for (Index i = 0; i < n; ++i) r2 += (dx_yours[i] - p[i]) * (dx_yours[i] - p[i]);
    const double fit = std::sqrt(r2 / err2);
    if (fit < out.fit) out.fit = fit, best = &c;
  }
  // A named bug fits when the user's dx is within 5% of its prediction (measured in the error).
  constexpr double kFits = 0.05;
  std::ostringstream text;
  if (best && out.fit <= kFits) {
    out.kind = best->kind;
    text << best->text << "\n  (the error matches that bug's dx to " << pct(out.fit) << " of its size; "
         << pct(out.in_span) << " of it lies in span{1, x̂})";
  } else if (out.in_span >= 0.9) {
    const double c = const_part / (const_part + xhat_part);
    if (c >= 0.9) {
      out.kind = "mean_path";
      text << "a constant offset per set: the mean path (through μ) is wrong";
    } else if (c <= 0.1) {
      out.kind = "variance_path";
      text << "a multiple of x̂ per set: the variance path (through σ²) is wrong";
    } else {
      out.kind = "mean_and_variance_paths";
      text << "a combination of 1 and x̂ per set: both the mean and the variance paths are wrong";
    }
    text << "\n  (" << pct(out.in_span) << " of the error lies in span{1, x̂}: " << pct(c)
         << " a constant, " << pct(1 - c) << " a multiple of x̂)";
  } else {
    out.kind = "other";
    text << "not a pattern of the mean or variance path: only " << pct(out.in_span)
         << " of the error lies in span{1, x̂}, and no named bug fits (closest "
         << (best ? best->kind : "none") << ", " << pct(out.fit) << " off): look at the γ·dy/√(σ²+ε) term "
         << "itself, or at the layout of the arrays";
  }
  out.text = text.str();
  return out;
}

}  // namespace gradproof::cli
