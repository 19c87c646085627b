// The instrument behind "What bounds each case" on docs/performance.md: the fused batch-norm
// backward (float32, 2 threads) decomposed into its phases and set beside variants of its loop
// (the triad with extra cached loads, the same traffic on contiguous arrays, strided reads of
// runs, block sizes, the pipeline's ends timed per thread), each repetition after the triad
// probe. An investigation tool, not a benchmark of record: `gradproof_bench` is that. It holds
// copies of the kernel's loop on purpose (the kernel before the prefetch, an instrumented copy of
// detail::pipelined_channels with a block-size parameter): they are the variants it compares, so
// they must not follow later changes of the library's kernel.
//
//   build/bench/bench/gradproof_bn_phases SHAPE [REPS] [FILTER]
//     SHAPE   56 = (32,64,56,56), 14 = (64,256,14,14), 128 = (8,32,128,128); 56s/14s/56t/14t/14u
//             are small shapes that stay in cache
//     FILTER  run only the variants whose name contains it
//   environment: HUGE=1 transparent huge pages, WARM=1 no probe between repetitions,
//                ONCE=1 each selected variant once (for profilers), ROTATE=1 shuffle the variants'
//                order every repetition, BLK=KiB block size of the instrumented copy (default 2048)
// Per-thread phase times are read from the TSC and converted at 2.5956 GHz, the TSC rate of the
// machine this was written on (see /proc/cpuinfo); elsewhere only their ratios are meaningful.
#include "gradproof/kernels.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/parallel.hpp"

#include <omp.h>
#include <sys/mman.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace gradproof;
namespace K = gradproof::kernels;
using Clock = std::chrono::steady_clock;

static bool g_huge = false;
volatile double g_sink[64];

float* alloc(Index n) {
  std::size_t bytes = ((std::size_t(n) * 4 + (2u << 20) - 1) / (2u << 20)) * (2u << 20);
  void* p = std::aligned_alloc(2u << 20, bytes);
  if (g_huge) madvise(p, bytes, MADV_HUGEPAGE);
  else madvise(p, bytes, MADV_NOHUGEPAGE);
  return static_cast<float*>(p);
}

struct Probe {
  Index n;
  double *a, *b, *c;
  explicit Probe(Index bytes) : n(bytes / 8) {
    a = new double[n];
    b = new double[n];
    c = new double[n];
#pragma omp parallel for schedule(static)
    for (Index i = 0; i < n; ++i) a[i] = 0, b[i] = 1, c[i] = 2;
  }
  void triad() {
    const Index parts = omp_get_max_threads();
#pragma omp parallel
    {
      const Index t = omp_get_thread_num();
      const Index lo = n * t / parts, hi = n * (t + 1) / parts;
      K::map(a + lo, hi - lo, true, [](auto bv, auto cv) { return bv + 3.0 * cv; }, b + lo, c + lo);
      K::stream_fence();
    }
  }
  double operator()() {
    triad();
    auto t0 = Clock::now();
    triad();
    return 3.0 * n * 8 / (std::chrono::duration<double>(Clock::now() - t0).count() * 1e9);
  }
};

struct P {
  ops::NCL d;
  float *x, *dy, *dx;
  std::vector<float> mean, invstd, gamma, dgamma, dbeta;
  TensorF tx, tdy, tdx, tg, tdg, tdb;
  ops::BatchNormCache<float> cache;
};

P make(Index N, Index C, Index H, Index W) {
  P p;
  p.d = {N, C, H * W};
  const Index n = N * C * H * W;
  p.tx = TensorF({N, C, H, W});
  p.tdy = TensorF({N, C, H, W});
  p.tdx = TensorF({N, C, H, W});
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(1, 2);
  for (Index i = 0; i < n; ++i) p.tx[i] = nd(rng), p.tdy[i] = nd(rng) - 1;
  p.x = p.tx.data(), p.dy = p.tdy.data(), p.dx = p.tdx.data();
  p.tg = TensorF({C});
  p.tdg = TensorF({C});
  p.tdb = TensorF({C});
  for (Index c = 0; c < C; ++c) p.tg[c] = 1;
  ops::BatchNormConfig cfg;
  auto fwd = ops::batchnorm_forward_train<float>(p.tx, &p.tg, nullptr, nullptr, cfg);
  p.cache = fwd.cache;
  return p;
}

// Per-thread channel ranges as parallel_ranges.
template <class F>
void ranges(Index C, const F& f) {
  if (omp_get_max_threads() == 1) return f(Index(0), C, Index(0));
#pragma omp parallel
  {
    const Index t = omp_get_thread_num(), parts = omp_get_num_threads();
    f(C * t / parts, C * (t + 1) / parts, t);
  }
}

// cycle accounting per thread
struct Acct {
  std::map<std::string, std::vector<double>> s;  // name -> per-rep ms (thread 0)
};
static double g_p1_cycles[64], g_p2_cycles[64];
static double g_pl[64][4];  // per thread: first block, steady, last block, wait
static bool g_inst = false;

// Sequential (non-pipelined) per block: sum block, then map block. Instrumented.
void sequential(P& p, Index block_bytes, bool nt, bool instrument) {
  const auto& d = p.d;
  const Index target = std::clamp<Index>(block_bytes / (d.M() * 8), 1, 128);
  ranges(d.C, [&](Index first, Index last, Index t) {
    double c1 = 0, c2 = 0;
    for (Index c0 = first; c0 < last; c0 += target) {
      const Index ce = std::min(last, c0 + target);
      std::array<K::Sums2<float>, 128> acc;
      auto a = __rdtsc();
      for (Index n = 0; n < d.N; ++n)
        for (Index c = c0; c < ce; ++c) {
          const float mu = p.cache.mean[c];
          K::sum2_into(acc[c - c0], d.L, [mu](auto g, auto v) { return std::pair{g, g * (v - mu)}; },
                       p.dy + d.offset(n, c), p.x + d.offset(n, c));
        }
      auto b = __rdtsc();
      std::array<std::pair<double, double>, 128> tot;
      for (Index c = c0; c < ce; ++c) tot[c - c0] = acc[c - c0].total();
      for (Index n = 0; n < d.N; ++n)
        for (Index c = c0; c < ce; ++c) {
          const float mu = p.cache.mean[c], is = p.cache.invstd[c];
          const float k = is / d.M(), kdy = k * d.M(), ks = k * float(tot[c - c0].first),
                      kx = k * is * is * float(tot[c - c0].second);
          K::map(p.dx + d.offset(n, c), d.L, nt, [=](auto g, auto v) { return kdy * g - ks - (v - mu) * kx; },
                 p.dy + d.offset(n, c), p.x + d.offset(n, c));
        }
      auto e = __rdtsc();
      c1 += b - a, c2 += e - b;
    }
    K::stream_fence();
    if (instrument) g_p1_cycles[t] += c1, g_p2_cycles[t] += c2;
  });
}

