// oneDNN (Debian's libdnnl-dev 2.6): batch normalization forward training and backward
// primitives, on the plain NCHW layout and on the blocked nChw16c layout (16 channels
// interleaved: each 64-byte vector holds one position of 16 channels).
#include "bench.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cstring>
#include <sstream>

namespace gradproof::bench {

namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

struct State {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  // Plain NCHW copies of the inputs and outputs (the agreement check reads these).
  dnnl::memory x_plain, dy_plain, y_plain, dx_plain;
  // The memories the primitives run on: the plain ones for nchw, blocked ones for nChw16c.
  dnnl::memory x, dy, y, dx, scale, shift, mean, var, dscale, dshift;
  dnnl::batch_normalization_forward fwd;
  dnnl::batch_normalization_backward bwd;
  std::vector<float> out_scratch;
};

dnnl::memory copy_in(const TensorF& t, const dnnl::memory::desc& md, const dnnl::engine& eng) {
  dnnl::memory m(md, eng);
  std::memcpy(m.get_data_handle(), t.data(), static_cast<std::size_t>(t.size()) * sizeof(float));
  return m;
}

void reorder(dnnl::memory& from, dnnl::memory& to, dnnl::stream& strm) {
  dnnl::reorder(from, to).execute(strm, from, to);
  strm.wait();
}

std::vector<Case> cases(const BnPtr& p, tag layout, const char* impl) {
  const auto& sh = p->shape;
  if (sh.size() != 4) return {};
  const std::vector<std::int64_t> shape(sh.begin(), sh.end());
  const double n = static_cast<double>(numel(sh));
  const dnnl::memory::dims dims(sh.begin(), sh.end());
  const std::int64_t C = sh[1];

  auto s = std::make_shared<State>();
  const dnnl::memory::desc plain(dims, dt::f32, tag::nchw), data(dims, dt::f32, layout), chan({C}, dt::f32, tag::x);
  s->x_plain = copy_in(p->x, plain, s->eng);
  s->dy_plain = copy_in(p->dy, plain, s->eng);
  s->y_plain = dnnl::memory(plain, s->eng);
  s->dx_plain = dnnl::memory(plain, s->eng);
  const bool blocked = layout != tag::nchw;
  s->x = blocked ? dnnl::memory(data, s->eng) : s->x_plain;
  s->dy = blocked ? dnnl::memory(data, s->eng) : s->dy_plain;
  s->y = blocked ? dnnl::memory(data, s->eng) : s->y_plain;
  s->dx = blocked ? dnnl::memory(data, s->eng) : s->dx_plain;
  if (blocked) {
    reorder(s->x_plain, s->x, s->strm);
    reorder(s->dy_plain, s->dy, s->strm);
  }
  s->scale = copy_in(p->gamma, chan, s->eng);
  s->shift = copy_in(p->beta, chan, s->eng);
  s->mean = dnnl::memory(chan, s->eng);
  s->var = dnnl::memory(chan, s->eng);
  s->dscale = dnnl::memory(chan, s->eng);
  s->dshift = dnnl::memory(chan, s->eng);

  const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  const float eps = static_cast<float>(p->eps);
  const dnnl::batch_normalization_forward::primitive_desc fpd(
      {dnnl::prop_kind::forward_training, data, eps, flags}, s->eng);
  const dnnl::batch_normalization_backward::primitive_desc bpd(
      {dnnl::prop_kind::backward, data, data, eps, flags}, s->eng, fpd);
  s->fwd = dnnl::batch_normalization_forward(fpd);
  s->bwd = dnnl::batch_normalization_backward(bpd);

  const auto forward = [s] {
    s->fwd.execute(s->strm, {{DNNL_ARG_SRC, s->x},
                             {DNNL_ARG_DST, s->y},
                             {DNNL_ARG_SCALE, s->scale},
                             {DNNL_ARG_SHIFT, s->shift},
                             {DNNL_ARG_MEAN, s->mean},
                             {DNNL_ARG_VARIANCE, s->var}});
    s->strm.wait();
  };
  forward();  // the statistics the backward case uses
  const auto backward = [s] {
    s->bwd.execute(s->strm, {{DNNL_ARG_SRC, s->x},
                             {DNNL_ARG_DIFF_DST, s->dy},
                             {DNNL_ARG_MEAN, s->mean},
                             {DNNL_ARG_VARIANCE, s->var},
                             {DNNL_ARG_SCALE, s->scale},
                             {DNNL_ARG_SHIFT, s->shift},
                             {DNNL_ARG_DIFF_SRC, s->dx},
                             {DNNL_ARG_DIFF_SCALE, s->dscale},
                             {DNNL_ARG_DIFF_SHIFT, s->dshift}});
    s->strm.wait();
  };
  const auto f32 = [](const dnnl::memory& m) { return static_cast<const float*>(m.get_data_handle()); };
  const auto fwd_agreement = [p, s, blocked, f32] {
    if (blocked) reorder(s->y, s->y_plain, s->strm);
    // oneDNN keeps the variance, not 1/sqrt(var + eps): compare what it keeps.
    std::vector<double> ref_var(static_cast<std::size_t>(p->ref_invstd.size()));
    for (std::size_t c = 0; c < ref_var.size(); ++c) {
      const double is = p->ref_invstd[static_cast<Index>(c)];
      ref_var[c] = 1.0 / (is * is) - p->eps;
    }
    TensorD rv({p->ref_invstd.size()}, std::move(ref_var));
    return std::max({relative_difference(f32(s->y_plain), p->ref_y.data(), p->ref_y.size()),
                     relative_difference(f32(s->mean), p->ref_mean.data(), p->ref_mean.size()),
                     relative_difference(f32(s->var), rv.data(), rv.size())});
  };
  const auto bwd_agreement = [p, s, blocked, f32] {
    if (blocked) reorder(s->dx, s->dx_plain, s->strm);
    return std::max({relative_difference(f32(s->dx_plain), p->ref_dx.data(), p->ref_dx.size()),
                     relative_difference(f32(s->dscale), p->ref_dgamma.data(), p->ref_dgamma.size()),
                     relative_difference(f32(s->dshift), p->ref_dbeta.data(), p->ref_dbeta.size())});
  };

  std::vector<Case> out{
      {"batchnorm", "forward", impl, shape, 8 * n, forward, fwd_agreement, {}, "", ""},
      {"batchnorm", "backward", impl, shape, 12 * n, backward, bwd_agreement, {}, "", ""},
  };
  if (blocked) {
    // What an NCHW caller pays on top: converting the inputs to the blocked layout, and the
    // result back (measured, reported beside the row, not included in its time).
    out[0].extra = [s] {
      dnnl::reorder(s->x_plain, s->x).execute(s->strm, s->x_plain, s->x);
      dnnl::reorder(s->y, s->y_plain).execute(s->strm, s->y, s->y_plain);
      s->strm.wait();
    };
    out[0].extra_what = "reorder x to nChw16c and y back to nchw";
    out[1].extra = [s] {
      dnnl::reorder(s->x_plain, s->x).execute(s->strm, s->x_plain, s->x);
      dnnl::reorder(s->dy_plain, s->dy).execute(s->strm, s->dy_plain, s->dy);
      dnnl::reorder(s->dx, s->dx_plain).execute(s->strm, s->dx, s->dx_plain);
      s->strm.wait();
    };
    out[1].extra_what = "reorder x and dy to nChw16c and dx back to nchw";
  }
  return out;
}

}  // namespace

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  std::ostringstream out;
  out << v->major << "." << v->minor << "." << v->patch << " (CPU runtime: "
      << (v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other") << ")";
  return out.str();
}

