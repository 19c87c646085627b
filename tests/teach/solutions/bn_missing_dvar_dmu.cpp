// ∂σ²/∂μ written as 0 and the σ²-path term of ∂L/∂μ dropped, in C++: dx is right all the same.
// expect: half +bn\.dvar_dmu +∂σ²/∂μ: right here, not in general: missing: your function returns zero; here it is zero
// expect: half +bn\.dl_dmu +∂L/∂μ: right here, not in general: the σ²-path term ∂L/∂σ²·∂σ²/∂μ is missing; here it is zero
// expect: so your dx is right anyway; see why: derivations/batchnorm\.html#bn-dvar-dmu
// expect: score: 8 of 9 terms; gradients: all right
// expect-json: "status": "half", "points": 0.5
#include "terms.hpp"

namespace exercise {

namespace {
Index N(const TensorD& x) { return x.shape()[0]; }
Index C(const TensorD& x) { return x.shape()[1]; }
}  // namespace

TensorD dgamma(const TensorD& dy, const TensorD& xhat) {
  TensorD o({C(dy)});
  for (Index n = 0; n < N(dy); ++n)
    for (Index c = 0; c < C(dy); ++c) o[c] += at(dy, n, c) * at(xhat, n, c);
  return o;
}

TensorD dbeta(const TensorD& dy) {
  TensorD o({C(dy)});
  for (Index n = 0; n < N(dy); ++n)
    for (Index c = 0; c < C(dy); ++c) o[c] += at(dy, n, c);
  return o;
}

TensorD dl_dxhat(const TensorD& dy, const TensorD& gamma) {
  TensorD o(dy.shape());
  for (Index n = 0; n < N(dy); ++n)
    for (Index c = 0; c < C(dy); ++c) at(o, n, c) = gamma[c] * at(dy, n, c);
  return o;
}

TensorD dl_dvar(const TensorD& dl_dxhat, const TensorD& x, const TensorD& mu, const TensorD& invstd) {
  TensorD o({C(x)});
  for (Index n = 0; n < N(x); ++n)
    for (Index c = 0; c < C(x); ++c) o[c] += at(dl_dxhat, n, c) * (at(x, n, c) - mu[c]);
  for (Index c = 0; c < C(x); ++c) o[c] *= -0.5 * invstd[c] * invstd[c] * invstd[c];
  return o;
}

TensorD dvar_dmu(const TensorD& x, const TensorD& mu) {
  TensorD o({C(x)});
  for (Index n = 0; n < N(x); ++n)
    for (Index c = 0; c < C(x); ++c) o[c] += 0.0 * (at(x, n, c) - mu[c]);  // "it is zero anyway"
  return o;
}

TensorD dl_dmu(const TensorD& dl_dxhat, const TensorD& invstd, const TensorD& dl_dvar, const TensorD& dvar_dmu) {
  TensorD o({C(dl_dxhat)});
  for (Index n = 0; n < N(dl_dxhat); ++n)
    for (Index c = 0; c < C(dl_dxhat); ++c) o[c] -= at(dl_dxhat, n, c) * invstd[c];
  return o;
}

TensorD dvar_dx(const TensorD& x, const TensorD& mu) {
  TensorD o(x.shape());
  for (Index n = 0; n < N(x); ++n)
    for (Index c = 0; c < C(x); ++c) at(o, n, c) = 2.0 * (at(x, n, c) - mu[c]) / static_cast<double>(N(x));
  return o;
}

TensorD dmu_dx(const TensorD& x) { return TensorD({C(x)}, 1.0 / static_cast<double>(N(x))); }

TensorD dx(const TensorD& dl_dxhat, const TensorD& invstd, const TensorD& dl_dvar, const TensorD& dvar_dx,
           const TensorD& dl_dmu, const TensorD& dmu_dx) {
  TensorD o(dl_dxhat.shape());
  for (Index n = 0; n < N(o); ++n)
    for (Index c = 0; c < C(o); ++c)
      at(o, n, c) = at(dl_dxhat, n, c) * invstd[c] + dl_dvar[c] * at(dvar_dx, n, c) + dl_dmu[c] * dmu_dx[c];
  return o;
}

}  // namespace exercise
