// `gradproof check OP`: a framework's gradients against gradproof's float64 ones (see check.hpp).
#include "gradproof/cli/check.hpp"

#include "gradproof/catalog/catalog.hpp"
#include "gradproof/check/results.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <sstream>

namespace gradproof::cli {
namespace {

std::string g6(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

std::string index_string(const std::vector<std::int64_t>& v) {
  std::string s = "(";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

// How an argument is named in a message: `--running-mean` on the command line, `running_mean=`
// for the Python module (the same check, called with keyword arguments).
std::string arg_name(const CheckArgs& args, const std::string& n) {
  if (!args.python) return "--" + n;
  std::string k = n;
  std::replace(k.begin(), k.end(), '-', '_');
  return k + "=";
}

// The arrays of one check, read from their files.
struct Loaded {
  const CheckArgs* args = nullptr;
  std::map<std::string, io::NpyArray> arrays;  // by name without "--": x, dy, gamma, dx, running-mean, ...
  bool has(const std::string& n) const { return arrays.count(n) != 0; }
  const TensorD& operator[](const std::string& n) const { return arrays.at(n).values; }
  const TensorD* opt(const std::string& n) const { return has(n) ? &arrays.at(n).values : nullptr; }
  double number(const std::string& n, double fallback) const {
    const auto it = args->values.find(n);
    if (it == args->values.end()) return fallback;
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || *end != '\0' || !std::isfinite(v))
      throw UsageError("check " + args->op + ": " + arg_name(*args, n) + " needs a number; got '" + it->second + "'");
    return v;
  }
  bool training() const { return !args->flags.count("eval"); }
};

// The reference of a normalization: the gradients and how elements map to sets and parameters.
struct NormReference {
  TensorD y, dx, dgamma, dbeta;
  std::vector<Index> set_of, param_of;  // per element; param_of empty without γ/β
  std::vector<double> mean, invstd;     // per set, as the forward used them
  bool training = true;
  double eps = 1e-5;
};

// The magnitude of the terms that cancel in each gradient (the tolerance scale), per output.
// dx = s (g − mean g − x̂ mean(g x̂)) in training, s·g in eval; dγ = Σ dy x̂; dβ = Σ dy.
std::map<std::string, double> norm_scales(const NormReference& r, const TensorD& x, const TensorD& dy, const TensorD* gamma) {
  const Index n = x.size();
  const std::size_t S = r.mean.size();
  std::vector<double> mg(S, 0), mgx(S, 0), cnt(S, 0);
  const auto xhat = [&](Index i) { return (x[i] - r.mean[r.set_of[i]]) * r.invstd[r.set_of[i]]; };
  const auto g = [&](Index i) { return std::abs(dy[i] * (gamma ? (*gamma)[r.param_of[i]] : 1.0)); };
  for (Index i = 0; i < n; ++i) {
    mg[r.set_of[i]] += g(i), mgx[r.set_of[i]] += g(i) * std::abs(xhat(i)), cnt[r.set_of[i]] += 1;
  }
  double sdx = 0;
  for (Index i = 0; i < n; ++i) {
    const auto k = r.set_of[i];
    const double t = r.training ? g(i) + mg[k] / cnt[k] + std::abs(xhat(i)) * mgx[k] / cnt[k] : g(i);
    sdx = std::max(sdx, r.invstd[k] * t);
  }
  std::map<std::string, double> out{{"dx", sdx}};
  if (!r.param_of.empty()) {
    const Index P = std::max(r.dgamma.size(), r.dbeta.size());
    std::vector<double> sg(static_cast<std::size_t>(P), 0), sb(static_cast<std::size_t>(P), 0);
    for (Index i = 0; i < n; ++i) sg[r.param_of[i]] += std::abs(dy[i] * xhat(i)), sb[r.param_of[i]] += std::abs(dy[i]);
    out["dgamma"] = sg.empty() ? 0 : *std::max_element(sg.begin(), sg.end());
    out["dbeta"] = sb.empty() ? 0 : *std::max_element(sb.begin(), sb.end());
  }
  return out;
}

// One op that `check` knows: its arrays, options and how to recompute its gradients.
struct Adapter {
  std::string op, title;
  std::vector<std::string> inputs;              // differentiable, x first: --<name> and --d<name>
  std::vector<std::string> required;            // of the inputs and arrays, those that must be given
  std::vector<std::string> arrays;              // other arrays (running statistics)
  std::vector<std::string> options;             // --<name> VALUE
  bool has_mode = false;                        // --training / --eval
  std::function<void(const Loaded&, CheckReport&, std::map<std::string, TensorD>&,
                     std::map<std::string, double>&, std::optional<DiagSets>&)>
      reference;
  std::set<std::string> integer_ok = {};  // of the arrays, those that may hold integers
};

// bn, ln, gn, in: their public API (not yet declared through the harness).
NormReference bn_reference(const Loaded& in, std::string& setting) {
  const TensorD& x = in["x"];
  ops::BatchNormConfig cfg;
  cfg.eps = in.number("eps", 1e-5);
  cfg.momentum = in.number("momentum", 0.1);
  ops::BatchNormForward<double> fwd;
  if (in.training()) {
    if (in.has("running-mean") || in.has("running-var"))
      throw UsageError("check bn: --running-mean and --running-var are for --eval (training uses the batch statistics)");
    fwd = ops::batchnorm_forward_train<double>(x, in.opt("gamma"), in.opt("beta"), nullptr, cfg);
  } else {
    if (!in.has("running-mean") || !in.has("running-var")) throw UsageError("check bn: --eval needs --running-mean and --running-var");
    const ops::BatchNormRunningStats<double> run{in["running-mean"], in["running-var"], 0};
    fwd = ops::batchnorm_forward_eval<double>(x, in.opt("gamma"), in.opt("beta"), run, cfg);
  }
  const auto g = ops::batchnorm_backward<double>(in["dy"], x, in.opt("gamma"), fwd.cache);
  NormReference r{fwd.y, g.dx, g.dgamma, g.dbeta, {}, {}, {}, {}, in.training(), cfg.eps};
  const ops::NCL d = fwd.cache.dims;
  r.set_of.resize(static_cast<std::size_t>(x.size()));
  for (Index i = 0; i < x.size(); ++i) r.set_of[i] = (i / d.L) % d.C;
  if (in.has("gamma") || in.has("beta")) r.param_of = r.set_of;
  for (Index c = 0; c < d.C; ++c) r.mean.push_back(fwd.cache.mean[c]), r.invstd.push_back(fwd.cache.invstd[c]);
  setting = "x " + to_string(x.shape()) + ", " + (in.training() ? "training (batch statistics)" : "eval (running statistics)") +
            ", eps " + g6(cfg.eps);
  return r;
}

template <class Fwd>
NormReference family_reference(const Loaded& in, const Fwd& fwd_and_grads, double eps) {
  const TensorD& x = in["x"];
  const auto [fwd, g] = fwd_and_grads();
  NormReference r{fwd.y, g.dx, g.dgamma, g.dbeta, {}, {}, {}, {}, fwd.cache.training, eps};
  const auto& s = fwd.cache.sets;
  r.set_of.resize(static_cast<std::size_t>(x.size()));
  if (in.has("gamma") || in.has("beta")) r.param_of.resize(r.set_of.size());
  for (Index i = 0; i < x.size(); ++i) {
    r.set_of[i] = i / s.M;
    if (!r.param_of.empty()) r.param_of[i] = s.param(i / s.M, i % s.M);
  }
  for (Index k = 0; k < s.R; ++k) r.mean.push_back(fwd.cache.mean[k]), r.invstd.push_back(fwd.cache.invstd[k]);
  return r;
}

Shape parse_shape(const std::string& op, const std::string& text) {
  Shape s;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, ',');) {
    char* end = nullptr;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || v <= 0)
      throw UsageError("check " + op + ": --normalized-shape needs positive extents separated by commas, e.g. 4,5; got '" + text + "'");
    s.push_back(v);
  }
  if (s.empty()) throw UsageError("check " + op + ": --normalized-shape is empty");
  return s;
}

