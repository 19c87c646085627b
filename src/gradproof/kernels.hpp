/// \file
/// \brief Building blocks of the fused kernels: sums over contiguous runs with double totals,
/// and element-wise maps with optional non-temporal (streaming) stores.
///
/// The fused passes are bound by memory traffic, so these helpers do two things only: keep the
/// arithmetic out of the way (one native vector per step) and avoid traffic that is not needed
/// (a streaming store writes a whole cache line without first reading it, which a normal store
/// must do: for a pass that reads one array and writes another, that is a third of the traffic).
///
/// The vectors are GCC/Clang vector extensions of the widest width the target enables
/// (AVX-512, AVX or SSE2), so the element-wise formulas are written once, as ordinary
/// expressions, and run on a scalar or on a vector. Only `float` and `double` are supported.
#pragma once

#include "gradproof/tensor.hpp"

#include <algorithm>
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
  using mask = std::int32_t __attribute__((vector_size(kVectorBytes)));
  using half = float __attribute__((vector_size(kVectorBytes / 2)));
};
template <>
struct Native<double> {
  using type = double __attribute__((vector_size(kVectorBytes)));
  using mask = std::int64_t __attribute__((vector_size(kVectorBytes)));
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

/// \cond INTERNAL
namespace detail {

/// The lanes of a native vector of `S` added pairwise into a vector of doubles (a float
/// vector's 16 lanes become 8): exact up to one double rounding.
inline Vec<double> widen_sum(const Vec<float>& v) noexcept {
  using Half = typename Native<float>::half;
  Half lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  return __builtin_convertvector(lo, Vec<double>) + __builtin_convertvector(hi, Vec<double>);
}
inline Vec<double> widen_sum(const Vec<double>& v) noexcept { return v; }

template <class V>
inline double horizontal_sum(const V& v) noexcept {
  double s = 0;
  for (int i = 0; i < static_cast<int>(sizeof(V) / sizeof(v[0])); ++i) s += v[i];
  return s;
}

/// All lanes below `count` set.
template <class S>
inline typename Native<S>::mask first_lanes(Index count) noexcept {
  using M = typename Native<S>::mask;
  M index;
  for (int l = 0; l < static_cast<int>(kLanes<S>); ++l) index[l] = l;
  return index < static_cast<typename std::remove_reference_t<decltype(index[0])>>(count);
}

/// The lanes of `a` where `m` is set, of `b` elsewhere.
template <class S>
inline Vec<S> select(const typename Native<S>::mask& m, const Vec<S>& a, const Vec<S>& b) noexcept {
  return m ? a : b;
}

/// The first `count` values at `p` (fewer than a vector), the other lanes zero; reads nothing
/// beyond `p + count`.
template <class S>
inline Vec<S> load_first(Index count, const S* p) noexcept {
#if defined(__AVX512F__)
  if constexpr (sizeof(S) == 4) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1u), p);
  } else {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1u), p);
  }
#else
  Vec<S> v = {};
  std::memcpy(&v, p, static_cast<std::size_t>(count) * sizeof(S));
  return v;
#endif
}

/// Elements from `p` to the next kVectorBytes boundary, at most `n`.
template <class S>
inline Index until_aligned(const S* p, Index n) noexcept {
  const auto mis = reinterpret_cast<std::uintptr_t>(p) % kVectorBytes;
  return std::min<Index>(n, mis ? static_cast<Index>((kVectorBytes - mis) / sizeof(S)) : 0);
}

}  // namespace detail
/// \endcond

/// \brief Two running sums over runs of `S`: short partial sums in a vector of `S` each, added
/// into double totals every kFlushEvery vectors.
///
/// Float32 vectors keep the arithmetic at one instruction per 16 values; flushing bounds the
/// float32 rounding: a lane adds at most kFlushEvery = 16 terms before its partial sum goes
/// into double, so the error of a sum is at most about 16·2⁻²⁴ ≈ 1e-6 of the sum of the terms'
/// magnitudes (a bound; random rounding gives about √16 times less), however long the run.
/// The totals then accumulate in double. One object follows one quantity across many runs
/// (sum2_into() and map_sum2_segments() add into it), so a short run costs no reduction.
template <class S>
struct Sums2 {
  static constexpr int kFlushEvery = 16;
  using V = Vec<S>;
  V p0 = {}, p1 = {};            // partial sums
  Vec<double> t0 = {}, t1 = {};  // totals
  double s0 = 0, s1 = 0;         // scalar ends of runs
  int steps = 0;