// Phase 1 over a block from memory, then the same block re-read (timed separately): does a
// block of this size stay in cache between the two phases?
static double g_rr[64][2];
void reread(P& p, Index block_bytes) {
  const auto& d = p.d;
  const Index target = std::clamp<Index>(block_bytes / (d.M() * 8), 1, 128);
  ranges(d.C, [&](Index first, Index last, Index t) {
    for (Index c0 = first; c0 < last; c0 += target) {
      const Index ce = std::min(last, c0 + target);
      for (int pass = 0; pass < 2; ++pass) {
        const auto a = __rdtsc();
        K::Sums2<float> acc;
        for (Index n = 0; n < d.N; ++n)
          K::sum2_into(acc, (ce - c0) * d.L, [](auto g, auto v) { return std::pair{g, g * v}; }, p.dy + d.offset(n, c0),
                       p.x + d.offset(n, c0));
        const auto tot = acc.total();
        g_sink[t] = g_sink[t] + tot.first;
        g_rr[t][pass] += __rdtsc() - a;
      }
    }
  });
}

// A triad-shaped pass: sums over x, dy from memory (contiguous) and dx written (NT) from two
// cache-resident buffers of `wbytes` per thread (cycled): the pipelined loop's traffic without
// its structure.
void triad_cache(P& p, Index wbytes, int mode = 0, Index dist = 0, Index cdist = 0) {
  const Index n = p.d.N * p.d.C * p.d.L;
  static std::vector<float> buf[64];
  const Index w = wbytes / 8;  // floats per buffer (two buffers)
  ranges(n, [&](Index lo, Index hi, Index t) {
    if (Index(buf[t].size()) != 2 * w) buf[t].assign(2 * w, 1.0f);
    const float* ca = buf[t].data();
    const float* cb = buf[t].data() + w;
    using V = K::Vec<float>;
    V s0 = {}, s1 = {};
    Index i = lo + K::detail::until_aligned(p.dx + lo, hi - lo);
    Index j = 0;
    for (; i + 16 <= hi; i += 16) {
      if (dist) {
        _mm_prefetch(reinterpret_cast<const char*>(p.dy + i + dist), _MM_HINT_T2);
        _mm_prefetch(reinterpret_cast<const char*>(p.x + i + dist), _MM_HINT_T2);
      }
      if (cdist) {
        const Index jj = (j + cdist) % w;
        _mm_prefetch(reinterpret_cast<const char*>(ca + jj), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(cb + jj), _MM_HINT_T0);
      }
      const V g = K::load<V>(p.dy + i), v = K::load<V>(p.x + i);
      s0 += g, s1 += g * v;
      if (mode == 0) {
        const V cg = K::load<V>(ca + j), cv = K::load<V>(cb + j);
        K::stream<float>(p.dx + i, cg * 0.5f - 0.001f - (cv - 1.0f) * 0.25f);
      } else if (mode == 1) {  // normal stores
        const V cg = K::load<V>(ca + j), cv = K::load<V>(cb + j);
        K::store(p.dx + i, cg * 0.5f - 0.001f - (cv - 1.0f) * 0.25f);
      } else if (mode == 2) {  // no cache loads: store a function of the running sums
        K::stream<float>(p.dx + i, s0 * 0.5f);
      } else if (mode == 3) {  // cache loads, stored value made to depend on the memory loads
        const V cg = K::load<V>(ca + j), cv = K::load<V>(cb + j);
        K::stream<float>(p.dx + i, cg * 0.5f - 0.001f - (cv - 1.0f) * 0.25f + g * 0.0f);
      } else if (mode == 4) {  // no stores at all
        const V cg = K::load<V>(ca + j), cv = K::load<V>(cb + j);
        s0 += cg * 0.0f + cv * 0.0f;
      }
      j += 16;
      if (j + 16 > w) j = 0;
    }
    K::stream_fence();
    g_sink[t] = g_sink[t] + s0[0] + s1[0];
  });
}

// The triad (two reads from memory, one streaming store, contiguous) with extra work per step:
// `alu` independent vector additions, or `l1` extra loads from a 4 KiB buffer (L1).
template <int Alu, int L1>
void triad_extra(P& p) {
  const Index n = p.d.N * p.d.C * p.d.L;
  static float buf[64][2048] __attribute__((aligned(64)));
  ranges(n, [&](Index lo, Index hi, Index t) {
    using V = K::Vec<float>;
    V e0 = {}, e1 = {}, e2 = {}, e3 = {};
    Index i = lo + K::detail::until_aligned(p.dx + lo, hi - lo);
    Index j = 0;
    for (; i + 16 <= hi; i += 16) {
      const V g = K::load<V>(p.dy + i), v = K::load<V>(p.x + i);
      V out = g * 0.5f - (v - 1.0f) * 0.25f;
      if constexpr (Alu >= 1) asm volatile("vaddps %1, %0, %0" : "+v"(e0) : "v"(g));
      if constexpr (Alu >= 2) asm volatile("vaddps %1, %0, %0" : "+v"(e1) : "v"(v));
      if constexpr (Alu >= 3) asm volatile("vaddps %1, %0, %0" : "+v"(e2) : "v"(g));
      if constexpr (Alu >= 4) asm volatile("vaddps %1, %0, %0" : "+v"(e3) : "v"(v));
      if constexpr (Alu >= 6) {
        asm volatile("vaddps %1, %0, %0" : "+v"(e0) : "v"(v));
        asm volatile("vaddps %1, %0, %0" : "+v"(e1) : "v"(g));
      }
      if constexpr (Alu >= 8) {
        asm volatile("vaddps %1, %0, %0" : "+v"(e2) : "v"(v));
        asm volatile("vaddps %1, %0, %0" : "+v"(e3) : "v"(g));
      }
      if constexpr (L1 >= 1) out += K::load<V>(&buf[t][j]);
      if constexpr (L1 >= 2) out += K::load<V>(&buf[t][j + 1024]);
      if constexpr (L1 >= 3) out += K::load<V>(&buf[t][(j + 512) & 1023]);
      if constexpr (L1 >= 4) out += K::load<V>(&buf[t][1024 + ((j + 512) & 1023)]);
      j = (j + 16) & 1023;
      K::stream<float>(p.dx + i, out);
    }
    K::stream_fence();
    g_sink[t] = g_sink[t] + e0[0] + e1[0] + e2[0] + e3[0];
  });
}