Index as_count(const Loaded& in, const std::string& name) {
  const double v = in.number(name, 0);
  if (v != std::floor(v) || v < 1) throw UsageError("check " + in.args->op + ": " + arg_name(*in.args, name) + " needs a positive integer; got '" + in.args->values.at(name) + "'");
  return static_cast<Index>(v);
}

// Fills the report's reference gradients, scales and diagnosis sets from a norm reference.
void norm_into(const Loaded& in, const NormReference& r, std::map<std::string, TensorD>& ref,
               std::map<std::string, double>& scale, std::optional<DiagSets>& diag, CheckReport& rep) {
  ref["y"] = r.y;
  ref["dx"] = r.dx;
  if (r.dgamma.size()) ref["dgamma"] = r.dgamma;
  if (r.dbeta.size()) ref["dbeta"] = r.dbeta;
  scale = norm_scales(r, in["x"], in["dy"], in.opt("gamma"));
  if (!r.training) {
    rep.diagnosis_note = "no diagnosis in eval mode: dx = γ·dy/√(r_σ²+ε) has no mean or variance path";
    return;
  }
  DiagSets d{in["x"], in["dy"], r.set_of, static_cast<Index>(r.mean.size()), {}, r.eps};
  d.gamma.assign(r.set_of.size(), 1.0);
  if (in.has("gamma"))
    for (std::size_t i = 0; i < r.set_of.size(); ++i) d.gamma[i] = in["gamma"][r.param_of[i]];
  diag = std::move(d);
}

