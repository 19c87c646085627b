// libtorch (Debian's libtorch-dev 1.13): the only translation unit that includes its headers,
// and only the per-operator ones it calls, to keep the compile short.
#include "bench.hpp"

#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/native_batch_norm.h>
#include <ATen/ops/native_batch_norm_backward.h>
#include <ATen/ops/native_layer_norm.h>
#include <ATen/ops/native_layer_norm_backward.h>
#include <ATen/ops/rsqrt.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/api/include/torch/version.h>

#include <algorithm>

namespace gradproof::bench {

namespace {

// A tensor over our buffer, no copy: every implementation reads the same bytes.
at::Tensor wrap(const TensorF& t) {
  return at::from_blob(const_cast<float*>(t.data()), std::vector<std::int64_t>(t.shape().begin(), t.shape().end()),
                       at::TensorOptions().dtype(at::kFloat));
}

double difference(const at::Tensor& a, const TensorD& ref) {
  const at::Tensor c = a.contiguous();
  return relative_difference(c.data_ptr<float>(), ref.data(), ref.size());
}

}  // namespace

void libtorch_set_threads(int threads) { at::set_num_threads(threads); }

std::string libtorch_version() { return TORCH_VERSION; }

std::vector<Case> libtorch_batchnorm(const BnPtr& p) {
  const std::vector<std::int64_t> shape(p->shape.begin(), p->shape.end());
  const double n = static_cast<double>(numel(p->shape));
  struct State {
    at::Tensor x, dy, gamma, beta;
    at::Tensor y, save_mean, save_invstd, dx, dgamma, dbeta;
  };
  auto s = std::make_shared<State>();
  s->x = wrap(p->x);
  s->dy = wrap(p->dy);
  s->gamma = wrap(p->gamma);
  s->beta = wrap(p->beta);
  // Training mode without running statistics, like the other implementations here. The
  // functional form allocates its outputs on every call: libtorch 1.13 has no CPU out-variant
  // of native_batch_norm, and the backward's out-variant is a copy after the functional one.
  const auto forward = [p, s] {
    std::tie(s->y, s->save_mean, s->save_invstd) =
        at::native_batch_norm(s->x, s->gamma, s->beta, {}, {}, /*training=*/true, /*momentum=*/0.1, p->eps);
  };
  forward();  // the saved statistics for the backward case
  const at::Tensor mean = s->save_mean.clone(), invstd = s->save_invstd.clone();
  const auto backward = [p, s, mean, invstd] {
    std::tie(s->dx, s->dgamma, s->dbeta) = at::native_batch_norm_backward(
        s->dy, s->x, s->gamma, {}, {}, mean, invstd, /*train=*/true, p->eps, {true, true, true});
  };
  const std::string note = "at::native_batch_norm[_backward], allocates its outputs";
  return {
      {"batchnorm", "forward", "libtorch", shape, 8 * n, forward,
       [p, s] {
         return std::max({difference(s->y, p->ref_y), difference(s->save_mean, p->ref_mean),
                          difference(s->save_invstd, p->ref_invstd)});
       },
       {}, "", note},
      {"batchnorm", "backward", "libtorch", shape, 12 * n, backward,
       [p, s] {
         return std::max({difference(s->dx, p->ref_dx), difference(s->dgamma, p->ref_dgamma),
                          difference(s->dbeta, p->ref_dbeta)});
       },
       {}, "", note},
  };
}

std::vector<Case> libtorch_rownorm(const RowNormPtr& p) {
  const std::vector<std::int64_t> shape(p->shape.begin(), p->shape.end());
  const double n = static_cast<double>(numel(p->shape));
  const std::vector<std::int64_t> normalized{shape.back()};
  struct State {
    at::Tensor x, dy, gamma, beta;
    at::Tensor y, mean, rstd, dx, dgamma, dbeta;
    at::Tensor x_var, gamma_var, y_var;  // RMS norm: leaves and output of the autograd graph
  };
  auto s = std::make_shared<State>();
  s->x = wrap(p->x);
  s->dy = wrap(p->dy);
  s->gamma = wrap(p->gamma);
  s->beta = wrap(p->beta);
  const auto fwd_agreement = [p, s] { return difference(s->y, p->ref_y); };
  const auto bwd_agreement = [p, s] {
    double d = std::max(difference(s->dx, p->ref_dx), difference(s->dgamma, p->ref_dgamma));
    if (p->op == "layernorm") d = std::max(d, difference(s->dbeta, p->ref_dbeta));
    return d;
  };
  if (p->op == "layernorm") {
    const auto forward = [p, s, normalized] {
      std::tie(s->y, s->mean, s->rstd) = at::native_layer_norm(s->x, normalized, s->gamma, s->beta, p->eps);
    };
    forward();  // the saved statistics for the backward case
    const at::Tensor mean = s->mean.clone(), rstd = s->rstd.clone();
    const auto backward = [s, normalized, mean, rstd] {
      std::tie(s->dx, s->dgamma, s->dbeta) = at::native_layer_norm_backward(
          s->dy, s->x, normalized, mean, rstd, s->gamma, s->beta, {true, true, true});
    };
    const std::string note = "at::native_layer_norm[_backward], allocates its outputs";
    return {{p->op, "forward", "libtorch", shape, 8 * n, forward, fwd_agreement, {}, "", note},
            {p->op, "backward", "libtorch", shape, 12 * n, backward, bwd_agreement, {}, "", note}};
  }
  // RMS norm: libtorch 1.13 has no rms_norm operator, so the forward is composed from its
  // operators as a user would write it, y = x * rsqrt(mean(x², -1) + eps) * gamma, and the
  // backward is libtorch's autograd over that graph.
  const double eps = p->eps;
  const auto rms = [eps](const at::Tensor& x, const at::Tensor& gamma) {
    return x * at::rsqrt(x.pow(2).mean({-1}, /*keepdim=*/true) + eps) * gamma;
  };
  const auto forward = [s, rms] { s->y = rms(s->x, s->gamma); };
  s->x_var = s->x.detach().requires_grad_(true);
  s->gamma_var = s->gamma.detach().requires_grad_(true);
  s->y_var = rms(s->x_var, s->gamma_var);
  const auto backward = [s] {
    const auto g = torch::autograd::grad({s->y_var}, {s->x_var, s->gamma_var}, {s->dy}, /*retain_graph=*/true);
    s->dx = g[0];
    s->dgamma = g[1];
  };
  return {{p->op, "forward", "libtorch", shape, 8 * n, forward, fwd_agreement, {}, "",
           "composed: x * rsqrt(mean(x^2, -1) + eps) * gamma (libtorch 1.13 has no rms_norm op)"},
          {p->op, "backward", "libtorch", shape, 12 * n, backward, bwd_agreement, {}, "",
           "libtorch autograd over the composed forward"}};
}

}  // namespace gradproof::bench
