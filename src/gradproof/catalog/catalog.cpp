#include "gradproof/catalog/catalog.hpp"

#include <algorithm>
#include <stdexcept>

namespace gradproof::catalog {

// The registrars of the list of ops (a new op's needs no other declaration).
#define GRADPROOF_OP(id, registrar, page, header, title) void registrar(Registry&);
#include "gradproof/catalog/ops.def"
#undef GRADPROOF_OP

const std::vector<OpEntry>& ops() {
  static const std::vector<OpEntry> all = {
#define GRADPROOF_OP(id, registrar, page, header, title) {#id, page, header, title},
#include "gradproof/catalog/ops.def"
#undef GRADPROOF_OP
  };
  return all;
}

const Registry& registry() {
  static const Registry r = [] {
    Registry built;
    std::vector<void (*)(Registry&)> done;  // a registrar that adds several ops runs once
    const auto run = [&](void (*registrar)(Registry&)) {
      if (std::find(done.begin(), done.end(), registrar) != done.end()) return;
      done.push_back(registrar);
      registrar(built);
    };
#define GRADPROOF_OP(id, registrar, page, header, title) run(&registrar);
#include "gradproof/catalog/ops.def"
#undef GRADPROOF_OP
    return built;
  }();
  return r;
}

std::vector<Formula> formulas(const std::string& op) {
  std::vector<Formula> out;
  for (const auto& f : registry().formulas)
    if (op.empty() || f.op == op) out.push_back(f);
  return out;
}

std::vector<Check> checks(const std::string& op) {
  std::vector<Check> out;
  for (const auto& c : registry().checks)
    if (op.empty() || c.formula.rfind(op + ".", 0) == 0) out.push_back(c);
  return out;
}

std::vector<check::AblationRow> ablate(const std::string& op) {
  for (const auto& a : registry().ablations)
    if (a.op == op) return a.run();
  throw std::invalid_argument("ablate: no negative-control table for op '" + op + "'");
}

std::string ablation_summary(const std::string& op) {
  for (const auto& a : registry().ablations)
    if (a.op == op) return a.summary;
  throw std::invalid_argument("ablate: no negative-control table for op '" + op + "'");
}

std::vector<check::StepSweep> step_sweeps() {
  std::vector<check::StepSweep> out;
  for (const auto& s : registry().sweeps) {
    out.push_back(s.run());
    out.back().op = s.op;
  }
  return out;
}

}  // namespace gradproof::catalog
