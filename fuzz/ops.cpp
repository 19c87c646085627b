// libFuzzer harness of every declared op (src/gradproof/harness/fuzz.hpp says what the input
// holds and what is a finding): the first byte picks the op of the catalog's list, the second the
// thread count (1 to 3), the rest goes to the op's fuzz target, which its declaration gives it.
// A new op in catalog/ops.def is fuzzed here without any code of its own.
#include "fuzz.hpp"

#include "gradproof/catalog/catalog.hpp"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

using namespace gradproof;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& targets = catalog::registry().fuzz;
  if (size < 2 || targets.empty()) return 0;
  const catalog::FuzzTarget& t = targets[data[0] % targets.size()];
  parallel::set_threads(1 + data[1] % 3);
  fuzz::trace(t.op.c_str(), "declared", {});
  try {
    t.run(data + 2, size - 2, fuzz::max_values());
  } catch (const catalog::FuzzFinding& f) {
    fuzz::fail(f.what());
  } catch (const std::exception& e) {
    fuzz::fail(t.op + ": unexpected exception: " + e.what());
  }
  return 0;
}
