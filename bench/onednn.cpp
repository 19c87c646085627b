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

std::vector<Case> onednn_batchnorm(const BnPtr& p) {
  std::vector<Case> out = cases(p, tag::nchw, "onednn-nchw");
  for (auto& c : cases(p, tag::nChw16c, "onednn-nchw16c")) out.push_back(std::move(c));
  return out;
}

}  // namespace gradproof::bench
