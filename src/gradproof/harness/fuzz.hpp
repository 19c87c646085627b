/// \file
/// \brief The fuzz target that every declared op gets from its declaration (issue 10: "new ops
/// get a harness through their declaration"); fuzz/ops.cpp runs it under libFuzzer with ASan and
/// UBSan.
///
/// The fuzz input, read from the front one byte per decision (a byte past the end reads as 0):
///
/// | byte(s) | decision |
/// |---|---|
/// | 1 | what to run: a problem (most values), one of the declaration's bad inputs (`% 16 == 15`), one of its `*_into` calls (`% 16 == 14`) |
/// | 1 | which of the declaration's cases (Jacobian, projection and ablation cases, in that order) |
/// | 1 | odd: a new shape of the case's rank follows, one extent per axis (as fuzz/fuzz.hpp's `Reader::extent()`) |
/// | 8 | the seed of the problem's values |
///
/// A problem is sampled by the declaration's own `problem(case, seed)` with the case's shape
/// replaced, so every op is run at shapes its catalog never checks: every vector width and
/// ragged end, extents of 1 and 0. Then both backward passes run in float64 and the fused one in float32 (with an
/// empty input or output only their sizes are compared), and what
/// counts as a finding (FuzzFinding) is:
/// - a fused gradient of any input that differs from the staged one beyond the float64
///   agreement policy of the catalog (check::tolerance_policy() with the declaration's
///   `dx_scale`/`param_scale`, as `<op>/dx_fused/fused_agrees_with_staged` uses it), or a float32
///   fused `d<first input>` beyond the float32 policy (as the benchmark-shape rows);
/// - a bad input of the declaration that is accepted;
/// - any exception other than InvalidArgument (which is how an op refuses an input, e.g. a zero
///   extent it does not take, or a case's other fields that do not fit the new shape);
/// - anything the sanitizers report.
#pragma once

#include "gradproof/catalog/catalog.hpp"
#include "gradproof/catalog/support.hpp"
#include "gradproof/harness/op.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace gradproof::harness {

