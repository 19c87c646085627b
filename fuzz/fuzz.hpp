// What every libFuzzer harness of gradproof shares: decoding a shape, hyper-parameters and data
// from the fuzz input, and comparing the fused passes with the staged ones in float64.
//
// The input is read from the front, one byte per decision, so that a seed can be written by hand
// (fuzz/corpus/make_seeds.py gives the layout and writes the seeds); a byte past the end reads
// as 0. The values of the tensors come from the bytes that are left, then from a generator
// seeded by the input, so that a short input still fills a large tensor with varied values.
//
// What counts as a finding (the harness calls std::abort(), which libFuzzer reports as a crash):
// an exception other than gradproof::InvalidArgument, a fused result that differs from the staged
// one by more than the bound below, a statistic that differs from a long-double recomputation,
// or anything AddressSanitizer or UndefinedBehaviorSanitizer reports. Bad input (a zero extent,
// groups that do not divide C, a bad eps, a mismatched gamma or output) must be refused with
// InvalidArgument, which the harness accepts.
#pragma once

#include "gradproof/parallel.hpp"
#include "gradproof/tensor.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace gradproof::fuzz {

/// At most this many values per tensor (environment variable GRADPROOF_FUZZ_MAX_VALUES; 4096 by
/// default). Small tensors make thousands of runs per second and reach every vector and ragged
/// end of the kernels; the threaded paths start at parallel::kMinParallelWork = 2^15 values and
/// the channel blocks of batch norm at 128 channels, so a campaign also runs with 131072
/// (tests/guard/ sweeps those boundaries deterministically).
inline Index max_values() {
  static const Index n = [] {
    const char* v = std::getenv("GRADPROOF_FUZZ_MAX_VALUES");
    return v ? std::max<Index>(1, std::atol(v)) : Index(4096);
  }();
  return n;
}

/// Reads the fuzz input from the front; past its end every byte is 0.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  /// A value in [lo, hi] from one byte (two when the range needs them).
  Index in_range(Index lo, Index hi) {
    const Index span = hi - lo + 1;
    Index v = byte();
    if (span > 256) v = v * 256 + byte();
    return lo + v % span;
  }
  bool flag() { return byte() & 1; }
  /// One of `table`, by a byte.
  template <class T, std::size_t K>
  T pick(const T (&table)[K]) {
    return table[byte() % K];
  }
  std::size_t left() const { return size_ - pos_; }

  /// An extent: mostly small, sometimes around the boundaries that matter (vector widths,
  /// channel blocks of 128, thread shares), rarely 0 (which must be refused).
  Index extent() {
    const std::uint8_t kind = byte();
    if (kind < 8) return 0;
    if (kind < 176) return 1 + kind % 20;
    static constexpr Index kEdges[] = {15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 130, 131, 255, 256, 257, 259};
    if (kind < 240) return kEdges[kind % std::size(kEdges)];
    return in_range(1, 1100);
  }

  /// A shape of `rank` extents, or nothing when it would hold more than max_values() values with
  /// its zero extents made 1 (other_shape() turns a 0 into a 1, so the bound must hold for that
  /// shape too: a (0, 1100, 1100, 1100) would otherwise become 1.3 billion values).
  std::optional<Shape> shape(std::size_t rank) {
    Shape s(rank);
    Index n = 1;
    for (auto& d : s) {
      d = extent();
      n *= std::max<Index>(d, 1);
      if (n > max_values()) return std::nullopt;
    }
    return s;
  }

  /// The next value of a tensor: from the input while it lasts, then from the generator.
  double value(double offset, double scale) {
    std::int8_t raw;
    if (pos_ < size_) {
      raw = static_cast<std::int8_t>(data_[pos_++]);
    } else {
      state_ ^= state_ << 13, state_ ^= state_ >> 7, state_ ^= state_ << 17;  // xorshift64
      raw = static_cast<std::int8_t>(state_ >> 56);
    }
    return offset + scale * (static_cast<double>(raw) / 32.0);
  }
  void seed(std::uint64_t s) { state_ = s | 1; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::uint64_t state_ = 0x9e3779b97f4a7c15ull;
};

