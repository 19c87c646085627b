// `gradproof check OP`: a framework's gradients, dumped as .npy, against gradproof's float64
// gradients on the same inputs; and `gradproof vectors OP DIR`, known-answer test vectors.
#pragma once

#include "gradproof/check/compare.hpp"
#include "gradproof/cli/diagnose.hpp"
#include "gradproof/io/npy.hpp"

#include <iosfwd>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace gradproof::cli {

// A bad command line or input file: exit status 2, the message printed with the usage.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The parsed command line of `check OP`: --name FILE arrays, --name VALUE options, flags.
struct CheckArgs {
  std::string op;
  std::map<std::string, std::string> values;  // option name without "--" → its value
  std::set<std::string> flags;                // --training, --eval
  std::optional<std::string> json;
  /// Arrays given in memory rather than as files (the Python module's `check`), by the same names.
  std::map<std::string, io::NpyArray> arrays;
  /// Name the arguments as Python keywords (`running_mean=`) rather than options (`--running-mean`).
  bool python = false;
};

// One compared gradient.
struct OutputCheck {
  std::string name;          // dx, dgamma, ...
  Shape shape;
  check::Comparison cmp;
  double scale = 0;          // the magnitude of the terms that cancel
  double fraction = 0;       // error / allowance at the worst element
  std::vector<std::int64_t> worst;
};

// The result of one `check`.
struct CheckReport {
  std::string op;
  std::string setting;       // what was recomputed: shape, mode, options
  std::string dtype;         // the dtype whose policy applies
  std::string dtype_reason;  // which arrays had which dtype
  std::vector<OutputCheck> outputs;
  std::optional<Diagnosis> diagnosis;
  std::string diagnosis_note;  // why there is none, when there is none
  bool passed() const;
};

// Runs `check` on parsed arguments. Throws UsageError (or InvalidArgument) for bad usage or input.
CheckReport run_check(const CheckArgs& args);

// The report as the command prints it, and as JSON.
void print_report(std::ostream& out, const CheckReport& r);
void write_report_json(std::ostream& out, const CheckReport& r);

// `check OP ...` from the words after "check": prints, writes JSON, returns the exit status.
int check_main(const std::vector<std::string>& words);

// `vectors OP DIR` from the words after "vectors".
int vectors_main(const std::vector<std::string>& words);

// The ops `check` knows, with the arrays and options each takes (for the usage text).
std::string check_usage();

}  // namespace gradproof::cli