// Phase 1 only over NCHW blocks (two-stream read).
void phase1(P& p, Index block_bytes) {
  const auto& d = p.d;
  const Index target = std::clamp<Index>(block_bytes / (d.M() * 8), 1, 128);
  ranges(d.C, [&](Index first, Index last, Index) {
    for (Index c0 = first; c0 < last; c0 += target) {
      const Index ce = std::min(last, c0 + target);
      std::array<K::Sums2<float>, 128> acc;
      for (Index n = 0; n < d.N; ++n)
        for (Index c = c0; c < ce; ++c) {
          const float mu = p.cache.mean[c];
          K::sum2_into(acc[c - c0], d.L, [mu](auto g, auto v) { return std::pair{g, g * (v - mu)}; },
                       p.dy + d.offset(n, c), p.x + d.offset(n, c));
        }
      for (Index c = c0; c < ce; ++c) {
        auto [s0, s1] = acc[c - c0].total();
        p.dgamma[c] = float(s1), p.dbeta[c] = float(s0);
      }
    }
  });
}

// Phase 1's memory pattern, but each block run summed as one stream (wrong math, same traffic).
void phase1_runs(P& p, Index block_bytes) {
  const auto& d = p.d;
  const Index target = std::clamp<Index>(block_bytes / (d.M() * 8), 1, 128);
  ranges(d.C, [&](Index first, Index last, Index t) {
    K::Sums2<float> acc;
    for (Index c0 = first; c0 < last; c0 += target) {
      const Index ce = std::min(last, c0 + target);
      for (Index n = 0; n < d.N; ++n)
        K::sum2_into(acc, (ce - c0) * d.L, [](auto g, auto v) { return std::pair{g, g * (v - 1.0f)}; },
                     p.dy + d.offset(n, c0), p.x + d.offset(n, c0));
    }
    auto tot = acc.total();
    g_sink[t] = g_sink[t] + tot.first + tot.second;
  });
}

// Runs of R floats of two arrays viewed as N rows of C*L: thread t takes its half of each row
// in chunks of R, and reads every row's chunk before the next chunk (phase 1's pattern with
// block runs of R). With `pf` lines > 0, the first pf lines of the next run are prefetched
// `dist` floats before the end of the current one.
void runs(P& p, Index R, int pf, Index dist) {
  const Index row = p.d.C * p.d.L, N = p.d.N;
  ranges(row, [&](Index first, Index last, Index t) {
    K::Sums2<float> acc;
    for (Index c0 = first; c0 < last; c0 += R) {
      const Index len = std::min(R, last - c0);
      for (Index n = 0; n < N; ++n) {
        const float* a = p.dy + n * row + c0;
        const float* b = p.x + n * row + c0;
        if (pf == 0) {
          K::sum2_into(acc, len, [](auto g, auto v) { return std::pair{g, g * v}; }, a, b);
        } else {
          // next run: row n+1 same chunk, or row 0 of the next chunk
          const Index nn = n + 1 < N ? (n + 1) * row + c0 : c0 + R;
          const Index split = std::max<Index>(0, len - dist);
          K::sum2_into(acc, split, [](auto g, auto v) { return std::pair{g, g * v}; }, a, b);
          for (int l = 0; l < pf; ++l) {
            _mm_prefetch(reinterpret_cast<const char*>(p.dy + nn) + 64 * l, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(p.x + nn) + 64 * l, _MM_HINT_T0);
          }
          K::sum2_into(acc, len - split, [](auto g, auto v) { return std::pair{g, g * v}; }, a + split, b + split);
        }
      }
    }
    auto tot = acc.total();
    g_sink[t] = g_sink[t] + tot.first + tot.second;
  });
}

// Like runs(), with a software prefetch of every line `dist` floats ahead in the sequence of
// runs (across the end of a run into the next one).
template <int Hint, bool TailOnly = false>
void runs_stream_pf(P& p, Index R, Index dist) {
  const Index row = p.d.C * p.d.L, N = p.d.N;
  constexpr Index W = 16;
  ranges(row, [&](Index first, Index last, Index t) {
    using V = K::Vec<float>;
    V s0 = {}, s1 = {};
    const auto next_of = [&](Index c0, Index n) -> Index {  // start offset of the run after (c0, n)
      if (n + 1 < N) return (n + 1) * row + c0;
      return c0 + R < last ? c0 + R : -1;
    };
    for (Index c0 = first; c0 < last; c0 += R) {
      const Index len = std::min(R, last - c0);
      for (Index n = 0; n < N; ++n) {
        const float* a = p.dy + n * row + c0;
        const float* b = p.x + n * row + c0;
        const Index nx = next_of(c0, n);
        const Index split = std::max<Index>(0, len - dist) / W * W;
        Index i = 0;
        for (; i < split; i += W) {
          if constexpr (!TailOnly) {
            _mm_prefetch(reinterpret_cast<const char*>(a + i + dist), static_cast<_mm_hint>(Hint));
            _mm_prefetch(reinterpret_cast<const char*>(b + i + dist), static_cast<_mm_hint>(Hint));
          }
          const V g = K::load<V>(a + i), v = K::load<V>(b + i);
          s0 += g, s1 += g * v;
        }
        for (; i + W <= len; i += W) {
          if (nx >= 0) {
            _mm_prefetch(reinterpret_cast<const char*>(p.dy + nx + (i + dist - len)), static_cast<_mm_hint>(Hint));
            _mm_prefetch(reinterpret_cast<const char*>(p.x + nx + (i + dist - len)), static_cast<_mm_hint>(Hint));
          }
          const V g = K::load<V>(a + i), v = K::load<V>(b + i);
          s0 += g, s1 += g * v;
        }
        for (; i < len; ++i) s0[0] += a[i], s1[0] += a[i] * b[i];
      }
    }
    g_sink[t] = g_sink[t] + s0[0] + s1[1];
  });
}

// Phase 2 only (from memory), NCHW blocks.
void phase2(P& p, Index block_bytes, bool nt) {
  const auto& d = p.d;
  const Index target = std::clamp<Index>(block_bytes / (d.M() * 8), 1, 128);
  ranges(d.C, [&](Index first, Index last, Index) {
    for (Index c0 = first; c0 < last; c0 += target) {
      const Index ce = std::min(last, c0 + target);
      for (Index n = 0; n < d.N; ++n)
        for (Index c = c0; c < ce; ++c) {
          const float mu = p.cache.mean[c], kdy = 1.0f, ks = 0.001f, kx = 0.5f;
          K::map(p.dx + d.offset(n, c), d.L, nt, [=](auto g, auto v) { return kdy * g - ks - (v - mu) * kx; },
                 p.dy + d.offset(n, c), p.x + d.offset(n, c));
        }
    }
    K::stream_fence();
  });
}

