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
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

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

template <std::size_t... I>
inline Vec<double> widen_sum(const Vec<float>& v, std::index_sequence<I...>) noexcept {
  // Shuffles, not a copy through memory: taking the vector's address would keep the running
  // sums that call this in memory instead of registers.
  const typename Native<float>::half lo = __builtin_shufflevector(v, v, I...);
  const typename Native<float>::half hi = __builtin_shufflevector(v, v, (I + sizeof...(I))...);
  return __builtin_convertvector(lo, Vec<double>) + __builtin_convertvector(hi, Vec<double>);
}

/// The lanes of a native vector of `S` added pairwise into a vector of doubles (a float
/// vector's 16 lanes become 8): exact up to one double rounding.
inline Vec<double> widen_sum(const Vec<float>& v) noexcept {
  return widen_sum(v, std::make_index_sequence<static_cast<std::size_t>(kLanes<float> / 2)>{});
}

/// The first (`high = false`) or second half of a float vector's lanes, widened to double.
template <std::size_t... I>
inline Vec<double> widen_half(const Vec<float>& v, bool high, std::index_sequence<I...>) noexcept {
  const typename Native<float>::half h = high ? __builtin_shufflevector(v, v, (I + sizeof...(I))...)
                                              : __builtin_shufflevector(v, v, I...);
  return __builtin_convertvector(h, Vec<double>);
}
inline Vec<double> widen_half(const Vec<float>& v, bool high) noexcept {
  return widen_half(v, high, std::make_index_sequence<static_cast<std::size_t>(kLanes<float> / 2)>{});
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

/// \brief The type of a kernel's output pointer: `S* __restrict` when the call is out of place,
/// plain `S*` when it is in place (the output is one of the inputs).
///
/// `__restrict` on the output lets the compiler keep what the map captures in registers across
/// the stores, and the out-of-place kernels are compiled with it. An in-place call (dx written over
/// dy, y over x: the ops document and test it) must not be: a restrict-qualified pointer that
/// aliases another is undefined behaviour, and it would allow a load of an input to be moved
/// after the store to the same element. The public kernels test for it (is_one_of()) and run the
/// body compiled for the case; the in-place body is the same code without the promise.
template <class S, bool kInPlace>
using OutPtr = std::conditional_t<kInPlace, S*, S* __restrict>;

/// Whether `dst` is one of `src` (an in-place call).
template <class S, class... P>
inline bool is_one_of(const S* dst, const P*... src) noexcept {
  return ((static_cast<const void*>(dst) == static_cast<const void*>(src)) || ...);
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

/// \cond INTERNAL
namespace detail {

/// The vector state of a Sums2 as separate local variables, for hot loops: GCC keeps local
/// vectors in registers but leaves an aggregate of this size in memory, which would put a
/// store-to-load round trip on every step.
template <class S>
[[gnu::always_inline]] inline void add(Vec<S>& p0, Vec<S>& p1, Vec<double>& t0, Vec<double>& t1, int& steps,
                                       const Vec<S>& a, const Vec<S>& b) noexcept {
  p0 += a;
  p1 += b;
  if (++steps == Sums2<S>::kFlushEvery) {
    t0 += widen_sum(p0);
    t1 += widen_sum(p1);
    p0 = p1 = Vec<S>{};
    steps = 0;
  }
}

}  // namespace detail
/// \endcond

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
  // Local copies, which stay in registers (see detail::add).
  V p0 = into.p0, p1 = into.p1;
  Vec<double> t0 = into.t0, t1 = into.t1;
  int steps = into.steps;
  Index i = 0;
  for (; i + W <= n; i += W) {
    const auto [a, b] = terms(load<V>(src + i)...);
    detail::add<S>(p0, p1, t0, t1, steps, a, b);
  }
  if (i < n) {
    const auto m = detail::first_lanes<S>(n - i);
    const auto [a, b] = terms(detail::load_first(n - i, src + i)...);
    detail::add<S>(p0, p1, t0, t1, steps, detail::select<S>(m, a, V{}), detail::select<S>(m, b, V{}));
  }
  into.p0 = p0, into.p1 = p1, into.t0 = t0, into.t1 = t1, into.steps = steps;
}

/// The two sums of sum2_into() over one run, as doubles.
template <class F, class... P>
inline std::pair<double, double> sum2(Index n, const F& terms, const P*... src) noexcept {
  Sums2<std::common_type_t<P...>> acc;
  sum2_into(acc, n, terms, src...);
  return acc.total();
}

/// \cond INTERNAL
namespace detail {
template <bool kInPlace, class S, class F, class... P>
inline void map_run(OutPtr<S, kInPlace> dst, Index n, bool nontemporal, const F& f, const P*... src) noexcept {
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
}  // namespace detail
/// \endcond

/// \brief `dst[i] = f(src[i]...)` over a contiguous run.
///
/// `f` is called on native vectors of `S` and on `S`, so it is written once as a generic lambda.
/// With `nontemporal`, the aligned body of the run is written with streaming stores and its
/// ragged ends with scalar stores (masked vector stores to lines that are not in cache stall
/// for a memory round trip on AMD Zen 4; a scalar store does not); the caller issues
/// stream_fence() before another thread may read `dst`.
/// \param dst          output run, `n` values; may be one of `src` (in place), or overlap none
/// \param n            length
/// \param nontemporal  bypass the caches for the output (see should_stream())
/// \param f            `S(S...)` and `Vec<S>(Vec<S>...)`
/// \param src          input runs, `n` values each
template <class S, class F, class... P>
inline void map(S* dst, Index n, bool nontemporal, const F& f, const P*... src) noexcept {
  // `dst` may be one of `src` (in place): see detail::OutPtr.
  if (detail::is_one_of(dst, src...)) detail::map_run<true, S>(dst, n, nontemporal, f, src...);
  else detail::map_run<false, S>(dst, n, nontemporal, f, src...);
}

/// How far ahead the two-phase kernels prefetch their reads from memory, in bytes per stream.
///
/// In an `(N, C, L)` tensor a block of channels is read as `N` runs, `C·L` values apart, and at
/// the start of every run the hardware prefetcher has to find the stream again: at two threads,
/// reading two arrays in runs of 12.5 KiB (one channel of 56x56) took 1.3x as long as reading
/// the same bytes contiguously, runs of 25 KiB 1.2x. A software prefetch into L2 of every line
/// 4 KiB ahead, carried on from the end of a run into the start of the next, brought both to
/// 1.0x (2 KiB ahead: 1.1x; runs of 3 KiB did best at 4 KiB; prefetching into L1: no gain).
inline constexpr Index kPrefetchBytes = 4096;

/// \cond INTERNAL
namespace detail {

/// `v`, made opaque to the optimiser. A value loaded from memory and used twice is otherwise
/// often loaded twice (GCC folds the load into both instructions that use it). In a pass bound
/// by memory traffic those extra loads are not free although they hit L1: every load the core
/// issues per line of streamed data lowers the rate at which it streams (measured at two threads:
/// the triad with two more L1-resident loads per vector took 1.07-1.25x as long, with four
/// 1.2-1.4x; with eight more vector additions instead, as long as without).
template <class V>
[[gnu::always_inline]] inline V in_register(V v) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+v"(v));
#endif
  return v;
}

/// Software prefetch into L2 of the line holding `p[j]`, for every `p`.
template <class... P>
[[gnu::always_inline]] inline void prefetch_l2(Index j, const P*... p) noexcept {
#if defined(__SSE2__)
  (_mm_prefetch(reinterpret_cast<const char*>(p + j), _MM_HINT_T2), ...);
#else
  ((void)p, ...);
  (void)j;
#endif
}

/// Prefetches, `ahead` values ahead of position `i` of a run of `n` values, the line of every
/// stream `p`; past the end of the run, into the next run, which starts `next` values after the
/// start of this one (`next` < 0: there is none, nothing is prefetched there).
template <class... P>
[[gnu::always_inline]] inline void prefetch_ahead(Index i, Index n, Index next, Index ahead,
                                                  const P*... p) noexcept {
  const Index j = i + ahead;
  if (j < n) prefetch_l2(j, p...);
  else if (next >= 0) prefetch_l2(next + (j - n), p...);
}

/// The running sums of one segment as locals (which stay in registers, see add()), with the
/// terms of the segment's last vector that are not whole: the last `W` values of the segment are
/// loaded (it has at least `W`), and the lanes of values already added are dropped. The vectors
/// of a segment are thus always at the same offsets from its start: the order of summation is
/// a function of `L` alone, not of where the segment lies in memory or in its block.
template <class S>
struct SegmentSums {
  using V = Vec<S>;
  V p0, p1;
  Vec<double> t0, t1;
  int steps;
  explicit SegmentSums(const Sums2<S>& a) noexcept : p0(a.p0), p1(a.p1), t0(a.t0), t1(a.t1), steps(a.steps) {}
  void store(Sums2<S>& a) const noexcept { a.p0 = p0, a.p1 = p1, a.t0 = t0, a.t1 = t1, a.steps = steps; }
  template <class T, class... P>
  [[gnu::always_inline]] void vector(const T& t, Index j, const P*... src) noexcept {
    const auto [a, b] = t(in_register(load<V>(src + j))...);
    add<S>(p0, p1, t0, t1, steps, a, b);
  }
  /// The values `[j, L)` of the segment, fewer than a vector.
  template <class T, class... P>
  [[gnu::always_inline]] void last(const T& t, Index j, Index L, const P*... src) noexcept {
    constexpr Index W = kLanes<S>;
    const auto done = first_lanes<S>(W - (L - j));
    const auto [a, b] = t(load<V>(src + (L - W))...);
    add<S>(p0, p1, t0, t1, steps, select<S>(done, V{}, a), select<S>(done, V{}, b));
  }
};

/// map_sum2_segments() with the store kind fixed at compile time. The map and the summands of a
/// segment are taken once per segment, out of its loop (inside it, GCC re-read the statistics
/// they capture through their references on every vector), so the loop body is four vector
/// loads, the arithmetic, and one store.
///
/// The map runs over the whole run as one stream (aligned for the streaming stores); the sums
/// run over each summed segment from its own start (SegmentSums), in the same loop as far as
/// both have whole vectors. So the sums never depend on the alignment of `dst` or on where the
/// block starts, and nothing past a summed segment is read.
template <bool kNonTemporal, bool kInPlace, class S, class MapOf, class TermsOf, class... P>
inline void map_sum2_segments(Sums2<S>* acc, Index summed, OutPtr<S, kInPlace> dst, Index L, Index segments,
                              const MapOf& map_of, const TermsOf& terms_of, Index ahead, Index next,
                              const P*... src) noexcept {
  using V = Vec<S>;
  constexpr Index W = kLanes<S>;
  constexpr Index D = kPrefetchBytes / Index(sizeof(S));
  const Index n = L * segments, n_summed = L * summed;
  const auto put = [dst](Index i, const V& v) {
    if constexpr (kNonTemporal) stream<S>(dst + i, v); else store(dst + i, v);
  };
  // The unaligned head is shorter than a vector, so it lies in segment 0.
  Index i = kNonTemporal ? until_aligned(dst, n) : 0;
  {
    const auto f = map_of(0);
    for (Index j = 0; j < i; ++j) dst[j] = f(src[j]...);
  }
  for (Index k = 0; k < segments; ++k) {
    const Index start = k * L, end = start + L;
    const auto f = map_of(k);
    if (k < summed) {
      const auto t = terms_of(k);
      SegmentSums<S> sums(acc[k]);
      const Index both = std::min((end - i) / W, L / W);  // whole vectors of the map and of the sums
      Index j = 0;                                        // offset in the summed segment
      for (Index v = 0; v < both; ++v, i += W, j += W) {
        prefetch_ahead(start + j, n_summed, next, D, (src + ahead)...);
        sums.vector(t, start + j, (src + ahead)...);
        put(i, f(load<V>(src + i)...));
      }
      for (; j + W <= L; j += W) {
        prefetch_ahead(start + j, n_summed, next, D, (src + ahead)...);
        sums.vector(t, start + j, (src + ahead)...);
      }
      if (j < L) sums.last(t, j, L, (src + ahead + start)...);
      sums.store(acc[k]);
    }
    for (; i + W <= end; i += W) put(i, f(load<V>(src + i)...));
    if (k + 1 < segments && i < end) {  // the vector across the boundary with segment k + 1
      const auto m = first_lanes<S>(end - i);
      put(i, select<S>(m, f(load<V>(src + i)...), map_of(k + 1)(load<V>(src + i)...)));
      i += W;
    }
  }
  // The ragged tail is shorter than a vector, so it lies in the last segment.
  const auto f = map_of(segments - 1);
  for (Index j = i; j < n; ++j) dst[j] = f(src[j]...);
}

}  // namespace detail
/// \endcond

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
/// The written run is one stream: a vector that straddles two segments is computed with both
/// maps and blended, so only the two ends of the whole run are written with scalar stores. The
/// sums take each segment from its own start, in whole vectors, and its last vector ends at the
/// segment's end (the lanes already added dropped): the order of summation, and so every bit of
/// the sums, depends on `L` and the values only — not on the alignment of any buffer, nor on
/// how the channels are cut into blocks and threads — and nothing past a segment is read. The
/// summed run is prefetched kPrefetchBytes ahead, and
/// near its end the start of the next summed run, `next` values after its start (the next
/// sample's run of the same channels), so that the reads from memory do not stall when one run
/// ends and the next begins. Requires `L >= kLanes<S>`.
/// \param acc          `summed` running sums, one per leading segment
/// \param summed       the number of leading segments whose run `ahead` is summed
/// \param dst          output run, `segments·L` values
/// \param L            length of a segment, at least a vector
/// \param segments     number of segments
/// \param nontemporal  streaming stores for `dst`
/// \param map_of       `k` → the map of segment `k`, `S(S...)` and `Vec<S>(Vec<S>...)`
/// \param terms_of     `k` → the summands of segment `k`, as for sum2_into()
/// \param ahead        offset of the summed run from the mapped one, in values
/// \param next         offset of the next summed run from this one, in values, or negative if
///                     no run is summed after this one
/// \param src          input runs
template <class S, class MapOf, class TermsOf, class... P>
inline void map_sum2_segments(Sums2<S>* acc, Index summed, S* dst, Index L, Index segments, bool nontemporal,
                              const MapOf& map_of, const TermsOf& terms_of, Index ahead, Index next,
                              const P*... src) noexcept {
  // `dst` may be one of `src` (in place): see detail::OutPtr.
  const bool in_place = detail::is_one_of(dst, src...);
  const auto run = [&](auto nt, auto ip) {
    detail::map_sum2_segments<decltype(nt)::value, decltype(ip)::value, S>(acc, summed, dst, L, segments, map_of,
                                                                           terms_of, ahead, next, src...);
  };
  using T = std::true_type;
  using F = std::false_type;
  if (nontemporal) in_place ? run(T{}, T{}) : run(T{}, F{});
  else in_place ? run(F{}, T{}) : run(F{}, F{});
}

/// \brief The sums of map_sum2_segments() alone, over one run of `segments` segments of `L`
/// values: `terms_of(k)` summed over segment `k` of `src...` into `acc[k]`, each segment in the
/// same order as in map_sum2_segments() (so the two give the same bits), the run prefetched as
/// there (`next`: offset of the next run summed after
/// this one, in values, or negative). For the first block of a pipelined kernel, which is
/// summed before any block is written. Requires `L >= kLanes<S>`.
template <class S, class TermsOf, class... P>
inline void sum2_segments(Sums2<S>* acc, Index L, Index segments, const TermsOf& terms_of, Index next,
                          const P*... src) noexcept {
  constexpr Index W = kLanes<S>;
  constexpr Index D = kPrefetchBytes / Index(sizeof(S));
  const Index n = L * segments;
  for (Index k = 0; k < segments; ++k) {
    const Index start = k * L;
    const auto t = terms_of(k);
    detail::SegmentSums<S> sums(acc[k]);
    Index j = 0;
    for (; j + W <= L; j += W) {
      detail::prefetch_ahead(start + j, n, next, D, src...);
      sums.vector(t, start + j, src...);
    }
    if (j < L) sums.last(t, j, L, (src + start)...);
    sums.store(acc[k]);
  }
}

/// \brief Two sets of per-column sums over the rows a thread handles (\f$\sum_r a_{r,j}\f$ and
/// \f$\sum_r b_{r,j}\f$ for every column \f$j\f$), for parameter gradients shared by all rows.
///
/// The same scheme as Sums2, along the other axis: the rows add into partial sums in `S` (one
/// per column), which go into double totals every kFlushEvery rows, so a column's error is at
/// most about 20·2⁻²⁴ of the sum of its terms' magnitudes however many rows there are (a flush
/// comes after at most 19 rows: rows are added up to four at a time). Rows of
/// up to kInline values keep everything in the object (on the thread's stack); longer rows use
/// a per-thread scratch buffer that grows on first use and is reused by every later call, so a
/// call allocates nothing once its thread has seen a row that long. At most one ColumnSums2 per
/// scalar type may be alive on a thread at a time (the kernels make one per thread per call).
template <class S>
class ColumnSums2 {
 public:
  static constexpr int kFlushEvery = 16;
  static constexpr Index kInline = 2048;

  /// Sums over `m` columns; `first` / `second` say which of the two sets are kept.
  ColumnSums2(Index m, bool first, bool second) : m_(m), on_{first, second} {
    if (m_ > kInline) {
      Scratch& h = scratch();
      const auto n = static_cast<std::size_t>(2 * m_);
      if (h.partial.size() < n) h.partial.resize(n), h.total.resize(n);  // first long row only
      std::fill_n(h.partial.begin(), n, S(0));
      std::fill_n(h.total.begin(), n, 0.0);
    } else {
      std::fill_n(inline_partial_.begin(), 2 * m_, S(0));
      std::fill_n(inline_total_.begin(), 2 * m_, 0.0);
    }
  }
  /// The partial sums of set `k` (0 or 1) that the current row adds into, or `nullptr` if the
  /// set is not kept.
  S* partial(int k) noexcept { return on_[k] ? partial_base() + k * m_ : nullptr; }
  /// Counts `rows` rows (at most kFlushEvery at once); once kFlushEvery rows or more have gone
  /// into the partial sums, they go into the double totals.
  void rows_done(int rows) noexcept {
    if ((rows_ += rows) >= kFlushEvery) flush();
  }
  /// Adds the double totals into `out0` / `out1` (either may be `nullptr`), in double.
  void add_totals_into(double* out0, double* out1) noexcept {
    flush();
    double* out[2] = {out0, out1};
    for (int k = 0; k < 2; ++k) {
      if (!on_[k] || !out[k]) continue;
      const double* t = total_base() + k * m_;
      for (Index j = 0; j < m_; ++j) out[k][j] += t[j];
    }
  }
  /// Adds the sums into `out0` / `out1` (either may be `nullptr`), in `S`.
  void add_into(S* out0, S* out1) noexcept {
    flush();
    S* out[2] = {out0, out1};
    for (int k = 0; k < 2; ++k) {
      if (!on_[k] || !out[k]) continue;
      const double* t = total_base() + k * m_;
      for (Index j = 0; j < m_; ++j) out[k][j] += static_cast<S>(t[j]);
    }
  }

 private:
  struct Scratch {
    std::vector<S> partial;
    std::vector<double> total;
  };
  static Scratch& scratch() noexcept {
    thread_local Scratch h;
    return h;
  }
  S* partial_base() noexcept { return m_ > kInline ? scratch().partial.data() : inline_partial_.data(); }
  double* total_base() noexcept { return m_ > kInline ? scratch().total.data() : inline_total_.data(); }
  void flush() noexcept {
    constexpr Index W = kLanes<S>, WD = kLanes<double>;
    for (int k = 0; k < 2; ++k) {
      if (!on_[k]) continue;
      S* p = partial_base() + k * m_;
      double* t = total_base() + k * m_;
      Index j = 0;
      for (; j + W <= m_; j += W) {  // t += p, widened lane by lane; then p = 0
        const Vec<S> v = load<Vec<S>>(p + j);
        if constexpr (W == WD) {
          store(t + j, load<Vec<double>>(t + j) + v);
        } else {
          store(t + j, load<Vec<double>>(t + j) + detail::widen_half(v, false));
          store(t + j + WD, load<Vec<double>>(t + j + WD) + detail::widen_half(v, true));
        }
        store(p + j, Vec<S>{});
      }
      for (; j < m_; ++j) t[j] += static_cast<double>(p[j]), p[j] = S(0);
    }
    rows_ = 0;
  }

  Index m_;
  bool on_[2];
  int rows_ = 0;
  std::array<S, 2 * kInline> inline_partial_;
  std::array<double, 2 * kInline> inline_total_;
};

/// \brief Rows per chunk of the column sums of a row-normalization backward, for rows of `m`
/// values: a multiple of 4 (the rows of a map_columns_rows() block), about 2¹⁵ values per chunk.
///
/// The column sums (dγ, dβ) are taken per chunk and the chunks' totals added in the order of the
/// chunks, so that every bit of dγ and dβ is a function of the inputs alone: the chunks depend on
/// the shape only, never on the number of threads.
inline Index column_chunk_rows(Index m) noexcept {
  const Index rows = ((Index(1) << 15) + m - 1) / std::max<Index>(m, 1);
  return std::clamp<Index>((rows + 3) / 4 * 4, 4, 256);
}

/// \brief `n` doubles set to zero, in a buffer of the calling thread that grows on first use
/// and is reused by every later call (valid until the next call on this thread).
inline double* zeroed_scratch(Index n) {
  thread_local std::vector<double> buffer;
  if (buffer.size() < static_cast<std::size_t>(n)) buffer.resize(static_cast<std::size_t>(n));
  std::fill_n(buffer.begin(), n, 0.0);
  return buffer.data();
}

/// \cond INTERNAL
namespace detail {
template <int K, bool kInPlace, class S, class F, class G, class... P>
inline void map_columns_rows_run(OutPtr<S, kInPlace> dst, Index stride, Index n, bool nontemporal, const F& f,
                                 std::type_identity_t<S>* __restrict col0, std::type_identity_t<S>* __restrict col1,
                                 const G& col_terms, const std::type_identity_t<S>* shared, const P*... src) noexcept {
  // __restrict: the column sums alias nothing, and out of place neither does `dst`
  // (detail::OutPtr), so the constants that `f` and `col_terms` capture stay in registers
  // instead of being reloaded after every store.
  using V = Vec<S>;
  constexpr Index W = kLanes<S>;
  const auto column = [&](Index i, auto tag) {  // every row at column i (a vector or a scalar)
    using T = decltype(tag);
    const auto ld = [](const S* p) {
      if constexpr (std::is_same_v<T, V>) return load<V>(p); else return *p;
    };
    const T g = shared ? ld(shared + i) : T{} + S(1);
    T a0 = col0 ? ld(col0 + i) : T{}, a1 = col1 ? ld(col1 + i) : T{};
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) {
      const Index o = k * stride + i;
      const T out = f(k, ld(src + o)..., g);
      const auto [c0, c1] = col_terms(k, ld(src + o)...);
      a0 += c0;
      a1 += c1;
      if constexpr (std::is_same_v<T, V>) {
        if (nontemporal) stream<S>(dst + o, out); else store(dst + o, out);
      } else {
        dst[o] = out;
      }
    }
    if constexpr (std::is_same_v<T, V>) {
      if (col0) store(col0 + i, a0);
      if (col1) store(col1 + i, a1);
    } else {
      if (col0) col0[i] = a0;
      if (col1) col1[i] = a1;
    }
  };
  Index i = 0;
  if (nontemporal)
    for (const Index head = detail::until_aligned(dst, n); i < head; ++i) column(i, S{});
  for (; i + W <= n; i += W) column(i, V{});
  for (; i < n; ++i) column(i, S{});
}
}  // namespace detail
/// \endcond

