/// \file
/// \brief Training on the digits (derivations/training.md): the MLP
/// linear(64, H) → BatchNorm1d(H) → ReLU → linear(H, 10) → cross-entropy, assembled from the
/// modules of nn/module.hpp, trained in float32 with nn::Sgd or nn::Adam, seeded and deterministic.
///
/// Shape legend: `N` images of a batch, 64 pixels, `H` hidden features, 10 classes.
#pragma once

#include "gradproof/nn/module.hpp"
#include "gradproof/nn/optim.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/train/digits.hpp"

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace gradproof::train {

/// \brief The network: \f$z = W_2\,\mathrm{relu}(\mathrm{BN}(W_1 x + b_1)) + b_2\f$ and the
/// cross-entropy of the logits \f$z\f$ with the labels. Written out like nn/networks.hpp: the
/// forward calls the layers first to last, the backward their backwards last to first.
/// \tparam S  `float` (the training) or `double`
template <class S>
struct DigitsMlp {
  using Scalar = S;             ///< the scalar
  nn::Linear<S> fc1;            ///< `(H, 64)`
  nn::BatchNorm1d<S> bn;        ///< over the `H` features; tracks running statistics
  nn::ReLU<S> relu;             ///< \f$\max(\cdot, 0)\f$
  nn::Linear<S> fc2;            ///< `(10, H)`
  nn::CrossEntropyLoss<S> loss; ///< mean over the batch
  /// One cache per layer.
  struct Cache {
    typename nn::Linear<S>::Cache fc1;             ///< x
    typename nn::BatchNorm1d<S>::Cache bn;         ///< fc1's output, batch statistics
    typename nn::ReLU<S>::Cache relu;              ///< bn's output
    typename nn::Linear<S>::Cache fc2;             ///< relu's output
    typename nn::CrossEntropyLoss<S>::Cache loss;  ///< logits, labels, softmax statistics
  };
  /// Logits, loss and caches of a training forward pass.
  struct Out {
    Tensor<S> logits;  ///< `(N, 10)`
    S loss;            ///< the mean cross-entropy of the batch
    Cache cache;       ///< for backward()
  };
  /// \param hidden  \f$H\f$ ≥ 1
  /// \param seed    seeds PyTorch's default initialisation of the linear layers: every weight
  ///                and bias uniform in \f$\pm 1/\sqrt{\text{fan\_in}}\f$
  DigitsMlp(Index hidden, std::uint64_t seed)
      : fc1("fc1", kPixels, hidden), bn("bn", hidden), fc2("fc2", hidden, kClasses) {
    bn.running = {ops::BatchNormRunningStats<S>::fresh(hidden)};
    std::mt19937_64 rng(seed);
    for (auto* l : {&fc1, &fc2}) {
      const double bound = 1 / std::sqrt(double(l->weight.value.shape()[1]));
      for (auto* t : {&l->weight.value, &l->bias.value})
        for (Index i = 0; i < t->size(); ++i) {
          const double u = double(rng() >> 11) * 0x1.0p-53;  // [0, 1) from the top 53 bits
          (*t)[i] = S((2 * u - 1) * bound);
        }
    }
  }
  /// Training forward (batch statistics; updates the running statistics).
  /// \param x       `(N, 64)`
  /// \param labels  `(N)`
  Out forward(const Tensor<S>& x, const Tensor<Index>& labels) {
    // [digits-forward]
    auto a = fc1.forward(x);          // a = x W₁ᵀ + b₁
    auto h = bn.forward(a.y);         // h = γ x̂(a) + β, batch statistics
    auto r = relu.forward(h.y);       // r = max(h, 0)
    auto z = fc2.forward(r.y);        // z = r W₂ᵀ + b₂, the logits
    auto l = loss.forward(z.y, labels);  // L = mean of −log softmax(z)[label]
    // [digits-forward]
    const S value = l.loss[0];
    return {std::move(z.y), value,
            {std::move(a.cache), std::move(h.cache), std::move(r.cache), std::move(z.cache), std::move(l.cache)}};
  }
  /// Backward of the loss: adds every parameter's gradient to its `grad`.
  /// \param c  the caches of forward()
  /// \param b  staged or fused; the staged pass takes the term scales of the ablation
  void backward(const Cache& c, const nn::Backward& b) {
    // [digits-backward]
    Tensor<S> dz = loss.backward(c.loss, b);  // dL/dz = (softmax(z) − onehot) / N
    Tensor<S> dr = fc2.backward(dz, c.fc2, b);  // dr = dz W₂;            adds dW₂, db₂
    Tensor<S> dh = relu.backward(dr, c.relu, b);  // dh = dr ⊙ [h > 0]
    Tensor<S> da = bn.backward(dh, c.bn, b);    // da = bn's VJP of dh;    adds dγ, dβ
    fc1.backward(da, c.fc1, b);                 // dx = da W₁ (unused);    adds dW₁, db₁
    // [digits-backward]
  }
  /// Evaluation forward: batch norm with its running statistics (PyTorch's `model.eval()`).
  /// \param x  `(N, 64)`
  /// \return the logits `(N, 10)`.
  Tensor<S> logits_eval(const Tensor<S>& x) const {
    auto a = fc1.forward(x);
    auto h = ops::batchnorm_forward_eval<S>(a.y, &bn.weight.value, &bn.bias.value, bn.running[0], bn.cfg);
    auto r = relu.forward(h.y);
    return std::move(fc2.forward(r.y).y);
  }
  /// Calls `f(Parameter&)` for each parameter in state-dict order.
  template <class F>
  void for_each_parameter(F&& f) {
    fc1.for_each_parameter(f);
    bn.for_each_parameter(f);
    fc2.for_each_parameter(f);
  }
};

/// How a training run goes.
struct TrainConfig {
  Index hidden = 64;            ///< \f$H\f$
  Index epochs = 30;            ///< passes over the training set
  Index batch = 64;             ///< images per step; the last batch of an epoch holds the rest
  std::string optimizer = "adam";  ///< "adam" or "sgd"
  nn::AdamConfig adam{};        ///< Adam's options (PyTorch's defaults)
  nn::SgdConfig sgd{.lr = 0.1, .momentum = 0.9};  ///< SGD's options, when optimizer is "sgd"
  std::uint64_t seed = 1;       ///< initial weights and the order of the batches
  nn::Backward backward{};      ///< fused, or staged with term scales (the ablation)
};

/// Measured after each epoch.
struct EpochStats {
  double train_loss = 0;  ///< mean over the epoch's steps of the batch loss (training mode), weighted by batch size
  double test_loss = 0;   ///< mean cross-entropy of the test set (evaluation mode)
  double train_acc = 0;   ///< accuracy on the whole training set (evaluation mode)
  double test_acc = 0;    ///< accuracy on the test set (evaluation mode)
};

/// A test image the trained network got wrong.
struct Misclassified {
  Index row = 0;                  ///< its row in the test set
  Index label = 0;                ///< the true digit
  Index predicted = 0;            ///< the network's
  std::array<float, kPixels> pixels{};  ///< 0–16
};

/// What a run produced.
struct TrainResult {
  std::vector<EpochStats> epochs;                 ///< one per epoch
  std::vector<double> step_loss;                  ///< the batch loss of every step
  std::array<std::array<Index, kClasses>, kClasses> confusion{};  ///< [true][predicted], test set
  std::vector<Misclassified> misclassified;       ///< every test image got wrong, in row order
  std::vector<float> parameters;                  ///< the trained parameters (state-dict order)
  std::vector<std::string> parameter_names;       ///< `fc1.weight`, ...: the tensors of `parameters`
  std::vector<Index> parameter_sizes;             ///< their sizes, in that order
  double seconds = 0;                             ///< wall time of the training (with the evaluations)
};

/// \brief Trains the network on `train` and evaluates it on `test` after every epoch.
/// Pixels are scaled by 1/16 to [0, 1].
/// \throws InvalidArgument naming the option for hidden, epochs or batch < 1, an unknown
///         optimizer, or an empty data set.
TrainResult train_digits(const Digits& train, const Digits& test, const TrainConfig& cfg);

}  // namespace gradproof::train
