// `gradproof exercise` and `gradproof grade` (see teach.hpp and lessons.hpp).
//
// The grader talks to the student's code through files: it writes the arguments of every call
// as .npy and a list of calls (`load NAME FILE`, `call TERM OUT ARG...`, `save NAME FILE`); a
// runner that the workspace holds (runner.py, or runner.cpp built with the student's terms.cpp)
// makes the calls and writes each result as .npy, or NAME.npy.err with what went wrong. The same
// protocol serves both languages, and the student's process needs no gradproof beyond its .npy
// files (Python: NumPy only).
#include "gradproof/cli/teach.hpp"

#include "gradproof/check/compare.hpp"
#include "gradproof/check/results.hpp"
#include "gradproof/cli/check.hpp"
#include "gradproof/cli/lessons.hpp"
#include "gradproof/io/npy.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace gradproof::cli {
namespace {

namespace fs = std::filesystem;
using teach::Lesson;
using teach::Term;

const char* kManifest = "gradproof-exercise.txt";

std::string g4(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

std::string shape_text(const Shape& s) {
  std::string o = "(";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + (s.size() == 1 ? ",)" : ")");
}

std::string index_text(const Shape& shape, Index flat) {
  std::vector<std::int64_t> sh(shape.begin(), shape.end());
  const auto idx = check::unravel(flat, sh);
  std::string o = "(";
  for (std::size_t i = 0; i < idx.size(); ++i) o += (i ? ", " : "") + std::to_string(idx[i]);
  return o + (idx.size() == 1 ? ",)" : ")");
}

// Code points, for wrapping text with ∂ and σ at 98 columns.
std::size_t columns(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// `text` as lines of at most `width` columns, the first after `first`, the others indented.
std::string wrap(const std::string& first, const std::string& text, std::size_t indent, std::size_t width = 98) {
  std::string out = first, line;
  std::size_t used = columns(first);
  std::istringstream words(text);
  bool line_start = true;
  for (std::string w; words >> w;) {
    if (!line_start && used + 1 + columns(w) > width) {
      out += "\n" + std::string(indent, ' ');
      used = indent;
      line_start = true;
    }
    if (!line_start) out += ' ', ++used;
    out += w;
    used += columns(w);
    line_start = false;
  }
  return out + "\n";
}

const std::string& term_shape(const Lesson& l, const std::string& name) {
  for (const auto& g : l.given)
    if (g.name == name) return g.shape;
  for (const auto& t : l.terms)
    if (t.fn == name) return t.out_shape;
  throw std::logic_error("lesson " + l.op + ": no quantity '" + name + "'");
}

bool is_given(const Lesson& l, const std::string& name) {
  return std::any_of(l.given.begin(), l.given.end(), [&](const teach::Given& g) { return g.name == name; });
}

const teach::Given* given_of(const Lesson& l, const std::string& name) {
  for (const auto& g : l.given)
    if (g.name == name) return &g;
  return nullptr;
}

std::string signature_shapes(const Lesson& l, const Term& t) {
  std::string s;
  for (std::size_t k = 0; k < t.args.size(); ++k) s += (k ? ", " : "") + t.args[k] + " " + term_shape(l, t.args[k]);
  return s + "  ->  " + t.out_shape;
}

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream f(p);
  f << text;
  f.close();
  if (f.fail()) throw UsageError("cannot write " + p.string());
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Writes `text` unless the file already holds it (so that a rebuild does not recompile it).
void refresh_file(const fs::path& p, const std::string& text) {
  if (!fs::exists(p) || read_file(p) != text) write_file(p, text);
}

// ---- the workspace ---------------------------------------------------------------------------

std::string intro(const Lesson& l, const std::string& comment) {
  std::ostringstream o;
  o << comment << " gradproof exercise: " << l.title << " (" << l.op << "), backward pass term by term.\n"
    << comment << " Shapes: " << l.letters << " in the graded problem; your code must work for any.\n"
    << comment << " Each function is one chain-rule term of the staged backward; the grader calls it on\n"
    << comment << " the verified values of its arguments, so each term is marked on its own.\n"
    << comment << " The derivation of every term is on the gradproof site (./build.sh site builds it):\n"
    << comment << " the links below are relative to it.\n"
    << comment << "\n"
    << comment << " Given by the grader:\n";
  for (const auto& g : l.given) o << comment << "   " << g.name << " " << g.shape << ": " << g.what << "\n";
  return o.str();
}

std::string term_comment(const Lesson& l, const Term& t, const std::string& c) {
  std::ostringstream o;
  o << c << " " << t.id << ": " << t.math << (t.fused ? " (the collapsed form, graded on its own)" : "") << "\n"
    << c << "   " << t.hint << "\n"
    << c << "   " << signature_shapes(l, t) << "\n"
    << c << "   derivation: " << teach::link(l, t.id) << "\n";
  return o.str();
}

std::string cpp_params(const Term& t) {
  std::string s;
  for (std::size_t k = 0; k < t.args.size(); ++k) s += (k ? ", " : "") + std::string("const TensorD& ") + t.args[k];
  return s;
}

std::string cpp_header(const Lesson& l) {
  std::ostringstream o;
  o << intro(l, "//") << "// Written by `gradproof exercise`; `gradproof grade` rewrites it. Write your code in terms.cpp.\n"
    << "#pragma once\n\n#include <gradproof/tensor.hpp>\n\n#include <stdexcept>\n\nnamespace exercise {\n\n"
    << "using gradproof::Index;\nusing gradproof::TensorD;  // row-major; t.shape(), t[i], TensorD({R, C}) is zeros\n\n"
    << "// Thrown by a stub that is not written yet.\n"
    << "struct NotWritten : std::logic_error {\n  using std::logic_error::logic_error;\n};\n\n"
    << "// Element (i, j) of a rank-2 tensor.\n"
    << "inline double& at(TensorD& t, Index i, Index j) { return t[i * t.shape()[1] + j]; }\n"
    << "inline double at(const TensorD& t, Index i, Index j) { return t[i * t.shape()[1] + j]; }\n\n";
  for (const auto& t : l.terms) o << term_comment(l, t, "//") << "TensorD " << t.fn << "(" << cpp_params(t) << ");\n\n";
  o << "}  // namespace exercise\n";
  return o.str();
}

std::string cpp_terms(const Lesson& l) {
  std::ostringstream o;
  o << intro(l, "//") << "//\n// Replace each `throw NotWritten` with the term. `gradproof grade DIR` marks them.\n"
    << "#include \"terms.hpp\"\n\n#include <cmath>\n\nnamespace exercise {\n\n";
  for (const auto& t : l.terms)
    o << term_comment(l, t, "//") << "TensorD " << t.fn << "(" << cpp_params(t) << ") {\n  throw NotWritten(\"" << t.id
      << "\");\n}\n\n";
  o << "}  // namespace exercise\n";
  return o.str();
}

std::string cpp_runner(const Lesson& l) {
  std::ostringstream o;
  o << "// The grader's runner (written by `gradproof exercise`, rewritten by `gradproof grade`): it makes\n"
       "// the calls listed in a file on .npy arguments and saves the results. Do not edit.\n"
       "#include \"terms.hpp\"\n\n#include <gradproof/io/npy.hpp>\n\n"
       "#include <exception>\n#include <fstream>\n#include <iostream>\n#include <map>\n#include <sstream>\n"
       "#include <string>\n#include <vector>\n\nnamespace {\n\nusing exercise::TensorD;\n\n"
       "TensorD call(const std::string& fn, const std::vector<const TensorD*>& a) {\n";
  for (const auto& t : l.terms) {
    o << "  if (fn == \"" << t.fn << "\") return exercise::" << t.fn << "(";
    for (std::size_t k = 0; k < t.args.size(); ++k) o << (k ? ", " : "") << "*a.at(" << k << ")";
    o << ");\n";
  }
  o << "  throw std::runtime_error(\"no term named \" + fn);\n}\n\n}  // namespace\n\n"
       "int main(int argc, char** argv) {\n"
       "  if (argc != 2) {\n    std::cerr << \"usage: runner CALLS\\n\";\n    return 2;\n  }\n"
       "  std::map<std::string, TensorD> env;\n  std::map<std::string, std::string> failed;\n"
       "  std::ifstream calls(argv[1]);\n"
       "  for (std::string line; std::getline(calls, line);) {\n"
       "    std::istringstream in(line);\n    std::string op;\n    if (!(in >> op)) continue;\n"
       "    if (op == \"load\") {\n      std::string name, file;\n      in >> name >> file;\n"
       "      env[name] = gradproof::io::read_npy(file).values;\n"
       "    } else if (op == \"call\") {\n      std::string fn, out, arg;\n      in >> fn >> out;\n"
       "      std::vector<const TensorD*> args;\n      std::string bad;\n"
       "      while (in >> arg) {\n        if (failed.count(arg)) {\n          if (bad.empty()) bad = arg;\n        } else {\n          args.push_back(&env.at(arg));\n        }\n      }\n"
              "      if (!bad.empty()) {\n        failed[out] = \"not run: its argument \" + bad + \" failed\";\n        continue;\n      }\n"
       "      try {\n        env[out] = call(fn, args);\n"
       "      } catch (const exercise::NotWritten&) {\n        failed[out] = \"not written yet\";\n"
       "      } catch (const std::exception& e) {\n        failed[out] = std::string(\"threw: \") + e.what();\n      }\n"
       "    } else if (op == \"save\") {\n      std::string name, file;\n      in >> name >> file;\n"
       "      if (failed.count(name)) {\n        std::ofstream(file + \".err\") << failed[name];\n"
       "      } else {\n        try {\n          gradproof::io::write_npy(file, env.at(name));\n"
       "        } catch (const std::exception& e) {\n          std::ofstream(file + \".err\") << \"could not be saved: \" << e.what();\n"
       "        }\n      }\n    }\n  }\n  return 0;\n}\n";
  return o.str();
}

std::string cmake_project(const Lesson& l) {
  return "# The student project of `gradproof exercise " + l.op +
         "`: your terms.cpp and the grader's runner, linked with gradproof.\n"
         "# `gradproof grade` configures it with -Dgradproof_DIR=<the library's package directory>.\n"
         "cmake_minimum_required(VERSION 3.25)\nproject(gradproof_exercise_" + l.op +
         " LANGUAGES CXX)\n\nfind_package(gradproof 0.1 REQUIRED)\n\n"
         "add_executable(runner runner.cpp terms.cpp)\ntarget_link_libraries(runner PRIVATE gradproof::gradproof)\n";
}

std::string py_params(const Term& t) {
  std::string s;
  for (std::size_t k = 0; k < t.args.size(); ++k) s += (k ? ", " : "") + t.args[k];
  return s;
}

std::string py_terms(const Lesson& l) {
  std::ostringstream o;
  o << intro(l, "#") << "#\n# NumPy arrays in, a NumPy array out (float64). Replace each `raise NotImplementedError`.\n"
    << "# `gradproof grade DIR` marks them.\nimport numpy as np\n\n";
  for (const auto& t : l.terms) {
    o << "\ndef " << t.fn << "(" << py_params(t) << "):\n    \"\"\"" << t.id << ": " << t.math
      << (t.fused ? " (the collapsed form, graded on its own)" : "") << "\n\n    " << t.hint << "\n    "
      << signature_shapes(l, t) << "\n    derivation: " << teach::link(l, t.id) << "\n    \"\"\"\n"
      << "    raise NotImplementedError(\"" << t.id << "\")\n\n";
  }
  return o.str();
}

const char* kPyRunner = R"(# The grader's runner (written by `gradproof grade`): it makes the calls listed in a file on .npy
# arguments and saves the results. usage: runner.py CALLS WORKSPACE
import sys

import numpy as np

sys.path.insert(0, sys.argv[2])
sys.dont_write_bytecode = True
import terms  # noqa: E402

env, failed = {}, {}
for line in open(sys.argv[1]):
    w = line.split()
    if not w:
        continue
    if w[0] == "load":
        env[w[1]] = np.load(w[2])
    elif w[0] == "call":
        fn, out, args = w[1], w[2], w[3:]
        bad = [a for a in args if a in failed]
        if bad:
            failed[out] = "not run: its argument %s failed" % bad[0]
            continue
        try:
            env[out] = np.asarray(getattr(terms, fn)(*[env[a].copy() for a in args]), dtype=np.float64)
        except NotImplementedError:
            failed[out] = "not written yet"
        except Exception as e:  # noqa: BLE001 (the student's error, reported)
            failed[out] = "threw: %s: %s" % (type(e).__name__, e)
    elif w[0] == "save":
        if w[1] in failed:
            with open(w[2] + ".err", "w") as f:
                f.write(failed[w[1]])
        else:
            np.save(w[2], env[w[1]])
)";

// The package directory of the gradproof this command belongs to: installed (bin/../lib/cmake)
// or its build tree (where the command is built next to gradproofConfig.cmake).
std::optional<fs::path> own_package_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return std::nullopt;
  const fs::path dir = exe.parent_path();
  for (const fs::path& p : {dir.parent_path() / "lib" / "cmake" / "gradproof", dir})
    if (fs::exists(p / "gradproofConfig.cmake") && fs::exists(p / "gradproofTargets.cmake")) return fs::canonical(p);
  return std::nullopt;
}

struct Manifest {
  std::string op, lang, gradproof_dir;
};

Manifest read_manifest(const fs::path& dir) {
  const fs::path p = dir / kManifest;
  if (!fs::exists(p)) throw UsageError("grade: " + dir.string() + " is not an exercise workspace (no " + kManifest + "; `gradproof exercise OP DIR` writes one)");
  Manifest m;
  std::istringstream in(read_file(p));
  for (std::string k, v; in >> k && std::getline(in >> std::ws, v);) {
    if (k == "op") m.op = v;
    if (k == "lang") m.lang = v;
    if (k == "gradproof_dir") m.gradproof_dir = v;
  }
  if (!teach::find_lesson(m.op)) throw UsageError("grade: " + p.string() + " names op '" + m.op + "', which has no lesson");
  if (m.lang != "cpp" && m.lang != "python") throw UsageError("grade: " + p.string() + " names language '" + m.lang + "'; expected cpp or python");
  return m;
}

std::string lesson_ops() {
  std::string s;
  for (const auto& l : teach::lessons()) s += (s.empty() ? "" : ", ") + l.op;
  return s;
}

// ---- grading ----------------------------------------------------------------------------------

double norm2(const TensorD& t) {
  double s = 0;
  for (Index i = 0; i < t.size(); ++i) s += t[i] * t[i];
  return std::sqrt(s);
}

double dot(const TensorD& a, const TensorD& b) {
  double s = 0;
  for (Index i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// The perturbation of a value for the probe point.
TensorD perturb(const TensorD& v, bool positive, std::uint64_t& state) {
  const auto normal = [&state] {
    const auto u = [&state] {
      std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return (static_cast<double>((z ^ (z >> 31)) >> 11) + 0.5) / 9007199254740992.0;
    };
    const double a = u(), b = u();
    return std::sqrt(-2 * std::log(a)) * std::cos(6.283185307179586 * b);
  };
  const double spread = 0.5 * (norm2(v) / std::sqrt(static_cast<double>(std::max<Index>(v.size(), 1))) + 0.1);
  TensorD o(v.shape());
  for (Index i = 0; i < v.size(); ++i) o[i] = positive ? v[i] * std::exp(0.3 * normal()) : v[i] + spread * normal();
  return o;
}

// What the grader found of one evaluation of one term.
struct Finding {
  std::string kind;  // right, not_written, error, shape, transposed, nonfinite, should_be_zero, mistake,
                     // missing, factor, part_missing, part_sign, part_factor, wrong
  std::string text;
  int part = -1;     // the part it names
  double max_abs_err = 0;
};

std::string factor_text(double a) {
  const double r = std::round(a);
  if (std::abs(a - r) < 1e-6 * std::max(1.0, std::abs(a))) {
    if (r == -1) return "−1";
    return (r < 0 ? "−" : "") + std::to_string(static_cast<long long>(std::abs(r)));
  }
  for (int d = 2; d <= 16; ++d) {
    const double n = std::round(a * d);
    if (std::abs(a * d - n) < 1e-6 * std::max(1.0, std::abs(a * d)))
      return (n < 0 ? "−" : "") + std::to_string(static_cast<long long>(std::abs(n))) + "/" + std::to_string(d);
  }
  return g4(a);
}

Finding classify(const Term& t, const TensorD& yours, const TensorD& ref, const std::vector<TensorD>& parts, double scale,
                 const teach::Args& args) {
  Finding f;
  const auto close = [](const TensorD& a, const TensorD& b, double tol) {
    if (a.shape() != b.shape()) return false;
    double e = 0;
    for (Index i = 0; i < a.size(); ++i) e = std::max(e, std::abs(a[i] - b[i]));
    return e <= tol;
  };
  const double loose = 1e-6 * std::max(scale, 1e-300);  // an exact algebraic mistake, up to rounding
  // The transpose of a rank-2 value.
  const auto transpose = [](const TensorD& a) {
    TensorD o({a.shape()[1], a.shape()[0]});
    for (Index i = 0; i < a.shape()[0]; ++i)
      for (Index j = 0; j < a.shape()[1]; ++j) o[j * a.shape()[0] + i] = a[i * a.shape()[1] + j];
    return o;
  };
  if (yours.shape() != ref.shape()) {
    if (yours.rank() == 2 && ref.rank() == 2 && close(transpose(yours), ref, loose)) {
      f.kind = "transposed";
      f.text = "transposed: yours is " + shape_text(yours.shape()) + ", the right value is its transpose " +
               shape_text(ref.shape()) + " (a gradient has the shape of what it is the gradient of)";
    } else {
      f.kind = "shape";
      f.text = "wrong shape: yours is " + shape_text(yours.shape()) + ", expected " + shape_text(ref.shape()) + " " + t.out_shape;
    }
    return f;
  }
  for (Index i = 0; i < yours.size(); ++i)
    if (!std::isfinite(yours[i])) {
      f.kind = "nonfinite";
      f.text = "not finite: yours is " + g4(yours[i]) + " at " + index_text(yours.shape(), i);
      return f;
    }
  const check::Comparison c = check::compare(yours.flat().matrix(), ref.flat().matrix(), check::framework_policy("float64", scale));
  f.max_abs_err = c.max_abs_err;
  if (c.passed) {
    f.kind = "right";
    return f;
  }
  const std::string worst = "largest error at " + index_text(ref.shape(), c.worst) + ": yours " + g4(c.analytic) +
                            ", expected " + g4(c.numeric);
  if (ref.rank() == 2 && ref.shape()[0] == ref.shape()[1] && close(transpose(yours), ref, loose)) {
    f.kind = "transposed";
    f.text = "transposed: yours is the transpose of the right value";
    return f;
  }
  for (const auto& m : t.mistakes)
    if (close(yours, m.compute(args), loose)) {
      f.kind = "mistake";
      f.text = m.says;
      return f;
    }
  const double nr = norm2(ref);
  if (nr <= c.tol.atol * std::sqrt(static_cast<double>(ref.size()))) {
    f.kind = "should_be_zero";
    f.text = "should be zero here, yours is not (" + worst + ")";
    return f;
  }
  const double alpha = dot(yours, ref) / (nr * nr);
  TensorD res(ref.shape());
  for (Index i = 0; i < ref.size(); ++i) res[i] = yours[i] - alpha * ref[i];
  if (norm2(res) <= 1e-6 * nr) {
    if (std::abs(alpha) < 1e-6) {
      f.kind = "missing";
      f.text = "missing: your function returns zero";
    } else {
      f.kind = "factor";
      f.text = "off by a factor " + factor_text(alpha) + (std::abs(alpha + 1) < 1e-6 ? " (a sign error)" : "") +
               ": yours is " + factor_text(alpha) + " × the right value";
    }
    return f;
  }
  for (std::size_t k = 0; k < parts.size() && parts.size() > 1; ++k) {
    const double np = norm2(parts[k]);
    if (np <= 1e-9 * nr) continue;
    TensorD diff(ref.shape());
    for (Index i = 0; i < ref.size(); ++i) diff[i] = yours[i] - ref[i];
    const double beta = 1 + dot(diff, parts[k]) / (np * np);
    double r2 = 0;
    for (Index i = 0; i < ref.size(); ++i) r2 += std::pow(diff[i] - (beta - 1) * parts[k][i], 2);
    if (std::sqrt(r2) > 1e-6 * std::max(nr, np)) continue;
    f.part = static_cast<int>(k);
    const std::string& name = t.parts[k].name;
    if (std::abs(beta) < 1e-6) {
      f.kind = "part_missing";
      f.text = name + " is missing";
    } else if (std::abs(beta + 1) < 1e-6) {
      f.kind = "part_sign";
      f.text = name + " has the wrong sign";
    } else {
      f.kind = "part_factor";
      f.text = name + " is off by a factor " + factor_text(beta);
    }
    return f;
  }
  f.kind = "wrong";
  f.text = "wrong (not a multiple of the right value, nor one of its summands dropped or scaled); " + worst;
  return f;
}

// One evaluation's result from the student's process: the value, or why there is none.
struct Got {
  std::optional<TensorD> value;
  std::string why;
};

Got got(const fs::path& file) {
  Got g;
  if (fs::exists(file)) {
    try {
      g.value = io::read_npy(file.string()).values;
    } catch (const std::exception& e) {
      g.why = std::string("unreadable result: ") + e.what();
    }
  } else if (fs::exists(fs::path(file.string() + ".err"))) {
    g.why = read_file(file.string() + ".err");
  } else {
    g.why = "no result (the runner stopped before this call)";
  }
  return g;
}

struct TermGrade {
  const Term* term = nullptr;
  std::string status;  // right, half, WRONG, todo, error
  double points = 0;
  std::string feedback;
  std::string link;
  Finding real, probe;
};

struct GradientGrade {
  std::string name, status, text;
  double max_abs_err = 0;
};

struct Report {
  const Lesson* lesson = nullptr;
  std::string lang, describe;
  bool built = true;           // the student's code built and ran
  std::string failure;         // "did not build" or "did not run"
  std::string build_log;
  std::vector<TermGrade> terms;
  std::vector<GradientGrade> gradients;
  double score = 0, max_score = 0;
  bool gradients_right() const {
    return !gradients.empty() && std::all_of(gradients.begin(), gradients.end(), [](const auto& g) { return g.status == "right"; });
  }
  bool full_marks() const { return built && score == max_score && gradients_right(); }
};

std::string quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

int run(const std::string& cmd, const fs::path& log) {
  const int rc = std::system((cmd + " > " + quote(log.string()) + " 2>&1").c_str());
  return rc == -1 ? -1 : WEXITSTATUS(rc);
}

// Builds the student's C++ project (configured once, in DIR/build) and returns the runner.
std::optional<fs::path> build_cpp(const fs::path& dir, const Manifest& m, const std::optional<std::string>& pkg, Report& rep) {
  const Lesson& l = *rep.lesson;
  refresh_file(dir / "terms.hpp", cpp_header(l));
  refresh_file(dir / "runner.cpp", cpp_runner(l));
  refresh_file(dir / "CMakeLists.txt", cmake_project(l));
  const fs::path build = dir / "build", log = dir / ".grade" / "build.log";
  if (!fs::exists(build / "CMakeCache.txt")) {
    std::string package = pkg ? *pkg : m.gradproof_dir;
    if (package.empty()) {
      const auto own = own_package_dir();
      if (!own) throw UsageError("grade: cannot find gradproof's CMake package; give --gradproof-dir DIR (the directory with gradproofConfig.cmake)");
      package = own->string();
    }
    const std::string gen = std::system("command -v ninja > /dev/null 2>&1") == 0 ? " -G Ninja" : "";
    if (run("cmake -S " + quote(dir.string()) + " -B " + quote(build.string()) + gen + " -Dgradproof_DIR=" + quote(package), log) != 0) {
      rep.built = false;
      rep.failure = "did not build";
      rep.build_log = read_file(log);
      fs::remove_all(build);  // configure again next time
      return std::nullopt;
    }
  }
  if (run("cmake --build " + quote(build.string()), log) != 0) {
    rep.built = false;
    rep.failure = "did not build";
    rep.build_log = read_file(log);
    return std::nullopt;
  }
  return build / "runner";
}

Report grade(const fs::path& dir, const std::optional<std::string>& pkg) {
  const Manifest m = read_manifest(dir);
  Report rep;
  rep.lesson = teach::find_lesson(m.op);
  rep.lang = m.lang;
  const Lesson& l = *rep.lesson;
  const teach::Problem P = l.make();
  rep.describe = P.describe;

  // The references at the op's point, each checked against the staged backward's value.
  std::map<std::string, TensorD> ref = P.given;
  std::map<std::string, std::vector<TensorD>> parts;
  std::map<std::string, double> scale;
  const auto args_of = [&](const Term& t, const std::map<std::string, TensorD>& env) {
    teach::Args a;
    for (const auto& n : t.args) a.push_back(&env.at(n));
    return a;
  };
  const auto magnitude = [](const std::vector<TensorD>& mag) {
    double s = 0;
    for (Index i = 0; i < mag[0].size(); ++i) {
      double e = 0;
      for (const auto& p : mag) e += std::abs(p[i]);
      s = std::max(s, e);
    }
    return s;
  };
  for (const auto& t : l.terms) {
    const auto a = args_of(t, ref);
    parts[t.fn] = t.reference(a, false);
    scale[t.fn] = magnitude(t.reference(a, true));
    TensorD r = teach::sum_parts(parts[t.fn]);
    const auto v = P.verified.find(t.fn);
    if (v == P.verified.end()) throw std::logic_error("lesson " + l.op + ": no verified value of " + t.fn);
    const auto c = check::compare(r.flat().matrix(), v->second.flat().matrix(), check::framework_policy("float64", scale[t.fn]));
    if (r.shape() != v->second.shape() || !c.passed)
      throw std::logic_error("lesson " + l.op + ": the reference of " + t.id + " disagrees with the staged backward of ops/ (error " + g4(c.max_abs_err) + "); refusing to grade");
    ref[t.fn] = std::move(r);
  }

  // The probe point: every argument moved, so that the terms that vanish at the op's point do not.
  std::uint64_t state = 0x70726f6265ull;
  std::map<std::string, std::vector<TensorD>> probe_args, probe_parts;
  std::map<std::string, double> probe_scale;
  for (const auto& t : l.terms) {
    for (const auto& n : t.args) {
      const teach::Given* g = given_of(l, n);
      probe_args[t.fn].push_back(g && g->fixed ? ref.at(n) : perturb(ref.at(n), g && g->positive, state));
    }
    teach::Args a;
    for (const auto& v : probe_args[t.fn]) a.push_back(&v);
    probe_parts[t.fn] = t.reference(a, false);
    probe_scale[t.fn] = magnitude(t.reference(a, true));
  }

  // The calls.
  const fs::path work = dir / ".grade";
  fs::remove_all(work);
  fs::create_directories(work / "in");
  fs::create_directories(work / "out");
  std::ostringstream calls;
  std::set<std::string> written;
  const auto put = [&](const std::string& name, const TensorD& v) {
    if (!written.insert(name).second) return;
    const fs::path f = work / "in" / (name + ".npy");
    io::write_npy(f.string(), v);
    calls << "load " << name << " " << f.string() << "\n";
  };
  for (const auto& [n, v] : P.given) put(n, v);
  const auto out_file = [&](const std::string& name) { return work / "out" / (name + ".npy"); };
  for (const auto& t : l.terms) {
    std::string args;
    for (const auto& n : t.args) {
      if (!is_given(l, n)) put("ref." + n, ref.at(n));
      args += " " + (is_given(l, n) ? n : "ref." + n);
    }
    calls << "call " << t.fn << " real." << t.fn << args << "\nsave real." << t.fn << " " << out_file("real." + t.fn).string() << "\n";
  }
  for (const auto& t : l.terms) {
    std::string args;
    for (std::size_t k = 0; k < t.args.size(); ++k) {
      const std::string n = "probe." + t.fn + "." + std::to_string(k);
      put(n, probe_args[t.fn][k]);
      args += " " + n;
    }
    calls << "call " << t.fn << " probe." << t.fn << args << "\nsave probe." << t.fn << " " << out_file("probe." + t.fn).string() << "\n";
  }
  for (const auto& t : l.terms) {
    if (t.fused) continue;
    std::string args;
    for (const auto& n : t.args) args += " " + (is_given(l, n) ? n : "chain." + n);
    calls << "call " << t.fn << " chain." << t.fn << args << "\n";
  }
  for (const auto& g : l.gradients) calls << "save chain." << g << " " << out_file("chain." + g).string() << "\n";
  write_file(work / "calls.txt", calls.str());

  // Run the student's code.
  const fs::path log = work / "run.log";
  int rc = 0;
  if (m.lang == "python") {
    write_file(work / "runner.py", kPyRunner);
    rc = run("timeout 300 /usr/bin/python3 " + quote((work / "runner.py").string()) + " " + quote((work / "calls.txt").string()) +
                 " " + quote(fs::absolute(dir).string()),
             log);
  } else {
    const auto runner = build_cpp(dir, m, pkg, rep);
    if (!runner) {
      for (const auto& t : l.terms) rep.max_score += 1, (void)t;
      return rep;
    }
    rc = run("timeout 300 " + quote(runner->string()) + " " + quote((work / "calls.txt").string()), log);
  }
  // A process that failed before its first result (an import error, a crash): its log, once.
  if (rc != 0 && fs::is_empty(work / "out")) {
    rep.built = false;
    rep.failure = "did not run";
    rep.build_log = read_file(log);
    for (const auto& t : l.terms) rep.max_score += 1, (void)t;
    return rep;
  }
  const std::string run_log = read_file(log);

  // The gradients, chained from the student's own terms.
  for (const auto& g : l.gradients) {
    GradientGrade gg;
    gg.name = g;
    const Got v = got(out_file("chain." + g));
    if (!v.value) {
      gg.status = "none";
      gg.text = v.why;
    } else if (v.value->shape() != P.verified.at(g).shape()) {
      gg.status = "WRONG";
      gg.text = "shape " + shape_text(v.value->shape()) + ", expected " + shape_text(P.verified.at(g).shape());
    } else {
      const auto c = check::compare(v.value->flat().matrix(), P.verified.at(g).flat().matrix(),
                                    check::framework_policy("float64", scale.at(g)));
      gg.max_abs_err = c.max_abs_err;
      gg.status = c.passed ? "right" : "WRONG";
      if (!c.passed)
        gg.text = "largest error at " + index_text(v.value->shape(), c.worst) + ": yours " + g4(c.analytic) + ", verified " + g4(c.numeric);
    }
    rep.gradients.push_back(gg);
  }
  // The op's first gradient (dx) is the one a vanishing term could have spoilt.
  const std::string first = l.gradients.front();
  const bool grads_right = rep.gradients.front().status == "right";

  for (const auto& t : l.terms) {
    TermGrade tg;
    tg.term = &t;
    tg.link = teach::link(l, t.id);
    rep.max_score += 1;
    const Got real = got(out_file("real." + t.fn)), probe = got(out_file("probe." + t.fn));
    if (!real.value) {
      tg.status = real.why == "not written yet" ? "todo" : "error";
      tg.feedback = real.why == "not written yet" ? "not written yet" : real.why;
      if (real.why.rfind("no result", 0) == 0 && rc != 0) tg.feedback += "; the runner failed: " + run_log.substr(0, 400);
      rep.terms.push_back(tg);
      continue;
    }
    tg.real = classify(t, *real.value, ref.at(t.fn), parts.at(t.fn), scale.at(t.fn), args_of(t, ref));
    if (tg.real.kind != "right") {
      tg.status = "WRONG";
      tg.feedback = tg.real.text;
      if (tg.real.kind == "should_be_zero" && !t.zero_why.empty()) tg.feedback += "; it is zero because " + t.zero_why;
      rep.terms.push_back(tg);
      continue;
    }
    if (!probe.value) {
      tg.status = "half";
      tg.points = 0.5;
      tg.feedback = "right here, but on other arguments it gave no result: " + probe.why;
      rep.terms.push_back(tg);
      continue;
    }
    teach::Args pa;
    for (const auto& v : probe_args.at(t.fn)) pa.push_back(&v);
    tg.probe = classify(t, *probe.value, teach::sum_parts(probe_parts.at(t.fn)), probe_parts.at(t.fn), probe_scale.at(t.fn), pa);
    if (tg.probe.kind == "right") {
      tg.status = "right";
      tg.points = 1;
      rep.terms.push_back(tg);
      continue;
    }
    // Right at the op's point, wrong elsewhere: a summand (or the term) that vanishes here.
    std::string why = t.zero_why;
    if (tg.probe.part >= 0) why = t.parts[static_cast<std::size_t>(tg.probe.part)].zero_why;
    tg.status = "half";
    tg.points = 0.5;
    tg.feedback = "right here, not in general: " + tg.probe.text;
    if (!why.empty()) {
      std::string why_link = tg.link;
      for (const auto& u : l.terms)
        if (u.zero_why == why) why_link = teach::link(l, u.id);
      tg.feedback += "; here it is zero (" + why + "), so " +
                     (grads_right ? "your " + first + " is right anyway" : "it is not what makes your " + first + " wrong") +
                     "; see why: " + why_link;
    } else {
      tg.feedback += " (on other arguments than this problem's)";
    }
    rep.terms.push_back(tg);
  }
  for (const auto& tg : rep.terms) rep.score += tg.points;
  return rep;
}

void print(std::ostream& out, const Report& r) {
  const Lesson& l = *r.lesson;
  out << "gradproof grade: " << l.op << ", " << l.title << ", " << (r.lang == "cpp" ? "C++" : "Python") << "\n"
      << "problem: " << r.describe << "\n"
      << wrap("", "each term is run on the verified values of its arguments, at this problem's point and at a "
                  "probe point (other arguments, where the terms that vanish here do not)", 0);
  if (!r.built) {
    out << "\nyour code " << r.failure << ":\n" << r.build_log.substr(r.build_log.size() > 3000 ? r.build_log.size() - 3000 : 0)
        << "\nscore: 0 of " << r.max_score << " terms (it " << r.failure << ")\n";
    return;
  }
  out << "\n";
  std::size_t w = 0;
  for (const auto& t : r.terms) w = std::max(w, t.term->id.size());
  for (const auto& t : r.terms) {
    const std::string head = "  " + t.status + std::string(7 - t.status.size(), ' ') + t.term->id +
                             std::string(w + 2 - t.term->id.size(), ' ');
    if (t.status == "right") {
      out << head << t.term->math << "\n";
      continue;
    }
    out << wrap(head, t.term->math + ": " + t.feedback, columns(head));
    if (t.feedback.find("see why") == std::string::npos && t.status != "todo")
      out << std::string(columns(head), ' ') << "see " << t.link << "\n";
  }
  out << "\nyour terms chained into the op's gradients:\n";
  for (const auto& g : r.gradients)
    out << wrap("  " + g.name + std::string(g.name.size() < 8 ? 8 - g.name.size() : 1, ' ') + g.status +
                    (g.text.empty() ? "" : ": "),
                g.text, 10);
  std::size_t wrong = 0;
  for (const auto& g : r.gradients) wrong += g.status != "right";
  char score[32];
  std::snprintf(score, sizeof score, "%g of %g", r.score, r.max_score);
  out << "\nscore: " << score << " terms; gradients: "
      << (wrong ? std::to_string(wrong) + " of " + std::to_string(r.gradients.size()) + " not right" : std::string("all right"))
      << (r.full_marks() ? " (full marks)" : "") << "\n";
}

void write_json(std::ostream& out, const Report& r) {
  using check::json::number;
  using check::json::string;
  out << "{\"op\": ";
  string(out, r.lesson->op);
  out << ", \"lang\": ";
  string(out, r.lang);
  out << ", \"ran\": " << (r.built ? "true" : "false") << ", \"failure\": ";
  string(out, r.failure);
  out << ", \"score\": ";
  number(out, r.score);
  out << ", \"max_score\": ";
  number(out, r.max_score);
  out << ", \"full_marks\": " << (r.full_marks() ? "true" : "false") << ", \"terms\": [";
  for (std::size_t i = 0; i < r.terms.size(); ++i) {
    const auto& t = r.terms[i];
    out << (i ? ", " : "") << "{\"id\": ";
    string(out, t.term->id);
    out << ", \"function\": ";
    string(out, t.term->fn);
    out << ", \"status\": ";
    string(out, t.status);
    out << ", \"points\": ";
    number(out, t.points);
    out << ", \"kind\": ";
    string(out, t.real.kind == "right" && !t.probe.kind.empty() ? t.probe.kind : t.real.kind);
    out << ", \"feedback\": ";
    string(out, t.feedback);
    out << ", \"link\": ";
    string(out, t.link);
    out << "}";
  }
  out << "], \"gradients\": [";
  for (std::size_t i = 0; i < r.gradients.size(); ++i) {
    const auto& g = r.gradients[i];
    out << (i ? ", " : "") << "{\"name\": ";
    string(out, g.name);
    out << ", \"status\": ";
    string(out, g.status);
    out << ", \"max_abs_err\": ";
    number(out, g.max_abs_err);
    out << ", \"text\": ";
    string(out, g.text);
    out << "}";
  }
  out << "]";
  if (!r.built) {
    out << ", \"log\": ";
    string(out, r.build_log);
  }
  out << "}\n";
}

}  // namespace

std::string exercise_usage() { return lesson_ops(); }

int exercise_main(const std::vector<std::string>& words) {
  std::vector<std::string> pos;
  std::string lang = "cpp";
  std::optional<std::string> pkg;
  for (std::size_t i = 0; i < words.size(); ++i) {
    if (words[i] == "--lang" || words[i] == "--gradproof-dir") {
      if (i + 1 == words.size()) throw UsageError("exercise: " + words[i] + " needs a value");
      const std::string& v = words[i + 1];
      if (words[i] == "--lang") lang = v;
      else pkg = v;
      ++i;
    } else if (words[i].rfind("--", 0) == 0) {
      throw UsageError("exercise: unknown option '" + words[i] + "'");
    } else {
      pos.push_back(words[i]);
    }
  }
  if (pos.size() != 2) throw UsageError("exercise: needs OP and DIR (exercise OP DIR [--lang cpp|python])");
  const Lesson* l = teach::find_lesson(pos[0]);
  if (!l) throw UsageError("exercise: no lesson for op '" + pos[0] + "' (lessons: " + lesson_ops() + ")");
  if (lang != "cpp" && lang != "python") throw UsageError("exercise: --lang must be cpp or python; got '" + lang + "'");
  const fs::path dir = pos[1];
  if (fs::exists(dir / kManifest)) throw UsageError("exercise: " + dir.string() + " already holds an exercise (" + kManifest + "); choose an empty directory");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw UsageError("exercise: cannot create " + dir.string() + ": " + ec.message());
  std::string package = pkg ? *pkg : "";
  if (lang == "cpp" && package.empty()) {
    const auto own = own_package_dir();
    if (own) package = own->string();
  }
  std::ostringstream man;
  man << "op " << l->op << "\nlang " << lang << "\n";
  if (!package.empty()) man << "gradproof_dir " << package << "\n";
  std::ostringstream readme;
  readme << "# Exercise: the backward pass of " << l->title << ", term by term\n\n"
         << "Write each function of `" << (lang == "cpp" ? "terms.cpp" : "terms.py")
         << "`: one chain-rule term of the staged backward each, with its formula id and the link to its "
            "derivation. Then run\n\n    gradproof grade " << dir.string()
         << "\n\nto have every term marked on its own (on the verified values of its arguments), and your "
            "terms chained into the op's gradients. `--json FILE` writes the marks for an autograder.\n";
  if (lang == "cpp") {
    write_file(dir / "terms.cpp", cpp_terms(*l));
    write_file(dir / "terms.hpp", cpp_header(*l));
    write_file(dir / "runner.cpp", cpp_runner(*l));
    write_file(dir / "CMakeLists.txt", cmake_project(*l));
    readme << "\nThe grader builds this CMake project in `build/` (configured once) with\n"
           << "`-Dgradproof_DIR=" << (package.empty() ? "<gradproof's package directory>" : package) << "`.\n";
  } else {
    write_file(dir / "terms.py", py_terms(*l));
    readme << "\nThe grader runs your file with /usr/bin/python3; NumPy is all it needs.\n";
  }
  write_file(dir / "README.md", readme.str());
  write_file(dir / kManifest, man.str());
  std::cout << "wrote the " << l->op << " exercise (" << l->terms.size() << " terms, " << (lang == "cpp" ? "C++" : "Python")
            << ") to " << dir.string() << "\n";
  return 0;
}

int grade_main(const std::vector<std::string>& words) {
  std::vector<std::string> pos;
  std::optional<std::string> json, pkg;
  for (std::size_t i = 0; i < words.size(); ++i) {
    if (words[i] == "--json" || words[i] == "--gradproof-dir") {
      if (i + 1 == words.size()) throw UsageError("grade: " + words[i] + " needs a value");
      const std::string& v = words[i + 1];
      if (words[i] == "--json") json = v;
      else pkg = v;
      ++i;
    } else if (words[i].rfind("--", 0) == 0) {
      throw UsageError("grade: unknown option '" + words[i] + "'");
    } else {
      pos.push_back(words[i]);
    }
  }
  if (pos.size() != 1) throw UsageError("grade: needs exactly one DIR (grade DIR [--json FILE])");
  std::ofstream js;
  if (json) {
    js.open(*json);
    if (!js) throw UsageError("grade: cannot open " + *json + " for writing");
  }
  const Report r = grade(pos[0], pkg);
  print(std::cout, r);
  if (json) {
    write_json(js, r);
    js.close();
    if (js.fail()) throw UsageError("grade: cannot write " + *json);
  }
  return r.full_marks() ? 0 : 1;
}

}  // namespace gradproof::cli
