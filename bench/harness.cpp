#include "harness.hpp"

#include "bench.hpp"
#include "gradproof/kernels.hpp"
#include "gradproof/parallel.hpp"

#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace gradproof::bench {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

Timing summarise(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  Timing t;
  t.repetitions = static_cast<int>(ms.size());
  const std::size_t n = ms.size();
  t.median_ms = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  t.min_ms = ms.front();
  t.max_ms = ms.back();
  return t;
}

// Splits [0, n) into one contiguous block per thread (the same split for every pass, so that a
// thread first touches the pages it later reads).
template <class F>
void blocks(Index n, const F& f) {
  const Index parts = parallel::max_threads();
  parallel::parallel_for(parts, n, [&](Index t) {
    f(n * t / parts, n * (t + 1) / parts);
    kernels::stream_fence();
  });
}

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model, flags;
  while (std::getline(in, line)) {
    if (model.empty() && line.rfind("model name", 0) == 0) model = line.substr(line.find(':') + 2);
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = line;
  }
  std::string simd = flags.find(" avx512f") != std::string::npos ? "AVX-512"
                     : flags.find(" avx2") != std::string::npos  ? "AVX2"
                                                                 : "SSE";
  return model + " (" + simd + ")";
}

std::string cache_summary() {
  std::ostringstream out;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string level = read_first_line(dir + "level");
    if (level.empty()) break;
    const std::string type = read_first_line(dir + "type");
    if (type == "Instruction") continue;
    out << (out.tellp() > 0 ? ", " : "") << "L" << level << " " << read_first_line(dir + "size")
        << (read_first_line(dir + "shared_cpu_list").find_first_of(",-") != std::string::npos ? " shared"
                                                                                              : " per core");
  }
  return out.str();
}

std::string memory_total() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kb = 0;
  in >> key >> kb;
  std::ostringstream out;
  out.precision(3);
  out << kb / (1024.0 * 1024.0) << " GiB";
  return out.str();
}

}  // namespace

TriadProbe::TriadProbe(Index bytes)
    : n_(bytes / Index(sizeof(double))),
      a_(new double[static_cast<std::size_t>(n_)]),
      b_(new double[static_cast<std::size_t>(n_)]),
      c_(new double[static_cast<std::size_t>(n_)]) {
  blocks(n_, [&](Index lo, Index hi) {
    for (Index i = lo; i < hi; ++i) a_[i] = 0.0, b_[i] = 1.0, c_[i] = 2.0;
  });
}

double TriadProbe::operator()() {
  const double q = 3.0;
  const auto triad = [&] {
    blocks(n_, [&](Index lo, Index hi) {
      kernels::map(a_.get() + lo, hi - lo, true, [q](auto bv, auto cv) { return bv + q * cv; }, b_.get() + lo,
                   c_.get() + lo);
    });
  };
  // The first run evicts what the previous call left in the caches, writing back its dirty
  // lines (an implementation with ordinary stores leaves its whole output dirty); only the second
  // run, on clean caches, is timed.
  triad();
  const auto t0 = Clock::now();
  triad();
  return 3.0 * static_cast<double>(n_) * sizeof(double) / (ms_since(t0) * 1e6);
}

Measured time_calls(const std::function<void()>& fn, int warmup, int repetitions, TriadProbe* probe) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms, gbps;
  ms.reserve(static_cast<std::size_t>(repetitions));
  gbps.reserve(static_cast<std::size_t>(repetitions));
  for (int i = 0; i < repetitions; ++i) {
    if (probe) gbps.push_back((*probe)());
    const auto t0 = Clock::now();
    fn();
    ms.push_back(ms_since(t0));
  }
  Measured m;
  m.time = summarise(std::move(ms));
  if (!gbps.empty()) m.probe_gbps = summarise(std::move(gbps)).median_ms;
  return m;
}

std::vector<Measured> time_interleaved(const std::vector<std::function<void()>>& fns, int warmup, int repetitions,
                                       TriadProbe* probe) {
  for (const auto& fn : fns)
    for (int i = 0; i < warmup; ++i) fn();
  std::vector<std::vector<double>> ms(fns.size()), gbps(fns.size());
  for (int i = 0; i < repetitions; ++i) {
    for (std::size_t k = 0; k < fns.size(); ++k) {
      if (probe) gbps[k].push_back((*probe)());
      const auto t0 = Clock::now();
      fns[k]();
      ms[k].push_back(ms_since(t0));
    }
  }
  std::vector<Measured> out(fns.size());
  for (std::size_t k = 0; k < fns.size(); ++k) {
    out[k].time = summarise(std::move(ms[k]));
    if (!gbps[k].empty()) out[k].probe_gbps = summarise(std::move(gbps[k])).median_ms;
  }
  return out;
}

