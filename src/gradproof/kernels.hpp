/// \file
/// \brief Building blocks of the fused kernels: sums accumulated in double over contiguous runs,
/// and element-wise maps with optional non-temporal (streaming) stores.
///
/// The fused passes are bound by memory traffic, so these helpers do two things only: keep the
/// arithmetic out of the way (one native vector per step, several independent accumulators) and
/// avoid traffic that is not needed (a streaming store writes a whole cache line without first
/// reading it, which a normal store must do: for a pass that reads one array and writes another,
/// that is a third of the traffic).
///
/// The vectors are GCC/Clang vector extensions of the widest width the target enables
/// (AVX-512, AVX or SSE2), so the element-wise formulas are written once, as ordinary
/// expressions, and run on a scalar or on a vector. Only `float` and `double` are supported.
#pragma once

#include "gradproof/tensor.hpp"

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace gradproof::kernels {

/// Width in bytes of the native vectors (one cache line with AVX-512).
#if defined(__AVX512F__)
inline constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
inline constexpr int kVectorBytes = 32;
#else
inline constexpr int kVectorBytes = 16;
#endif

template <class S>
struct Native;
/// \cond INTERNAL
template <>
struct Native<float> {
  using type = float __attribute__((vector_size(kVectorBytes)));
  using half = float __attribute__((vector_size(kVectorBytes / 2)));
};
template <>
struct Native<double> {
  using type = double __attribute__((vector_size(kVectorBytes)));
};
/// \endcond

/// The native vector of `S` (`float` or `double`).
template <class S>
using Vec = typename Native<S>::type;
/// Number of `S` in a native vector.
template <class S>
inline constexpr Index kLanes = kVectorBytes / static_cast<Index>(sizeof(S));

/// Unaligned load of a vector `V` from `p`.
template <class V, class S>
inline V load(const S* p) noexcept {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Unaligned store of `v` at `p`.
template <class V, class S>
inline void store(S* p, const V& v) noexcept {
  std::memcpy(p, &v, sizeof v);
}

/// Non-temporal store of a native vector at `p`, which must be aligned to kVectorBytes.
template <class S>
inline void stream(S* p, const Vec<S>& v) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) _mm512_stream_ps(p, v); else _mm512_stream_pd(p, v);
#elif defined(__AVX__)
  if constexpr (std::is_same_v<S, float>) _mm256_stream_ps(p, v); else _mm256_stream_pd(p, v);
#elif defined(__SSE2__)
  if constexpr (std::is_same_v<S, float>) _mm_stream_ps(p, v); else _mm_stream_pd(p, v);
#else
  store(p, v);
#endif
}

/// Orders the streaming stores of this thread before anything it does next (they are weakly
/// ordered); call it once at the end of a thread's share of a pass.
inline void stream_fence() noexcept {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

/// The kLanes<double> values at `p`, widened to double.
template <class S>
inline Vec<double> widen(const S* p) noexcept {
  if constexpr (std::is_same_v<S, float>) {
    return __builtin_convertvector(load<typename Native<float>::half>(p), Vec<double>);
  } else {
    return load<Vec<double>>(p);
  }
}

template <class V>
inline double horizontal_sum(const V& v) noexcept {
  double s = 0;
  for (int i = 0; i < static_cast<int>(sizeof(V) / sizeof(double)); ++i) s += v[i];
  return s;
}

/// \brief Two sums over a contiguous run, accumulated in double:
/// \f$\big(\sum_i t_0(a_i, b_i, \dots),\ \sum_i t_1(a_i, b_i, \dots)\big)\f$ where
/// `terms(a, b, ...)` returns the pair \f$(t_0, t_1)\f$.
///
/// `terms` is called on vectors of doubles and, for the tail, on doubles, so it is written once
/// as a generic lambda. Each sum keeps four vector accumulators: the float32 inputs are widened
/// first, so the rounding error of a sum of \f$n\f$ terms is that of double precision,
/// \f$O(n/(4\cdot\mathrm{lanes}))\cdot 2^{-53}\f$ relative, far below float32's \f$2^{-24}\f$ for
/// any \f$n\f$ a tensor holds.
/// \param n      length of the run
/// \param terms  `std::pair<T, T>(T...)`, for `T` = double and Vec<double>
/// \param src    pointers to the runs, `float` or `double`, `n` values each
template <class F, class... S>
inline std::pair<double, double> sum2(Index n, const F& terms, const S*... src) noexcept {
  using V = Vec<double>;
  constexpr Index W = kLanes<double>;
  V a0[4] = {}, a1[4] = {};
  Index i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const auto [t0, t1] = terms(widen(src + i + u * W)...);
      a0[u] += t0;
      a1[u] += t1;
    }
  }
  for (; i + W <= n; i += W) {
    const auto [t0, t1] = terms(widen(src + i)...);
    a0[0] += t0;
    a1[0] += t1;
  }
  double r0 = horizontal_sum((a0[0] + a0[1]) + (a0[2] + a0[3]));
  double r1 = horizontal_sum((a1[0] + a1[1]) + (a1[2] + a1[3]));
  for (; i < n; ++i) {
    const auto [t0, t1] = terms(static_cast<double>(src[i])...);
    r0 += t0;
    r1 += t1;
  }
  return {r0, r1};
}

