/// \file
/// \brief An op's problems as plain float64 data (catalog::PlainProblem) for an oracle outside the
/// catalog, and the long-double gradient that decides where that oracle and gradproof differ.
/// Knows no op and no such oracle: the libtorch comparison (tests/torch/oracle.test.cpp) reads
/// the registry's plain problems and adds only the op's torch forward.
#pragma once

#include "gradproof/catalog/catalog.hpp"
#include "gradproof/tensor.hpp"

#include <Eigen/Core>

#include <complex>
#include <vector>

namespace gradproof::harness {

/// The scalar of the long-double gradient.
using ComplexLD = std::complex<long double>;

/// \brief The gradient of \f$L = \langle w, f(\text{inputs})\rangle\f$ in input `k`, by the complex
/// step in long double: \f$\partial L/\partial v_i = \operatorname{Im} L(v + \mathrm{i}h e_i)/h\f$.
///
/// The complex step subtracts nothing, so the only error is the rounding of the forward in long
/// double (64-bit significand, \f$u = 2^{-64} \approx 5\cdot10^{-20}\f$), about 2000 times below
/// float64's: an exact answer for judging two float64 results. The step \f$h = 10^{-30}\f$ is far
/// below any feature of the ops (the truncation error is \f$h^2 f'''/6\f$).
/// \param f       the forward on `Tensor<ComplexLD>` inputs, returning `y`
/// \param inputs  the inputs, float64
/// \param k       the input differentiated
/// \param w       the loss weights, shape of `y`
template <class F>
Eigen::VectorXd exact_gradient(const F& f, const std::vector<TensorD>& inputs, std::size_t k, const TensorD& w) {
  std::vector<Tensor<ComplexLD>> in;
  for (const auto& t : inputs) in.push_back(t.cast<ComplexLD>());
  const long double h = 1e-30L;
  Eigen::VectorXd g(inputs[k].size());
  for (Index i = 0; i < inputs[k].size(); ++i) {
    const ComplexLD keep = in[k][i];
    in[k][i] = keep + ComplexLD(0, h);
    const Tensor<ComplexLD> y = f(in);
    long double im = 0;
    for (Index j = 0; j < y.size(); ++j) im += static_cast<long double>(w[j]) * y[j].imag();
    g[i] = static_cast<double>(im / h);
    in[k][i] = keep;
  }
  return g;
}

}  // namespace gradproof::harness