// An op declared through the harness: its inputs (--<name>, --d<name>) and options (--<name>,
// with '-' for '_') come from the declaration; no code here is particular to the op.
std::string flag_of(const std::string& option) {
  std::string f = option;
  std::replace(f.begin(), f.end(), '_', '-');
  return f;
}

Adapter declared_adapter(const catalog::FromArrays& decl) {
  Adapter a;
  a.op = decl.op;
  for (const auto& e : catalog::ops())
    if (e.id == decl.op) a.title = e.title + " (declared through the harness)";
  a.inputs = decl.inputs;
  a.required = decl.inputs;
  a.required.push_back("dy");
  for (const auto& o : decl.options) a.options.push_back(flag_of(o));
  for (const auto& n : decl.arrays) a.arrays.push_back(flag_of(n)), a.integer_ok.insert(flag_of(n));
  a.reference = [decl](const Loaded& in, CheckReport& rep, auto& ref, auto& scale, auto&) {
    catalog::UserArrays ua;
    for (const auto& n : decl.inputs) ua.inputs.push_back(in[n]);
    ua.dy = in["dy"];
    for (const auto& n : decl.arrays)
      if (in.has(flag_of(n)))
        ua.arrays[n] = {in[flag_of(n)], !io::is_float(in.arrays.at(flag_of(n)).dtype)};
    for (const auto& o : decl.options)
      if (in.args->values.count(flag_of(o)))
        ua.options.emplace_back(o, in.args->values.at(flag_of(o)));
    const catalog::UserGradients g = decl.run(ua);
    ref["y"] = g.y;
    for (std::size_t k = 0; k < decl.inputs.size(); ++k) {
      ref["d" + decl.inputs[k]] = g.grads[k];
      scale["d" + decl.inputs[k]] = g.scale[k];
    }
    rep.setting = g.describe;
    rep.diagnosis_note = "no diagnosis for " + decl.op + " (the span{1, x̂} diagnosis is for the normalizations with a mean)";
  };
  return a;
}

const std::vector<Adapter>& adapters() {
  static const std::vector<Adapter> all = {
      {"bn", "batch normalization, x (N, C[, L | H, W]), γ and β (C)", {"x", "gamma", "beta"}, {"x", "dy"},
       {"running-mean", "running-var"}, {"eps", "momentum"}, true,
       [](const Loaded& in, CheckReport& rep, auto& ref, auto& scale, auto& diag) {
         norm_into(in, bn_reference(in, rep.setting), ref, scale, diag, rep);
       }},
      {"ln", "layer normalization over the trailing --normalized-shape axes (default: the last axis)",
       {"x", "gamma", "beta"}, {"x", "dy"}, {}, {"eps", "normalized-shape"}, false,
       [](const Loaded& in, CheckReport& rep, auto& ref, auto& scale, auto& diag) {
         const TensorD& x = in["x"];
         ops::LayerNormConfig cfg;
         cfg.eps = in.number("eps", 1e-5);
         const auto it = in.args->values.find("normalized-shape");
         cfg.normalized_shape = it != in.args->values.end() ? parse_shape("ln", it->second)
                                                            : (x.rank() ? Shape{x.shape().back()} : Shape{});
         const auto r = family_reference(in, [&] {
           auto f = ops::layernorm_forward<double>(x, in.opt("gamma"), in.opt("beta"), cfg);
           auto g = ops::layernorm_backward<double>(in["dy"], x, in.opt("gamma"), f.cache);
           return std::pair{std::move(f), std::move(g)};
         }, cfg.eps);
         rep.setting = "x " + to_string(x.shape()) + ", normalized_shape " + to_string(cfg.normalized_shape) + ", eps " + g6(cfg.eps);
         norm_into(in, r, ref, scale, diag, rep);
       }},
      {"gn", "group normalization, x (N, C[, L | H, W]) in --groups groups, γ and β (C)", {"x", "gamma", "beta"},
       {"x", "dy"}, {}, {"eps", "groups"}, false,
       [](const Loaded& in, CheckReport& rep, auto& ref, auto& scale, auto& diag) {
         const TensorD& x = in["x"];
         if (!in.args->values.count("groups")) throw UsageError("check gn: " + arg_name(*in.args, "groups") + " is required (num_groups has no default, as in PyTorch)");
         ops::GroupNormConfig cfg{as_count(in, "groups"), in.number("eps", 1e-5)};
         const auto r = family_reference(in, [&] {
           auto f = ops::groupnorm_forward<double>(x, in.opt("gamma"), in.opt("beta"), cfg);
           auto g = ops::groupnorm_backward<double>(in["dy"], x, in.opt("gamma"), f.cache);
           return std::pair{std::move(f), std::move(g)};
         }, cfg.eps);
         rep.setting = "x " + to_string(x.shape()) + ", num_groups " + std::to_string(cfg.num_groups) + ", eps " + g6(cfg.eps);
         norm_into(in, r, ref, scale, diag, rep);
       }},
      {"in", "instance normalization, x (N, C, L | H, W), γ and β (C)", {"x", "gamma", "beta"}, {"x", "dy"},
       {"running-mean", "running-var"}, {"eps", "momentum"}, true,
       [](const Loaded& in, CheckReport& rep, auto& ref, auto& scale, auto& diag) {
         const TensorD& x = in["x"];
         ops::InstanceNormConfig cfg{in.number("eps", 1e-5), in.number("momentum", 0.1)};
         if (!in.training() && (!in.has("running-mean") || !in.has("running-var")))
           throw UsageError("check in: --eval needs --running-mean and --running-var");
         const auto r = family_reference(in, [&] {
           auto f = in.training() ? ops::instancenorm_forward_train<double>(x, in.opt("gamma"), in.opt("beta"), nullptr, cfg)
                                  : ops::instancenorm_forward_eval<double>(
                                        x, in.opt("gamma"), in.opt("beta"),
                                        ops::InstanceNormRunningStats<double>{in["running-mean"], in["running-var"]}, cfg);
           auto g = ops::instancenorm_backward<double>(in["dy"], x, in.opt("gamma"), f.cache);
           return std::pair{std::move(f), std::move(g)};
         }, cfg.eps);
         rep.setting = "x " + to_string(x.shape()) + ", " + (in.training() ? "instance statistics" : "eval (running statistics)") +
                       ", eps " + g6(cfg.eps);
         norm_into(in, r, ref, scale, diag, rep);
       }},
  };
  static const std::vector<Adapter> with_declared = [] {
    std::vector<Adapter> out = all;
    for (const auto& decl : catalog::registry().from_arrays) out.push_back(declared_adapter(decl));
    return out;
  }();
  return with_declared;
}