  /// Adds a pair of vector terms and counts the step (flushing every kFlushEvery steps).
  void add(const std::pair<V, V>& t) noexcept {
    p0 += t.first;
    p1 += t.second;
    if (++steps == kFlushEvery) flush();
  }
  void add_scalar(const std::pair<S, S>& t) noexcept {
    s0 += static_cast<double>(t.first);
    s1 += static_cast<double>(t.second);
  }
  void flush() noexcept {
    t0 += detail::widen_sum(p0);
    t1 += detail::widen_sum(p1);
    p0 = p1 = V{};
    steps = 0;
  }
  /// The two sums so far, as doubles.
  std::pair<double, double> total() noexcept {
    flush();
    return {detail::horizontal_sum(t0) + s0, detail::horizontal_sum(t1) + s1};
  }
};

/// \brief Adds two sums over a contiguous run into `into`:
/// \f$\big(\sum_i t_0(a_i, b_i, \dots),\ \sum_i t_1(a_i, b_i, \dots)\big)\f$ where
/// `terms(a, b, ...)` returns the pair \f$(t_0, t_1)\f$.
///
/// `terms` is called on native vectors of `S`, so it is written once as a generic lambda that
/// also works on scalars. The ragged end is one vector whose unused lanes are loaded as zeros
/// and whose terms there are dropped.
/// \param into   the running sums, in `S` with double totals (see Sums2 for the error bound)
/// \param n      length of the run
/// \param terms  `std::pair<T, T>(T...)`, for `T` = `S` and Vec<S>
/// \param src    pointers to the runs, `n` values each
template <class S, class F, class... P>
inline void sum2_into(Sums2<S>& into, Index n, const F& terms, const P*... src) noexcept {
  using V = Vec<S>;
  constexpr Index W = kLanes<S>;
  Sums2<S> acc = into;  // a local copy stays in registers (the inputs could alias `into`)
  Index i = 0;
  for (; i + W <= n; i += W) acc.add(terms(load<V>(src + i)...));
  if (i < n) {
    const auto m = detail::first_lanes<S>(n - i);
    const auto [t0, t1] = terms(detail::load_first(n - i, src + i)...);
    acc.add({detail::select<S>(m, t0, V{}), detail::select<S>(m, t1, V{})});
  }
  into = acc;
}

/// The two sums of sum2_into() over one run, as doubles.
template <class F, class... P>
inline std::pair<double, double> sum2(Index n, const F& terms, const P*... src) noexcept {
  Sums2<std::common_type_t<P...>> acc;
  sum2_into(acc, n, terms, src...);
  return acc.total();
}

/// \brief `dst[i] = f(src[i]...)` over a contiguous run.
///
/// `f` is called on native vectors of `S` and on `S`, so it is written once as a generic lambda.
/// With `nontemporal`, the aligned body of the run is written with streaming stores and its
/// ragged ends with scalar stores (masked vector stores to lines that are not in cache stall
/// for a memory round trip on AMD Zen 4; a scalar store does not); the caller issues
/// stream_fence() before another thread may read `dst`.
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
    for (const Index head = detail::until_aligned(dst, n); i < head; ++i) dst[i] = f(src[i]...);
    for (; i + W <= n; i += W) stream<S>(dst + i, f(load<V>(src + i)...));
  } else {
    for (; i + W <= n; i += W) store(dst + i, f(load<V>(src + i)...));
  }
  for (; i < n; ++i) dst[i] = f(src[i]...);
}

