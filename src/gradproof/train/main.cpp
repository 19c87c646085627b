// gradproof_train: trains the digits MLP (derivations/training.md) and writes the curves, the
// confusion matrix, misclassified digits, the ablation runs and the determinism checks as JSON.
//
//   gradproof_train [--data digits.csv.gz] [--out training.json] [--epochs N] [--hidden H]
//                   [--seed S] [--threads T]
#include "gradproof/check/results.hpp"
#include "gradproof/parallel.hpp"
#include "gradproof/train/train.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#ifndef GRADPROOF_DIGITS_CSV
#define GRADPROOF_DIGITS_CSV ""
#endif

namespace {

using namespace gradproof;
using namespace gradproof::train;
namespace json = gradproof::check::json;

constexpr Index kTest = 360;            // of 1,797: 20%, as sklearn's usual test_size=0.2
constexpr std::uint64_t kSplitSeed = 0;

struct Run {
  std::string name, optimizer, backward, what;
  nn::Backward b;
  TrainResult r;
};

void usage(std::ostream& o) {
  o << "usage: gradproof_train [--data PATH] [--out JSON] [--epochs N] [--hidden H] [--seed S] [--threads T]\n"
       "  --data     sklearn's digits.csv.gz (default, found at configure time: "
    << (std::strlen(GRADPROOF_DIGITS_CSV) ? GRADPROOF_DIGITS_CSV : "none") << ")\n";
}

long long to_int(const std::string& opt, const std::string& v, long long lo) {
  std::size_t pos = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != v.size() || v.empty() || n < lo)
    throw InvalidArgument(opt + ": expected an integer >= " + std::to_string(lo) + "; got '" + v + "'");
  return n;
}

void write_epochs(std::ostream& o, const std::vector<EpochStats>& e) {
  const char* keys[] = {"train_loss", "test_loss", "train_acc", "test_acc"};
  o << '{';
  for (int k = 0; k < 4; ++k) {
    o << (k ? "," : "") << '"' << keys[k] << "\":[";
    for (std::size_t i = 0; i < e.size(); ++i) {
      const EpochStats& s = e[i];
      o << (i ? "," : "");
      json::number(o, k == 0 ? s.train_loss : k == 1 ? s.test_loss : k == 2 ? s.train_acc : s.test_acc);
    }
    o << ']';
  }
  o << '}';
}

void write_doubles(std::ostream& o, const std::vector<double>& v) {
  o << '[';
  for (std::size_t i = 0; i < v.size(); ++i) {
    o << (i ? "," : "");
    json::number(o, v[i]);
  }
  o << ']';
}

// Largest |a − b| over two curves of the same length.
double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}
double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}
bool same_bits(const TrainResult& a, const TrainResult& b) {
  return a.parameters.size() == b.parameters.size() &&
         std::memcmp(a.parameters.data(), b.parameters.data(), a.parameters.size() * sizeof(float)) == 0 &&
         a.step_loss == b.step_loss;
}

