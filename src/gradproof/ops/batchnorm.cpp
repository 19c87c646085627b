// The float and double instantiations of batch normalization, compiled once into the library.
#include "gradproof/ops/batchnorm.hpp"

namespace gradproof::ops {
GRADPROOF_BATCHNORM_INSTANTIATE(, float)
GRADPROOF_BATCHNORM_INSTANTIATE(, double)
}  // namespace gradproof::ops