// Contiguous two-stream read over the same arrays (each thread a contiguous half).
void contig_read(P& p) {
  const Index n = p.d.N * p.d.C * p.d.L;
  ranges(n, [&](Index lo, Index hi, Index t) {
    auto s = K::sum2(hi - lo, [](auto g, auto v) { return std::pair{g, g * (v - 1.0f)}; }, p.dy + lo, p.x + lo);
    g_sink[t] = g_sink[t] + s.first + s.second;
  });
}

// Contiguous triad over the same arrays.
void contig_triad(P& p, bool nt) {
  const Index n = p.d.N * p.d.C * p.d.L;
  ranges(n, [&](Index lo, Index hi, Index) {
    K::map(p.dx + lo, hi - lo, nt, [](auto g, auto v) { return 1.0f * g - 0.001f - (v - 1.0f) * 0.5f; }, p.dy + lo,
           p.x + lo);
    K::stream_fence();
  });
}

// Runs of `run` floats, stride `stride` floats, reading two arrays (restart microbench):
// each thread reads its half of the runs.
void strided_read(P& p, Index run, Index stride) {
  const Index n = p.d.N * p.d.C * p.d.L;
  const Index runs = n / stride;
#pragma omp parallel
  {
    const Index t = omp_get_thread_num(), parts = omp_get_num_threads();
    K::Sums2<float> acc;
    // each run r covers [r*stride, r*stride+run); thread t takes columns offsets (r) ...
    // Emulate NCHW: offset pattern for runs belonging to thread t's channels: use col = t.
    for (Index col = t * (stride / run) / parts; col < (t + 1) * (stride / run) / parts; ++col)
      for (Index r = 0; r < runs; ++r)
        K::sum2_into(acc, run, [](auto g, auto v) { return std::pair{g, g * v}; }, p.dy + r * stride + col * run,
                     p.x + r * stride + col * run);
    auto s = acc.total();
    g_sink[t] = s.first + s.second;
  }
}

// The kernel as it was before this work (kernels::map_sum2_segments at 48fc1b6).
template <class S, class MapOf, class TermsOf, class... P>
inline void old_map_sum2_segments(K::Sums2<S>* acc, Index summed, S* __restrict dst, Index L, Index segments, bool nontemporal,
                              const MapOf& map_of, const TermsOf& terms_of, Index ahead, const P*... src) noexcept {
  using V = K::Vec<S>;
  constexpr Index W = K::kLanes<S>;
  const Index n = L * segments;
  const auto put = [&](Index i, const V& v) {
    if (nontemporal) K::stream<S>(dst + i, v); else K::store(dst + i, v);
  };
  // The unaligned head is shorter than a vector, so it lies in segment 0.
  Index i = nontemporal ? K::detail::until_aligned(dst, n) : 0;
  {
    const auto f = map_of(0);
    for (Index j = 0; j < i; ++j) dst[j] = f(src[j]...);
    if (summed > 0) {
      const auto t = terms_of(0);
      for (Index j = 0; j < i; ++j) acc[0].add_scalar(t(src[j + ahead]...));
    }
  }
  const auto segment = [&](Index k, auto with_sums) {
    constexpr bool sums = decltype(with_sums)::value;
    const Index end = (k + 1) * L;
    const auto f = map_of(k);
    // The running sums of segment k as locals, which stay in registers (see K::detail::add).
    V p0 = {}, p1 = {};
    K::Vec<double> t0 = {}, t1 = {};
    int steps = 0;
    if constexpr (sums) p0 = acc[k].p0, p1 = acc[k].p1, t0 = acc[k].t0, t1 = acc[k].t1, steps = acc[k].steps;
    for (; i + W <= end; i += W) {
      if constexpr (sums) {
        const auto [a, b] = terms_of(k)(K::load<V>(src + ahead + i)...);
        K::detail::add<S>(p0, p1, t0, t1, steps, a, b);
      }
      put(i, f(K::load<V>(src + i)...));
    }
    if (k + 1 < segments && i < end) {  // the vector across the boundary with segment k + 1
      const auto m = K::detail::first_lanes<S>(end - i);
      if constexpr (sums) {
        const auto [a, b] = terms_of(k)(K::load<V>(src + ahead + i)...);
        K::detail::add<S>(p0, p1, t0, t1, steps, K::detail::select<S>(m, a, V{}), K::detail::select<S>(m, b, V{}));
      }
      if (k + 1 < summed) {
        const auto [a, b] = terms_of(k + 1)(K::load<V>(src + ahead + i)...);
        acc[k + 1].add({K::detail::select<S>(m, V{}, a), K::detail::select<S>(m, V{}, b)});
      }
      put(i, K::detail::select<S>(m, f(K::load<V>(src + i)...), map_of(k + 1)(K::load<V>(src + i)...)));
      i += W;
    }
    if constexpr (sums) acc[k].p0 = p0, acc[k].p1 = p1, acc[k].t0 = t0, acc[k].t1 = t1, acc[k].steps = steps;
  };
  for (Index k = 0; k < segments; ++k) {
    if (k < summed) segment(k, std::true_type{}); else segment(k, std::false_type{});
  }
  // The ragged tail is shorter than a vector, so it lies in the last segment.
  const Index last = segments - 1;
  const auto f = map_of(last);
  for (Index j = i; j < n; ++j) dst[j] = f(src[j]...);
  if (last < summed) {
    const auto t = terms_of(last);
    for (Index j = i; j < n; ++j) acc[last].add_scalar(t(src[j + ahead]...));
  }
}


