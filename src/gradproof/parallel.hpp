/// \file
/// \brief The one place gradproof runs work on several threads: a static parallel loop.
///
/// The fused kernels split their work over channels (batch norm) or rows (layer norm) with
/// parallel_for(). It is OpenMP underneath, for two reasons: Debian's libtorch and oneDNN use
/// the same runtime (GCC's libgomp), so in a process that holds all three there is one team of
/// threads instead of three pools spinning against each other on the same cores; and OpenMP's
/// team persists between loops, so a loop costs a wake-up, not a thread start. Built without
/// OpenMP, everything here runs serially.
///
/// The kernels that use these loops give the same bits at any number of threads: each output
/// element is computed by one loop body from the inputs alone, and every sum over elements that
/// several threads handle is taken per chunk that depends on the shape only, then combined in
/// the order of the chunks (chunks_in_order()); no sum is taken per thread.
#pragma once

#include "gradproof/tensor.hpp"

#include <atomic>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace gradproof::parallel {

/// Below this many touched elements a loop runs on the calling thread: waking the team and
/// joining it costs a few microseconds, the time of a few thousand elements at memory speed.
inline constexpr Index kMinParallelWork = Index(1) << 15;

/// The number of threads the next parallel loop will use (1 without OpenMP).
inline int max_threads() noexcept {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// \brief Sets the number of threads of later parallel loops on the calling thread.
///
/// With OpenMP this is `omp_set_num_threads`, which also governs every other OpenMP user in
/// the process (libtorch and oneDNN in the benchmarks). Without OpenMP it does nothing.
/// \param threads  at least 1
inline void set_threads(int threads) noexcept {
#if defined(_OPENMP)
  omp_set_num_threads(threads < 1 ? 1 : threads);
#else
  (void)threads;
#endif
}

/// \brief Calls `body(i)` for every `i` in `[0, n)`, in contiguous blocks of indices, one block
/// per thread (static schedule: the same thread gets the same block on every call, which keeps
/// its data in its own caches from one pass to the next).
///
/// \param n     number of iterations
/// \param work  elements the whole loop touches; below kMinParallelWork it runs serially
/// \param body  callable `void(Index)`; must not throw (an exception cannot leave a parallel region)
template <class Body>
void parallel_for(Index n, Index work, const Body& body) {
#if defined(_OPENMP)
  if (n > 1 && work >= kMinParallelWork && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (Index i = 0; i < n; ++i) body(i);
    return;
  }
#else
  (void)work;
#endif
  for (Index i = 0; i < n; ++i) body(i);
}

/// \brief Splits `[0, n)` into one contiguous range per thread and calls
/// `body(begin, end, part, parts)` once per thread (`part` in `[0, parts)`, ranges in order of
/// `part`, possibly empty), or once with `(0, n, 0, 1)` when serial.
///
/// For kernels that carry state from one index to the next within a thread (a software
/// pipeline over blocks of channels), or that combine per-thread partial results in a fixed
/// order (see Turns). Same arguments and rules as parallel_for().
template <class Body>
void parallel_ranges(Index n, Index work, const Body& body) {
#if defined(_OPENMP)
  if (n > 1 && work >= kMinParallelWork && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel
    {
      const Index t = omp_get_thread_num(), parts = omp_get_num_threads();
      body(n * t / parts, n * (t + 1) / parts, t, parts);
    }
    return;
  }
#else
  (void)work;
#endif
  body(Index(0), n, Index(0), Index(1));
}

/// \brief Lets the parts of a parallel_ranges() loop take turns, in the order of their index:
/// for adding per-thread partial sums into one result in the same order on every run (so the
/// result does not depend on which thread finishes first).
///
/// A part that must wait spins briefly (the part before it is usually about to finish), then
/// sleeps on the counter (C++20 `std::atomic::wait`, a futex on Linux) until done() wakes it.
/// Spinning alone is not enough: with more threads than cores, the part being waited for may
/// not be running at all, and every spinning thread then delays it further (issue 10: layer-norm
/// backward took 1.9 s per call at 64 threads on 2 cores).
class Turns {
 public:
  /// Spins of the wait before it sleeps: about a microsecond of `pause` instructions.
  static constexpr int kSpins = 64;

  /// Waits until every part before `part` has called done().
  void wait_for(Index part) const noexcept {
    for (int spin = 0; spin < kSpins; ++spin) {
      if (next_.load(std::memory_order_acquire) == part) return;
#if defined(__SSE2__)
      _mm_pause();
#endif
    }
    for (Index seen = next_.load(std::memory_order_acquire); seen != part;
         seen = next_.load(std::memory_order_acquire)) {
      next_.wait(seen, std::memory_order_acquire);
    }
  }
  /// Lets the next part go.
  void done(Index part) noexcept {
    next_.store(part + 1, std::memory_order_release);
    next_.notify_all();  // no system call when nobody sleeps
  }

 private:
  std::atomic<Index> next_{0};
};

/// \brief Calls `body(q, in_turn)` for every chunk `q` in `[0, chunks)`, the chunks dealt to the
/// threads in turn (thread `t` of `T` takes `t, t + T, ...`); `in_turn(f)` runs `f()` after it
/// has run for every chunk before `q`, so what the `f` add up is added in the order of the
/// chunks, whatever the number of threads. Either every chunk calls `in_turn` once, or none
/// does. Dealing the chunks in turn keeps a thread's wait short: chunk `q − 1` is being worked on
/// at the same time as `q`, on another thread. Same `work` rule as parallel_for().
template <class Body>
void chunks_in_order(Index chunks, Index work, const Body& body) {
  Turns turns;
  parallel_ranges(chunks, work, [&](Index, Index, Index part, Index parts) {
    for (Index q = part; q < chunks; q += parts) {
      body(q, [&](const auto& f) {
        turns.wait_for(q);
        f();
        turns.done(q);
      });
    }
  });
}

}  // namespace gradproof::parallel
