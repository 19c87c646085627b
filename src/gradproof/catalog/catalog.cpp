#include "gradproof/catalog/catalog.hpp"

#include <stdexcept>

namespace gradproof::catalog {

const Registry& registry() {
  static const Registry r = [] {
    Registry built;
    register_batchnorm(built);
    register_normalization(built);
    register_rmsnorm(built);
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