// pipelined copy of detail::pipelined_channels with a block parameter, and instrumentation.
void pipelined(P& p, Index block_bytes, bool nt) {
  const auto& d = p.d;
  const Index target = std::clamp<Index>(block_bytes / (d.M() * 8), 1, 128);
  const auto& cache = p.cache;
  const auto terms_of = [&](Index c) {
    const float mu = cache.mean[c];
    return [mu](auto g, auto v) { return std::pair{g, g * (v - mu)}; };
  };
  const auto map_of = [&](Index c, double sdy, double sdx) {
    const float mu = cache.mean[c], is = cache.invstd[c];
    const float k = is / d.M(), kdy = k * d.M(), ks = k * float(sdy), kx = k * is * is * float(sdx);
    return [=](auto g, auto v) { return kdy * g - ks - (v - mu) * kx; };
  };
  const float* dyp = p.dy;
  const float* xp = p.x;
  std::uint64_t tend[64];
  ranges(d.C, [&](Index first, Index last, Index t) {
    if (first >= last) return;
    const auto a0 = __rdtsc();
    const Index blocks = (last - first + target - 1) / target;
    const Index base = (last - first) / blocks, larger = (last - first) % blocks;
    const auto block_end = [&](Index b, Index start) { return start + base + (b < larger ? 1 : 0); };
    std::array<K::Sums2<float>, 128> next;
    std::array<std::pair<double, double>, 128> cur;
    Index c0 = first, c1 = block_end(0, first);
    for (Index n = 0; n < d.N; ++n)
      for (Index c = c0; c < c1; ++c) K::sum2_into(next[c - c0], d.L, terms_of(c), dyp + d.offset(n, c), xp + d.offset(n, c));
    const auto a1 = __rdtsc();
    std::uint64_t a2 = a1;
    for (Index b = 0; b < blocks; ++b) {
      if (b + 1 == blocks) a2 = __rdtsc();
      const Index c2 = b + 1 < blocks ? block_end(b + 1, c1) : c1;
      for (Index c = c0; c < c1; ++c) {
        cur[c - c0] = next[c - c0].total();
        next[c - c0] = {};
        p.dgamma[c] = float(cur[c - c0].second), p.dbeta[c] = float(cur[c - c0].first);
      }
      const auto map_k = [&](Index k) { return map_of(c0 + k, cur[k].first, cur[k].second); };
      const auto terms_k = [&](Index k) { return terms_of(c1 + k); };
      for (Index n = 0; n < d.N; ++n) {
        const Index o = d.offset(n, c0);
        old_map_sum2_segments(next.data(), c2 - c1, p.dx + o, d.L, c1 - c0, nt, map_k, terms_k, (c1 - c0) * d.L,
                             dyp + o, xp + o);
      }
      c0 = c1;
      c1 = c2;
    }
    K::stream_fence();
    const auto a3 = __rdtsc();
    tend[t] = a3;
    if (g_inst) g_pl[t][0] += a1 - a0, g_pl[t][1] += a2 - a1, g_pl[t][2] += a3 - a2;
  });
  if (g_inst) {
    const auto e = __rdtsc();
    for (int t = 0; t < omp_get_max_threads(); ++t) g_pl[t][3] += e - tend[t];
  }
}

// Busy jiffies of the whole machine and of this process (to detect other work during a run).
static std::pair<long, long> jiffies() {
  long u, n, sy, id, io, irq, sirq, st;
  FILE* f = std::fopen("/proc/stat", "r");
  if (std::fscanf(f, "cpu %ld %ld %ld %ld %ld %ld %ld %ld", &u, &n, &sy, &id, &io, &irq, &sirq, &st) != 8) u = 0;
  std::fclose(f);
  long su = 0, ss = 0;
  f = std::fopen("/proc/self/stat", "r");
  char buf[4096];
  std::size_t len = std::fread(buf, 1, sizeof buf - 1, f);
  buf[len] = 0;
  std::fclose(f);
  const char* q = std::strrchr(buf, ')') + 2;
  for (int field = 3; field < 14; ++field) q = std::strchr(q, ' ') + 1;
  std::sscanf(q, "%ld %ld", &su, &ss);
  return {u + n + sy + irq + sirq + st, su + ss};
}

// map_sum2_segments with: terms/maps evaluated once per segment, and a software prefetch (L2)
// of the summed stream `dist` values ahead, continuing into the next summed run at
// src + ahead + next (next < 0: none).
template <class S, class MapOf, class TermsOf, class... Pp>
inline void msum2(K::Sums2<S>* acc, Index summed, S* __restrict dst, Index L, Index segments, bool nontemporal,
                  const MapOf& map_of, const TermsOf& terms_of, Index ahead, Index next, Index dist,
                  const Pp*... src) noexcept {
  using V = K::Vec<S>;
  constexpr Index W = K::kLanes<S>;
  const Index n = L * segments;
  const auto put = [&](Index i, const V& v) {
    if (nontemporal) K::stream<S>(dst + i, v); else K::store(dst + i, v);
  };
  const auto pf = [&](Index i) {  // prefetch the line of the summed stream at i + dist
    if (summed == 0 || dist <= 0) return;
    Index j = i + dist;
    if (j >= n) {
      if (next < 0) return;
      j = next + (j - n);
    }
    (_mm_prefetch(reinterpret_cast<const char*>(src + ahead + j), _MM_HINT_T2), ...);
  };
  Index i = nontemporal ? K::detail::until_aligned(dst, n) : 0;
  {
    const auto f = map_of(0);
    for (Index j = 0; j < i; ++j) dst[j] = f(src[j]...);
    if (summed > 0) {
      const auto t = terms_of(0);
      for (Index j = 0; j < i; ++j) acc[0].add_scalar(t(src[j + ahead]...));
    }
  }
  const auto segment = [&](Index k, auto with_sums) {
    constexpr bool sums = decltype(with_sums)::value;
    const Index end = (k + 1) * L;
    const auto f = map_of(k);
    V p0 = {}, p1 = {};
    K::Vec<double> t0 = {}, t1 = {};
    int steps = 0;
    if constexpr (sums) {
      p0 = acc[k].p0, p1 = acc[k].p1, t0 = acc[k].t0, t1 = acc[k].t1, steps = acc[k].steps;
      const auto t = terms_of(k);
      for (; i + W <= end; i += W) {
        pf(i);
        const auto [a, b] = t(K::load<V>(src + ahead + i)...);
        K::detail::add<S>(p0, p1, t0, t1, steps, a, b);
        put(i, f(K::load<V>(src + i)...));
      }
    } else {
      for (; i + W <= end; i += W) put(i, f(K::load<V>(src + i)...));
    }
    if (k + 1 < segments && i < end) {
      const auto m = K::detail::first_lanes<S>(end - i);
      if constexpr (sums) {
        pf(i);
        const auto [a, b] = terms_of(k)(K::load<V>(src + ahead + i)...);
        K::detail::add<S>(p0, p1, t0, t1, steps, K::detail::select<S>(m, a, V{}), K::detail::select<S>(m, b, V{}));
      }
      if (k + 1 < summed) {
        const auto [a, b] = terms_of(k + 1)(K::load<V>(src + ahead + i)...);
        acc[k + 1].add({K::detail::select<S>(m, V{}, a), K::detail::select<S>(m, V{}, b)});
      }
      put(i, K::detail::select<S>(m, f(K::load<V>(src + i)...), map_of(k + 1)(K::load<V>(src + i)...)));
      i += W;
    }
    if constexpr (sums) acc[k].p0 = p0, acc[k].p1 = p1, acc[k].t0 = t0, acc[k].t1 = t1, acc[k].steps = steps;
  };
  for (Index k = 0; k < segments; ++k) {
    if (k < summed) segment(k, std::true_type{}); else segment(k, std::false_type{});
  }
  const Index last = segments - 1;
  const auto f = map_of(last);
  for (Index j = i; j < n; ++j) dst[j] = f(src[j]...);
  if (last < summed) {
    const auto t = terms_of(last);
    for (Index j = i; j < n; ++j) acc[last].add_scalar(t(src[j + ahead]...));
  }
}