/// \brief Pass 2 of a row-normalization backward over a block of `K` rows at once:
/// `dst_k[i] = f(k, src_k[i]..., shared[i])` for the rows `k < K` (row `k` of every array at
/// offset `k·stride`), and the rows' contributions to two column sums,
/// `col0[i] += Σ_k c0`, `col1[i] += Σ_k c1` with `(c0, c1) = col_terms(k, src_k[i]...)`.
///
/// Handling `K` rows per pass over the columns loads and stores each column sum once per `K`
/// rows instead of once per row, and the shared per-column input (γ) once: the loads and stores
/// of the per-row version are what bound it when the row is in cache. `shared` may be `nullptr`
/// (then `f` gets 1). `col0`/`col1` may be `nullptr` (skipped). With `nontemporal`, every row
/// must have the same alignment (`stride·sizeof(S)` a multiple of kVectorBytes). `dst` may be
/// one of `src` (in place).
template <int K, class S, class F, class G, class... P>
inline void map_columns_rows(S* dst, Index stride, Index n, bool nontemporal, const F& f,
                             std::type_identity_t<S>* __restrict col0, std::type_identity_t<S>* __restrict col1,
                             const G& col_terms, const std::type_identity_t<S>* shared, const P*... src) noexcept {
  // `dst` may be one of `src` (in place: dx over dy or x): see detail::OutPtr.
  if (detail::is_one_of(dst, src...))
    detail::map_columns_rows_run<K, true, S>(dst, stride, n, nontemporal, f, col0, col1, col_terms, shared, src...);
  else
    detail::map_columns_rows_run<K, false, S>(dst, stride, n, nontemporal, f, col0, col1, col_terms, shared, src...);
}