int precision_rank(io::NpyDtype d) {
  switch (d) {
    case io::NpyDtype::bfloat16: return 0;
    case io::NpyDtype::float16: return 1;
    case io::NpyDtype::float32: return 2;
    default: return 3;
  }
}

}  // namespace

bool CheckReport::passed() const {
  return std::all_of(outputs.begin(), outputs.end(), [](const OutputCheck& o) { return o.cmp.passed; });
}

std::string check_usage() {
  std::ostringstream out;
  for (const auto& a : adapters()) {
    out << "  " << std::left << std::setw(15) << a.op << " " << a.title << "\n           ";
    for (const auto& n : a.inputs) out << " --" << n << " --d" << n;
    out << " --dy";
    for (const auto& n : a.arrays) out << " --" << n;
    for (const auto& n : a.options) out << " --" << n << " V";
    if (a.has_mode) out << " --training|--eval";
    out << '\n';
  }
  return out.str();
}

CheckReport run_check(const CheckArgs& args) {
  const auto it = std::find_if(adapters().begin(), adapters().end(), [&](const Adapter& a) { return a.op == args.op; });
  if (it == adapters().end()) {
    std::string known;
    for (const auto& a : adapters()) known += (known.empty() ? "" : ", ") + a.op;
    throw UsageError("check: unknown op '" + args.op + "' (check knows " + known + ")");
  }
  const Adapter& a = *it;
  const auto arg = [&](const std::string& n) { return arg_name(args, n); };
  const auto given = [&](const std::string& n) { return args.values.count(n) != 0 || args.arrays.count(n) != 0; };
  const auto source = [&](const std::string& n) {
    return args.values.count(n) ? " " + args.values.at(n) : std::string(" (array)");
  };
  std::set<std::string> array_names{"dy"};
  for (const auto& n : a.inputs) array_names.insert(n), array_names.insert("d" + n);
  for (const auto& n : a.arrays) array_names.insert(n);
  for (const auto& [k, v] : args.values) {
    if (!array_names.count(k) && std::find(a.options.begin(), a.options.end(), k) == a.options.end())
      throw UsageError("check " + a.op + ": unknown option '" + arg(k) + "'");
  }
  for (const auto& [k, v] : args.arrays)
    if (!array_names.count(k)) throw UsageError("check " + a.op + ": unknown array argument '" + arg(k) + "'");
  for (const auto& f : args.flags)
    if (!a.has_mode) throw UsageError("check " + a.op + ": unknown option '" + arg(f) + "' (" + a.op + " has no training/eval mode)");
  if (args.flags.count("training") && args.flags.count("eval")) throw UsageError("check " + a.op + ": --training and --eval exclude each other");
  for (const auto& r : a.required)
    if (!given(r)) throw UsageError("check " + a.op + ": " + arg(r) + (args.python ? " (an array)" : " FILE") + " is required");
  bool any_gradient = false;
  for (const auto& n : a.inputs) {
    if (!given("d" + n)) continue;
    any_gradient = true;
    if (!given(n)) throw UsageError("check " + a.op + ": " + arg("d" + n) + " needs " + arg(n) + " (the input it is the gradient of)");
  }
  if (!any_gradient) {
    std::string list;
    for (const auto& n : a.inputs) list += (list.empty() ? "" : ", ") + arg("d" + n);
    throw UsageError("check " + a.op + ": no gradient to check: give at least one of " + list);
  }

  Loaded in;
  in.args = &args;
  CheckReport rep;
  rep.op = a.op;
  int worst = 4;
  std::map<std::string, std::string> by_dtype;  // dtype → the arrays in it
  const auto take = [&](const std::string& k, io::NpyArray arr) {
    if (!io::is_float(arr.dtype)) {
      if (!a.integer_ok.count(k))
        throw UsageError("check " + a.op + ": " + arg(k) + source(k) + " holds " +
                         io::name(arr.dtype) +
                         "; expected floating point (float16, bfloat16, float32, float64)");
      in.arrays.emplace(k, std::move(arr));  // indices or classes: no part in the tolerance
      return;
    }
    by_dtype[io::name(arr.dtype)] += (by_dtype[io::name(arr.dtype)].empty() ? "" : ", ") + k;
    if (precision_rank(arr.dtype) < worst)
      worst = precision_rank(arr.dtype), rep.dtype = io::name(arr.dtype);
    in.arrays.emplace(k, std::move(arr));
  };
  for (const auto& [k, path] : args.values)
    if (array_names.count(k)) take(k, io::read_npy(path));
  for (const auto& [k, arr] : args.arrays) {
    if (args.values.count(k)) throw UsageError("check " + a.op + ": " + arg(k) + " given twice (a file and an array)");
    take(k, arr);
  }
  for (const auto& [d, names] : by_dtype) rep.dtype_reason += (rep.dtype_reason.empty() ? "" : "; ") + d + ": " + names;
  std::map<std::string, TensorD> ref;
  std::map<std::string, double> scale;
  std::optional<DiagSets> diag;
  a.reference(in, rep, ref, scale, diag);

  for (const auto& n : a.inputs) {
    const std::string g = "d" + n;
    if (!in.has(g)) continue;
    const TensorD& yours = in[g];
    if (!ref.count(g))
      throw UsageError("check " + a.op + ": " + arg(g) + " given, but the op has no " + g + " here (no " + arg(n) + ")");
    const TensorD& r = ref.at(g);
    if (yours.shape() != r.shape())
      throw UsageError("check " + a.op + ": " + arg(g) + source(g) + " has shape " + to_string(yours.shape()) +
                       "; expected " + to_string(r.shape()) + " (the shape of " + n + ")");
    OutputCheck o;
    o.name = g;
    o.shape = r.shape();
    o.scale = scale.at(g);
    o.cmp = check::compare(yours.flat().matrix(), r.flat().matrix(), check::framework_policy(rep.dtype, o.scale));
    const double err = std::abs(o.cmp.analytic - o.cmp.numeric);
    const double allow = o.cmp.tol.atol + o.cmp.tol.rtol * std::abs(o.cmp.numeric);
    o.fraction = allow > 0 ? err / allow : (err > 0 ? INFINITY : 0);
    o.worst = check::unravel(o.cmp.worst, std::vector<std::int64_t>(r.shape().begin(), r.shape().end()));
    rep.outputs.push_back(std::move(o));
    if (g == "dx" && diag && !rep.outputs.back().cmp.passed) rep.diagnosis = diagnose_norm_dx(*diag, r, yours);
  }
  if (rep.diagnosis_note.empty() && !diag) rep.diagnosis_note = "no diagnosis for this op";
  return rep;
}

