// The benchmark harness: what a case is, the shared inputs, and the implementations' factories.
//
// Every implementation of a case runs on the same inputs in the same process; each factory
// returns closures that own their preallocated buffers, so a timed call touches no fresh
// memory. Factories run after the thread count is set, because oneDNN sizes its kernels to the
// threads it sees when a primitive is created.
#pragma once

#include "gradproof/tensor.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace gradproof::bench {

/// One implementation of one case, ready to time.
struct Case {
  std::string op;                   ///< batchnorm, layernorm, rmsnorm
  std::string pass;                 ///< forward, backward
  std::string impl;                 ///< staged, fused, libtorch, onednn-nchw, onednn-nchw16c
  std::vector<std::int64_t> shape;  ///< the input's shape
  double bytes = 0;                 ///< minimum traffic: 8 B/element forward, 12 B/element backward
  std::function<void()> run;        ///< one call on preallocated buffers
  /// After run(): the largest difference of its outputs from the float64 reference (our staged
  /// code run in double), relative to the largest reference value; the worst over the outputs.
  std::function<double()> agreement;
  /// Time of something a caller of this implementation also pays but that is not in run()
  /// (oneDNN's blocked layout: converting the inputs from NCHW and the output back), or empty.
  std::function<void()> extra;
  std::string extra_what;  ///< what `extra` does, for the notes
  std::string note;        ///< anything a reader of the table must know about this row
  /// Floating-point operations of one call (linear: 2 per multiply-add), or 0: a row with
  /// flops reports GFLOP/s, the measure its target uses.
  double flops = 0;
  /// After run(): runs the case twice more and says whether both outputs have the bits of the
  /// first (embedding backward), or empty.
  std::function<bool()> deterministic = {};
  std::string group = {};  ///< the family of the Performance page's tables (empty: normalization)
};

/// Inputs of one batch-norm shape, shared by every implementation, and the float64 reference
/// results the agreement column compares with.
struct BnProblem {
  Shape shape;
  double eps = 1e-5;
  TensorF x, dy, gamma, beta;
  TensorF mean, var, invstd;  ///< our fused float32 forward's statistics: the cache of our backward
  TensorD ref_y, ref_mean, ref_invstd;      ///< reference forward in double
  TensorD ref_dx, ref_dgamma, ref_dbeta;    ///< staged backward in double
};

/// Inputs of one layer-norm or RMS-norm shape `(R, M)`, normalised over the last axis, and the
/// float64 reference results.
struct RowNormProblem {
  std::string op;  ///< layernorm or rmsnorm
  Shape shape;
  double eps = 1e-5;
  TensorF x, dy, gamma, beta;  ///< beta unused for RMS norm
  TensorD ref_y, ref_dx, ref_dgamma, ref_dbeta;  ///< ref_dbeta empty for RMS norm
};

using BnPtr = std::shared_ptr<const BnProblem>;
using RowNormPtr = std::shared_ptr<const RowNormProblem>;

/// Deterministic inputs for a batch-norm shape, with our fused results filled in.
BnPtr make_bn_problem(const Shape& shape);

/// Deterministic inputs for a layer-norm or RMS-norm shape, with the float64 references.
RowNormPtr make_rownorm_problem(const std::string& op, const Shape& shape);

/// max |a_i - r_i| / max |r_i|.
double relative_difference(const float* a, const double* ref, Index n);

std::vector<Case> ours_batchnorm(const BnPtr& p);
std::vector<Case> ours_rownorm(const RowNormPtr& p);

/// Empty when the benchmark was built without libtorch.
std::vector<Case> libtorch_batchnorm(const BnPtr& p);
/// at::native_layer_norm and its backward; RMS norm composed from libtorch ops (1.13 has no
/// rms_norm), its backward by libtorch's autograd. Empty without libtorch.
std::vector<Case> libtorch_rownorm(const RowNormPtr& p);
/// Empty when the benchmark was built without oneDNN.
std::vector<Case> onednn_batchnorm(const BnPtr& p);

/// \brief Inputs of one case of the course layers (issue 12), shared by every implementation,
/// and their float64 references, computed on first use (after timing, once for all the
/// implementations that compare with them).
struct LayerProblem {
  std::string op;     ///< relu, ..., softmax, log_softmax, cross_entropy, linear, embedding
  Shape shape;        ///< the input's shape (embedding: that of dy)
  TensorF x, dy;      ///< input and upstream gradient (embedding: dy only)
  TensorF w, b;       ///< linear: weight (O, I) and bias (O); embedding: w is (V, D), unread
  Tensor<std::int64_t> index;  ///< cross-entropy targets (R), embedding indices (Q)
  /// Float64 references of the outputs: forward y (cross-entropy: the loss, then dx),
  /// backward dx (linear: dx, dW, db; embedding: dW).
  const std::vector<TensorD>& ref_forward() const;
  const std::vector<TensorD>& ref_backward() const;
  std::function<std::vector<TensorD>(const LayerProblem&)> make_ref_forward, make_ref_backward;
  mutable std::shared_ptr<std::vector<TensorD>> ref_f, ref_b;
};
using LayerPtr = std::shared_ptr<const LayerProblem>;

/// The activations benchmarked, by row name: relu, leaky_relu, elu, gelu, gelu_tanh, silu,
/// sigmoid, tanh, softplus (PyTorch's default parameters).
const std::vector<std::string>& activation_names();
/// Deterministic inputs of a case of the course layers: an activation of activation_names() on
/// (4096, 4096), softmax / log_softmax / cross_entropy on (8192, 4096), linear at x (4096, 1024)
/// and W (1024, 1024), embedding backward (see ours_layers.cpp for the shapes and why).
LayerPtr make_layer_problem(const std::string& op);
std::vector<Case> ours_layer(const LayerPtr& p);
/// at:: out-variants where libtorch has them; autograd for cross-entropy. Empty without libtorch.
std::vector<Case> libtorch_layer(const LayerPtr& p);
/// oneDNN's matmul (and a sum reduction for db) for linear; empty for the other ops and
/// without oneDNN.
std::vector<Case> onednn_layer(const LayerPtr& p);

/// Sets libtorch's intra-op threads (at::set_num_threads); does nothing without libtorch.
void libtorch_set_threads(int threads);
/// "1.13.0", or empty without libtorch.
std::string libtorch_version();
/// "2.6.3 (cpu runtime: OpenMP)", or empty without oneDNN.
std::string onednn_version();

}  // namespace gradproof::bench
