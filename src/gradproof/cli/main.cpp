// gradproof: list the formula catalog, run its checks, print the negative-control table, and
// merge the result parts of a test run into results.json.
#include "gradproof/catalog/catalog.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
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
    "  verify [--op OP] [--json FILE]\n"
    "                               run the catalog's checks, print a table (and write JSON)\n"
    "  ablate OP                    the negative-control table of an op\n"
    "  collect PARTS_DIR OUT.json   merge a test run's result parts into results.json\n";

// The usage, then the ops of the list of ops (catalog/ops.def) that OP may name.
std::string usage() {
  std::ostringstream out;
  out << kUsage << "\nops (OP):\n";
  for (const auto& op : catalog::ops()) out << "  " << std::left << std::setw(29) << op.id << op.title << '\n';
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

int cmd_verify(const std::string& op, const std::string& json_path) {
  const auto checks = catalog::checks(op);
  if (checks.empty()) {
    std::cerr << "gradproof verify: no checks for op '" << op << "' (see `gradproof list`)\n";
    return 2;
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

  if (!json_path.empty()) {
    std::vector<std::string> rj, aj;
    for (const auto& r : rows) rj.push_back(to_json(r));
    std::ofstream out(json_path);
    write_results(out, catalog::formulas(op), rj, aj);
    if (!out) {
      std::cerr << "gradproof verify: cannot write " << json_path << '\n';
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
  fs::create_directories(out_path.parent_path());
  std::ofstream out(out_path);
  write_results(out, catalog::formulas(), rows, ablation);
  if (!out) {
    std::cerr << "gradproof collect: cannot write " << out_path << '\n';
    return 2;
  }
  std::cout << "wrote " << out_path.string() << ": " << rows.size() << " result rows (" << failed << " failed), "
            << ablation.size() << " negative controls, " << catalog::formulas().size() << " formulas\n";
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.empty() || args[0] == "-h" || args[0] == "--help") {
      std::cout << usage();
      return args.empty() ? 2 : 0;
    }
    if (args[0] == "list" && args.size() == 1) return cmd_list();
    if (args[0] == "verify") {
      std::string op, json;
      for (std::size_t i = 1; i < args.size(); ++i) {
        if (args[i] == "--op" && i + 1 < args.size()) op = args[++i];
        else if (args[i] == "--json" && i + 1 < args.size()) json = args[++i];
        else {
          std::cerr << "gradproof verify: unknown option '" << args[i] << "'\n" << usage();
          return 2;
        }
      }
      return cmd_verify(op, json);
    }
    if (args[0] == "ablate" && args.size() == 2) return cmd_ablate(args[1]);
    if (args[0] == "collect" && args.size() == 3) return cmd_collect(args[1], args[2]);
    std::cerr << "gradproof: unknown command or wrong arguments: '" << args[0] << "'\n" << usage();
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "gradproof: " << e.what() << '\n';
    return 2;
  }
}
