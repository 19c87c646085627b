// gradproof: list the formula catalog, run its checks, print the negative-control table, and
// merge the result parts of a test run into results.json.
#include "gradproof/catalog/catalog.hpp"
#include "gradproof/cli/check.hpp"
#include "gradproof/cli/teach.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#ifndef GRADPROOF_BUILD_NAME
#define GRADPROOF_BUILD_NAME "unknown"
#endif

namespace {

using namespace gradproof;
namespace fs = std::filesystem;

constexpr const char* kUsage =
    "usage: gradproof <command> [options]\n"
    "\n"
    "commands:\n"
    "  list                         formula ids with their titles\n"
    "  verify [--op OP]... [--json FILE]\n"
    "                               run the catalog's checks, print a table (and write JSON);\n"
    "                               --op may be repeated (the checks of every op given, each\n"
    "                               once); without it, every op. FILE is opened before any\n"
    "                               check runs\n"
    "  ablate OP                    the negative-control table of an op\n"
    "  collect PARTS_DIR OUT.json   merge a test run's result parts into results.json\n"
    "  sweep OUT.json               error against step size of every op's oracles (float64)\n"
    "  check OP --x X.npy --dy DY.npy --dx DX.npy [--gamma G.npy --dgamma DG.npy ...]\n"
    "        [--eps V] [--training|--eval] [--json FILE]\n"
    "                               your framework's gradients (.npy) against gradproof's,\n"
    "                               recomputed in float64 on your inputs; the tolerance follows\n"
    "                               the dtype of your arrays; a wrong dx of the normalizations\n"
    "                               is diagnosed (which path of the derivation is wrong)\n"
    "  vectors OP DIR               known-answer test vectors: inputs, dy, y and gradients,\n"
    "                               float64 and float32, as .npy with DIR/manifest.json\n"
    "  exercise OP DIR [--lang cpp|python] [--gradproof-dir PKG]\n"
    "                               a student workspace: one stub per chain-rule term of the\n"
    "                               op's staged backward (signature, shapes, formula id, link)\n"
    "  grade DIR [--json FILE] [--gradproof-dir PKG]\n"
    "                               builds and runs the student's terms against the verified\n"
    "                               ones, term by term, and says which are wrong and how\n"
    "\n"
    "exit status:\n"
    "  0  success: every check passed, every negative control behaved as derived, every row\n"
    "     collected passed\n"
    "  1  the command ran, and a check failed (verify), a negative control did not behave as\n"
    "     derived (ablate), a collected row had failed (collect), an oracle exceeded its\n"
    "     float64 tolerance at the chosen step (sweep), a gradient failed (check), or a\n"
    "     solution is short of full marks (grade)\n"
    "  2  usage or I/O error: unknown command or option, missing or repeated option value,\n"
    "     unknown op, no result parts, an output that cannot be written (nothing is reported\n"
    "     as written unless every byte was)\n";

// The usage, then the ops of the list of ops (catalog/ops.def) that OP may name.
std::string usage() {
  std::ostringstream out;
  out << kUsage << "\nops (OP):\n";
  for (const auto& op : catalog::ops()) out << "  " << std::left << std::setw(29) << op.id << op.title << '\n';
  out << "\ncheck OP: the arrays and options of each op\n" << cli::check_usage();
  out << "\nexercise OP: the ops with a lesson: " << cli::exercise_usage() << "\n";
  return out.str();
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// results.json: build description, the catalog, the rows and the negative controls.
void write_results(std::ostream& out, const std::vector<catalog::Formula>& formulas,
                   const std::vector<std::string>& rows_json, const std::vector<std::string>& ablation_json) {
  out << "{\n\"schema\": 1,\n\"preset\": ";
  check::json::string(out, GRADPROOF_BUILD_NAME);
  out << ",\n\"generated_utc\": ";
  check::json::string(out, utc_now());
  out << ",\n\"compiler\": ";
  check::json::string(out, std::string("GNU ") + __VERSION__);
  out << ",\n\"formulas\": [";
  for (std::size_t i = 0; i < formulas.size(); ++i) {
    out << (i ? ",\n  " : "\n  ") << "{\"id\": ";
    check::json::string(out, formulas[i].id);
    out << ", \"op\": ";
    check::json::string(out, formulas[i].op);
    out << ", \"title\": ";
    check::json::string(out, formulas[i].title);
    out << "}";
  }
  const auto array = [&out](const char* key, const std::vector<std::string>& items) {
    out << "\n],\n\"" << key << "\": [";
    for (std::size_t i = 0; i < items.size(); ++i) out << (i ? ",\n  " : "\n  ") << items[i];
  };
  array("rows", rows_json);
  array("ablation", ablation_json);
  out << "\n]\n}\n";
}

template <class Row>
std::string to_json(const Row& r) {
  std::ostringstream s;
  check::write_json(s, r);
  return s.str();
}

int cmd_list() {
  for (const auto& f : catalog::formulas()) std::cout << std::left << std::setw(20) << f.id << f.title << '\n';
  return 0;
}

std::string fmt(double v) {
  std::ostringstream s;
  s << std::setprecision(2) << std::scientific << v;
  return s.str();
}

// Closes `out` (flushing it) and reports whether every byte written to it arrived: a full disk
// shows only when the buffer is flushed, after every `<<` has succeeded.
bool close_ok(std::ofstream& out) {
  out.close();
  return !out.fail();
}

int cmd_verify(const std::vector<std::string>& ops, const std::optional<std::string>& json_path) {
  std::vector<catalog::Check> checks;
  std::vector<catalog::Formula> formulas;
  for (const std::string& op : ops.empty() ? std::vector<std::string>{""} : ops) {
    auto mine = catalog::checks(op);
    if (mine.empty()) {
      std::cerr << "gradproof verify: no checks for op '" << op << "' (see `gradproof list`)\n";
      return 2;
    }
    checks.insert(checks.end(), mine.begin(), mine.end());
    const auto fs = catalog::formulas(op);
    formulas.insert(formulas.end(), fs.begin(), fs.end());
  }
  // Opened before the checks run (they take seconds to minutes), so that an unwritable path
  // fails at once.
  std::ofstream json;
  if (json_path) {
    json.open(*json_path);
    if (!json) {
      std::cerr << "gradproof verify: cannot open " << *json_path << " for writing\n";
      return 2;
    }
  }
  std::vector<check::ResultRow> rows;
  std::size_t failed = 0;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < checks.size(); ++i) {
    std::cerr << "\r[" << (i + 1) << "/" << checks.size() << "] " << std::left << std::setw(72) << checks[i].name
              << std::flush;
    for (auto& r : checks[i].run()) {
      failed += !r.passed;
      rows.push_back(std::move(r));
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << "\r" << std::string(90, ' ') << "\r";

  // One line per (formula, kind, oracle, dtype): the worst row of that group. The kind keeps
  // negative controls (whose large errors are the point) apart from the oracle checks.
  struct Group {
    std::size_t n = 0, failed = 0;
    double abs = 0, rel = 0;
  };
  std::map<std::tuple<std::string, std::string, std::string, std::string>, Group> groups;
  for (const auto& r : rows) {
    auto& g = groups[{r.formula, r.kind, r.oracle, r.dtype}];
    ++g.n;
    g.failed += !r.passed;
    g.abs = std::max(g.abs, r.max_abs_err);
    g.rel = std::max(g.rel, r.max_rel_err);
  }
  std::cout << std::left << std::setw(18) << "formula" << std::setw(18) << "kind" << std::setw(14) << "oracle"
            << std::setw(9) << "dtype" << std::right << std::setw(6) << "rows" << std::setw(11) << "max abs"
            << std::setw(11) << "max rel" << "  verdict\n";
  for (const auto& [key, g] : groups) {
    const auto& [formula, kind, oracle, dtype] = key;
    std::cout << std::left << std::setw(18) << formula << std::setw(18) << kind << std::setw(14) << oracle
              << std::setw(9) << dtype << std::right << std::setw(6) << g.n << std::setw(11) << fmt(g.abs)
              << std::setw(11) << fmt(g.rel) << "  "
              << (g.failed ? "FAIL (" + std::to_string(g.failed) + ")" : std::string("pass")) << '\n';
  }
  std::cout << rows.size() << " rows from " << checks.size() << " checks in " << std::fixed << std::setprecision(1)
            << secs << " s: " << (rows.size() - failed) << " passed, " << failed << " failed\n";
  for (const auto& r : rows)
    if (!r.passed) std::cout << check::describe(r) << '\n';

  if (json_path) {
    std::vector<std::string> rj, aj;
    for (const auto& r : rows) rj.push_back(to_json(r));
    write_results(json, formulas, rj, aj);
    if (!close_ok(json)) {
      std::cerr << "gradproof verify: cannot write " << *json_path << '\n';
      return 2;
    }
  }
  return failed ? 1 : 0;
}

int cmd_ablate(const std::string& op) {
  const auto table = catalog::ablate(op);
  std::cout << "Negative controls for " << op
            << ": each term of the staged backward dropped (x0) or sign-flipped (x-1), checked against the\n"
               "complex-step gradient of L = <w, y>.\n\n";
  std::cout << std::left << std::setw(16) << "term" << std::setw(8) << "change" << std::right << std::setw(12)
            << "max abs err" << std::setw(12) << "rel err" << "  " << std::left << std::setw(10) << "caught"
            << std::setw(10) << "expected" << "verdict\n";
  bool ok = true;
  for (const auto& r : table) {
    ok = ok && r.passed;
    std::cout << std::left << std::setw(16) << r.term << std::setw(8) << r.change << std::right << std::setw(12)
              << fmt(r.max_abs_err) << std::setw(12) << fmt(r.max_rel_err) << "  " << std::left << std::setw(10)
              << (r.caught ? "yes" : "no") << std::setw(10) << (r.expected_caught ? "yes" : "no")
              << (r.passed ? "as derived" : "UNEXPECTED") << '\n';
  }
  const std::string summary = catalog::ablation_summary(op);
  if (!summary.empty()) std::cout << '\n' << summary << '\n';
  return ok ? 0 : 1;
}

// The error-against-step sweeps, one JSON object per op: the data behind the step policy's plot.
int cmd_sweep(const fs::path& out_path) {
  const auto sweeps = catalog::step_sweeps();
  if (out_path.has_parent_path()) fs::create_directories(out_path.parent_path());
  std::ofstream out(out_path);
  if (!out) {
    std::cerr << "gradproof sweep: cannot open " << out_path.string() << " for writing\n";
    return 2;
  }
  out << "{\n\"schema\": 1,\n\"generated_utc\": ";
  check::json::string(out, utc_now());
  out << ",\n\"sweeps\": [";
  for (std::size_t i = 0; i < sweeps.size(); ++i) {
    out << (i ? ",\n  " : "\n  ");
    check::write_json(out, sweeps[i]);
  }
  out << "\n]\n}\n";
  if (!close_ok(out)) {
    std::cerr << "gradproof sweep: cannot write " << out_path.string() << '\n';
    return 2;
  }
  // What the plots are for: at the steps StepPolicy picks, each oracle's error of the entry is
  // within the relative tolerance the policy grants that oracle in float64 (the sweep fails otherwise).
  bool ok = !sweeps.empty();
  for (const auto& s : sweeps) {
    const auto rtol = [](check::Oracle o) { return check::tolerance_policy("float64", o, 0.0).rtol; };
    const bool fine = s.central_at_policy <= rtol(check::Oracle::central) &&
                      s.richardson_at_policy <= rtol(check::Oracle::richardson) &&
                      s.complex_step <= rtol(check::Oracle::complex_step) && s.dual <= rtol(check::Oracle::dual);
    ok = ok && fine;
    std::cout << std::left << std::setw(6) << s.op << "central " << fmt(s.central_at_policy) << " at h = "
              << fmt(s.h_central) << ", richardson " << fmt(s.richardson_at_policy) << " at h = "
              << fmt(s.h_richardson) << ", complex step " << fmt(s.complex_step) << ", dual " << fmt(s.dual)
              << (fine ? "" : "  EXCEEDS the float64 tolerance policy") << '\n';
  }
  return ok ? 0 : 1;
}

// Parts are JSON lines written by the test suites: "R {row}" or "A {ablation row}".
int cmd_collect(const fs::path& parts, const fs::path& out_path) {
  std::vector<std::string> rows, ablation;
  std::vector<fs::path> files;
  if (fs::is_directory(parts))
    for (const auto& e : fs::directory_iterator(parts))
      if (e.path().extension() == ".jsonl") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::cerr << "gradproof collect: no result parts (*.jsonl) in " << parts << "; did the test suites run?\n";
    return 2;
  }
  std::size_t failed = 0;
  for (const auto& f : files) {
    std::ifstream in(f);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("R ", 0) == 0) {
        rows.push_back(line.substr(2));
        failed += line.find("\"passed\":false") != std::string::npos;
      } else if (line.rfind("A ", 0) == 0) {
        ablation.push_back(line.substr(2));
      } else if (!line.empty()) {
        std::cerr << "gradproof collect: unreadable line in " << f << ": " << line.substr(0, 80) << '\n';
        return 2;
      }
    }
  }
  // A bare file name has no parent to create (and create_directories("") throws).
  if (out_path.has_parent_path()) fs::create_directories(out_path.parent_path());
  std::ofstream out(out_path);
  if (!out) {
    std::cerr << "gradproof collect: cannot open " << out_path.string() << " for writing\n";
    return 2;
  }
  write_results(out, catalog::formulas(), rows, ablation);
  if (!close_ok(out)) {
    std::cerr << "gradproof collect: cannot write " << out_path.string() << '\n';
    return 2;
  }
  std::cout << "wrote " << out_path.string() << ": " << rows.size() << " result rows (" << failed << " failed), "
            << ablation.size() << " negative controls, " << catalog::formulas().size() << " formulas\n";
  return failed ? 1 : 0;
}