void print_report(std::ostream& out, const CheckReport& r) {
  const double k = check::framework_factor(r.dtype);
  out << "gradproof check " << r.op << ": " << r.setting << "\n"
      << "arrays: " << r.dtype_reason << " (the least precise sets the tolerance)\n"
      << "tolerance: the " << r.dtype << " policy, |yours - ref| <= k*scale + k*|ref| with k = " << g6(k)
      << "\n  (scale: the largest magnitude of the terms that cancel in that gradient)\n";
  std::size_t failed = 0;
  for (const auto& o : r.outputs) {
    failed += !o.cmp.passed;
    out << "  " << std::left << std::setw(7) << o.name << (o.cmp.passed ? " pass" : " FAIL") << "  worst at "
        << index_string(o.worst) << ": yours " << g6(o.cmp.analytic) << ", ref " << g6(o.cmp.numeric)
        << "\n                 error " << g6(o.fraction) << " x the allowance (atol " << g6(o.cmp.tol.atol) << ", rtol " << g6(o.cmp.tol.rtol)
        << ", scale " << g6(o.scale) << ")\n";
  }
  if (r.diagnosis) {
    std::string text = r.diagnosis->text;
    for (std::size_t p = 0; (p = text.find('\n', p)) != std::string::npos; p += 3) text.replace(p, 1, "\n  ");
    out << "diagnosis of dx:\n  " << text << "\n";
  }
  out << (failed ? "FAIL: " : "pass: ") << failed << " of " << r.outputs.size() << " gradients failed\n";
}

