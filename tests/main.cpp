// The test runner: Boost.Test with the catalog's checks registered as test cases, each labelled
// with its formula id, and every result row written out for results.json.
#include "gradproof/catalog/catalog.hpp"
#include "support/record.hpp"

#include <boost/test/tree/traverse.hpp>
#include <boost/test/tree/visitor.hpp>
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>

namespace {

namespace utf = boost::unit_test;

void run_check(const gradproof::catalog::Check& chk) {
  const auto rows = chk.run();
  BOOST_TEST_REQUIRE(!rows.empty(), "check " << chk.name << " produced no result rows");
  for (const auto& r : rows) {
    gradproof::testing::record(r);
    BOOST_TEST(r.passed, gradproof::check::describe(r));
  }
}

// Finds or creates the suite `name` under `parent`.
utf::test_suite& suite(utf::test_suite& parent, const std::string& name) {
  const utf::test_unit_id id = parent.get(name);
  if (id != utf::INV_TEST_UNIT_ID) return utf::framework::get<utf::test_suite>(id);
  auto* s = new utf::test_suite(name, __FILE__, __LINE__);  // owned by the framework
  parent.add(s);
  return *s;
}

// The negative-control table of an op declared through the harness: every row as derived, each
// term caught except those derived to be zero, which must change nothing.
void run_ablation(const gradproof::catalog::Ablation& a) {
  const auto table = a.run();
  BOOST_TEST_REQUIRE(table.size() == 2 * a.terms.size(), "a drop and a flip row per term of " << a.op);
  for (const auto& row : table) {
    gradproof::testing::record(row);
    BOOST_TEST(row.passed, row.term << " " << row.change << ": caught=" << row.caught
                                    << " expected=" << row.expected_caught << " — " << row.note);
    const bool zero = std::find(a.zero_terms.begin(), a.zero_terms.end(), row.term) != a.zero_terms.end();
    if (zero) BOOST_TEST(!row.caught, "removing " << row.term << " must change nothing — " << row.note);
    else BOOST_TEST(row.caught, row.term << " " << row.change << " must be caught");
  }
}

// A refused input: InvalidArgument, with a message that names the argument and the shapes.
void run_bad_input(const gradproof::harness::BadInput& b) {
  try {
    b.call();
  } catch (const gradproof::InvalidArgument& e) {
    const std::string what = e.what();
    for (const auto& frag : b.expect) BOOST_TEST(what.find(frag) != std::string::npos, "'" << what << "' lacks '" << frag << "'");
    return;
  }
  BOOST_ERROR(b.name << ": no InvalidArgument thrown");
}

// Registers every catalog check as a test case at its path, labelled with its formula id, and the
// tests the harness asks for: each declared op's negative-control table and refused inputs.
bool init_unit_test() {
  for (const auto& chk : gradproof::catalog::checks()) {
    utf::test_suite* parent = &utf::framework::master_test_suite();
    std::stringstream path(chk.name);
    std::string part, leaf;
    std::vector<std::string> parts;
    while (std::getline(path, part, '/')) parts.push_back(part);
    leaf = parts.back();
    parts.pop_back();
    for (const auto& p : parts) parent = &suite(*parent, p);
    auto* tc = utf::make_test_case([chk] { run_check(chk); }, leaf, __FILE__, __LINE__);
    tc->add_label(chk.formula);
    parent->add(tc);
  }
  const auto& reg = gradproof::catalog::registry();
  for (const auto& a : reg.ablations) {
    if (a.terms.empty()) continue;  // a table with hand-written tests
    auto& s = suite(suite(utf::framework::master_test_suite(), a.op), "negative_controls");
    auto* tc = utf::make_test_case([&a] { run_ablation(a); }, "table_is_as_derived", __FILE__, __LINE__);
    for (const auto& t : a.terms) tc->add_label(t);
    s.add(tc);
  }
  for (const auto& b : reg.bad_inputs) {
    auto& s = suite(suite(utf::framework::master_test_suite(), b.op), "bad_input");
    auto* tc = utf::make_test_case([&b] { run_bad_input(b.bad); }, b.bad.name, __FILE__, __LINE__);
    tc->add_label(b.bad.formula);
    s.add(tc);
  }
  return true;
}

// `--gradproof-expect-suites "a b c"`: fails unless the top-level suites are exactly these, so that
// ctest (which runs one process per suite) cannot silently miss a suite.
int expect_suites(const std::string& expected_list) {
  init_unit_test();
  std::set<std::string> expected, actual;
  std::stringstream in(expected_list);
  for (std::string s; in >> s;) expected.insert(s);
  // Auto-registered suites are already in the master suite; the catalog's were added above.
  struct TopLevel : utf::test_tree_visitor {
    std::set<std::string>* names = nullptr;
    bool in_master = false;
    void visit(const utf::test_case& tc) override { names->insert(tc.p_name); }
    bool test_suite_start(const utf::test_suite& ts) override {
      if (!in_master) return in_master = true;  // the master suite itself: descend one level
      names->insert(ts.p_name);
      return false;
    }
  } visitor;
  visitor.names = &actual;
  utf::traverse_test_tree(utf::framework::master_test_suite(), visitor, true);
  if (expected == actual) {
    std::cout << "all " << actual.size() << " top-level suites are registered with ctest\n";
    return 0;
  }
  std::cerr << "top-level suites differ from the ctest list.\n  ctest:";
  for (const auto& s : expected) std::cerr << ' ' << s;
  std::cerr << "\n  binary:";
  for (const auto& s : actual) std::cerr << ' ' << s;
  std::cerr << '\n';
  return 1;
}

}  // namespace

int main(int argc, char* argv[]) {
  if (argc == 3 && std::strcmp(argv[1], "--gradproof-expect-suites") == 0) return expect_suites(argv[2]);
  const int status = utf::unit_test_main(&init_unit_test, argc, argv);
  if (const char* part = std::getenv("GRADPROOF_RESULTS_PART")) gradproof::testing::write_part(part);
  return status;
}