/// \brief The two passes of a normalization over one contiguous run made of `segments`
/// segments of `L` values, overlapped: the map of each segment over data already in cache,
/// and the sums of the run `ahead` values further on, which comes from memory.
///
/// Segment `k` (values `[kL, (k+1)L)`) is written `dst[i] = map_of(k)(src[i]...)`, and, for
/// `k < summed`, `terms_of(k)` is summed over `src[i + ahead]...` into `acc[k]` (as
/// sum2_into()). In an `(N, C, L)` tensor the segments are the channels of one sample and the
/// run `ahead` is the same sample's next block of channels: a two-phase kernel that alternates
/// "sum a block from memory" with "write a block from cache" keeps the memory busy with reads,
/// then with writes, never both; interleaving them gives it a read stream and a write stream
/// at once, as in a STREAM triad.
///
/// The run is one stream: a vector that straddles two segments is computed with both maps and
/// blended, and its terms are split between the two sums, so only the two ends of the whole
/// run are written with scalar stores. Requires `L >= kLanes<S>`.
/// \param acc          `summed` running sums, one per leading segment
/// \param summed       the number of leading segments whose run `ahead` is summed
/// \param dst          output run, `segments·L` values
/// \param L            length of a segment, at least a vector
/// \param segments     number of segments
/// \param nontemporal  streaming stores for `dst`
/// \param map_of       `k` → the map of segment `k`, `S(S...)` and `Vec<S>(Vec<S>...)`
/// \param terms_of     `k` → the summands of segment `k`, as for sum2_into()
/// \param ahead        offset of the summed run from the mapped one, in values
/// \param src          input runs
template <class S, class MapOf, class TermsOf, class... P>
inline void map_sum2_segments(Sums2<S>* acc, Index summed, S* dst, Index L, Index segments, bool nontemporal,
                              const MapOf& map_of, const TermsOf& terms_of, Index ahead, const P*... src) noexcept {
  using V = Vec<S>;
  constexpr Index W = kLanes<S>;
  const Index n = L * segments;
  const auto put = [&](Index i, const V& v) {
    if (nontemporal) stream<S>(dst + i, v); else store(dst + i, v);
  };
  // The unaligned head is shorter than a vector, so it lies in segment 0.
  Index i = nontemporal ? detail::until_aligned(dst, n) : 0;
  {
    const auto f = map_of(0);
    for (Index j = 0; j < i; ++j) dst[j] = f(src[j]...);
    if (summed > 0) {
      const auto t = terms_of(0);
      for (Index j = 0; j < i; ++j) acc[0].add_scalar(t(src[j + ahead]...));
    }
  }
  const auto segment = [&](Index k, auto with_sums) {
    const Index end = (k + 1) * L;
    const auto f = map_of(k);
    [[maybe_unused]] Sums2<S> a;
    constexpr bool sums = decltype(with_sums)::value;
    if constexpr (sums) a = acc[k];
    for (; i + W <= end; i += W) {
      if constexpr (sums) a.add(terms_of(k)(load<V>(src + ahead + i)...));
      put(i, f(load<V>(src + i)...));
    }
    if (k + 1 < segments && i < end) {  // the vector across the boundary with segment k + 1
      const auto m = detail::first_lanes<S>(end - i);
      if constexpr (sums) {
        const auto [t0, t1] = terms_of(k)(load<V>(src + ahead + i)...);
        a.add({detail::select<S>(m, t0, V{}), detail::select<S>(m, t1, V{})});
      }
      if (k + 1 < summed) {
        const auto [t0, t1] = terms_of(k + 1)(load<V>(src + ahead + i)...);
        acc[k + 1].add({detail::select<S>(m, V{}, t0), detail::select<S>(m, V{}, t1)});
      }
      put(i, detail::select<S>(m, f(load<V>(src + i)...), map_of(k + 1)(load<V>(src + i)...)));
      i += W;
    }
    if constexpr (sums) acc[k] = a;
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

/// \brief Whether a pass should write its output of `bytes` bytes with streaming stores.
///
/// Streaming pays when the output would not stay in the caches anyway: it saves reading each
/// output line before writing it, but leaves the output in memory rather than in cache, so the
/// next reader pays for that. The threshold is 4 MiB, four times the private L2 of a core of
/// the machine this is tuned on (1 MiB) and an eighth of its shared L3: above it the output of
/// a pass evicts itself from L2 and competes with its own inputs for L3.
inline bool should_stream(Index bytes) noexcept { return bytes >= (Index(4) << 20); }

}  // namespace gradproof::kernels