/// \brief `dst[i] = f(src[i]...)` over a contiguous run.
///
/// `f` is called on native vectors of `S` and, for the ends, on `S`, so it is written once as a
/// generic lambda. With `nontemporal`, the aligned body of the run is written with streaming
/// stores (the ends, which share cache lines with neighbouring runs, with normal ones); the
/// caller issues stream_fence() before another thread may read `dst`.
/// \param dst          output run, `n` values
/// \param n            length
/// \param nontemporal  bypass the caches for the output (see should_stream())
/// \param f            `S(S...)` and `Vec<S>(Vec<S>...)`
/// \param src          input runs, `n` values each
template <class S, class F, class... P>
inline void map(S* dst, Index n, bool nontemporal, const F& f, const P*... src) noexcept {
  using V = Vec<S>;
  constexpr Index W = kLanes<S>;
  Index i = 0;
  if (nontemporal) {
    for (; i < n && reinterpret_cast<std::uintptr_t>(dst + i) % sizeof(V) != 0; ++i) dst[i] = f(src[i]...);
    for (; i + W <= n; i += W) stream<S>(dst + i, f(load<V>(src + i)...));
  } else {
    for (; i + W <= n; i += W) store(dst + i, f(load<V>(src + i)...));
  }
  for (; i < n; ++i) dst[i] = f(src[i]...);
}

/// \brief The two passes of a normalization, overlapped: `dst[i] = f(src[i]...)` over a run
/// already in cache, while summing `terms(src[i + ahead]...)` over the run `ahead` elements
/// further on, which comes from memory.
///
/// A two-phase kernel alternating "sum a block from memory" with "write a block from cache"
/// keeps the memory busy with reads, then with writes, never both; interleaving the next block's
/// sums into the current block's writes gives the memory a read stream and a write stream at
/// once, as in a STREAM triad. `f` follows map(), `terms` follows sum2().
/// \param dst          output run, `n` values
/// \param n            length of both runs
/// \param nontemporal  streaming stores for `dst`
/// \param f            the map, `S(S...)` and `Vec<S>(Vec<S>...)`
/// \param terms        the summands, as for sum2()
/// \param ahead        offset of the summed run from the mapped one, in elements
/// \param src          input runs, `n` values each from `src` and from `src + ahead`
/// \return the two sums over the run at `src + ahead`.
template <class S, class F, class G, class... P>
inline std::pair<double, double> map_sum2(S* dst, Index n, bool nontemporal, const F& f, const G& terms, Index ahead,
                                          const P*... src) noexcept {
  using V = Vec<S>;
  using D = Vec<double>;
  constexpr Index W = kLanes<S>, WD = kLanes<double>;
  D a0[2] = {}, a1[2] = {};
  double r0 = 0, r1 = 0;
  const auto scalar = [&](Index i) {
    dst[i] = f(src[i]...);
    const auto [t0, t1] = terms(static_cast<double>(src[i + ahead])...);
    r0 += t0;
    r1 += t1;
  };
  Index i = 0;
  if (nontemporal) {
    for (; i < n && reinterpret_cast<std::uintptr_t>(dst + i) % sizeof(V) != 0; ++i) scalar(i);
  }
  for (; i + W <= n; i += W) {
#pragma GCC unroll 2
    for (Index k = 0; k < W; k += WD) {
      const auto [t0, t1] = terms(widen(src + ahead + i + k)...);
      a0[(k / WD) % 2] += t0;
      a1[(k / WD) % 2] += t1;
    }
    const V v = f(load<V>(src + i)...);
    if (nontemporal) stream<S>(dst + i, v); else store(dst + i, v);
  }
  for (; i < n; ++i) scalar(i);
  return {r0 + horizontal_sum(a0[0] + a0[1]), r1 + horizontal_sum(a1[0] + a1[1])};
}

/// \brief Whether a pass should write its output of `bytes` bytes with streaming stores.
///
/// Streaming pays when the output would not stay in the caches anyway: it saves reading each
/// output line before writing it, but leaves the output in memory rather than in cache, so the
/// next reader pays for that. The threshold is 4 MiB, twice the largest private (L2) cache of
/// the machines this is tuned on; above it the output of a pass evicts itself from L2 and
/// competes with its own inputs for the shared L3.
inline bool should_stream(Index bytes) noexcept { return bytes >= (Index(4) << 20); }

}  // namespace gradproof::kernels