void write_report_json(std::ostream& out, const CheckReport& r) {
  using check::json::number;
  using check::json::string;
  out << "{\"op\": ";
  string(out, r.op);
  out << ", \"setting\": ";
  string(out, r.setting);
  out << ", \"dtype\": ";
  string(out, r.dtype);
  out << ", \"policy\": {\"k\": ";
  number(out, check::framework_factor(r.dtype));
  out << "}, \"passed\": " << (r.passed() ? "true" : "false") << ", \"outputs\": [";
  for (std::size_t i = 0; i < r.outputs.size(); ++i) {
    const auto& o = r.outputs[i];
    out << (i ? ", " : "") << "{\"name\": ";
    string(out, o.name);
    out << ", \"passed\": " << (o.cmp.passed ? "true" : "false") << ", \"worst_index\": [";
    for (std::size_t j = 0; j < o.worst.size(); ++j) out << (j ? ", " : "") << o.worst[j];
    out << "], \"yours\": ";
    number(out, o.cmp.analytic);
    out << ", \"reference\": ";
    number(out, o.cmp.numeric);
    out << ", \"fraction_of_allowance\": ";
    number(out, o.fraction);
    out << ", \"atol\": ";
    number(out, o.cmp.tol.atol);
    out << ", \"rtol\": ";
    number(out, o.cmp.tol.rtol);
    out << ", \"scale\": ";
    number(out, o.scale);
    out << ", \"max_abs_err\": ";
    number(out, o.cmp.max_abs_err);
    out << "}";
  }
  out << "]";
  if (r.diagnosis) {
    out << ", \"diagnosis\": {\"kind\": ";
    string(out, r.diagnosis->kind);
    out << ", \"text\": ";
    string(out, r.diagnosis->text);
    out << ", \"in_span\": ";
    number(out, r.diagnosis->in_span);
    out << ", \"fit\": ";
    number(out, r.diagnosis->fit);
    out << "}";
  }
  out << "}\n";
}

int check_main(const std::vector<std::string>& words) {
  if (words.empty() || words[0].rfind("--", 0) == 0) throw UsageError("check: needs an OP first (check OP --x x.npy --dy dy.npy --dx dx.npy ...)");
  CheckArgs args;
  args.op = words[0];
  for (std::size_t i = 1; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w.rfind("--", 0) != 0) throw UsageError("check " + args.op + ": unexpected argument '" + w + "' (options are --name VALUE)");
    const std::string name = w.substr(2);
    if (name == "training" || name == "eval") {
      args.flags.insert(name);
      continue;
    }
    if (i + 1 == words.size() || words[i + 1].rfind("--", 0) == 0)
      throw UsageError("check " + args.op + ": " + w + " needs a value");
    const std::string& v = words[++i];
    if (name == "json") {
      if (args.json) throw UsageError("check " + args.op + ": --json given more than once");
      args.json = v;
    } else if (!args.values.emplace(name, v).second) {
      throw UsageError("check " + args.op + ": " + w + " given more than once");
    }
  }
  std::ofstream json;
  if (args.json) {
    json.open(*args.json);
    if (!json) throw UsageError("check " + args.op + ": cannot open " + *args.json + " for writing");
  }
  CheckReport rep;
  try {
    rep = run_check(args);
  } catch (const InvalidArgument& e) {
    throw UsageError(std::string("check ") + args.op + ": " + e.what());
  }
  print_report(std::cout, rep);
  if (args.json) {
    write_report_json(json, rep);
    json.close();
    if (json.fail()) throw UsageError("check " + args.op + ": cannot write " + *args.json);
  }
  return rep.passed() ? 0 : 1;
}