// Sums of segments of one run with prefetch of the run continuing at `next` (relative).
template <class S, class TermsOf, class... Pp>
inline void sum_segments(K::Sums2<S>* acc, Index L, Index segments, const TermsOf& terms_of, Index next, Index dist,
                         const Pp*... src) noexcept {
  using V = K::Vec<S>;
  constexpr Index W = K::kLanes<S>;
  const Index n = L * segments;
  Index i = 0;
  for (Index k = 0; k < segments; ++k) {
    const Index end = (k + 1) * L;
    const auto t = terms_of(k);
    V p0 = acc[k].p0, p1 = acc[k].p1;
    K::Vec<double> t0 = acc[k].t0, t1 = acc[k].t1;
    int steps = acc[k].steps;
    for (; i + W <= end; i += W) {
      Index j = i + dist;
      if (dist <= 0) {}
      else if (j < n) (_mm_prefetch(reinterpret_cast<const char*>(src + j), _MM_HINT_T2), ...);
      else if (next >= 0) (_mm_prefetch(reinterpret_cast<const char*>(src + next + (j - n)), _MM_HINT_T2), ...);
      const auto [a, b] = t(K::load<V>(src + i)...);
      K::detail::add<S>(p0, p1, t0, t1, steps, a, b);
    }
    if (i < end) {  // the vector across the boundary (or the ragged end)
      const Index valid = end - i;
      const auto m = K::detail::first_lanes<S>(valid);
      if (k + 1 < segments) {
        const auto [a, b] = t(K::load<V>(src + i)...);
        K::detail::add<S>(p0, p1, t0, t1, steps, K::detail::select<S>(m, a, V{}), K::detail::select<S>(m, b, V{}));
        const auto [c, d] = terms_of(k + 1)(K::load<V>(src + i)...);
        acc[k + 1].add({K::detail::select<S>(m, V{}, c), K::detail::select<S>(m, V{}, d)});
        i += W;
      } else {
        const auto [a, b] = t(K::detail::load_first(valid, src + i)...);
        K::detail::add<S>(p0, p1, t0, t1, steps, K::detail::select<S>(m, a, V{}), K::detail::select<S>(m, b, V{}));
        i = end;
      }
    }
    acc[k].p0 = p0, acc[k].p1 = p1, acc[k].t0 = t0, acc[k].t1 = t1, acc[k].steps = steps;
  }
}

// The pipelined kernel with prefetch and optional dynamic block scheduling.
void pipelined2(P& p, Index block_bytes, bool nt, Index dist, bool dynamic, bool oneseg = false) {
  const auto& d = p.d;
  const Index target = std::clamp<Index>(block_bytes / (d.M() * 8), 1, 128);
  const auto& cache = p.cache;
  const auto terms_of = [&](Index c) {
    const float mu = cache.mean[c];
    return [mu](auto g, auto v) { return std::pair{g, g * (v - mu)}; };
  };
  const auto map_of = [&](Index c, double sdy, double sdx) {
    const float mu = cache.mean[c], is = cache.invstd[c];
    const float k = is / d.M(), kdy = k * d.M(), ks = k * float(sdy), kx = k * is * is * float(sdx);
    return [=](auto g, auto v) { return kdy * g - ks - (v - mu) * kx; };
  };
  const float* dyp = p.dy;
  const float* xp = p.x;
  // Blocks: equal shares, larger first; block b = [start(b), start(b+1)).
  const Index nblocks = (d.C + target - 1) / target;
  const Index base = d.C / nblocks, larger = d.C % nblocks;
  const auto start = [&](Index b) { return b * base + std::min(b, larger); };
  std::atomic<Index> counter{0};
  const Index CL = d.C * d.L;
  ranges(d.C, [&](Index first, Index last, Index t) {
    // static: this thread's blocks are those whose start lies in [first, last)
    Index sb = 0, se = 0;
    if (!dynamic) {
      const Index parts = omp_get_num_threads();
      sb = nblocks * t / parts, se = nblocks * (t + 1) / parts;
    }
    (void)first, (void)last;
    const auto take = [&](Index& cursor) -> Index {
      if (dynamic) { const Index b = counter.fetch_add(1); return b < nblocks ? b : -1; }
      return cursor < se ? cursor++ : -1;
    };
    Index cursor = sb;
    std::array<K::Sums2<float>, 128> next;
    std::array<std::pair<double, double>, 128> cur;
    Index b = take(cursor);
    if (b < 0) return;
    Index c0 = start(b), c1 = start(b + 1);
    Index nb = take(cursor);
    // first block: sums alone
    for (Index n = 0; n < d.N; ++n) {
      const Index o = d.offset(n, c0);
      const Index nxt = n + 1 < d.N ? CL : -1;
      if (oneseg)
        sum_segments(next.data(), d.L * (c1 - c0), 1, [&](Index k) { return terms_of(c0 + k); }, nxt, dist, dyp + o, xp + o);
      else
        sum_segments(next.data(), d.L, c1 - c0, [&](Index k) { return terms_of(c0 + k); }, nxt, dist, dyp + o, xp + o);
    }
    while (true) {
      for (Index c = c0; c < c1; ++c) {
        cur[c - c0] = next[c - c0].total();
        next[c - c0] = {};
        p.dgamma[c] = float(cur[c - c0].second), p.dbeta[c] = float(cur[c - c0].first);
      }
      const Index n0 = nb >= 0 ? start(nb) : c1, n1 = nb >= 0 ? start(nb + 1) : c1;
      const auto map_k = [&](Index k) { return map_of(c0 + k, cur[k].first, cur[k].second); };
      const auto terms_k = [&](Index k) { return terms_of(n0 + k); };
      const Index ahead = (n0 - c0) * d.L;
      for (Index n = 0; n < d.N; ++n) {
        const Index o = d.offset(n, c0);
        const Index nxt = n + 1 < d.N ? CL : -1;
        if (oneseg)
          msum2(next.data(), n1 > n0 ? 1 : 0, p.dx + o, d.L * (c1 - c0), 1, nt, map_k, terms_k, ahead, nxt, dist, dyp + o, xp + o);
        else
          msum2(next.data(), n1 - n0, p.dx + o, d.L, c1 - c0, nt, map_k, terms_k, ahead, nxt, dist, dyp + o, xp + o);
      }
      if (nb < 0) break;
      b = nb, c0 = n0, c1 = n1;
      nb = take(cursor);
    }
    K::stream_fence();
  });
}

