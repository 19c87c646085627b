// Timing, cache flushing, the memory-bandwidth probe and the description of the machine.
#pragma once

#include "gradproof/tensor.hpp"

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace gradproof::bench {

/// Median, minimum and maximum of a set of timings, in milliseconds.
struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int repetitions = 0;
};

/// \brief The triad with streaming stores over three arrays of `bytes` each, on every thread:
/// run before each timed repetition, it evicts the caches (it reads twice the array size) and
/// measures the memory bandwidth at that moment, interleaved with the repetitions it precedes
/// (the bandwidth of a shared machine drifts from one minute to the next). It runs twice and
/// times the second run, so that the write-back of what the previous call left dirty in the
/// caches is not charged to it.
class TriadProbe {
 public:
  explicit TriadProbe(Index bytes);
  /// Runs the triad once; returns its bandwidth in GB/s (12 B per element counted, as STREAM).
  double operator()();
  Index bytes() const noexcept { return n_ * Index(sizeof(double)); }

 private:
  Index n_;
  std::unique_ptr<double[]> a_, b_, c_;
};

/// Timings of a call, and the median bandwidth of the probe runs between its repetitions.
struct Measured {
  Timing time;
  double probe_gbps = 0;  ///< 0 when no probe ran
};

/// Runs `fn` `warmup` times, then `repetitions` times timed one by one, running `probe` (when
/// given) before each.
Measured time_calls(const std::function<void()>& fn, int warmup, int repetitions, TriadProbe* probe);

/// Like time_calls() for several functions at once, taking turns: each is warmed up, then every
/// repetition times each of them once, in order, each after its own probe run.
std::vector<Measured> time_interleaved(const std::vector<std::function<void()>>& fns, int warmup, int repetitions,
                                       TriadProbe* probe);

/// Results of the bandwidth probe for one thread count, in GB/s (1e9 bytes per second).
struct Bandwidth {
  std::string when;  ///< "start" or "end" of the run
  int threads = 0;
  double triad = 0;     ///< a[i] = b[i] + q c[i] with normal stores, counted 12 B/element (STREAM)
  double triad_nt = 0;  ///< the same with streaming stores
  double read = 0;      ///< s += a[i], 8 B/element (doubles)
  double reference() const;  ///< the best of the three: what fractions of bandwidth divide by
};

/// STREAM-style triad (both store kinds) and read-sum on arrays of `bytes` each, with the
/// current number of threads; the median of `repetitions` runs after one warm-up.
Bandwidth probe_bandwidth(int threads, Index bytes, int repetitions);

/// Named facts about the machine and the build: CPU, caches, memory, compiler, libraries.
std::vector<std::pair<std::string, std::string>> describe_machine();

/// The 1-, 5- and 15-minute load averages, formatted.
std::string load_average();

/// Size of the last-level cache in bytes from sysfs (0 if unknown).
Index last_level_cache_bytes();

}  // namespace gradproof::bench