/// The values of x (dy, gamma and beta use other offsets and scales): a mean and a spread from
/// small tables. All finite: NaN and Inf propagation is issue 10's defect 4, tested on its own.
struct ValueRange {
  double offset = 0, scale = 1;
  static ValueRange of(Reader& r) {
    static constexpr double kOffsets[] = {0.0, 0.0, 1.0, -3.0, 100.0};
    static constexpr double kScales[] = {1.0, 1.0, 1e-3, 1e3, 1e-6};
    return {r.pick(kOffsets), r.pick(kScales)};
  }
};

/// An eps from a table of valid ones and, rarely, invalid ones (which must be refused).
inline double eps_of(Reader& r) {
  static constexpr double kEps[] = {1e-5, 1e-5, 1e-5, 1e-3, 0.5, 1e-12, 1e-5, 1e-5, 1e-5, 1e-1,
                                    1e-5, 1e-5, 1e-5, 1e-8, 0.0,  -1e-5, std::numeric_limits<double>::quiet_NaN(),
                                    std::numeric_limits<double>::infinity()};
  return r.pick(kEps);
}

template <class T>
Tensor<T> tensor(Reader& r, const Shape& shape, ValueRange v) {
  Tensor<T> t(shape);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<T>(r.value(v.offset, v.scale));
  return t;
}

/// A shape that differs from `s` in one extent (or in rank), for the bad-argument paths.
inline Shape other_shape(const Shape& s, Reader& r) {
  Shape o = s;
  if (o.empty() || r.flag()) {
    o.push_back(1 + r.in_range(0, 3));
  } else {
    o[static_cast<std::size_t>(r.in_range(0, static_cast<Index>(o.size()) - 1))] += 1;
  }
  return o;
}

/// With GRADPROOF_FUZZ_TRACE set, says on stderr what an input did (to see that a seed reaches
/// the comparisons instead of being refused).
inline void trace(const char* op, const char* what, const Shape& shape) {
  static const bool on = std::getenv("GRADPROOF_FUZZ_TRACE") != nullptr;
  if (on) std::fprintf(stderr, "%s %s %s\n", op, what, to_string(shape).c_str());
}

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "gradproof fuzz: %s\n", what.c_str());
  std::abort();
}

/// \brief The sets of a normalization pass, as the checker needs them: set r(i) and parameter
/// p(i) of element i, the set statistics, and whether the op centres (RMS norm does not).
struct SetsView {
  Index size = 0;     // elements
  Index sets = 0;     // number of sets R
  Index params = 0;   // number of affine parameters
  Index per_set = 0;  // values per set M
  bool centred = true;
  Index (*set_of)(const void*, Index) = nullptr;
  Index (*param_of)(const void*, Index) = nullptr;
  const void* ctx = nullptr;
};

// Unit roundoff of float64, and the safety factor of every bound below. The bounds are the usual
// first-order ones of recursive summation (an error of at most n·u times the sum of the moduli
// of n terms) applied to each term of the formula; the constants of those bounds (a few units)
// are folded into K = 64, a factor of ten to a hundred above what a careful count gives, because
// a spurious finding costs a fuzzing campaign and a real defect (a dropped or mis-indexed term,
// a value read from the wrong set) gives an error of the order of the result itself, many orders
// of magnitude above these bounds.
inline constexpr double kU = std::numeric_limits<double>::epsilon() / 2;
inline constexpr double kK = 64;

/// Per-set magnitudes that bound the rounding of the statistics and gradients of the set:
/// A = max|x| + |μ| (bounds |x − μ|, and the error of μ is at most (M+16)·u·A),
/// G = max|g| with g = γ·dy, and the invstd of the set.
struct SetScale {
  double A = 0, G = 0, invstd = 0;
};

inline double mag(double v) { return std::fabs(v); }

/// A double with all its digits (std::to_string keeps six decimals).
inline std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

