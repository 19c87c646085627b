// The guard-page sweep of issue 10: every fused kernel (batch norm training and eval forward and
// backward; layer, group, instance and RMS norm forward and backward), float and double, `*_into`
// and allocating, on shapes around every block, run and vector boundary and at 1, 2 and 3
// threads, with every buffer placed against an inaccessible page (guard_alloc.hpp). A read or
// write past the end of any input, output, cache or scratch buffer faults; the handler names the
// configuration. Each configuration also checks that the `*_into` and the allocating paths give
// the same bits (the same kernel, in buffers at different addresses).
//
//   gradproof_guard_sweep SUITE [--placement tail|head|both] [--from K] [--list]
//   gradproof_guard_sweep --self-test
//
// SUITE is bn, ln, gn, in or rms. --from K starts at configuration K (after a fault, to count
// the faulting configurations of a whole sweep: tests/guard/count_faults.sh).
#include "guard/guard_alloc.hpp"

#include "gradproof/kernels.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/rmsnorm.hpp"
#include "gradproof/parallel.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace gradproof;
using namespace gradproof::ops;
using guard::Placement;

namespace {

struct Config {
  Shape shape;
  int threads = 1;
  Index param = 0;  // gn: groups; ln, rms: trailing axes normalized
  bool eval = false;
};

char g_label[256] = "(setup)";
const char* label() { return g_label; }

// ---- The shapes ----------------------------------------------------------------------------------
// Vector widths are 4/2 (SSE2, dev and asan presets) and 16/8 floats/doubles (AVX-512, release
// with -march=native): extents around 1..17 and 31..33 cross both. Batch norm cuts a thread's
// channels into blocks of at most 128 (ops::kMaxChannelBlock), fewer when a channel holds more
// than 1 MiB / (128 · streams · bytes); threads start at parallel::kMinParallelWork = 2^15
// values; streaming stores at 4 MiB of output (kernels::should_stream()).
const std::vector<Index> kSmall = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33};
const std::vector<Index> kChannels = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65,
                                      127, 128, 129, 130, 131, 255, 256, 257};
constexpr Index kThreadWork = Index(1) << 15;

Index at_least(Index work, Index per) { return std::max<Index>(1, (work + per - 1) / per); }

std::vector<Config> bn_configs() {
  std::vector<Config> out;
  for (Index N : {1, 2, 3})
    for (Index C : kChannels)
      for (Index L : kSmall) {
        if (N * L < 2) continue;  // training needs 2 values per channel
        out.push_back({{N, C, L}, 1, 0, false});
      }
  for (Index C : {1, 5, 17, 131})
    for (Index L : {1, 3, 16, 17}) out.push_back({{2, C, L}, 1, 0, true});
  out.push_back({{4, 3}, 1, 0, false});
  out.push_back({{2, 3, 5, 7}, 1, 0, false});
  // Threaded: each thread's share of channels around one and two blocks of 128.
  for (int t : {2, 3})
    for (Index C : {Index(128) * t - 1, Index(128) * t, Index(128) * t + 1, Index(256) * t + 1, Index(256) * t + t + 1,
                    Index(131), Index(259)})
      for (Index L : {15, 16, 17, 33}) out.push_back({{at_least(kThreadWork, C * L), C, L}, t, 0, false});
  // Blocks of fewer than 128 channels: M = N·L large (1 MiB / (M · 8) = 31 channels per backward block).
  for (int t : {1, 2, 3})
    for (Index C : {Index(63), Index(95), Index(97)}) out.push_back({{1, C, 4099}, t, 0, false});
  // Streaming stores (>= 4 MiB of output), float and double alike.
  for (int t : {1, 2, 3}) {
    out.push_back({{1, 131, 8009}, t, 0, false});
    out.push_back({{2, 67, 3913}, t, 0, false});
    out.push_back({{2, 67, 3913}, t, 0, true});
  }
  out.push_back({{8, 256, 17, 17}, 2, 0, false});  // issue 10's shapes
  out.push_back({{1, 131, 594}, 1, 0, false});
  return out;
}

// Layer and RMS norm: R rows of M values; rows are handled 4 at a time and in chunks of
// kernels::column_chunk_rows(M) rows (the column sums of dγ, dβ).
std::vector<Config> row_configs() {
  std::vector<Config> out;
  const std::vector<Index> M = {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129};
  for (Index R : {1, 2, 3, 4, 5, 7, 8, 9, 13})
    for (Index m : M) out.push_back({{R, m}, 1, 1, false});
  out.push_back({{2, 3, 5, 7}, 1, 2, false});
  out.push_back({{2, 3, 5, 7}, 1, 3, false});
  out.push_back({{3, 4, 17}, 1, 1, false});
  for (int t : {2, 3})
    for (Index m : {15, 16, 17, 33, 127, 129, 255, 257})
      for (Index extra : {0, 1, 3}) out.push_back({{at_least(kThreadWork, m) + extra, m}, t, 1, false});
  for (int t : {1, 2}) {
    out.push_back({{1025, 1024}, t, 1, false});  // streaming, rows equally aligned
    out.push_back({{1025, 1031}, t, 1, false});  // streaming, rows not
  }
  return out;
}