/// \brief The variance and \f$1/\sqrt{\sigma^2+\varepsilon}\f$ of a set from its variance as
/// computed from shifted sums, \f$S_2/M - (S_1/M)^2\f$, in double, propagating NaN and overflow
/// as PyTorch propagates them (issue 10).
///
/// - A variance below 0 (rounding, when \f$\sigma^2 \approx 0\f$) becomes 0; a NaN stays NaN
///   (`std::max(0.0, v)` would turn it into 0: a NaN or ±Inf input, for which \f$S_2/M - (S_1/M)^2\f$
///   is ∞ − ∞, then gave finite statistics and ∓Inf outputs where PyTorch gives NaN).
/// - \f$+\infty\f$ means that a centred square overflowed the scalar type of the sums although
///   every value is finite (an infinite value makes the difference ∞ − ∞ = NaN instead): the
///   variance is kept as \f$+\infty\f$, which is what the dtype can say of it, and the inverse
///   standard deviation is NaN, not \f$1/\sqrt\infty = 0\f$: 0 would give y = β and dx = 0 for the
///   whole set, finite values that are wrong (the exact x̂ is of order 1). See the pitfalls of
///   `derivations/normalization.md`.
///
/// \param mean_sq  \f$S_2/M\f$, the mean square of the shifted values
/// \param shift    \f$S_1/M\f$, their mean (\f$\mu - K\f$)
/// \param eps      \f$\varepsilon\f$
inline std::pair<double, double> variance_and_invstd(double mean_sq, double shift, double eps) noexcept {
  constexpr double inf = std::numeric_limits<double>::infinity();
  // A mean square that overflowed, with a finite shift, is an overflow even when shift² overflows
  // too (in double, for |μ − K| ≳ 1.3e154), where the difference would be ∞ − ∞.
  double var = mean_sq == inf && std::isfinite(shift) ? inf : mean_sq - shift * shift;
  if (var < 0) var = 0;  // NaN compares false and stays NaN
  const double invstd = var == inf ? std::numeric_limits<double>::quiet_NaN() : 1.0 / std::sqrt(var + eps);
  return {var, invstd};
}

/// \brief \f$a - r\,b\f$: the correction of a value computed with the rounded mean by the
/// mean's residual `r` (NormCache::mean_residual), applied only where it is finite.
///
/// The correction is a small finite adjustment of a finite value. Where \f$r\,b\f$ is not finite
/// (`b` a sum over a set holding an infinite dy, say, or \f$0\cdot\infty\f$ when `r` = 0), `a` is
/// already infinite or NaN for the same reason, and subtracting would only turn a ±Inf into NaN
/// through ∞ − ∞: `a` is returned as it is.
template <class T>
inline T minus_residual(const T& a, const T& r, const T& b) noexcept {
  if (r == T(0)) return a;
  const T rb = r * b;
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(rb)) return a;
  }
  return a - rb;
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