namespace {

// The inputs of the known-answer vectors of each op: a fixed shape, deterministic values (sin and
// cos of the index: no generator whose sequence could change), PyTorch's default options.
TensorD wave(const Shape& s, double a, double b, double offset, double spread) {
  TensorD t(s);
  for (Index i = 0; i < t.size(); ++i)
    t[i] = offset + spread * std::sin(a * static_cast<double>(i) + b) +
           0.1 * std::cos(3.1 * static_cast<double>(i));
  return t;
}

// One array of a vector case: a wave (a, b, offset, spread), a 0/1 step of a wave (a dropout
// mask), or integers given as they are (class indices, embedding rows), written as int64.
struct VectorArray {
  std::string name;
  Shape shape;
  std::array<double, 4> w{};
  std::vector<double> ints = {};
  bool step = false;
};
struct VectorCase {
  std::string op;
  std::vector<VectorArray> arrays;
  std::map<std::string, std::string> options = {};
};

// The waves: X for normalization inputs (around 1), A for activation inputs (both signs, |x| ≥
// 0.139: away from the kinks at 0), D for dy, G and B for γ and β (and weights, biases, targets).
constexpr std::array<double, 4> X{0.9, 0.3, 1.0, 2.0}, A{0.9, 0.3, 0.0, 2.0},
    D{1.7, 1.1, 0.0, 1.0}, G{2.3, 0.5, 1.0, 0.5}, B{1.3, 0.2, 0.0, 0.3};
std::vector<VectorArray> norm(Shape x, Shape p, bool beta) {
  std::vector<VectorArray> v{{"x", x, X}, {"dy", x, D}, {"gamma", p, G}};
  if (beta) v.push_back({"beta", p, B});
  return v;
}
std::vector<VectorArray> activation() { return {{"x", {4, 5}, A}, {"dy", {4, 5}, D}}; }
// The regression losses, reduction 'mean' (dy a scalar): |x − target| is 0.10 or more away from
// the default delta = beta = 1 of Huber and smooth L1, with 7 of the 12 beyond it.
std::vector<VectorArray> loss() {
  return {{"x", {3, 4}, A}, {"target", {3, 4}, {1.3, 0.2, 0.0, 1.0}}, {"dy", {}, {0, 0, 0.9, 0}}};
}
// Class indices in [0, 5) for 6 samples: 1 and 4 twice, 3 never.
const std::vector<double> classes{1, 4, 2, 0, 4, 1};

const std::vector<VectorCase>& vector_cases() {
  static const std::vector<VectorCase> all = {
      {"bn", norm({4, 3, 5}, {3}, true)},
      {"ln", norm({4, 3, 5}, {5}, true), {{"normalized-shape", "5"}}},
      {"gn", norm({2, 4, 3}, {4}, true), {{"groups", "2"}}},
      {"in", norm({4, 3, 5}, {3}, true)},
      {"rms", norm({4, 6}, {6}, false), {{"eps", "1e-06"}}},
      {"softmax", {{"x", {4, 6}, X}, {"dy", {4, 6}, D}}},
      {"log_softmax", {{"x", {4, 6}, X}, {"dy", {4, 6}, D}}},
      {"nll_loss", {{"x", {6, 5}, {0.9, 0.3, -2.0, 1.0}}, {"dy", {}, {0, 0, 0.9, 0}},
                    {"target", {6}, {}, classes}}},
      {"cross_entropy",
       {{"x", {6, 5}, A}, {"dy", {}, {0, 0, 0.9, 0}}, {"target", {6}, {}, classes}}},
      {"linear", {{"x", {4, 5}, {0.9, 0.3, 0.0, 1.0}}, {"weight", {3, 5}, {2.3, 0.5, 0.0, 0.5}},
                  {"bias", {3}, B}, {"dy", {4, 3}, D}}},
      {"matmul", {{"a", {2, 3, 4}, A}, {"b", {4, 5}, G}, {"dy", {2, 3, 5}, D}}},
      {"relu", activation()}, {"sigmoid", activation()}, {"tanh", activation()},
      {"leaky_relu", activation()}, {"elu", activation()}, {"gelu", activation()},
      {"silu", activation()}, {"softplus", activation()},
      {"mse_loss", loss()}, {"huber_loss", loss()}, {"smooth_l1_loss", loss()},
      {"bce_with_logits", {{"x", {3, 4}, A}, {"target", {3, 4}, {1.3, 0.2, 0.5, 0.4}},
                           {"dy", {}, {0, 0, 0.9, 0}}}},
      // Training mode, p 0.5; the mask keeps 13 of 24 (the sign of a wave).
      {"dropout",
       {{"x", {4, 6}, A}, {"dy", {4, 6}, D}, {"mask", {4, 6}, {2.3, 0.5, 0, 1}, {}, true}}},
      // Rows 0, 1 (twice) and 3 (three times) repeated: their gradients sum; rows 2 and 4 unused;
      // padding_idx unset.
      {"embedding", {{"weight", {6, 3}, A}, {"indices", {2, 4}, {}, {0, 1, 3, 3, 5, 1, 0, 3}},
                     {"dy", {2, 4, 3}, D}}},
  };
  return all;
}

}  // namespace