/// Checks mean/var (or mean square) of a forward pass against a long-double two-pass
/// recomputation. `mean` may be null (RMS norm: `var` is then the mean square).
inline void check_stats(const char* op, const SetsView& s, const double* x, const double* mean, const double* var) {
  std::vector<long double> sum(static_cast<std::size_t>(s.sets)), sq(static_cast<std::size_t>(s.sets));
  std::vector<double> amax(static_cast<std::size_t>(s.sets));
  for (Index i = 0; i < s.size; ++i) {
    const auto r = static_cast<std::size_t>(s.set_of(s.ctx, i));
    sum[r] += x[i];
    amax[r] = std::max(amax[r], mag(x[i]));
  }
  const long double M = static_cast<long double>(s.per_set);
  for (Index i = 0; i < s.size; ++i) {
    const auto r = static_cast<std::size_t>(s.set_of(s.ctx, i));
    const long double d = mean ? x[i] - sum[r] / M : x[i];
    sq[r] += d * d;
  }
  const double n = static_cast<double>(s.per_set) + 16;
  for (Index r = 0; r < s.sets; ++r) {
    const auto k = static_cast<std::size_t>(r);
    if (mean) {
      const double ref = static_cast<double>(sum[k] / M), tol = kK * kU * n * amax[k];
      if (!(mag(mean[r] - ref) <= tol))
        fail(std::string(op) + ": mean of set " + std::to_string(r) + " = " + num(mean[r]) +
             ", long double gives " + num(ref));
    }
    // A one-pass variance (E[x²] − μ²) has an error of order M·u·A², so A² is the scale.
    const double ref = static_cast<double>(sq[k] / M), tol = kK * kU * n * 4 * amax[k] * amax[k];
    if (!(mag(var[r] - ref) <= tol))
      fail(std::string(op) + ": " + (mean ? "variance" : "mean square") + " of set " + std::to_string(r) + " = " +
           num(var[r]) + ", long double gives " + num(ref) + " (bound " + num(tol) + ")");
  }
}

