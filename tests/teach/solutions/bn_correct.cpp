// A right C++ solution of the batch-norm exercise (x (N, C), statistics per channel).
// expect: gradproof grade: bn, batch normalization \(training\), C\+\+
// expect: score: 9 of 9 terms; gradients: all right \(full marks\)
// expect-rc: 0
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
    for (Index c = 0; c < C(x); ++c) o[c] += -2.0 * (at(x, n, c) - mu[c]) / static_cast<double>(N(x));
  return o;
}

TensorD dl_dmu(const TensorD& dl_dxhat, const TensorD& invstd, const TensorD& dl_dvar, const TensorD& dvar_dmu) {
  TensorD o({C(dl_dxhat)});
  for (Index n = 0; n < N(dl_dxhat); ++n)
    for (Index c = 0; c < C(dl_dxhat); ++c) o[c] -= at(dl_dxhat, n, c) * invstd[c];
  for (Index c = 0; c < C(dl_dxhat); ++c) o[c] += dl_dvar[c] * dvar_dmu[c];
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
