// Timing, cache flushing, the memory-bandwidth probe and the description of the machine.
#pragma once

#include "gradproof/tensor.hpp"

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace gradproof::bench {

/// Median, minimum and maximum of a set of timings, in milliseconds.
struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int repetitions = 0;
};

/// Evicts the caches by reading a buffer four times the size of the last-level cache, on every
/// thread, so that each timed call starts with its operands in memory. A read (not a write)
/// leaves the evicting lines clean, so the next call pays no write-back for them.
class CacheFlusher {
 public:
  explicit CacheFlusher(Index bytes);
  void operator()();
  Index bytes() const noexcept { return static_cast<Index>(buffer_.size() * sizeof(double)); }

 private:
  std::vector<double> buffer_;
  double sink_ = 0;
};

/// Runs `fn` `warmup` times, then `repetitions` times timed one by one (calling `flush` before
/// each when it is given).
Timing time_calls(const std::function<void()>& fn, int warmup, int repetitions, CacheFlusher* flush);

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