/// \brief Compares a fused backward with the staged one (both float64) within first-order
/// rounding bounds.
///
/// dx_i = invstd·(g_i − Σg/M − x̂_i·Σ(g·x̂)/M): its terms are bounded by invstd·G·(2 + Q) with
/// Q = (A·invstd)² (|x̂| ≤ A·invstd), each sum is exact to (M+16)·u of its moduli, and invstd
/// itself comes from a variance whose error relative to σ² + ε is up to (M+16)·u·Q (the
/// cancellation of a one-pass variance). So |Δdx| ≤ K·u·(M+16)·invstd·G·(2+Q)·(1+Q).
/// dγ_p = Σ dy·x̂ over the n_p values of parameter p: |Δ| ≤ K·u·(n_p+M+16)·Σ|dy|·A·invstd·(1+Q).
/// dβ_p = Σ dy: |Δ| ≤ K·u·(n_p+16)·Σ|dy|.
inline void check_grads(const char* op, const SetsView& s, const double* x, const double* dy, const double* gamma,
                        const double* mean, const double* invstd, const double* dx_staged, const double* dx_fused,
                        const double* dgamma_staged, const double* dgamma_fused, const double* dbeta_staged,
                        const double* dbeta_fused) {
  std::vector<SetScale> sc(static_cast<std::size_t>(s.sets));
  for (Index r = 0; r < s.sets; ++r) sc[static_cast<std::size_t>(r)].invstd = invstd[r];
  for (Index i = 0; i < s.size; ++i) {
    const Index r = s.set_of(s.ctx, i);
    SetScale& k = sc[static_cast<std::size_t>(r)];
    const double g = gamma ? gamma[s.param_of(s.ctx, i)] * dy[i] : dy[i];
    k.A = std::max(k.A, mag(x[i]) + (mean ? mag(mean[r]) : 0.0));
    k.G = std::max(k.G, mag(g));
  }
  const double nM = static_cast<double>(s.per_set) + 16;
  for (Index i = 0; i < s.size; ++i) {
    const SetScale& k = sc[static_cast<std::size_t>(s.set_of(s.ctx, i))];
    const double Q = (k.A * k.invstd) * (k.A * k.invstd);
    const double tol = kK * kU * nM * k.invstd * k.G * (2 + Q) * (1 + Q);
    if (!(mag(dx_fused[i] - dx_staged[i]) <= tol))
      fail(std::string(op) + ": dx[" + std::to_string(i) + "] fused " + num(dx_fused[i]) + " staged " +
           num(dx_staged[i]) + " (bound " + num(tol) + ")");
  }
  if (!dgamma_fused && !dbeta_fused) return;
  std::vector<double> sum_dy(static_cast<std::size_t>(s.params)), sum_dyx(static_cast<std::size_t>(s.params)),
      count(static_cast<std::size_t>(s.params));
  for (Index i = 0; i < s.size; ++i) {
    const SetScale& k = sc[static_cast<std::size_t>(s.set_of(s.ctx, i))];
    const auto p = static_cast<std::size_t>(s.param_of(s.ctx, i));
    const double Q = (k.A * k.invstd) * (k.A * k.invstd);
    sum_dy[p] += mag(dy[i]);
    sum_dyx[p] += mag(dy[i]) * k.A * k.invstd * (1 + Q);
    count[p] += 1;
  }
  for (Index p = 0; p < s.params; ++p) {
    const auto k = static_cast<std::size_t>(p);
    if (dgamma_fused) {
      const double tol = kK * kU * (count[k] + nM) * sum_dyx[k];
      if (!(mag(dgamma_fused[p] - dgamma_staged[p]) <= tol))
        fail(std::string(op) + ": dgamma[" + std::to_string(p) + "] fused " + num(dgamma_fused[p]) +
             " staged " + num(dgamma_staged[p]) + " (bound " + num(tol) + ")");
    }
    if (dbeta_fused) {
      const double tol = kK * kU * (count[k] + 16) * sum_dy[k];
      if (!(mag(dbeta_fused[p] - dbeta_staged[p]) <= tol))
        fail(std::string(op) + ": dbeta[" + std::to_string(p) + "] fused " + num(dbeta_fused[p]) +
             " staged " + num(dbeta_staged[p]) + " (bound " + num(tol) + ")");
    }
  }
}

/// y_i against γ_p·(x_i − μ_r)·invstd_r + β_p from the pass's own statistics: a few roundings.
inline void check_y(const char* op, const SetsView& s, const double* x, const double* gamma, const double* beta,
                    const double* mean, const double* invstd, const double* y) {
  for (Index i = 0; i < s.size; ++i) {
    const Index r = s.set_of(s.ctx, i), p = s.param_of(s.ctx, i);
    const double g = gamma ? gamma[p] : 1.0, b = beta ? beta[p] : 0.0, mu = mean ? mean[r] : 0.0;
    const double ref = (x[i] - mu) * invstd[r] * g + b;
    const double tol = kK * kU * ((mag(x[i]) + mag(mu)) * invstd[r] * mag(g) + mag(b));
    if (!(mag(y[i] - ref) <= tol))
      fail(std::string(op) + ": y[" + std::to_string(i) + "] = " + num(y[i]) + ", from the statistics " +
           num(ref));
  }
}

/// Runs one input: sets the thread count, calls `body`, and turns every outcome other than
/// success or InvalidArgument into a finding.
template <class Body>
int run_one(const std::uint8_t* data, std::size_t size, const Body& body) {
  Reader r(data, size);
  parallel::set_threads(static_cast<int>(r.in_range(1, 3)));
  try {
    body(r);
  } catch (const InvalidArgument& e) {
    // refused bad input: the expected outcome for the inputs that are bad
    trace("refused:", e.what(), {});
  } catch (const std::exception& e) {
    fail(std::string("an exception other than InvalidArgument: ") + e.what());
  }
  return 0;
}

}  // namespace gradproof::fuzz
