// Oversubscription: milliseconds per call of the fused layer-norm backward when the thread team
// is larger than the machine (issue 10: a spin-wait that never yielded made it 1.9 s per call at
// 64 threads on 2 cores). Preallocated outputs, the *_into API; each thread count runs `calls`
// timed calls after 3 untimed ones and prints the median, min and max.
//
//   gradproof_oversubscription [--threads 2,3,16,64] [--calls N] [--rows R] [--cols M] [--max-ms X]
//
// With --max-ms, exits 1 if a median exceeds X ms (ctest uses it with a generous bound; the
// point of that test is the hang, not the speed).
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/parallel.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace gradproof;

namespace {

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr, "gradproof_oversubscription: %s\n"
               "usage: gradproof_oversubscription [--threads 2,3,16,64] [--calls N] [--rows R] [--cols M] [--max-ms X]\n",
               why);
  std::exit(2);
}

long positive(const std::string& option, const char* text) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || v < 1) usage((option + " needs a positive integer, got '" + text + "'").c_str());
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads = {2, 3, 16, 64};
  long calls = 20, rows = 256, cols = 1024;
  double max_ms = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage((a + " needs a value").c_str());
    const char* v = argv[++i];
    if (a == "--threads") {
      threads.clear();
      std::stringstream list(v);
      for (std::string t; std::getline(list, t, ',');) threads.push_back(static_cast<int>(positive(a, t.c_str())));
    } else if (a == "--calls") calls = positive(a, v);
    else if (a == "--rows") rows = positive(a, v);
    else if (a == "--cols") cols = positive(a, v);
    else if (a == "--max-ms") max_ms = static_cast<double>(positive(a, v));
    else usage(("unknown option '" + a + "'").c_str());
  }

  const Shape shape{rows, cols};
  std::mt19937_64 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  TensorF x(shape), dy(shape), gamma({cols}), beta({cols});
  for (Index i = 0; i < x.size(); ++i) x[i] = dist(rng), dy[i] = dist(rng);
  for (Index i = 0; i < cols; ++i) gamma[i] = 1.0f + 0.1f * dist(rng), beta[i] = 0.1f * dist(rng);
  const ops::LayerNormConfig cfg{.normalized_shape = {cols}};
  const auto fwd = ops::layernorm_forward<float>(x, &gamma, &beta, cfg);
  TensorF dx(shape), dgamma({cols}), dbeta({cols});

  int status = 0;
  std::printf("layernorm backward (fused, float32) on (%ld, %ld), %ld calls per thread count\n", rows, cols, calls);
  std::printf("%8s %12s %12s %12s\n", "threads", "median_ms", "min_ms", "max_ms");
  for (const int t : threads) {
    parallel::set_threads(t);
    for (int w = 0; w < 3; ++w) ops::layernorm_backward_into<float>(dy, x, &gamma, fwd.cache, dx, &dgamma, &dbeta);
    std::vector<double> ms;
    for (long c = 0; c < calls; ++c) {
      const auto t0 = std::chrono::steady_clock::now();
      ops::layernorm_backward_into<float>(dy, x, &gamma, fwd.cache, dx, &dgamma, &dbeta);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    std::printf("%8d %12.4f %12.4f %12.4f\n", t, median, ms.front(), ms.back());
    if (max_ms > 0 && median > max_ms) {
      std::printf("FAILED: median %.3f ms at %d threads exceeds --max-ms %.0f\n", median, t, max_ms);
      status = 1;
    }
  }
  return status;
}
