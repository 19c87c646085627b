/// \file
/// \brief The formula catalog: every formula id, its title, and the checks that verify it.
///
/// The catalog is where an op meets the oracles: `ops/` knows nothing of `check/`, `check/`
/// knows nothing of any op. Tests, the `gradproof` command and the site all run or read these
/// checks, so there is exactly one definition of what "verified" means for each formula.
#pragma once

#include "gradproof/check/results.hpp"
#include "gradproof/check/step_sweep.hpp"
#include "gradproof/harness/op.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <utility>
#include <string>
#include <vector>

namespace gradproof::catalog {

/// One derived formula.
struct Formula {
  std::string id;     ///< `<op>.<term>`, e.g. `bn.dvar_dmu`
  std::string op;     ///< op family, e.g. `bn`
  std::string title;  ///< one line, e.g. "∂σ²/∂μ = 0 at the batch mean"
};

/// One check: a named procedure that produces result rows for one formula.
struct Check {
  std::string formula;  ///< the formula id it verifies (also its test label)
  std::string name;     ///< test name, `<op>/<group>/<what_it_shows>`
  std::function<std::vector<check::ResultRow>()> run;  ///< runs the check; rows carry the verdict
};

/// A negative-control table for one op.
struct Ablation {
  std::string op;                                         ///< op family
  std::function<std::vector<check::AblationRow>()> run;  ///< runs every drop/flip
  std::string summary;                                    ///< what the table shows, in a few lines
  /// For a table made by the harness: its terms and those derived to be zero. The test runner
  /// then makes its test (`<op>/negative_controls/table_is_as_derived`); the older tables have
  /// hand-written tests.
  std::vector<std::string> terms{}, zero_terms{};
};

/// The error-against-step measurement of one op: one representative gradient entry, float64.
struct Sweep {
  std::string op;                             ///< op family
  std::function<check::StepSweep()> run;      ///< runs the sweep
};

/// A refused input of one op (made into a test by the test runner).
struct BadInputCase {
  std::string op;
  harness::BadInput bad;
};

/// A `*_into` call of one op that must allocate nothing (made into a test of the allocation binary).
struct IntoCase {
  std::string op;
  harness::IntoCase into;
};

/// \brief One problem of an op as plain float64 data, for an oracle outside the catalog (libtorch,
/// tests/torch/oracle.test.cpp): the inputs of \f$y = \mathrm{op}(\text{inputs}; \text{options})\f$,
/// the weights \f$w\f$ of \f$L = \langle w, y\rangle\f$, our float64 gradients of \f$L\f$ from both
/// backward passes, and the gradient of \f$L\f$ recomputed in long double. The oracle needs only the
/// op's forward; it knows nothing else of the op.
struct PlainProblem {
  std::string op{};                  ///< the op's id, e.g. `rms`
  std::string describe{};            ///< what the problem is, for the notes of its rows
  std::vector<std::string> names{};  ///< the differentiable inputs, `x` first (gradient `<op>.d<name>`)
  std::vector<TensorD> inputs;       ///< their values, in `names` order
  /// The op's options with PyTorch's names (`eps`, `num_groups`, ...); shapes are given by their
  /// number of trailing axes (`normalized_ndim`).
  std::vector<std::pair<std::string, double>> options;
  /// Non-differentiable tensor arguments (class-index targets, embedding indices, a dropout
  /// mask), from the declaration's optional `constants(p)`; integers are held as exact doubles.
  std::vector<std::pair<std::string, TensorD>> constants;
  TensorD w;                         ///< the loss weights, shape of `y`
  std::vector<TensorD> staged, fused;     ///< our float64 gradients of L, one per input
  std::vector<Eigen::VectorXd> exact;     ///< the long-double gradients of L (complex step), one per input
  std::vector<double> scale;              ///< per input: the magnitude of the terms of its gradient
  /// The option `name`. \throws std::invalid_argument if the problem has none of that name.
  double option(const std::string& name) const {
    for (const auto& [k, v] : options)
      if (k == name) return v;
    throw std::invalid_argument("PlainProblem of " + op + ": no option '" + name + "'");
  }
  /// The constant tensor `name`. \throws std::invalid_argument if the problem has none of that name.
  const TensorD& constant(const std::string& name) const {
    for (const auto& [k, v] : constants)
      if (k == name) return v;
    throw std::invalid_argument("PlainProblem of " + op + ": no constant '" + name + "'");
  }
  /// Whether the problem has the option `name`.
  bool has(const std::string& name) const {
    for (const auto& kv : options)
      if (kv.first == name) return true;
    return false;
  }
};

/// The plain problems of one op (made on demand: the long-double gradients take a moment).
struct PlainProblems {
  std::string op;
  std::vector<std::string> inputs;  ///< the names of its differentiable inputs, `x` first
  std::function<std::vector<PlainProblem>()> make;
};

/// An array given from outside that is not differentiated (a target, indices, a mask), with
/// whether it was stored as integers (an op such as cross_entropy reads class indices from an
/// integer array and class probabilities from a floating-point one).
struct UserArray {
  TensorD values;        ///< the values, row-major, exact in float64
  bool integer = false;  ///< stored as int32 or int64
};

/// \brief Arrays given from outside (`gradproof check`): the op's differentiable inputs in
/// `inputs()` order, the upstream gradient, the other arrays it reads and the options the user
/// set (PyTorch's names, their text as given: numbers, or words such as `reduction`'s `sum`).
struct UserArrays {
  std::vector<TensorD> inputs;  ///< `x` first, then the parameters
  TensorD dy;                   ///< the upstream gradient, shape of `y`
  std::map<std::string, UserArray> arrays;                   ///< the other arrays given, by name
  std::vector<std::pair<std::string, std::string>> options;  ///< only those given
};

/// gradproof's float64 gradients on user arrays, with the scales of their terms.
struct UserGradients {
  TensorD y;                   ///< the forward output, float64
  std::vector<TensorD> grads;  ///< one per input (fused backward, float64)
  std::vector<double> scale;   ///< per input: the magnitude of the terms of its gradient
  std::string describe;        ///< what the problem is
};

/// A declared op that `gradproof check` can recompute on user arrays (the declaration's optional
/// `from_arrays(arrays)`): the names of its inputs, other arrays and options come from the
/// declaration, so a new declared op needs no code in the command.
struct FromArrays {
  std::string op;
  std::vector<std::string> inputs;   ///< differentiable inputs, `x` first
  std::vector<std::string> options;  ///< `check_options()`, else the option names of `options(p)`
  std::vector<std::string> arrays;   ///< `check_arrays()`: the other arrays it reads, if any
  std::function<UserGradients(const UserArrays&)> run;
};

/// One op family as the list of ops (`catalog/ops.def`) names it.
struct OpEntry {
  std::string id;      ///< formula-id prefix and top-level test suite, e.g. `rms`
  std::string page;    ///< its derivation page, `derivations/<page>.md`
  std::string header;  ///< its public header
  std::string title;   ///< e.g. "RMS normalization"
};

/// The list of ops, in the order of `catalog/ops.def`.
const std::vector<OpEntry>& ops();

/// Everything one op family contributes to the catalog.
/// \brief A finding of a fuzz target (FuzzTarget): a fused backward that disagrees with the staged
/// one, a bad input that was accepted, or an exception other than InvalidArgument. The libFuzzer
/// harness (fuzz/ops.cpp) turns it into a crash report.
class FuzzFinding : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// \brief The fuzz target of a declared op, made from its declaration by harness::register_op():
/// `run(data, size)` decodes a problem from the fuzz input and checks it (harness/fuzz.hpp says
/// how). Returns normally when every check holds or the op refused the input with
/// InvalidArgument; \throws FuzzFinding otherwise.
struct FuzzTarget {
  std::string op;
  std::function<void(const std::uint8_t* data, std::size_t size, std::int64_t max_values)> run;
};

struct Registry {
  std::vector<Formula> formulas;
  std::vector<Check> checks;
  std::vector<Ablation> ablations;
  std::vector<Sweep> sweeps;
  std::vector<BadInputCase> bad_inputs;
  std::vector<IntoCase> into_cases;
  std::vector<PlainProblems> plain;  ///< each declared op's problems as plain data
  std::vector<FromArrays> from_arrays;  ///< the declared ops `gradproof check` recomputes
  std::vector<FuzzTarget> fuzz;  ///< one per declared op (fuzz/ops.cpp)
};

/// The whole catalog (built once, on first use).
const Registry& registry();

/// Formulas of one op family, or of all when `op` is empty.
std::vector<Formula> formulas(const std::string& op = "");

/// Checks of one op family, or of all when `op` is empty.
std::vector<Check> checks(const std::string& op = "");

/// Runs the negative controls of `op`.
/// \throws std::invalid_argument if the op has no ablation table.
std::vector<check::AblationRow> ablate(const std::string& op);

/// What the negative-control table of `op` shows (printed under it by `gradproof ablate`).
/// \throws std::invalid_argument if the op has no ablation table.
std::string ablation_summary(const std::string& op);

/// Runs the error-against-step sweep of every op, in catalog order.
std::vector<check::StepSweep> step_sweeps();

/// Adds batch normalization (`bn.*`) to a registry.
void register_batchnorm(Registry& r);

/// Adds the normalization family with a mean to a registry: the general core over a set
/// (`norm.*`), layer norm (`ln.*`), group norm (`gn.*`) and instance norm (`in.*`).
void register_normalization(Registry& r);

/// Adds RMS normalization (`rms.*`) to a registry.
void register_rmsnorm(Registry& r);

/// Adds the linear layer (`linear.*`) to a registry.
void register_linear(Registry& r);

/// Adds the matrix product (`matmul.*`) to a registry.
void register_matmul(Registry& r);

/// Adds the embedding lookup (`embedding.*`) to a registry.
void register_embedding(Registry& r);

}  // namespace gradproof::catalog
