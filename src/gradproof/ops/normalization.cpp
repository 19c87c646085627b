// The float and double instantiations of the normalization family (core, layer, group,
// instance and RMS norm), compiled once into the library.
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/normalization.hpp"
#include "gradproof/ops/rmsnorm.hpp"

namespace gradproof::ops {
GRADPROOF_NORM_INSTANTIATE(, float)
GRADPROOF_NORM_INSTANTIATE(, double)
GRADPROOF_LAYERNORM_INSTANTIATE(, float)
GRADPROOF_LAYERNORM_INSTANTIATE(, double)
GRADPROOF_GROUPNORM_INSTANTIATE(, float)
GRADPROOF_GROUPNORM_INSTANTIATE(, double)
GRADPROOF_INSTANCENORM_INSTANTIATE(, float)
GRADPROOF_INSTANCENORM_INSTANTIATE(, double)
GRADPROOF_RMSNORM_INSTANTIATE(, float)
GRADPROOF_RMSNORM_INSTANTIATE(, double)
}  // namespace gradproof::ops
