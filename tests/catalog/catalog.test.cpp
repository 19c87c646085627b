// The catalog is consistent: every formula has checks, every check names a known formula.
#include "gradproof/catalog/catalog.hpp"

#include <boost/test/unit_test.hpp>

#include <regex>
#include <set>

namespace catalog = gradproof::catalog;

BOOST_AUTO_TEST_SUITE(catalog_rules)

BOOST_AUTO_TEST_CASE(every_formula_has_a_check_and_every_check_a_formula) {
  std::set<std::string> ids, checked, names;
  const std::regex id_form("[a-z0-9_]+\\.[a-z0-9_.]+");
  for (const auto& f : catalog::formulas()) {
    BOOST_TEST(std::regex_match(f.id, id_form), "formula id " << f.id << " is not <op>.<term>");
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

BOOST_AUTO_TEST_CASE(unknown_ablation_op_is_an_error) {
  BOOST_CHECK_THROW(catalog::ablate("nope"), std::invalid_argument);
}

BOOST_AUTO_TEST_SUITE_END()