std::vector<Config> gn_configs() {
  std::vector<Config> out;
  for (Index N : {1, 2, 3})
    for (Index C : {1, 2, 3, 4, 6, 8, 12, 16, 32, 33})
      for (Index L : kSmall)
        for (Index G : {Index(1), C, C % 2 == 0 ? C / 2 : C, C % 3 == 0 ? C / 3 : C}) {
          if (N * (C / G) * L < 2) continue;
          out.push_back({{N, C, L}, 1, G, false});
        }
  out.push_back({{6, 4}, 1, 2, false});
  out.push_back({{2, 4, 3, 5}, 1, 2, false});
  for (int t : {2, 3})
    for (Index L : {15, 16, 17, 33})
      for (Index G : {1, 4, 32}) out.push_back({{at_least(kThreadWork, 32 * L) + 1, 32, L}, t, G, false});
  out.push_back({{4, 32, 96, 96}, 2, 8, false});  // 4.7 MB: streaming
  return out;
}

std::vector<Config> in_configs() {
  std::vector<Config> out;
  for (Index N : {1, 2, 3})
    for (Index C : {1, 2, 3, 5, 8, 17})
      for (Index L : kSmall) {
        if (L >= 2) out.push_back({{N, C, L}, 1, 0, false});
        out.push_back({{N, C, L}, 1, 0, true});
      }
  out.push_back({{2, 3, 5, 7}, 1, 0, false});
  for (int t : {2, 3})
    for (Index L : {15, 16, 17, 33}) out.push_back({{at_least(kThreadWork, 17 * L) + 1, 17, L}, t, 0, false});
  out.push_back({{4, 32, 96, 96}, 2, 0, false});
  return out;
}

// ---- Running one configuration ------------------------------------------------------------------
template <class T>
Tensor<T> random_tensor(const Shape& s, unsigned seed, double mean, double spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(mean, spread);
  Tensor<T> t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<T>(d(rng));
  return t;
}

long g_mismatches = 0;

template <class T>
void same_bits(const Tensor<T>& a, const Tensor<T>& b, const char* what) {
  if (a.size() != b.size() || std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) != 0) {
    std::fprintf(stderr, "guard: %s differs between the *_into and the allocating path in %s\n", what, g_label);
    ++g_mismatches;
  }
}

Shape trailing(const Shape& s, Index k) { return Shape(s.end() - k, s.end()); }

template <class T>
void run_bn(const Config& c) {
  const Index C = c.shape[1];
  const Tensor<T> x = random_tensor<T>(c.shape, 1, 0.5, 1.0), dy = random_tensor<T>(c.shape, 2, 0.0, 1.0);
  const Tensor<T> g = random_tensor<T>({C}, 3, 1.0, 0.2), b = random_tensor<T>({C}, 4, 0.0, 0.2);
  auto running = BatchNormRunningStats<T>::fresh(C);
  const BatchNormConfig cfg;
  Tensor<T> y(c.shape), dx(c.shape), dg({C}), db({C});
  BatchNormCache<T> cache;
  BatchNormForward<T> f;
  if (c.eval) {
    batchnorm_forward_eval_into<T>(x, &g, &b, running, cfg, y, cache);
    f = batchnorm_forward_eval<T>(x, &g, &b, running, cfg);
  } else {
    batchnorm_forward_train_into<T>(x, &g, &b, &running, cfg, y, cache);
    f = batchnorm_forward_train<T>(x, &g, &b, nullptr, cfg);
  }
  batchnorm_backward_into<T>(dy, x, &g, cache, dx, &dg, &db);
  const auto grads = batchnorm_backward<T>(dy, x, &g, f.cache);
  // No affine: the kernels' other branches (a forward without γ and β, as the backward requires).
  const auto f0 = c.eval ? batchnorm_forward_eval<T>(x, nullptr, nullptr, running, cfg)
                         : batchnorm_forward_train<T>(x, nullptr, nullptr, nullptr, cfg);
  const auto plain = batchnorm_backward<T>(dy, x, nullptr, f0.cache);
  same_bits(y, f.y, "y");
  same_bits(dx, grads.dx, "dx");
  same_bits(dg, grads.dgamma, "dgamma");
  same_bits(db, grads.dbeta, "dbeta");
  if (plain.dx.size() != x.size()) ++g_mismatches;
}

