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
#include <ATen/ops/_log_softmax.h>
#include <ATen/ops/_log_softmax_backward_data.h>
#include <ATen/ops/_softmax.h>
#include <ATen/ops/_softmax_backward_data.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/elu_backward.h>
#include <ATen/ops/embedding_dense_backward.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/leaky_relu_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sigmoid_backward.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/softplus_backward.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/tanh_backward.h>
#include <ATen/ops/threshold_backward.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/api/include/torch/version.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cstring>

namespace gradproof::bench {

namespace {

// A tensor over our buffer, no copy: every implementation reads the same bytes.
at::Tensor wrap(const TensorF& t) {
  return at::from_blob(const_cast<float*>(t.data()), std::vector<std::int64_t>(t.shape().begin(), t.shape().end()),
                       at::TensorOptions().dtype(at::kFloat));
}

at::Tensor wrap(const Tensor<std::int64_t>& t) {
  return at::from_blob(const_cast<std::int64_t*>(t.data()),
                       std::vector<std::int64_t>(t.shape().begin(), t.shape().end()),
                       at::TensorOptions().dtype(at::kLong));
}


double difference(const at::Tensor& a, const TensorD& ref) {
  const at::Tensor c = a.contiguous();
  return relative_difference(c.data_ptr<float>(), ref.data(), ref.size());
}

double worst(const std::vector<at::Tensor>& got, const std::vector<TensorD>& ref) {
  double d = 0;
  for (std::size_t k = 0; k < got.size(); ++k) d = std::max(d, difference(got[k], ref[k]));
  return d;
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

std::vector<Case> libtorch_layer(const LayerPtr& p) {
  const std::vector<std::int64_t> shape(p->shape.begin(), p->shape.end());
  const double n = static_cast<double>(numel(p->shape));
  struct State {
    at::Tensor x, dy, w, b, index, y, dx, dw, db, fy, saved, x_var;
  };
  auto s = std::make_shared<State>();
  if (!p->x.empty()) s->x = wrap(p->x);
  if (!p->dy.empty()) s->dy = wrap(p->dy);
  const std::string& op = p->op;
  const auto fwd_agree = [p, s] { return worst({s->fy}, p->ref_forward()); };
  const auto bwd_agree = [p, s] { return worst({s->dx}, p->ref_backward()); };
  if (op == "softmax" || op == "log_softmax") {
    const bool log = op == "log_softmax";
    s->fy = at::empty_like(s->x);
    s->y = log ? at::_log_softmax(s->x, -1, false) : at::_softmax(s->x, -1, false);
    s->dx = at::empty_like(s->x);
    const auto forward = [s, log] {
      if (log) at::_log_softmax_out(s->fy, s->x, -1, false);
      else at::_softmax_out(s->fy, s->x, -1, false);
    };
    const auto backward = [s, log] {
      if (log) at::_log_softmax_backward_data_out(s->dx, s->dy, s->y, -1, at::kFloat);
      else at::_softmax_backward_data_out(s->dx, s->dy, s->y, -1, at::kFloat);
    };
    const std::string f = log ? "at::_log_softmax_out" : "at::_softmax_out";
    const std::string b =
        log ? "at::_log_softmax_backward_data_out" : "at::_softmax_backward_data_out";
    return {{op, "forward", "libtorch", shape, 8 * n, forward, fwd_agree, {}, "", f},
            {op, "backward", "libtorch", shape, 12 * n, backward, bwd_agree, {}, "", b}};
  }
  if (op == "cross_entropy") {
    s->index = wrap(p->index);
    // What a libtorch user runs: the loss, then autograd; both allocate.
    const auto run = [s] {
      s->x_var = s->x.detach().requires_grad_(true);
      s->fy = at::cross_entropy_loss(s->x_var, s->index);
      s->dx = torch::autograd::grad({s->fy}, {s->x_var})[0];
    };
    return {{op, "forward+backward", "libtorch", shape, 8 * n, run,
             [p, s] { return worst({s->fy.detach(), s->dx}, p->ref_forward()); }, {}, "",
             "at::cross_entropy_loss, then torch::autograd::grad; allocates"}};
  }
  if (op == "linear") {
    s->w = wrap(p->w);
    s->b = wrap(p->b);
    s->fy = at::empty({shape[0], p->w.shape()[0]}, at::kFloat);
    s->dx = at::empty_like(s->x);
    s->dw = at::empty_like(s->w);
    s->db = at::empty_like(s->b);
    const double N = static_cast<double>(shape[0]), I = static_cast<double>(shape[1]);
    const double O = static_cast<double>(p->w.shape()[0]);
    Case f{op, "forward", "libtorch", shape, 4 * (N * I + O * I + O + N * O),
           [s] { at::addmm_out(s->fy, s->b, s->x, s->w.t()); }, fwd_agree, {}, "",
           "at::addmm_out(y, b, x, W.t()), what at::linear runs"};
    f.flops = 2 * N * I * O + N * O;
    Case b{op, "backward", "libtorch", shape, 4 * (N * O + N * I + O * I + N * I + O * I + O),
           [s] {
             at::mm_out(s->dx, s->dy, s->w);
             at::mm_out(s->dw, s->dy.t(), s->x);
             at::sum_out(s->db, s->dy, {0});
           },
           [p, s] { return worst({s->dx, s->dw, s->db}, p->ref_backward()); }, {}, "",
           "at::mm_out for dx = dy W and dW = dyᵀ x, at::sum_out for db (addmm's backward)"};
    b.flops = 4 * N * I * O + N * O;
    return {f, b};
  }
  if (op == "embedding") {
    s->index = wrap(p->index);
    const std::int64_t V = p->w.shape()[0];
    s->dw = at::empty({V, shape[1]}, at::kFloat);
    const auto run = [s, V] {
      at::embedding_dense_backward_out(s->dw, s->dy, s->index, V, /*padding_idx=*/-1, false);
    };
    Case c{op, "backward", "libtorch", shape,
           4.0 * n + 8.0 * static_cast<double>(shape[0]) + 4.0 * static_cast<double>(V * shape[1]),
           run, [p, s] { return worst({s->dw}, p->ref_backward()); }, {}, "",
           "at::embedding_dense_backward_out"};
    c.deterministic = [s, run] {
      const at::Tensor first = s->dw.clone();
      bool same = true;
      for (int k = 0; k < 2; ++k) {
        run();
        same = same && std::memcmp(first.data_ptr<float>(), s->dw.data_ptr<float>(),
                                   static_cast<std::size_t>(first.numel()) * sizeof(float)) == 0;
      }
      return same;
    };
    return {c};
  }
  // The activations: out-variants of the forward and of PyTorch's backward kernels.
  s->fy = at::empty_like(s->x);
  s->dx = at::empty_like(s->x);
  std::function<void(at::Tensor&, const at::Tensor&)> fwd;
  std::function<void()> bwd;
  bool reads_y = false;
  if (op == "relu") {
    fwd = [](at::Tensor& y, const at::Tensor& x) { at::relu_out(y, x); };
    bwd = [s] { at::threshold_backward_out(s->dx, s->dy, s->saved, 0); };
    reads_y = true;
  } else if (op == "leaky_relu") {
    fwd = [](at::Tensor& y, const at::Tensor& x) { at::leaky_relu_out(y, x, 0.01); };
    bwd = [s] { at::leaky_relu_backward_out(s->dx, s->dy, s->saved, 0.01, false); };
  } else if (op == "elu") {
    fwd = [](at::Tensor& y, const at::Tensor& x) { at::elu_out(y, x, 1.0, 1.0, 1.0); };
    bwd = [s] { at::elu_backward_out(s->dx, s->dy, 1.0, 1.0, 1.0, false, s->saved); };
  } else if (op == "gelu" || op == "gelu_tanh") {
    const std::string a = op == "gelu" ? "none" : "tanh";
    fwd = [a](at::Tensor& y, const at::Tensor& x) { at::gelu_out(y, x, a); };
    bwd = [s, a] { at::gelu_backward_out(s->dx, s->dy, s->saved, a); };
  } else if (op == "silu") {
    fwd = [](at::Tensor& y, const at::Tensor& x) { at::silu_out(y, x); };
    bwd = [s] { at::silu_backward_out(s->dx, s->dy, s->saved); };
  } else if (op == "sigmoid") {
    fwd = [](at::Tensor& y, const at::Tensor& x) { at::sigmoid_out(y, x); };
    bwd = [s] { at::sigmoid_backward_out(s->dx, s->dy, s->saved); };
    reads_y = true;
  } else if (op == "tanh") {
    fwd = [](at::Tensor& y, const at::Tensor& x) { at::tanh_out(y, x); };
    bwd = [s] { at::tanh_backward_out(s->dx, s->dy, s->saved); };
    reads_y = true;
  } else if (op == "softplus") {
    fwd = [](at::Tensor& y, const at::Tensor& x) { at::softplus_out(y, x, 1.0, 20.0); };
    bwd = [s] { at::softplus_backward_out(s->dx, s->dy, s->saved, 1.0, 20.0); };
  } else {
    return {};
  }
  if (reads_y) {
    s->saved = at::empty_like(s->x);
    fwd(s->saved, s->x);
  } else {
    s->saved = s->x;
  }
  const std::string what = "at::" + std::string(op == "gelu_tanh" ? "gelu" : op);
  return {{op, "forward", "libtorch", shape, 8 * n, [s, fwd] { fwd(s->fy, s->x); }, fwd_agree, {},
           "", what + "_out"},
          {op, "backward", "libtorch", shape, 12 * n, bwd, bwd_agree, {}, "",
           what + (op == "relu" ? " backward: at::threshold_backward_out" : "_backward_out") +
               (reads_y ? ", reads y" : ", reads x")}};
}

}  // namespace gradproof::bench