namespace fuzzing {

/// The fuzz input, read from the front; past its end every byte is 0.
class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint64_t u64() {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | byte();
    return v;
  }
  /// An extent: mostly 1–20, sometimes one at a boundary that matters (vector widths of float
  /// and double at 128, 256 and 512 bits, thread shares), rarely 0 or up to 1100.
  Index extent() {
    const std::uint8_t kind = byte();
    if (kind < 8) return 0;
    if (kind < 176) return 1 + kind % 20;
    static constexpr Index kEdges[] = {15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 130, 131, 255, 256, 257, 259};
    if (kind < 240) return kEdges[kind % std::size(kEdges)];
    return 1 + (Index(byte()) * 256 + byte()) % 1100;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

[[noreturn]] inline void finding(const std::string& op, const std::string& what) {
  throw catalog::FuzzFinding(op + ": " + what);
}

/// Compares gradient `got` of input `name` with `ref` under the policy of `dtype`.
inline void agree(const std::string& op, const std::string& what, const std::string& dtype,
                  const Eigen::VectorXd& got, const Eigen::VectorXd& ref, double scale) {
  if (got.size() != ref.size())
    finding(op, what + ": " + std::to_string(got.size()) + " values, the staged pass gave " +
                    std::to_string(ref.size()));
  const auto cmp = check::compare(got, ref, check::tolerance_policy(dtype, check::Oracle::complex_step, scale));
  if (!cmp.passed) {
    std::ostringstream m;
    m.precision(17);
    m << what << " (" << dtype << "): largest error " << cmp.max_abs_err << "; worst at flat index " << cmp.worst
      << " (" << cmp.analytic << " against " << cmp.numeric << "), allowed atol " << cmp.tol.atol << " + rtol "
      << cmp.tol.rtol << " * |ref|";
    finding(op, m.str());
  }
}

}  // namespace fuzzing

/// The fuzz target of declaration `D` (see the file's description).
template <class D>
void fuzz_one(const std::uint8_t* data, std::size_t size, Index max_values) {
  fuzzing::Bytes in(data, size);
  const std::string op = D::op;
  const std::uint8_t mode = in.byte();
  if (mode % 16 == 15) {  // a bad input: must be refused with InvalidArgument
    auto bad = D::bad_inputs();
    if (bad.empty()) return;
    const BadInput& b = bad[in.byte() % bad.size()];
    try {
      b.call();
    } catch (const InvalidArgument&) {
      return;
    }
    fuzzing::finding(op, "the bad input " + b.name + " was accepted");
  }
  if (mode % 16 == 14) {  // an into call, twice (the second reuses the buffers)
    auto into = D::into_cases();
    if (into.empty()) return;
    const auto call = into[in.byte() % into.size()].make();
    call();
    call();
    return;
  }
  std::vector<typename D::Case> pool;
  for (const auto* kind : {&D::cases().jacobian, &D::cases().projection, &D::cases().ablation})
    pool.insert(pool.end(), kind->begin(), kind->end());
  typename D::Case c = pool[in.byte() % pool.size()];
  if (in.byte() & 1) {
    Shape s(c.shape.size());
    Index n = 1;
    for (auto& d : s) {
      d = in.extent();
      n *= std::max<Index>(d, 1);
    }
    if (n <= max_values) c.shape = s;
  }
  const std::uint64_t seed = in.u64();
  try {
    const typename D::Problem p = D::problem(c, seed);
    const auto pd = D::template prepare<double>(p);
    const auto staged = D::backward(*pd, p.w, Pass::staged);
    const auto fused = D::backward(*pd, p.w, Pass::fused);
    if (staged.size() != D::inputs().size() || fused.size() != D::inputs().size())
      fuzzing::finding(op, "a backward pass returned the wrong number of gradients");
    const std::string where = " at " + to_string(c.shape) + ", seed " + std::to_string(seed) + " (" + D::describe(p) + ")";
    bool empty = p.w.size() == 0;
    for (std::size_t k = 0; k < staged.size(); ++k) {
      const Index n = D::input(p, k).size();
      empty = empty || n == 0;
      if (staged[k].size() != n || fused[k].size() != n)
        fuzzing::finding(op, "d" + D::inputs()[k].name + " has " + std::to_string(fused[k].size()) + " (fused) and " +
                                 std::to_string(staged[k].size()) + " (staged) values for an input of " +
                                 std::to_string(n) + where);
    }
    if (empty) {  // an empty tensor the op takes (as PyTorch does): nothing to compare, no scale
      const auto pf = D::template prepare<float>(p);
      (void)D::backward(*pf, p.w.template cast<float>(), Pass::fused);
      return;
    }
    for (std::size_t k = 0; k < staged.size(); ++k) {
      double scale = 0;
      if constexpr (requires { &D::param_scale; })
        scale = k == 0 ? D::dx_scale(*pd, p, p.w) : D::param_scale(*pd, p, k);
      else
        scale = D::dx_scale(*pd, p, p.w);
      fuzzing::agree(op, "fused d" + D::inputs()[k].name + " against staged" + where, "float64",
                     catalog::support::as_f64(fused[k]), catalog::support::as_f64(staged[k]), scale);
    }
    const auto pf = D::template prepare<float>(p);
    // float32: the fused pass, the one users run (its staged pass would only repeat the float64
    // one's work at lower precision; nothing compares it).
    const auto fused32 = D::backward(*pf, p.w.template cast<float>(), Pass::fused);
    if (fused32.size() != staged.size())
      fuzzing::finding(op, "the float32 fused pass returned " + std::to_string(fused32.size()) + " gradients, not " +
                               std::to_string(staged.size()));
    bool comparable = true;
    if constexpr (requires { D::float32_comparable(p); }) comparable = D::float32_comparable(p);
    if (comparable)
      fuzzing::agree(op, "fused float32 d" + D::inputs()[0].name + " against staged float64" + where, "float32",
                     catalog::support::as_f64(fused32[0]), catalog::support::as_f64(staged[0]),
                     D::dx_scale(*pd, p, p.w));
  } catch (const InvalidArgument&) {
    // Refused: a zero extent the op does not take, or fields of the case that do not fit the
    // new shape (matmul's other operand). The refusal itself is checked by the bad inputs.
  }
}

}  // namespace gradproof::harness