// The library's fused backward with blocks of `target` channels.
void lib_blocked(P& p, Index target) {
  const auto& cache = p.cache;
  const auto d = p.d;
  const float M = float(d.M());
  const auto terms_of = [&](Index c) {
    const float mu = cache.mean[c];
    return [mu](auto g, auto v) { return std::pair{g, g * (v - mu)}; };
  };
  const auto finish = [&](Index c, double s0, double s1) {
    p.tdg[c] = float(s1 * cache.invstd[c]);
    p.tdb[c] = float(s0);
  };
  const auto map_of = [&](Index c, double sum_dy, double sum_dy_xmu) {
    const float mu = cache.mean[c], invstd = cache.invstd[c], gc = p.tg[c];
    const float k = gc * invstd / M;
    const float k_dy = k * M, k_sum_dy = k * float(sum_dy), k_xhat = k * invstd * float(sum_dy_xmu * invstd);
    return [=](auto dy, auto x) { return k_dy * dy - k_sum_dy - (x - mu) * k_xhat; };
  };
  ops::detail::pipelined_channels_blocked(d, target, p.dx, true, terms_of, finish, map_of, (const float*)p.dy,
                                          (const float*)p.x);
}

int main(int argc, char** argv) {
  const auto j0 = jiffies();
  const auto w0 = Clock::now();
  std::string which = argc > 1 ? argv[1] : "56";
  int reps = argc > 2 ? std::atoi(argv[2]) : 15;
  std::string sel = argc > 3 ? argv[3] : "";
  g_huge = std::getenv("HUGE") != nullptr;
  const bool warm = std::getenv("WARM") != nullptr;
  const bool once = std::getenv("ONCE") != nullptr;  // run the selected variants once, no probe (callgrind)
  P p = which == "56"    ? make(32, 64, 56, 56)
        : which == "14"  ? make(64, 256, 14, 14)
        : which == "56s" ? make(1, 64, 56, 56)
        : which == "14s" ? make(2, 256, 14, 14)
        : which == "56t" ? make(1, 16, 56, 56)
        : which == "14t" ? make(1, 256, 14, 14)
        : which == "14u" ? make(4, 64, 14, 14)
                         : make(8, 32, 128, 128);
  p.dgamma.resize(p.d.C), p.dbeta.resize(p.d.C);
  const double n = double(p.d.N * p.d.C * p.d.L);
  Probe probe(Index(64) << 20);
  struct V {
    std::string name;
    double bytes;
    std::function<void()> f;
  };
  std::vector<V> vs;
  const Index MiB = Index(1) << 20;
  vs.push_back({"full (library)", 12 * n, [&] {
                  ops::batchnorm_backward_into<float>(p.tdy, p.tx, &p.tg, p.cache, p.tdx, &p.tdg, &p.tdb);
                }});
  vs.push_back({"full again", 12 * n, [&] {
                  ops::batchnorm_backward_into<float>(p.tdy, p.tx, &p.tg, p.cache, p.tdx, &p.tdg, &p.tdb);
                }});
  for (Index ch : {1, 2, 3, 4, 8, 10, 20, 40, 64, 128})
    vs.push_back({"lib ch " + std::to_string(ch), 12 * n, [&, ch] { lib_blocked(p, ch); }});

  for (Index bb : {Index(512) << 10, MiB, 2 * MiB, 4 * MiB})
    vs.push_back({"pipelined blk " + std::to_string(bb >> 10) + "K", 12 * n, [&, bb] { pipelined(p, bb, true); }});
  vs.push_back({"pipelined blk 2M normal st", 12 * n, [&] { pipelined(p, 2 * MiB, false); }});
  vs.push_back({"p2 blk 2M normal st", 12 * n, [&] { pipelined2(p, 2 * MiB, false, 0, false); }});
  vs.push_back({"p2 fake1seg 2M d0", 12 * n, [&] { pipelined2(p, 2 * MiB, true, 0, false, true); }});
  vs.push_back({"p2 fake1seg 2M d1024", 12 * n, [&] { pipelined2(p, 2 * MiB, true, 1024, false, true); }});
  for (Index bb : {Index(256) << 10, Index(512) << 10, MiB, 2 * MiB, 4 * MiB})
    for (Index dist : {Index(0), Index(1024)})
      for (bool dyn : {false, true})
        vs.push_back({"p2 blk " + std::to_string(bb >> 10) + "K d" + std::to_string(dist) + (dyn ? " dyn" : " static"),
                      12 * n, [&, bb, dist, dyn] { pipelined2(p, bb, true, dist, dyn); }});
  for (Index bb : {Index(512) << 10, 2 * MiB})
    vs.push_back({"sequential blk " + std::to_string(bb >> 10) + "K", 12 * n, [&, bb] { sequential(p, bb, true, false); }});
  vs.push_back({"phase1 nchw blk 2M", 8 * n, [&] { phase1(p, 2 * MiB); }});
  vs.push_back({"phase1 nchw blk 1ch", 8 * n, [&] { phase1(p, 1); }});
  vs.push_back({"contig 2-stream read", 8 * n, [&] { contig_read(p); }});
  vs.push_back({"phase1 runs-as-one 2M", 8 * n, [&] { phase1_runs(p, 2 * MiB); }});
  for (Index R : {Index(196), Index(784), Index(3136), Index(6272), Index(12544), Index(25088), p.d.C * p.d.L / 2})
    vs.push_back({"runs " + std::to_string(R), 8 * n, [&, R] { runs(p, R, 0, 0); }});
  for (Index R : {Index(784), Index(3136), Index(6272), p.d.C * p.d.L / 2})
    for (Index dist : {Index(512), Index(1024), Index(2048)}) {
      vs.push_back({"runs " + std::to_string(R) + " tailpf d" + std::to_string(dist), 8 * n,
                    [&, R, dist] { runs_stream_pf<1, true>(p, R, dist); }});
      vs.push_back({"runs " + std::to_string(R) + " spf0 d" + std::to_string(dist), 8 * n,
                    [&, R, dist] { runs_stream_pf<3>(p, R, dist); }});
      vs.push_back({"runs " + std::to_string(R) + " spf2 d" + std::to_string(dist), 8 * n,
                    [&, R, dist] { runs_stream_pf<1>(p, R, dist); }});
    }
  vs.push_back({"phase1 runs-as-one 1ch", 8 * n, [&] { phase1_runs(p, 1); }});
  vs.push_back({"phase2 mem blk 2M nt", 12 * n, [&] { phase2(p, 2 * MiB, true); }});
  vs.push_back({"phase2 mem blk 2M normal", 12 * n, [&] { phase2(p, 2 * MiB, false); }});
  vs.push_back({"contig triad nt", 12 * n, [&] { contig_triad(p, true); }});
  vs.push_back({"tx alu0 l1 0", 12 * n, [&] { triad_extra<0, 0>(p); }});
  vs.push_back({"tx alu2 l1 0", 12 * n, [&] { triad_extra<2, 0>(p); }});
  vs.push_back({"tx alu4 l1 0", 12 * n, [&] { triad_extra<4, 0>(p); }});
  vs.push_back({"tx alu8 l1 0", 12 * n, [&] { triad_extra<8, 0>(p); }});
  vs.push_back({"tx alu0 l1 1", 12 * n, [&] { triad_extra<0, 1>(p); }});
  vs.push_back({"tx alu0 l1 2", 12 * n, [&] { triad_extra<0, 2>(p); }});
  vs.push_back({"tx alu0 l1 4", 12 * n, [&] { triad_extra<0, 4>(p); }});
  for (Index wb : {Index(8) << 10, Index(16) << 10, Index(64) << 10, Index(512) << 10, 2 * MiB, 4 * MiB, 8 * MiB})
    vs.push_back({"triad+cache reads " + std::to_string(wb >> 10) + "K", 12 * n, [&, wb] { triad_cache(p, wb); }});
  for (int mode : {1, 2, 3, 4})
    vs.push_back({"triad+cache mode " + std::to_string(mode), 12 * n, [&, mode] { triad_cache(p, 512 << 10, mode); }});
  for (Index wb : {Index(512) << 10, 2 * MiB})
    for (Index dist : {Index(0), Index(1024), Index(4096)})
      for (Index cdist : {Index(0), Index(256)})
        if (dist || cdist)
          vs.push_back({"tc " + std::to_string(wb >> 10) + "K pf" + std::to_string(dist) + " cpf" + std::to_string(cdist),
                        12 * n, [&, wb, dist, cdist] { triad_cache(p, wb, 0, dist, cdist); }});
  vs.push_back({"contig triad normal", 12 * n, [&] { contig_triad(p, false); }});
  if (!sel.empty()) std::erase_if(vs, [&](const V& v) {
    std::size_t a = 0;
    while (true) {
      const std::size_t b = sel.find('|', a);
      if (v.name.find(sel.substr(a, b - a)) != std::string::npos) return false;
      if (b == std::string::npos) return true;
      a = b + 1;
    }
  });
  if (once) {
    for (auto& v : vs) v.f();
    return 0;
  }
  std::vector<std::vector<double>> ms(vs.size()), bw(vs.size());
  for (auto& v : vs) v.f(), v.f();
  const bool rotate = std::getenv("ROTATE") != nullptr;
  std::mt19937 shuffle_rng(7);
  std::vector<std::size_t> order(vs.size());
  for (std::size_t j = 0; j < order.size(); ++j) order[j] = j;
  for (int r = 0; r < reps; ++r) {
    if (rotate) std::shuffle(order.begin(), order.end(), shuffle_rng);
    for (std::size_t j = 0; j < vs.size(); ++j) {
      const std::size_t k = order[j];
      bw[k].push_back(warm ? 1.0 : probe());
      auto t0 = Clock::now();
      vs[k].f();
      ms[k].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
  }
  const auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("shape %s threads %d huge %d\n", which.c_str(), omp_get_max_threads(), int(g_huge));
  for (std::size_t k = 0; k < vs.size(); ++k) {
    const double m = med(ms[k]), b = med(bw[k]);
    // per-rep fraction, median
    std::vector<double> fr;
    for (int r = 0; r < reps; ++r) fr.push_back(vs[k].bytes / (ms[k][r] * 1e6) / bw[k][r]);
    std::vector<double> rel;
    for (int r = 0; r < reps; ++r) rel.push_back(ms[k][r] / ms[0][r]);
    std::sort(rel.begin(), rel.end());
    std::printf("%-30s %8.3f ms  %6.1f GB/s  probe %5.1f  frac %5.2f (per-rep med %5.2f)  time/first %5.3f [%5.3f %5.3f]\n",
                vs[k].name.c_str(), m, vs[k].bytes / (m * 1e6), b, vs[k].bytes / (m * 1e6) / b, med(fr), med(rel),
                rel[reps / 4], rel[3 * reps / 4]);
  }
  // instrumented sequential
  std::fill(g_p1_cycles, g_p1_cycles + 64, 0), std::fill(g_p2_cycles, g_p2_cycles + 64, 0);
  for (int r = 0; r < reps; ++r) {
    probe();
    sequential(p, 2 * MiB, true, true);
  }
  const double ghz = 2.5956;  // TSC (BogoMIPS/2)
  std::printf("sequential 2M instrumented (thread 0): phase1 %.3f ms (%.1f GB/s), phase2 %.3f ms (%.1f GB/s)\n",
              g_p1_cycles[0] / reps / ghz / 1e6, 8 * n / 2 / (g_p1_cycles[0] / reps / ghz),
              g_p2_cycles[0] / reps / ghz / 1e6, 12 * n / 2 / (g_p2_cycles[0] / reps / ghz));
  for (Index bb : {Index(256) << 10, Index(512) << 10, MiB, 2 * MiB, 4 * MiB, 8 * MiB}) {
    for (int t = 0; t < 64; ++t) g_rr[t][0] = g_rr[t][1] = 0;
    for (int r = 0; r < reps; ++r) {
      if (!warm) probe();
      reread(p, bb);
    }
    const double bytes = 8 * n / omp_get_max_threads();
    for (int t = 0; t < omp_get_max_threads(); ++t)
      std::printf("reread blocks of %5ld KiB: thread %d first read %.1f GB/s, re-read %.1f GB/s\n", long(bb >> 10), t,
                  bytes / (g_rr[t][0] / reps / 2.5956), bytes / (g_rr[t][1] / reps / 2.5956));
  }
  g_inst = true;
  const Index iblk = std::getenv("BLK") ? std::atol(std::getenv("BLK")) << 10 : 2 * MiB;
  for (int r = 0; r < reps; ++r) {
    probe();
    pipelined(p, iblk, true);
  }
  for (int t = 0; t < omp_get_max_threads(); ++t)
    std::printf("pipelined 2M thread %d: first block %.3f ms, steady %.3f ms, last block %.3f ms, wait at end %.3f ms\n", t,
                g_pl[t][0] / reps / ghz / 1e6, g_pl[t][1] / reps / ghz / 1e6, g_pl[t][2] / reps / ghz / 1e6,
                g_pl[t][3] / reps / ghz / 1e6);
  const auto j1 = jiffies();
  const double wall = std::chrono::duration<double>(Clock::now() - w0).count() * 100;
  std::printf("foreign cpu: %.0f%% of one cpu over the run\n", 100.0 * ((j1.first - j0.first) - (j1.second - j0.second)) / wall);
  return 0;
}