template <class T, class Cfg, class Fwd, class FwdInto, class Bwd, class BwdInto>
void run_norm(const Config& c, const Shape& pshape, const Cfg& cfg, const Fwd& fwd, const FwdInto& fwd_into,
              const Bwd& bwd, const BwdInto& bwd_into) {
  const Tensor<T> x = random_tensor<T>(c.shape, 1, 0.5, 1.0), dy = random_tensor<T>(c.shape, 2, 0.0, 1.0);
  const Tensor<T> g = random_tensor<T>(pshape, 3, 1.0, 0.2), b = random_tensor<T>(pshape, 4, 0.0, 0.2);
  Tensor<T> y(c.shape), dx(c.shape), dg(pshape), db(pshape);
  NormCache<T> cache;
  fwd_into(x, &g, &b, cfg, y, cache);
  const auto f = fwd(x, &g, &b, cfg);
  bwd_into(dy, x, &g, cache, dx, &dg, &db);
  const auto grads = bwd(dy, x, &g, f.cache);
  same_bits(y, f.y, "y");
  same_bits(dx, grads.dx, "dx");
  same_bits(dg, grads.dgamma, "dgamma");
  same_bits(db, grads.dbeta, "dbeta");
  // Without the affine parameters: the kernels' other branches.
  const auto f0 = fwd(x, nullptr, nullptr, cfg);
  const auto g0 = bwd(dy, x, nullptr, f0.cache);
  if (g0.dx.size() != x.size()) ++g_mismatches;
}

template <class T>
void run_ln(const Config& c) {
  const LayerNormConfig cfg{trailing(c.shape, c.param), 1e-5};
  run_norm<T>(
      c, cfg.normalized_shape, cfg, [](auto&&... a) { return layernorm_forward<T>(a...); },
      [](auto&&... a) { layernorm_forward_into<T>(a...); }, [](auto&&... a) { return layernorm_backward<T>(a...); },
      [](auto&&... a) { layernorm_backward_into<T>(a...); });
}

template <class T>
void run_gn(const Config& c) {
  const GroupNormConfig cfg{c.param, 1e-5};
  run_norm<T>(
      c, {c.shape[1]}, cfg, [](auto&&... a) { return groupnorm_forward<T>(a...); },
      [](auto&&... a) { groupnorm_forward_into<T>(a...); }, [](auto&&... a) { return groupnorm_backward<T>(a...); },
      [](auto&&... a) { groupnorm_backward_into<T>(a...); });
}

template <class T>
void run_in(const Config& c) {
  const InstanceNormConfig cfg;
  auto running = InstanceNormRunningStats<T>::fresh(c.shape[1]);
  if (c.eval) {
    run_norm<T>(
        c, {c.shape[1]}, cfg,
        [&](const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const InstanceNormConfig& k) {
          return instancenorm_forward_eval<T>(x, g, b, running, k);
        },
        [&](const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const InstanceNormConfig& k, Tensor<T>& y,
            NormCache<T>& cache) { instancenorm_forward_eval_into<T>(x, g, b, running, k, y, cache); },
        [](auto&&... a) { return instancenorm_backward<T>(a...); },
        [](auto&&... a) { instancenorm_backward_into<T>(a...); });
  } else {
    run_norm<T>(
        c, {c.shape[1]}, cfg,
        [](const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const InstanceNormConfig& k) {
          return instancenorm_forward_train<T>(x, g, b, nullptr, k);
        },
        [&](const Tensor<T>& x, const Tensor<T>* g, const Tensor<T>* b, const InstanceNormConfig& k, Tensor<T>& y,
            NormCache<T>& cache) { instancenorm_forward_train_into<T>(x, g, b, &running, k, y, cache); },
        [](auto&&... a) { return instancenorm_backward<T>(a...); },
        [](auto&&... a) { instancenorm_backward_into<T>(a...); });
  }
}

template <class T>
void run_rms(const Config& c) {
  const RMSNormConfig cfg{trailing(c.shape, c.param), std::nullopt};
  const Tensor<T> x = random_tensor<T>(c.shape, 1, 0.5, 1.0), dy = random_tensor<T>(c.shape, 2, 0.0, 1.0);
  const Tensor<T> g = random_tensor<T>(cfg.normalized_shape, 3, 1.0, 0.2);
  Tensor<T> y(c.shape), dx(c.shape), dg(cfg.normalized_shape);
  RMSNormCache<T> cache;
  rmsnorm_forward_into<T>(x, &g, cfg, y, cache);
  const auto f = rmsnorm_forward<T>(x, &g, cfg);
  rmsnorm_backward_into<T>(dy, x, &g, cache, dx, &dg);
  const auto grads = rmsnorm_backward<T>(dy, x, &g, f.cache);
  same_bits(y, f.y, "y");
  same_bits(dx, grads.dx, "dx");
  same_bits(dg, grads.dgamma, "dgamma");
  const auto f0 = rmsnorm_forward<T>(x, nullptr, cfg);
  const auto g0 = rmsnorm_backward<T>(dy, x, nullptr, f0.cache);
  if (g0.dx.size() != x.size()) ++g_mismatches;
}