int run(const std::vector<std::string>& args) {
  std::string data = GRADPROOF_DIGITS_CSV, out;
  TrainConfig cfg;
  // One thread by default: the network is small (a step is a few 64×64 products), and on a
  // machine shared with other work a second thread mostly waits for a core (measured: 3 epochs
  // took 12.7 s at 2 threads and 0.15 s at 1 on the loaded build machine).
  int threads = 1;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      usage(std::cout);
      return 0;
    }
    if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0) {
      std::cerr << "gradproof_train: " << a << (a.rfind("--", 0) == 0 ? " needs a value" : ": unknown argument") << "\n";
      usage(std::cerr);
      return 2;
    }
    const std::string& v = args[++i];
    try {
      if (a == "--data") data = v;
      else if (a == "--out") out = v;
      else if (a == "--epochs") cfg.epochs = to_int(a, v, 1);
      else if (a == "--hidden") cfg.hidden = to_int(a, v, 1);
      else if (a == "--seed") cfg.seed = static_cast<std::uint64_t>(to_int(a, v, 0));
      else if (a == "--threads") threads = static_cast<int>(to_int(a, v, 1));
      else {
        std::cerr << "gradproof_train: unknown option '" << a << "'\n";
        usage(std::cerr);
        return 2;
      }
    } catch (const InvalidArgument& e) {
      std::cerr << "gradproof_train: " << e.what() << "\n";
      return 2;
    }
  }
  if (data.empty()) {
    std::cerr << "gradproof_train: no data set: CMake found no digits.csv.gz (Debian package python3-sklearn); "
                 "pass --data PATH\n";
    return 2;
  }
  std::ofstream file;
  if (!out.empty()) {
    file.open(out);
    if (!file) {
      std::cerr << "gradproof_train: cannot open " << out << " for writing\n";
      return 2;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  Digits all;
  try {
    all = load_digits(data);
  } catch (const InvalidArgument& e) {  // a missing or unreadable file: an I/O error
    std::cerr << "gradproof_train: " << e.what() << "\n";
    return 2;
  }
  const Split split = stratified_split(all.labels, kTest, kSplitSeed);
  const Digits train = subset(all, split.train), test = subset(all, split.test);
  parallel::set_threads(threads);

  // The runs: Adam (the headline), SGD with momentum, and the ablation on the staged backward.
  std::vector<Run> runs;
  auto add = [&](std::string name, std::string optimizer, std::string what, nn::Backward b) {
    TrainConfig c = cfg;
    c.optimizer = optimizer;
    c.backward = b;
    std::cerr << "gradproof_train: " << name << " ..." << std::flush;
    Run r{name, optimizer, b.pass == nn::Pass::staged ? "staged" : "fused", what, b, train_digits(train, test, c)};
    std::cerr << " test accuracy " << r.r.epochs.back().test_acc << ", " << r.r.seconds << " s\n";
    runs.push_back(std::move(r));
  };
  nn::Backward fused{}, staged{.pass = nn::Pass::staged};
  add("adam", "adam", "Adam, fused backward", fused);
  add("sgd", "sgd", "SGD with momentum 0.9, fused backward", fused);
  add("staged", "adam", "Adam, staged backward as derived", staged);
  nn::Backward no_dvar_dmu = staged, no_dl_dmu = staged, no_dl_dvar = staged;
  no_dvar_dmu.bn.dvar_dmu = 0;
  no_dl_dmu.bn.dl_dmu = 0;
  no_dl_dvar.bn.dl_dvar = 0;
  add("no_dvar_dmu", "adam", "staged, without bn.dvar_dmu", no_dvar_dmu);
  add("no_dl_dmu", "adam", "staged, without bn.dl_dmu", no_dl_dmu);
  add("no_dl_dvar", "adam", "staged, without bn.dl_dvar", no_dl_dvar);

  // Determinism: the headline run again; and a 3-epoch run at 1 and at 2 threads.
  TrainConfig c = cfg;
  const TrainResult again = train_digits(train, test, c);
  c.epochs = std::min<Index>(cfg.epochs, 3);
  parallel::set_threads(1);
  const TrainResult one = train_digits(train, test, c);
  parallel::set_threads(2);
  const TrainResult two = train_digits(train, test, c);
  parallel::set_threads(threads);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const Run& head = runs[0];
  const Run& base = runs[2];
  std::ostringstream o;
  o << "{\"data\":{\"path\":";
  json::string(o, data);
  o << ",\"images\":" << all.size() << ",\"train\":" << train.size() << ",\"test\":" << test.size()
    << ",\"split\":\"stratified: each digit gives the test set its share of 360 (largest remainders), "
       "by a seeded Fisher-Yates shuffle (std::mt19937_64)\",\"split_seed\":"
    << kSplitSeed << ",\"test_per_class\":[";
  std::array<Index, kClasses> per{};
  for (Index l : test.labels) ++per[static_cast<std::size_t>(l)];
  for (Index k = 0; k < kClasses; ++k) o << (k ? "," : "") << per[static_cast<std::size_t>(k)];
  o << "]},\"config\":{\"hidden\":" << cfg.hidden << ",\"epochs\":" << cfg.epochs << ",\"batch\":" << cfg.batch
    << ",\"seed\":" << cfg.seed << ",\"adam\":{\"lr\":";
  json::number(o, cfg.adam.lr);
  o << ",\"beta1\":";
  json::number(o, cfg.adam.beta1);
  o << ",\"beta2\":";
  json::number(o, cfg.adam.beta2);
  o << ",\"eps\":";
  json::number(o, cfg.adam.eps);
  o << "},\"sgd\":{\"lr\":";
  json::number(o, cfg.sgd.lr);
  o << ",\"momentum\":";
  json::number(o, cfg.sgd.momentum);
  o << "}},\"threads\":" << threads << ",\"runs\":[";
  for (std::size_t k = 0; k < runs.size(); ++k) {
    const Run& r = runs[k];
    o << (k ? "," : "") << "{\"name\":\"" << r.name << "\",\"optimizer\":\"" << r.optimizer << "\",\"backward\":\""
      << r.backward << "\",\"what\":";
    json::string(o, r.what);
    o << ",\"bn_terms\":{\"dl_dvar\":" << r.b.bn.dl_dvar << ",\"dvar_dmu\":" << r.b.bn.dvar_dmu
      << ",\"dl_dmu\":" << r.b.bn.dl_dmu << "},\"seconds\":";
    json::number(o, r.r.seconds);
    o << ",\"epochs\":";
    write_epochs(o, r.r.epochs);
    o << ",\"step_loss\":";
    write_doubles(o, r.r.step_loss);
    o << ",\"vs_staged\":{\"identical_bits\":" << (same_bits(r.r, base.r) ? "true" : "false")
      << ",\"max_step_loss_diff\":";
    json::number(o, max_diff(r.r.step_loss, base.r.step_loss));
    o << ",\"max_test_acc_diff\":";
    std::vector<double> a, b;
    for (const auto& e : r.r.epochs) a.push_back(e.test_acc);
    for (const auto& e : base.r.epochs) b.push_back(e.test_acc);
    json::number(o, max_diff(a, b));
    o << ",\"max_parameter_diff\":";
    json::number(o, max_diff(r.r.parameters, base.r.parameters));
    o << ",\"max_parameter_diff_by_name\":{";
    std::size_t at = 0;
    for (std::size_t q = 0; q < r.r.parameter_names.size(); ++q) {
      const auto n = static_cast<std::size_t>(r.r.parameter_sizes[q]);
      const std::vector<float> mine(r.r.parameters.begin() + long(at), r.r.parameters.begin() + long(at + n));
      const std::vector<float> theirs(base.r.parameters.begin() + long(at), base.r.parameters.begin() + long(at + n));
      o << (q ? "," : "") << '"' << r.r.parameter_names[q] << "\":";
      json::number(o, max_diff(mine, theirs));
      at += n;
    }
    o << "}}}";
  }
  o << "],\"confusion\":[";
  for (Index t = 0; t < kClasses; ++t) {
    o << (t ? "," : "") << '[';
    for (Index p = 0; p < kClasses; ++p) o << (p ? "," : "") << head.r.confusion[std::size_t(t)][std::size_t(p)];
    o << ']';
  }
  o << "],\"misclassified_count\":" << head.r.misclassified.size() << ",\"misclassified\":[";
  for (std::size_t k = 0; k < head.r.misclassified.size() && k < 8; ++k) {
    const Misclassified& m = head.r.misclassified[k];
    o << (k ? "," : "") << "{\"row\":" << m.row << ",\"label\":" << m.label << ",\"predicted\":" << m.predicted
      << ",\"pixels\":[";
    for (Index p = 0; p < kPixels; ++p) o << (p ? "," : "") << m.pixels[std::size_t(p)];
    o << "]}";
  }
  o << "],\"determinism\":{\"rerun_identical\":" << (same_bits(head.r, again) ? "true" : "false")
    << ",\"threads_identical\":" << (same_bits(one, two) ? "true" : "false") << ",\"threads_compared\":[1,2]"
    << ",\"threads_epochs\":" << c.epochs << "},\"total_seconds\":";
  json::number(o, total);
  o << "}\n";
  if (!out.empty()) {
    file << o.str();
    file.close();
    if (!file) {
      std::cerr << "gradproof_train: cannot write " << out << "\n";
      return 2;
    }
  } else {
    std::cout << o.str();
  }
  std::cerr << "gradproof_train: test accuracy " << head.r.epochs.back().test_acc << " (Adam), all runs in " << total
            << " s at " << threads << " threads; rerun identical: " << same_bits(head.r, again)
            << ", 1 and 2 threads identical: " << same_bits(one, two) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "gradproof_train: " << e.what() << "\n";
    return 1;
  }
}