int vectors_main(const std::vector<std::string>& words) {
  if (words.size() != 2) throw UsageError("vectors: needs OP and DIR (vectors OP DIR)");
  const std::string& op = words[0];
  const std::filesystem::path dir = words[1];
  const auto it = std::find_if(adapters().begin(), adapters().end(),
                               [&](const Adapter& a) { return a.op == op; });
  const auto vc = std::find_if(vector_cases().begin(), vector_cases().end(),
                               [&](const VectorCase& c) { return c.op == op; });
  if (it == adapters().end() || vc == vector_cases().end()) {
    std::string known;
    for (const auto& c : vector_cases()) known += (known.empty() ? "" : ", ") + c.op;
    throw UsageError("vectors: unknown op '" + op + "' (vectors knows " + known + ")");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw UsageError("vectors: cannot create " + dir.string() + ": " + ec.message());
  std::ostringstream manifest;
  manifest << "{\"op\": ";
  check::json::string(manifest, op);
  manifest << ", \"generator\": \"gradproof vectors\", \"options\": {";
  bool first = true;
  for (const auto& [k, v] : vc->options) {
    manifest << (first ? "" : ", ");
    check::json::string(manifest, k);
    manifest << ": ";
    check::json::string(manifest, v);
    first = false;
  }
  manifest << "}, \"sets\": [";
  std::size_t files = 0;
  for (const io::NpyDtype dtype : {io::NpyDtype::float64, io::NpyDtype::float32}) {
    // The inputs rounded to the dtype; the answers computed in float64 from those exact values
    // (then rounded to the dtype): the float32 answers are what an exact float32 implementation
    // rounds to, to be compared with the float32 tolerance policy. Integer arrays are int64 in
    // both sets, as PyTorch's indices are.
    CheckArgs args;
    args.op = op;
    args.values = vc->options;
    Loaded in;
    in.args = &args;
    for (const VectorArray& s : vc->arrays) {
      TensorD t = s.ints.empty() ? wave(s.shape, s.w[0], s.w[1], s.w[2], s.w[3]) : TensorD(s.shape);
      for (Index i = 0; i < t.size(); ++i)
        t[i] = s.step ? (t[i] >= 0 ? 1.0 : 0.0) : s.ints.empty() ? t[i] : s.ints.at(i);
      if (s.ints.empty() && dtype == io::NpyDtype::float32) t = t.cast<float>().cast<double>();
      const io::NpyDtype stored = s.ints.empty() ? dtype : io::NpyDtype::int64;
      in.arrays.emplace(s.name, io::NpyArray{std::move(t), stored, false, 1});
      args.values[s.name] = "";
    }
    CheckReport rep;
    std::map<std::string, TensorD> ref;
    std::map<std::string, double> scale;
    std::optional<DiagSets> diag;
    it->reference(in, rep, ref, scale, diag);
    const std::string dt = io::name(dtype);
    manifest << (dtype == io::NpyDtype::float64 ? "" : ", ") << "{\"dtype\": \"" << dt
             << "\", \"setting\": ";
    check::json::string(manifest, rep.setting);
    manifest << ", \"tolerance_k\": ";
    check::json::number(manifest, check::framework_factor(dt));
    manifest << ", \"files\": {";
    bool f1 = true;
    const auto put = [&](const std::string& name, const TensorD& t, io::NpyDtype type,
                         const char* role) {
      const std::string file = name + "." + io::name(type) + ".npy";
      io::write_npy((dir / file).string(), t, type);
      manifest << (f1 ? "" : ", ");
      check::json::string(manifest, name);
      manifest << ": {\"file\": ";
      check::json::string(manifest, file);
      manifest << ", \"role\": \"" << role << "\", \"dtype\": \"" << io::name(type)
               << "\", \"shape\": [";
      for (std::size_t j = 0; j < t.shape().size(); ++j)
        manifest << (j ? ", " : "") << t.shape()[j];
      manifest << "]";
      if (scale.count(name)) {
        manifest << ", \"scale\": ";
        check::json::number(manifest, scale.at(name));
      }
      manifest << "}";
      f1 = false;
      ++files;
    };
    for (const auto& [k, t] : in.arrays)
      put(k, t.values, t.dtype, k == "dy" ? "upstream gradient" : "input");
    for (const auto& [k, t] : ref) put(k, t, dtype, k == "y" ? "output" : "gradient");
    manifest << "}}";
  }
  manifest << "]}\n";
  std::ofstream m(dir / "manifest.json");
  m << manifest.str();
  m.close();
  if (m.fail()) throw UsageError("vectors: cannot write " + (dir / "manifest.json").string());
  std::cout << "wrote " << files << " arrays and manifest.json to " << dir.string() << "\n";
  return 0;
}

}  // namespace gradproof::cli