int usage_error(const std::string& message) {
  std::cerr << "gradproof " << message << "\n\n" << usage();
  return 2;
}

// `verify [--op OP]... [--json FILE]`. A value that starts with "--" is taken for the next
// option, not for a value: `--op --json f` reports the missing op rather than running op "--json".
int verify_main(const std::vector<std::string>& args) {
  std::vector<std::string> ops;
  std::optional<std::string> json;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a != "--op" && a != "--json") return usage_error("verify: unknown option '" + a + "'");
    if (i + 1 == args.size() || args[i + 1].empty() || args[i + 1].rfind("--", 0) == 0) {
      return usage_error("verify: " + a + " needs a value");
    }
    const std::string& value = args[++i];
    if (a == "--op") {
      if (std::find(ops.begin(), ops.end(), value) == ops.end()) ops.push_back(value);  // each op once
    } else if (json) {
      return usage_error("verify: --json given more than once ('" + *json + "', then '" + value + "')");
    } else {
      json = value;
    }
  }
  return cmd_verify(ops, json);
}

int run(const std::vector<std::string>& args) {
  if (args.empty()) return usage_error("needs a command");
  const std::string& command = args[0];
  if (command == "-h" || command == "--help") {
    std::cout << usage();
    return 0;
  }
  if (command == "list") return args.size() == 1 ? cmd_list() : usage_error("list: takes no arguments");
  if (command == "verify") return verify_main(args);
  if (command == "ablate") return args.size() == 2 ? cmd_ablate(args[1]) : usage_error("ablate: needs exactly one OP");
  if (command == "collect") {
    return args.size() == 3 ? cmd_collect(args[1], args[2]) : usage_error("collect: needs PARTS_DIR and OUT.json");
  }
  if (command == "sweep") return args.size() == 2 ? cmd_sweep(args[1]) : usage_error("sweep: needs OUT.json");
  if (command == "check" || command == "vectors" || command == "exercise" || command == "grade") {
    try {
      const std::vector<std::string> rest(args.begin() + 1, args.end());
      if (command == "exercise") return cli::exercise_main(rest);
      if (command == "grade") return cli::grade_main(rest);
      return command == "check" ? cli::check_main(rest) : cli::vectors_main(rest);
    } catch (const cli::UsageError& e) {
      return usage_error(e.what());
    }
  }
  return usage_error("unknown command '" + command + "'");
}

}  // namespace

int main(int argc, char** argv) {
  int status = 2;
  try {
    status = run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "gradproof: " << e.what() << '\n';
    return 2;
  }
  // Standard output is a write too (`gradproof list > /dev/full`): a report lost is an error.
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "gradproof: cannot write to standard output\n";
    return 2;
  }
  return status;
}
