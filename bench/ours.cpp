// Our implementations: the staged reference and the fused kernels, float32.
#include "bench.hpp"

#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/rmsnorm.hpp"

#include <algorithm>
#include <cmath>
#include <random>

namespace gradproof::bench {

double relative_difference(const float* a, const double* ref, Index n) {
  double diff = 0, scale = 0;
  for (Index i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

namespace {

void fill_normal(TensorF& t, std::mt19937_64& rng, double mean, double stddev) {
  std::normal_distribution<double> dist(mean, stddev);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<float>(dist(rng));
}

void fill_uniform(TensorF& t, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<float>(dist(rng));
}

ops::BatchNormCache<float> cache_of(const BnProblem& p) {
  ops::BatchNormCache<float> c;
  c.shape = p.shape;
  c.dims = ops::ncl_view(p.shape, "bench", "x");
  c.training = true;
  c.has_gamma = c.has_beta = true;  // the problems have γ and β
  c.mean = p.mean;
  c.var = p.var;
  c.invstd = p.invstd;
  return c;
}

Index channels(const Shape& s) { return s.at(1); }

}  // namespace

BnPtr make_bn_problem(const Shape& shape) {
  auto p = std::make_shared<BnProblem>();
  p->shape = shape;
  std::mt19937_64 rng(20240601 + static_cast<std::uint64_t>(numel(shape)));
  // A mean away from zero and a spread of 2, so that centring matters; a random upstream gradient.
  p->x = TensorF(shape);
  p->dy = TensorF(shape);
  p->gamma = TensorF({channels(shape)});
  p->beta = TensorF({channels(shape)});
  fill_normal(p->x, rng, 1.0, 2.0);
  fill_normal(p->dy, rng, 0.0, 1.0);
  fill_uniform(p->gamma, rng, 0.5, 1.5);
  fill_uniform(p->beta, rng, -0.5, 0.5);

  ops::BatchNormConfig cfg;
  cfg.eps = p->eps;
  const auto fwd = ops::batchnorm_forward_train<float>(p->x, &p->gamma, &p->beta, nullptr, cfg);
  p->mean = fwd.cache.mean;
  p->var = fwd.cache.var;
  p->invstd = fwd.cache.invstd;

  // The reference: the reference forward and the staged backward, in double, on the same inputs.
  const TensorD xd = p->x.cast<double>(), gd = p->gamma.cast<double>(), bd = p->beta.cast<double>();
  TensorD yd(shape);
  ops::BatchNormCache<double> cd;
  ops::detail::shape_cache(cd, shape, ops::ncl_view(shape, "bench", "x"), true);
  ops::detail::batchnorm_forward_train_reference<double>(xd, &gd, &bd, p->eps, yd, cd);
  auto gref = ops::batchnorm_backward_staged<double>(p->dy.cast<double>(), xd, &gd, cd);
  p->ref_y = std::move(yd);
  p->ref_mean = cd.mean;
  p->ref_invstd = cd.invstd;
  p->ref_dx = std::move(gref.dx);
  p->ref_dgamma = std::move(gref.dgamma);
  p->ref_dbeta = std::move(gref.dbeta);
  return p;
}

std::vector<Case> ours_batchnorm(const BnPtr& p) {
  const std::vector<std::int64_t> shape(p->shape.begin(), p->shape.end());
  const double n = static_cast<double>(numel(p->shape));
  std::vector<Case> out;

  struct Fwd {
    TensorF y;
    ops::BatchNormCache<float> cache;
  };
  const auto fwd_agreement = [p](const std::shared_ptr<Fwd>& s) {
    return [p, s] {
      return std::max({relative_difference(s->y.data(), p->ref_y.data(), p->ref_y.size()),
                       relative_difference(s->cache.mean.data(), p->ref_mean.data(), p->ref_mean.size()),
                       relative_difference(s->cache.invstd.data(), p->ref_invstd.data(), p->ref_invstd.size())});
    };
  };
  ops::BatchNormConfig cfg;
  cfg.eps = p->eps;

  {  // The reference forward, the code the oracles run (single thread, Eigen per chunk).
    auto s = std::make_shared<Fwd>(Fwd{TensorF(p->shape), {}});
    ops::detail::shape_cache(s->cache, p->shape, ops::ncl_view(p->shape, "bench", "x"), true);
    out.push_back({"batchnorm", "forward", "staged", shape, 8 * n,
                   [p, s] { ops::detail::batchnorm_forward_train_reference<float>(p->x, &p->gamma, &p->beta,
                                                                                  p->eps, s->y, s->cache); },
                   fwd_agreement(s), {}, "", "the reference forward (mean, centred variance, normalise), one thread"});
  }
  {
    auto s = std::make_shared<Fwd>(Fwd{TensorF(p->shape), {}});
    out.push_back({"batchnorm", "forward", "fused", shape, 8 * n,
                   [p, s, cfg] {
                     ops::batchnorm_forward_train_into<float>(p->x, &p->gamma, &p->beta, nullptr, cfg, s->y,
                                                             s->cache);
                   },
                   fwd_agreement(s), {}, "", ""});
  }

  struct Bwd {
    ops::BatchNormCache<float> cache;
    TensorF dx, dgamma, dbeta;
  };
  const auto bwd_agreement = [p](const std::shared_ptr<Bwd>& s) {
    return [p, s] {
      return std::max({relative_difference(s->dx.data(), p->ref_dx.data(), p->ref_dx.size()),
                       relative_difference(s->dgamma.data(), p->ref_dgamma.data(), p->ref_dgamma.size()),
                       relative_difference(s->dbeta.data(), p->ref_dbeta.data(), p->ref_dbeta.size())});
    };
  };
  const Index C = channels(p->shape);
  {  // The staged backward allocates its intermediates on every call: it is the readable one.
    auto s = std::make_shared<Bwd>(Bwd{cache_of(*p), TensorF(p->shape), TensorF({C}), TensorF({C})});
    out.push_back({"batchnorm", "backward", "staged", shape, 12 * n,
                   [p, s] {
                     auto g = ops::batchnorm_backward_staged<float>(p->dy, p->x, &p->gamma, s->cache);
                     s->dx = std::move(g.dx);
                     s->dgamma = std::move(g.dgamma);
                     s->dbeta = std::move(g.dbeta);
                   },
                   bwd_agreement(s), {}, "", "one step per chain-rule term, one thread, allocates its intermediates"});
  }
  {
    auto s = std::make_shared<Bwd>(Bwd{cache_of(*p), TensorF(p->shape), TensorF({C}), TensorF({C})});
    out.push_back({"batchnorm", "backward", "fused", shape, 12 * n,
                   [p, s] {
                     ops::batchnorm_backward_into<float>(p->dy, p->x, &p->gamma, s->cache, s->dx, &s->dgamma,
                                                         &s->dbeta);
                   },
                   bwd_agreement(s), {}, "", ""});
  }
  return out;
}

RowNormPtr make_rownorm_problem(const std::string& op, const Shape& shape) {
  auto p = std::make_shared<RowNormProblem>();
  p->op = op;
  p->shape = shape;
  const Shape params{shape.back()};
  std::mt19937_64 rng(20240607 + static_cast<std::uint64_t>(numel(shape)) + op.size());
  p->x = TensorF(shape);
  p->dy = TensorF(shape);
  p->gamma = TensorF(params);
  p->beta = TensorF(params);
  fill_normal(p->x, rng, 1.0, 2.0);
  fill_normal(p->dy, rng, 0.0, 1.0);
  fill_uniform(p->gamma, rng, 0.5, 1.5);
  fill_uniform(p->beta, rng, -0.5, 0.5);

  // The reference: the reference forward and the staged backward, in double.
  const TensorD xd = p->x.cast<double>(), dyd = p->dy.cast<double>(), gd = p->gamma.cast<double>(),
                bd = p->beta.cast<double>();
  if (op == "layernorm") {
    const ops::LayerNormConfig cfg{params, p->eps};
    TensorD yd(shape);
    ops::NormCache<double> cd;
    ops::layernorm_forward_into<double>(xd, &gd, &bd, cfg, yd, cd);  // statistics and the cache's layout
    ops::norm::forward_kernel_reference<double>(cd.sets, xd.data(), gd.data(), bd.data(), p->eps, yd.data(),
                                                cd.mean.data(), cd.var.data(), cd.invstd.data());
    auto g = ops::layernorm_backward_staged<double>(dyd, xd, &gd, cd);
    p->ref_y = std::move(yd);
    p->ref_dx = std::move(g.dx);
    p->ref_dgamma = std::move(g.dgamma);
    p->ref_dbeta = std::move(g.dbeta);
  } else {
    const ops::RMSNormConfig cfg{params, p->eps};
    TensorD yd(shape);
    ops::RMSNormCache<double> cd;
    ops::rmsnorm_forward_into<double>(xd, &gd, cfg, yd, cd);
    ops::norm::detail::rmsnorm_forward_reference<double>(cd.sets, xd.data(), gd.data(), p->eps, yd.data(),
                                                         cd.ms.data(), cd.invrms.data());
    auto g = ops::rmsnorm_backward_staged<double>(dyd, xd, &gd, cd);
    p->ref_y = std::move(yd);
    p->ref_dx = std::move(g.dx);
    p->ref_dgamma = std::move(g.dgamma);
  }
  return p;
}

std::vector<Case> ours_rownorm(const RowNormPtr& p) {
  const std::vector<std::int64_t> shape(p->shape.begin(), p->shape.end());
  const double n = static_cast<double>(numel(p->shape));
  const Shape params{p->shape.back()};
  const bool ln = p->op == "layernorm";
  std::vector<Case> out;

  struct State {
    TensorF y, dx, dgamma, dbeta;
    ops::NormCache<float> ln;
    ops::RMSNormCache<float> rms;
  };
  const auto fresh = [&] {
    auto s = std::make_shared<State>(State{TensorF(p->shape), TensorF(p->shape), TensorF(params), TensorF(params), {}, {}});
    // Our fused forward fills the cache the backward cases use (and sizes it for the reference).
    if (ln) ops::layernorm_forward_into<float>(p->x, &p->gamma, &p->beta, {params, p->eps}, s->y, s->ln);
    else ops::rmsnorm_forward_into<float>(p->x, &p->gamma, {params, p->eps}, s->y, s->rms);
    return s;
  };
  const auto fwd_agreement = [p](const std::shared_ptr<State>& s) {
    return [p, s] { return relative_difference(s->y.data(), p->ref_y.data(), p->ref_y.size()); };
  };
  const auto bwd_agreement = [p, ln](const std::shared_ptr<State>& s) {
    return [p, s, ln] {
      double d = std::max(relative_difference(s->dx.data(), p->ref_dx.data(), p->ref_dx.size()),
                          relative_difference(s->dgamma.data(), p->ref_dgamma.data(), p->ref_dgamma.size()));
      if (ln) d = std::max(d, relative_difference(s->dbeta.data(), p->ref_dbeta.data(), p->ref_dbeta.size()));
      return d;
    };
  };
  const char* reference_note = "the reference forward (an Eigen expression per row), one thread";
  {
    auto s = fresh();
    out.push_back({p->op, "forward", "staged", shape, 8 * n,
                   [p, s, ln] {
                     if (ln) {
                       ops::norm::forward_kernel_reference<float>(s->ln.sets, p->x.data(), p->gamma.data(),
                                                                  p->beta.data(), p->eps, s->y.data(), s->ln.mean.data(),
                                                                  s->ln.var.data(), s->ln.invstd.data());
                     } else {
                       ops::norm::detail::rmsnorm_forward_reference<float>(s->rms.sets, p->x.data(), p->gamma.data(),
                                                                           p->eps, s->y.data(), s->rms.ms.data(),
                                                                           s->rms.invrms.data());
                     }
                   },
                   fwd_agreement(s), {}, "", reference_note});
  }
  {
    auto s = fresh();
    out.push_back({p->op, "forward", "fused", shape, 8 * n,
                   [p, s, ln, params] {
                     if (ln) ops::layernorm_forward_into<float>(p->x, &p->gamma, &p->beta, {params, p->eps}, s->y, s->ln);
                     else ops::rmsnorm_forward_into<float>(p->x, &p->gamma, {params, p->eps}, s->y, s->rms);
                   },
                   fwd_agreement(s), {}, "", ""});
  }
  {
    auto s = fresh();
    out.push_back({p->op, "backward", "staged", shape, 12 * n,
                   [p, s, ln] {
                     if (ln) {
                       auto g = ops::layernorm_backward_staged<float>(p->dy, p->x, &p->gamma, s->ln);
                       s->dx = std::move(g.dx), s->dgamma = std::move(g.dgamma), s->dbeta = std::move(g.dbeta);
                     } else {
                       auto g = ops::rmsnorm_backward_staged<float>(p->dy, p->x, &p->gamma, s->rms);
                       s->dx = std::move(g.dx), s->dgamma = std::move(g.dgamma);
                     }
                   },
                   bwd_agreement(s), {}, "", "one step per chain-rule term, one thread, allocates its intermediates"});
  }
  {
    auto s = fresh();
    out.push_back({p->op, "backward", "fused", shape, 12 * n,
                   [p, s, ln] {
                     if (ln) ops::layernorm_backward_into<float>(p->dy, p->x, &p->gamma, s->ln, s->dx, &s->dgamma, &s->dbeta);
                     else ops::rmsnorm_backward_into<float>(p->dy, p->x, &p->gamma, s->rms, s->dx, &s->dgamma);
                   },
                   bwd_agreement(s), {}, "", ""});
  }
  return out;
}

}  // namespace gradproof::bench
