// The comparisons that this build does not have: CMake compiles libtorch.cpp / onednn.cpp
// only when the package is found, and defines GRADPROOF_BENCH_LIBTORCH / _ONEDNN then.
#include "bench.hpp"

namespace gradproof::bench {

#if !defined(GRADPROOF_BENCH_LIBTORCH)
void libtorch_set_threads(int) {}
std::string libtorch_version() { return {}; }
std::vector<Case> libtorch_batchnorm(const BnPtr&) { return {}; }
std::vector<Case> libtorch_rownorm(const RowNormPtr&) { return {}; }
std::vector<Case> libtorch_layer(const LayerPtr&) { return {}; }
#endif

#if !defined(GRADPROOF_BENCH_ONEDNN)
std::string onednn_version() { return {}; }
std::vector<Case> onednn_batchnorm(const BnPtr&) { return {}; }
std::vector<Case> onednn_layer(const LayerPtr&) { return {}; }
#endif

}  // namespace gradproof::bench
