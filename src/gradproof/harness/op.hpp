/// \file
/// \brief The declaration of an op: the types a catalog declaration fills in, and what the
/// generic harness (harness/checks.hpp) asks of it. The C++ counterpart of PyTorch's OpInfo and
/// derivatives.yaml: one declaration says what is particular to an op, the harness makes every
/// check that is the same for all ops.
///
/// A declaration `D` is a struct with (the softmax declaration, `catalog/softmax.cpp`, is the
/// smallest complete one; `catalog/rmsnorm.cpp` one with a parameter):
///
/// | member | what it is |
/// |---|---|
/// | `op` | the formula-id prefix and first part of every test name (`"softmax"`) |
/// | `formulas()` | `harness::Formulas`: every formula id of the op with its title |
/// | `Case`, `cases()` | a sample case (has `.shape`); `harness::Cases<Case>`: Jacobian, projection, ablation, benchmark cases |
/// | `Problem`, `problem(case, seed)`, `seed(case)`, `benchmark_seed` | a sampled problem (has `.shape` and the loss weights `.w`) |
/// | `describe(p)` | what the problem is, for the notes of its rows |
/// | `inputs()` | `harness::Inputs`: the differentiable inputs, `x` first, then the parameters |
/// | `input(p, k)` | input `k` of the problem, float64 |
/// | `forward<S>(p, in)` | the forward on every oracle's scalar `S`, from the inputs `in` |
/// | `Prepared<T>`, `prepare<T>(p)` | the forward pass of the op in `T` = float/double, with its cache |
/// | `output(pr)` | `y` of a prepared forward |
/// | `backward(pr, dy, pass, terms)` | staged or fused backward: gradients of every input, in `inputs()` order |
/// | `Terms`, `ablation()` | the term scales of the staged backward; `harness::Ablation<Terms>` |
/// | `options(p)` (optional) | the op's options with PyTorch's names, for the libtorch oracle (`dim`, `eps`) |
/// | `from_arrays(arrays)` (optional) | a problem from user arrays (`catalog::UserArrays`: the inputs, `w` = `dy`, the other arrays, the options given as text; read with `support::UserInput`, PyTorch's names and defaults), for `gradproof check` |
/// | `check_options()`, `check_arrays()` (optional) | the options `check` takes (else the names of `options(p)`) and its other arrays (targets, indices, a mask) |
/// | `constants(p)` (optional) | non-differentiable tensor arguments (targets, indices, a mask), for the libtorch oracle |
/// | `reference(p, scale)` | the forward recomputed in long double; `scale` receives its magnitude |
/// | `jacobian_scale(p)`, `projection_scale(p, v, u)`, `dx_scale(p, dy)`, `param_scale(p, k)` | tolerance scales where terms cancel |
/// | `bad_inputs()`, `into_cases()` | refused inputs; the `*_into` calls that must allocate nothing |
/// | `extra(checks)` | term checks, properties, pitfalls: what stays per op |
#pragma once

#include "gradproof/tensor.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace gradproof::harness {

/// One formula of an op: its id `<op>.<term>` and a one-line title.
struct Formula {
  std::string id;
  std::string title;
};
using Formulas = std::vector<Formula>;

/// The sample cases of an op, each a `Case` with a `.shape` (and whatever else the op needs).
template <class Case>
struct Cases {
  std::vector<Case> jacobian;    ///< small: full Jacobians against every oracle
  std::vector<Case> projection;  ///< large: random projections \f$v^T J u\f$
  std::vector<Case> ablation;    ///< the negative controls run on these
  std::vector<Case> benchmark;   ///< the benchmark shapes: forward and staged = fused
};

/// Which backward pass.
enum class Pass { staged, fused };
inline const char* name(Pass p) { return p == Pass::staged ? "staged" : "fused"; }

/// One differentiable input: `x` (index 0) or a parameter.
struct Input {
  std::string name;  ///< `x`, `gamma`, ...: the gradient's formula is `<op>.d<name>`
  bool float32 = true;  ///< compare the float32 pass too
};
using Inputs = std::vector<Input>;

/// One term of the staged backward that the negative controls drop and flip.
template <class Terms>
struct Term {
  std::string id;               ///< its formula id
  double Terms::*scale;         ///< its knob
  bool zero = false;            ///< derived to be zero: dropping it must change nothing
};
template <class Terms>
using Ablation = std::vector<Term<Terms>>;

/// An input the op must refuse with InvalidArgument whose message contains every `expect`.
struct BadInput {
  std::string name;                 ///< the test's name, `<what>_is_refused`
  std::string formula;              ///< the formula of the entry point called (the test's label)
  std::function<void()> call;       ///< makes the call
  std::vector<std::string> expect;  ///< fragments of the message (the argument, the shapes)
};

/// A `*_into` call that must allocate nothing from its second call on.
struct IntoCase {
  std::string name;                                   ///< e.g. `softmax_backward_into_float`
  std::function<std::function<void()>()> make;        ///< allocates the buffers, returns the call
};

/// Seeds of the problems of each kind of check (added to the declaration's seed of a case).
enum Salt : std::uint64_t { oracle = 0, agreement = 2, forward = 5, projection = 7 };

}  // namespace gradproof::harness
