// What a wrong dx of the normalization family (batch, layer, group, instance norm) looks like.
//
// Within one set (the values normalised together) the correct gradient is
//   dx = s (g − mean(g) − x̂ mean(g x̂)),   g = γ ⊙ dy, s = 1/√(σ² + ε), x̂ = (x − μ) s,
// whose second and third terms are the mean path (through μ) and the variance path (through σ²).
// The error e = dx_yours − dx_ref of each set is projected onto span{1, x̂} (orthogonal within a
// set: Σ x̂ = 0); the error of most bugs lies there, or is a multiple of dx itself. The named
// diagnoses are each the error of one specific bug, predicted from x, dy, γ and ε and compared
// with the user's; when none fits, the projection says whether the error is a constant offset (the
// mean path), a multiple of x̂ (the variance path), both, or neither.
#pragma once

#include "gradproof/tensor.hpp"

#include <string>
#include <vector>

namespace gradproof::cli {

// The sets of a normalization: which set each element of x belongs to, and its γ.
struct DiagSets {
  TensorD x, dy;                  // the forward input and the upstream gradient
  std::vector<Index> set_of;      // per element of x: its set, in [0, sets)
  Index sets = 0;
  std::vector<double> gamma;      // per element of x: its γ (1 without γ)
  double eps = 1e-5;
};

struct Diagnosis {
  std::string kind;     // stats_constant, sign, gamma_missing, variance_bias, mean_path,
                        // variance_path, mean_and_variance_paths, other, none
  std::string text;     // one or two lines for the report
  double in_span = 0;   // fraction of ‖e‖² in span{1, x̂}, over all sets
  double fit = 1;       // ‖dx_yours − predicted‖ / ‖e‖ of the named bug (1 when none fits)
};

// The per-set statistics and the correct dx of the sets (float64, for the predictions).
Diagnosis diagnose_norm_dx(const DiagSets& s, const TensorD& dx_ref, const TensorD& dx_yours);

}  // namespace gradproof::cli