struct Suite {
  const char* name;
  std::vector<Config> (*configs)();
  void (*run_float)(const Config&);
  void (*run_double)(const Config&);
};
const Suite kSuites[] = {
    {"bn", bn_configs, run_bn<float>, run_bn<double>},   {"ln", row_configs, run_ln<float>, run_ln<double>},
    {"gn", gn_configs, run_gn<float>, run_gn<double>},   {"in", in_configs, run_in<float>, run_in<double>},
    {"rms", row_configs, run_rms<float>, run_rms<double>},
};

// ---- The self-test: the allocator does place buffers against a guard page -----------------------
// A child reads one byte past the end (tail) or before the start (head) of a guarded buffer and
// must die of it; a child that reads the last and the first byte must not.
bool child_faults(Placement p, long offset) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const guard::Scope scope(p);
    auto* buf = new char[10];
    buf[0] = buf[9] = 1;
    const volatile char* v = buf;
    const char c = v[offset];
    _exit(c == 0 || c == 1 ? 0 : 0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  // Killed by the signal (plain build), or AddressSanitizer's report of the SEGV and its exit code.
  return WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0);
}

int self_test() {
  int failures = 0;
  const auto expect = [&](bool ok, const char* what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
    failures += ok ? 0 : 1;
  };
  expect(child_faults(Placement::tail, 10), "tail: reading 1 byte past the end faults");
  expect(!child_faults(Placement::tail, 9), "tail: reading the last byte does not");
  expect(child_faults(Placement::head, -1), "head: reading 1 byte before the start faults");
  expect(!child_faults(Placement::head, 0), "head: reading the first byte does not");
  const long before = guard::guarded_allocations();
  {
    const guard::Scope scope(Placement::tail);
    const Tensor<float> t({3, 5});
    expect(reinterpret_cast<std::uintptr_t>(t.data() + t.size()) % static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE)) == 0,
           "a tensor's buffer ends at a page boundary (the guard page)");
  }
  expect(guard::guarded_allocations() > before, "allocations in a scope are guarded");
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--self-test") == 0) return self_test();
  const Suite* suite = nullptr;
  std::vector<Placement> placements = {Placement::tail, Placement::head};
  std::size_t from = 0;
  bool list = false;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--from" && a + 1 < argc) {
      from = std::strtoul(argv[++a], nullptr, 10);
    } else if (arg == "--placement" && a + 1 < argc) {
      const std::string p = argv[++a];
      if (p == "tail") placements = {Placement::tail};
      else if (p == "head") placements = {Placement::head};
      else if (p != "both") return std::fprintf(stderr, "--placement: tail, head or both; got '%s'\n", p.c_str()), 2;
    } else if (arg == "--list") {
      list = true;
    } else {
      for (const Suite& s : kSuites)
        if (arg == s.name) suite = &s;
      if (!suite) return std::fprintf(stderr, "unknown argument '%s' (suites: bn ln gn in rms)\n", arg.c_str()), 2;
    }
  }
  if (!suite) return std::fprintf(stderr, "usage: %s bn|ln|gn|in|rms [--placement tail|head|both] [--from K] [--list] | --self-test\n", argv[0]), 2;

  guard::report_faults_with(label);
  const std::vector<Config> configs = suite->configs();
  const auto start = std::chrono::steady_clock::now();
  long runs = 0;
  for (std::size_t k = from; k < configs.size(); ++k) {
    const Config& c = configs[k];
    for (Placement p : placements) {
      std::snprintf(g_label, sizeof g_label, "%s config #%zu: shape %s, %d thread(s), param %ld%s, %s", suite->name, k,
                    to_string(c.shape).c_str(), c.threads, static_cast<long>(c.param), c.eval ? ", eval" : "",
                    p == Placement::tail ? "tail" : "head");
      if (list) {
        std::printf("%s\n", g_label);
        continue;
      }
      parallel::set_threads(c.threads);
      const guard::Scope scope(p);
      suite->run_float(c);
      suite->run_double(c);
      ++runs;
    }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!list)
    std::printf("guard %s: %ld runs (%zu configurations from #%zu, float and double, *_into and allocating) in %.1f s, "
                "no fault, %ld mismatches\n",
                suite->name, runs, configs.size() - from, from, s, g_mismatches);
  return g_mismatches == 0 ? 0 : 1;
}