double Bandwidth::reference() const { return std::max({triad, triad_nt, read}); }

Bandwidth probe_bandwidth(int threads, Index bytes, int repetitions) {
  const Index n = bytes / Index(sizeof(double));
  // Allocated without initialisation, then first touched by the threads that use each block.
  std::unique_ptr<double[]> a(new double[static_cast<std::size_t>(n)]);
  std::unique_ptr<double[]> b(new double[static_cast<std::size_t>(n)]);
  std::unique_ptr<double[]> c(new double[static_cast<std::size_t>(n)]);
  blocks(n, [&](Index lo, Index hi) {
    for (Index i = lo; i < hi; ++i) a[i] = 0.0, b[i] = 1.0, c[i] = 2.0;
  });
  const double q = 3.0;
  double sink = 0;
  const auto triad = [&](bool nt) {
    blocks(n, [&](Index lo, Index hi) {
      kernels::map(a.get() + lo, hi - lo, nt, [q](auto bv, auto cv) { return bv + q * cv; }, b.get() + lo,
                   c.get() + lo);
    });
  };
  const auto read = [&] {
    std::vector<double> part(static_cast<std::size_t>(parallel::max_threads()), 0.0);
    const Index parts = static_cast<Index>(part.size());
    parallel::parallel_for(parts, n, [&](Index t) {
      const Index lo = n * t / parts, hi = n * (t + 1) / parts;
      part[static_cast<std::size_t>(t)] =
          kernels::sum2(hi - lo, [](auto v) { return std::pair{v, v}; }, a.get() + lo).first;
    });
    for (double s : part) sink += s;
  };
  const double gb = static_cast<double>(n) * sizeof(double) / 1e9;
  Bandwidth bw;
  bw.threads = threads;
  bw.triad = 3 * gb / (time_calls([&] { triad(false); }, 1, repetitions, nullptr).time.median_ms / 1e3);
  bw.triad_nt = 3 * gb / (time_calls([&] { triad(true); }, 1, repetitions, nullptr).time.median_ms / 1e3);
  bw.read = gb / (time_calls(read, 1, repetitions, nullptr).time.median_ms / 1e3);
  if (sink == 42.0) std::abort();  // never true; keeps the sums alive
  return bw;
}

Index last_level_cache_bytes() {
  Index best = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::string size = read_first_line(dir + "size");
    if (size.empty()) break;
    Index v = std::atol(size.c_str());
    if (size.back() == 'K') v <<= 10;
    if (size.back() == 'M') v <<= 20;
    best = std::max(best, v);
  }
  return best;
}

std::string load_average() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return "unknown";
  std::ostringstream out;
  out.precision(2);
  out << std::fixed << l[0] << ", " << l[1] << ", " << l[2] << " (1, 5, 15 min)";
  return out.str();
}

std::vector<std::pair<std::string, std::string>> describe_machine() {
  std::vector<std::pair<std::string, std::string>> m;
  m.emplace_back("cpu", cpu_model());
  m.emplace_back("logical cpus", std::to_string(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN))));
  m.emplace_back("caches", cache_summary());
  m.emplace_back("memory", memory_total());
  utsname u{};
  if (uname(&u) == 0) m.emplace_back("os", std::string(u.sysname) + " " + u.release);
  m.emplace_back("compiler", std::string("g++ ") + __VERSION__ + ", " + GRADPROOF_BENCH_CXX_FLAGS);
  m.emplace_back("threads", "OpenMP (libgomp), one team shared by every implementation");
  const std::string torch = libtorch_version(), dnnl = onednn_version();
  m.emplace_back("libtorch", torch.empty() ? "not built" : torch);
  m.emplace_back("oneDNN", dnnl.empty() ? "not built" : dnnl);
  // Debian's libtorch calls the BLAS that update-alternatives selects for its sgemm (linear).
  std::error_code ec;
  const auto blas =
      std::filesystem::canonical("/etc/alternatives/libblas.so.3-x86_64-linux-gnu", ec);
  m.emplace_back("BLAS (libtorch's GEMM)", ec ? "unknown" : blas.string());
  return m;
}

}  // namespace gradproof::bench