// Linear with oneDNN's matmul primitive on our buffers (no copies): y = x Wᵀ + b with W read
// as an (I, O) matrix of strides (1, I) (tag ba); dx = dy W; dW = dyᵀ x with dy read as an
// (O, N) matrix of tag ba; db = the column sums of dy by the reduction primitive.
std::vector<Case> onednn_layer(const LayerPtr& p) {
  if (p->op != "linear") return {};
  const std::int64_t N = p->shape[0], I = p->shape[1], O = p->w.shape()[0];
  struct L {
    dnnl::engine eng{dnnl::engine::kind::cpu, 0};
    dnnl::stream strm{eng};
    TensorF y, dx, dw, db;
    dnnl::matmul fwd, bdx, bdw;
    dnnl::reduction bdb;
    dnnl::memory x, xw, w_t, w, b, y_m, dy, dy_t, dx_m, dw_m, db_m;
  };
  auto s = std::make_shared<L>();
  s->y = TensorF({N, O});
  s->dx = TensorF({N, I});
  s->dw = TensorF({O, I});
  s->db = TensorF({O});
  const auto mem = [&](dnnl::memory::dims d, tag t, const float* ptr) {
    return dnnl::memory({d, dt::f32, t}, s->eng, const_cast<float*>(ptr));
  };
  s->x = mem({N, I}, tag::ab, p->x.data());
  s->w_t = mem({I, O}, tag::ba, p->w.data());
  s->b = mem({1, O}, tag::ab, p->b.data());
  s->y_m = mem({N, O}, tag::ab, s->y.data());
  s->dy = mem({N, O}, tag::ab, p->dy.data());
  s->w = mem({O, I}, tag::ab, p->w.data());
  s->dx_m = mem({N, I}, tag::ab, s->dx.data());
  s->dy_t = mem({O, N}, tag::ba, p->dy.data());
  s->xw = mem({N, I}, tag::ab, p->x.data());
  s->dw_m = mem({O, I}, tag::ab, s->dw.data());
  s->db_m = mem({1, O}, tag::ab, s->db.data());
  const auto md = [](const dnnl::memory& m) { return m.get_desc(); };
  s->fwd = dnnl::matmul(dnnl::matmul::primitive_desc(
      dnnl::matmul::desc(md(s->x), md(s->w_t), md(s->b), md(s->y_m)), s->eng));
  s->bdx = dnnl::matmul(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(md(s->dy), md(s->w), md(s->dx_m)), s->eng));
  s->bdw = dnnl::matmul(dnnl::matmul::primitive_desc(
      dnnl::matmul::desc(md(s->dy_t), md(s->xw), md(s->dw_m)), s->eng));
  s->bdb = dnnl::reduction(dnnl::reduction::primitive_desc(
      dnnl::reduction::desc(dnnl::algorithm::reduction_sum, md(s->dy), md(s->db_m), 0.f, 0.f),
      s->eng));
  const auto forward = [s] {
    s->fwd.execute(s->strm, {{DNNL_ARG_SRC, s->x},
                             {DNNL_ARG_WEIGHTS, s->w_t},
                             {DNNL_ARG_BIAS, s->b},
                             {DNNL_ARG_DST, s->y_m}});
    s->strm.wait();
  };
  const auto backward = [s] {
    s->bdx.execute(s->strm,
                   {{DNNL_ARG_SRC, s->dy}, {DNNL_ARG_WEIGHTS, s->w}, {DNNL_ARG_DST, s->dx_m}});
    s->bdw.execute(s->strm,
                   {{DNNL_ARG_SRC, s->dy_t}, {DNNL_ARG_WEIGHTS, s->xw}, {DNNL_ARG_DST, s->dw_m}});
    s->bdb.execute(s->strm, {{DNNL_ARG_SRC, s->dy}, {DNNL_ARG_DST, s->db_m}});
    s->strm.wait();
  };
  const std::vector<std::int64_t> shape(p->shape.begin(), p->shape.end());
  const double n = double(N), i = double(I), o = double(O);
  Case f{"linear", "forward", "onednn", shape, 4 * (n * i + o * i + o + n * o), forward,
         [p, s] {
           return relative_difference(s->y.data(), p->ref_forward()[0].data(), s->y.size());
         },
         {}, "", "matmul primitive with bias, W read transposed in place"};
  f.flops = 2 * n * i * o + n * o;
  Case b{"linear", "backward", "onednn", shape, 4 * (n * o + n * i + o * i + n * i + o * i + o),
         backward,
         [p, s] {
           const auto& r = p->ref_backward();
           return std::max({relative_difference(s->dx.data(), r[0].data(), r[0].size()),
                            relative_difference(s->dw.data(), r[1].data(), r[1].size()),
                            relative_difference(s->db.data(), r[2].data(), r[2].size())});
         },
         {}, "", "two matmul primitives (dx, dW) and a sum reduction (db)"};
  b.flops = 4 * n * i * o + n * o;
  return {f, b};
}

std::vector<Case> onednn_batchnorm(const BnPtr& p) {
  std::vector<Case> out = cases(p, tag::nchw, "onednn-nchw");
  for (auto& c : cases(p, tag::nChw16c, "onednn-nchw16c")) out.push_back(std::move(c));
  return out;
}

}  // namespace gradproof::bench
