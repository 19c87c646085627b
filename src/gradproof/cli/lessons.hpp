// The teaching kit's lessons: for each op, the chain-rule terms of its staged backward as
// functions a student writes (`gradproof exercise`), the verified values they are graded against
// and the mistakes the grader can name (`gradproof grade`).
//
// A lesson is driven by the staged backward it mirrors: every term has the formula id of the step
// in ops/ that computes it, and the lesson's reference of each term is checked against that
// step's value (the staged trace) on every problem it grades, so a lesson cannot drift from the
// verified code without the grader refusing to grade.
#pragma once

#include "gradproof/tensor.hpp"

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace gradproof::cli::teach {

using Args = std::vector<const TensorD*>;

// One summand of a term: its name in the feedback ("the σ²-path term ∂L/∂σ² · ∂σ²/∂μ") and, when
// the derivation shows it is zero at the op's own point, why (the grader then says so).
struct Part {
  std::string name;
  std::string zero_why;
};

// A mistake the grader recognises by value: what it is, and the wrong formula it computes.
struct Mistake {
  std::string says;
  std::function<TensorD(const Args&)> compute;
};

// One chain-rule term: the function the student writes.
struct Term {
  std::string fn;                    // function name: dl_dvar
  std::string id;                    // formula id: bn.dl_dvar
  std::string math;                  // what it is called in the feedback: ∂L/∂σ²
  std::vector<std::string> args;     // the quantities it takes (given ones or earlier terms)
  std::string out_shape;             // "(C)": the shape of the result, in the lesson's letters
  std::string hint;                  // what it is, in one line (not the formula)
  std::vector<Part> parts;           // the summands, in the order `reference` returns them
  std::string zero_why;              // the whole term is zero at the op's point: why
  // The summands of the term (their sum is the term) on the arguments; with `mag`, the same
  // summands with every value that is added replaced by its magnitude (the tolerance scale).
  std::function<std::vector<TensorD>(const Args&, bool mag)> reference;
  std::vector<Mistake> mistakes;
  bool fused = false;                // a collapsed (fused) form, graded but not chained
};

// A quantity the grader gives the student's functions: an input of the op or a value its forward
// pass saved.
struct Given {
  std::string name, shape, what;
  bool positive = false;  // probes keep it positive (a sum of exponentials, 1/σ)
  bool fixed = false;     // probes keep it as it is (a mask, the targets)
};

// One graded problem: the given quantities, and the verified values from ops/ (the staged trace
// by term function name, the op's gradients by name).
struct Problem {
  std::map<std::string, TensorD> given;
  std::map<std::string, TensorD> verified;
  std::string describe;
};

struct Lesson {
  std::string op, title, page;        // page: derivations/<page>.md
  std::string letters;                // the shape letters and their values in the graded problem
  std::vector<Given> given;
  std::vector<Term> terms;            // in the order of the staged backward
  std::vector<std::string> gradients; // the terms that are the op's gradients (dx, dgamma, ...)
  std::function<Problem()> make;
};

// The lessons, in the order of the list of ops.
const std::vector<Lesson>& lessons();
const Lesson* find_lesson(const std::string& op);

// The sum of a term's parts.
TensorD sum_parts(const std::vector<TensorD>& parts);

// The site link of a formula id: derivations/<page>.html#<anchor> (MyST's anchor of the label).
std::string link(const Lesson& l, const std::string& id);

}  // namespace gradproof::cli::teach
