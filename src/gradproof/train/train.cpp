// The training loop of derivations/training.md.
#include "gradproof/train/train.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <variant>

namespace gradproof::train {

namespace {

// Rows `rows[begin, end)` of `d` as a float batch scaled to [0, 1], and their labels.
void batch_of(const Digits& d, const std::vector<Index>& rows, std::size_t begin, std::size_t end, Tensor<float>& x,
              Tensor<Index>& y) {
  const Index n = static_cast<Index>(end - begin);
  x = Tensor<float>({n, kPixels});
  y = Tensor<Index>({n});
  for (Index k = 0; k < n; ++k) {
    const Index r = rows[begin + static_cast<std::size_t>(k)];
    for (Index p = 0; p < kPixels; ++p) x[k * kPixels + p] = d.pixels[r * kPixels + p] / 16.0f;
    y[k] = d.labels[static_cast<std::size_t>(r)];
  }
}

struct Eval {
  double loss = 0, acc = 0;
  std::vector<Index> predicted;
};

// Evaluation mode over a whole data set: mean cross-entropy (double) and accuracy.
Eval evaluate(const DigitsMlp<float>& net, const Digits& d) {
  std::vector<Index> all(static_cast<std::size_t>(d.size()));
  std::iota(all.begin(), all.end(), Index(0));
  Tensor<float> x;
  Tensor<Index> y;
  batch_of(d, all, 0, all.size(), x, y);
  const Tensor<float> z = net.logits_eval(x);
  Eval e;
  Index right = 0;
  for (Index n = 0; n < d.size(); ++n) {
    const float* row = z.data() + n * kClasses;
    const Index pred = static_cast<Index>(std::max_element(row, row + kClasses) - row);
    e.predicted.push_back(pred);
    right += pred == y[n];
    double m = row[0], s = 0;
    for (Index c = 1; c < kClasses; ++c) m = std::max(m, double(row[c]));
    for (Index c = 0; c < kClasses; ++c) s += std::exp(double(row[c]) - m);
    e.loss += m + std::log(s) - double(row[y[n]]);
  }
  e.loss /= double(d.size());
  e.acc = double(right) / double(d.size());
  return e;
}

}  // namespace

TrainResult train_digits(const Digits& train, const Digits& test, const TrainConfig& cfg) {
  if (cfg.hidden < 1) throw InvalidArgument("train_digits: hidden must be >= 1; got " + std::to_string(cfg.hidden));
  if (cfg.epochs < 1) throw InvalidArgument("train_digits: epochs must be >= 1; got " + std::to_string(cfg.epochs));
  if (cfg.batch < 1) throw InvalidArgument("train_digits: batch must be >= 1; got " + std::to_string(cfg.batch));
  if (train.size() < 1 || test.size() < 1)
    throw InvalidArgument("train_digits: expected non-empty training and test sets; got " +
                          std::to_string(train.size()) + " and " + std::to_string(test.size()) + " images");
  std::variant<nn::Adam<float>, nn::Sgd<float>> opt = [&]() -> std::variant<nn::Adam<float>, nn::Sgd<float>> {
    if (cfg.optimizer == "adam") return nn::Adam<float>(cfg.adam);
    if (cfg.optimizer == "sgd") return nn::Sgd<float>(cfg.sgd);
    throw InvalidArgument("train_digits: optimizer must be 'adam' or 'sgd'; got '" + cfg.optimizer + "'");
  }();

  const auto t0 = std::chrono::steady_clock::now();
  DigitsMlp<float> net(cfg.hidden, cfg.seed);
  std::mt19937_64 order_rng(cfg.seed ^ 0x9e3779b97f4a7c15ULL);  // the batches' order, apart from the weights'
  std::vector<Index> rows(static_cast<std::size_t>(train.size()));
  std::iota(rows.begin(), rows.end(), Index(0));
  TrainResult res;
  Tensor<float> x;
  Tensor<Index> y;
  const std::size_t B = static_cast<std::size_t>(cfg.batch);
  for (Index epoch = 0; epoch < cfg.epochs; ++epoch) {
    shuffle(rows, order_rng);
    double sum = 0;
    for (std::size_t begin = 0; begin < rows.size(); begin += B) {
      const std::size_t end = std::min(rows.size(), begin + B);
      batch_of(train, rows, begin, end, x, y);
      // [digits-step]
      nn::zero_grad(net);
      auto out = net.forward(x, y);        // loss of the batch, caches
      net.backward(out.cache, cfg.backward);  // every parameter's gradient
      std::visit([&net](auto& o) { o.step(net); }, opt);  // the optimizer's update
      // [digits-step]
      res.step_loss.push_back(out.loss);
      sum += double(out.loss) * double(end - begin);
    }
    const Eval tr = evaluate(net, train), te = evaluate(net, test);
    res.epochs.push_back({sum / double(rows.size()), te.loss, tr.acc, te.acc});
    if (epoch + 1 == cfg.epochs) {
      for (Index n = 0; n < test.size(); ++n) {
        const Index t = test.labels[static_cast<std::size_t>(n)], p = te.predicted[static_cast<std::size_t>(n)];
        ++res.confusion[static_cast<std::size_t>(t)][static_cast<std::size_t>(p)];
        if (t != p) {
          Misclassified m{n, t, p, {}};
          std::copy_n(test.pixels.data() + n * kPixels, kPixels, m.pixels.begin());
          res.misclassified.push_back(m);
        }
      }
    }
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Tensor<float> p = nn::parameters(net);
  res.parameters.assign(p.data(), p.data() + p.size());
  net.for_each_parameter([&res](auto& q) {
    res.parameter_names.push_back(q.name);
    res.parameter_sizes.push_back(q.value.size());
  });
  return res;
}

}  // namespace gradproof::train
