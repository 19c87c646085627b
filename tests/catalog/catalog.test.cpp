// The catalog is consistent: every formula has checks, every check names a known formula.
#include "gradproof/catalog/catalog.hpp"

#include <boost/test/unit_test.hpp>

#include <set>
#include <string>

namespace catalog = gradproof::catalog;

namespace {
// `<op>.<term>`: lower-case letters, digits and `_`, with a dot after a non-empty op and a
// non-empty rest (which may hold further dots). Also the form the site's label scanner accepts.
bool is_formula_id(const std::string& id) {
  const auto dot = id.find('.');
  if (dot == 0 || dot == std::string::npos || dot + 1 == id.size()) return false;
  for (std::size_t i = 0; i < id.size(); ++i) {
    const char ch = id[i];
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || (ch == '.' && i > dot);
    if (!ok && i != dot) return false;
  }
  return true;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(catalog_rules)

BOOST_AUTO_TEST_CASE(every_formula_has_a_check_and_every_check_a_formula) {
  std::set<std::string> ids, checked, names;
  for (const auto& f : catalog::formulas()) {
    BOOST_TEST(is_formula_id(f.id), "formula id " << f.id << " is not <op>.<term>");
    BOOST_TEST(f.id.rfind(f.op + ".", 0) == 0u, "formula " << f.id << " does not start with its op " << f.op);
    BOOST_TEST(!f.title.empty());
    BOOST_TEST(ids.insert(f.id).second, "duplicate formula id " << f.id);
  }
  for (const auto& c : catalog::checks()) {
    BOOST_TEST(ids.count(c.formula) == 1u, "check " << c.name << " names unknown formula " << c.formula);
    BOOST_TEST(names.insert(c.name).second, "duplicate check name " << c.name);
    checked.insert(c.formula);
  }
  for (const auto& id : ids) BOOST_TEST(checked.count(id) == 1u, "formula " << id << " has no check");
}

BOOST_AUTO_TEST_CASE(formula_id_form_is_checked) {
  BOOST_TEST(is_formula_id("bn.dvar_dmu"));
  BOOST_TEST(is_formula_id("ln.dx.fused"));
  for (const char* bad : {"bn", ".dx", "bn.", "Bn.dx", "bn.d-x", "bn dx"}) BOOST_TEST(!is_formula_id(bad), bad);
}

BOOST_AUTO_TEST_CASE(unknown_ablation_op_is_an_error) {
  BOOST_CHECK_THROW(catalog::ablate("nope"), std::invalid_argument);
  BOOST_CHECK_THROW(catalog::ablation_summary("nope"), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(every_ablation_table_says_what_it_shows) {
  for (const auto& a : catalog::registry().ablations) {
    BOOST_TEST(!a.summary.empty(), "ablation table of " << a.op << " has no summary");
    BOOST_TEST(catalog::ablation_summary(a.op) == a.summary);
  }
}

BOOST_AUTO_TEST_SUITE_END()
