// Tensors and shapes: every product of extents is checked (issue 10, defect 3). Unchecked,
// Tensor({2^62 + 1, 4}) wrapped around to 4 values, and an eval forward pass over it read far
// out of bounds.
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/layout.hpp"
#include "gradproof/tensor.hpp"
#include "support/inputs.hpp"

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <limits>
#include <vector>

using namespace gradproof;
using gradproof::testing::MessageHas;

namespace {

constexpr Index kMax = std::numeric_limits<Index>::max();
constexpr Index k2to62 = Index(1) << 62;

}  // namespace

BOOST_AUTO_TEST_SUITE(tensor)

BOOST_AUTO_TEST_CASE(extents_whose_product_overflows_are_refused) {
  // (2^62 + 1)·4 = 2^64 + 4, which wraps around to 4 in 64 bits.
  const Shape wraps{k2to62 + 1, 4};
  const MessageHas names_it{{"(4611686018427387905, 4)", "overflows"}};
  BOOST_CHECK_EXCEPTION(numel(wraps), InvalidArgument, names_it);
  BOOST_CHECK_EXCEPTION(TensorF{wraps}, InvalidArgument, (MessageHas{{"Tensor: shape", "(4611686018427387905, 4)"}}));
  BOOST_CHECK_EXCEPTION(TensorD(wraps, 1.0), InvalidArgument, names_it);
  BOOST_CHECK_EXCEPTION(TensorD(wraps, std::vector<double>(4, 0.0)), InvalidArgument, names_it);
  // Overflow at any axis, and by any route: 2^31·2^31·4 = 2^64, 2^32·2^32 = 2^64, INT64_MAX·2.
  for (const Shape& s : {Shape{Index(1) << 31, Index(1) << 31, 4}, Shape{2, 3, Index(1) << 32, Index(1) << 32},
                         Shape{kMax, 2}, Shape{3, kMax / 2}}) {
    BOOST_CHECK_EXCEPTION(numel(s), InvalidArgument, (MessageHas{{to_string(s), "overflows"}}));
    BOOST_CHECK_EXCEPTION(TensorF{s}, InvalidArgument, (MessageHas{{to_string(s)}}));
  }
  // A zero extent does not excuse the others: every partial product must fit (offsets, set sizes).
  BOOST_CHECK_EXCEPTION(numel(Shape{k2to62, 0, 4}), InvalidArgument, (MessageHas{{"overflows"}}));
  // The largest products that fit are fine, as are empty shapes and rank 0.
  BOOST_TEST(numel(Shape{kMax}) == kMax);
  BOOST_TEST(numel(Shape{k2to62 - 1, 2}) == kMax - 1);
  BOOST_TEST(numel(Shape{0, 5}) == 0);
  BOOST_TEST(numel(Shape{}) == 1);
  BOOST_TEST(!try_numel(Shape{k2to62, 4}).has_value());
  BOOST_TEST(!try_numel(Shape{2, -1}).has_value());
}

BOOST_AUTO_TEST_CASE(a_count_beyond_what_a_vector_can_hold_is_refused_before_allocating) {
  // 2^61 doubles are 2^64 bytes: the product fits in Index, the bytes do not. (Without the check
  // std::vector threw std::length_error, which is not the library's error type.)
  BOOST_CHECK_EXCEPTION(TensorD(Shape{Index(1) << 61}), InvalidArgument,
                        (MessageHas{{"Tensor: shape (2305843009213693952,)", "8 bytes", "more than can be allocated"}}));
  BOOST_CHECK_EXCEPTION(TensorF(Shape{Index(1) << 30, Index(1) << 32}), InvalidArgument,
                        (MessageHas{{"more than can be allocated"}}));
}

BOOST_AUTO_TEST_CASE(negative_extents_are_refused) {
  BOOST_CHECK_EXCEPTION(numel(Shape{2, -1}, "x"), InvalidArgument, (MessageHas{{"x (2, -1)", "negative extent"}}));
  BOOST_CHECK_EXCEPTION(TensorD(Shape{-3}), InvalidArgument, (MessageHas{{"Tensor: shape (-3,)", "negative extent"}}));
}

// The case of the issue: an eval forward pass over a tensor claiming (2^62 + 1, 4). It used to
// be accepted, with 4 values, and the pass walked 2^62 samples past them. Now no such tensor
// exists, and a shape alone (as a cache records it) is refused by the (N, C, L) view too.
BOOST_AUTO_TEST_CASE(the_eval_forward_over_a_wrapped_shape_is_refused) {
  const auto running = ops::BatchNormRunningStats<float>::fresh(4);
  BOOST_CHECK_EXCEPTION(ops::batchnorm_forward_eval<float>(TensorF({k2to62 + 1, 4}), nullptr, nullptr, running),
                        InvalidArgument, (MessageHas{{"(4611686018427387905, 4)", "overflows"}}));
  BOOST_CHECK_EXCEPTION(ops::batchnorm_forward_eval<float>(TensorF({k2to62 + 1, 4}, std::vector<float>(4, 1.0f)),
                                                           nullptr, nullptr, running),
                        InvalidArgument, (MessageHas{{"(4611686018427387905, 4)"}}));
  BOOST_CHECK_EXCEPTION(ops::ncl_view({2, 3, k2to62, 4}, "batchnorm", "x"), InvalidArgument,
                        (MessageHas{{"batchnorm: x", "(2, 3, 4611686018427387904, 4)", "overflows"}}));
}

BOOST_AUTO_TEST_CASE(checked_product_names_its_factors) {
  BOOST_TEST(checked_product(3, 5, "n") == 15);
  BOOST_CHECK_EXCEPTION(checked_product(k2to62, 4, "R*M"), InvalidArgument,
                        (MessageHas{{"R*M = 4611686018427387904 * 4", "overflows"}}));
  BOOST_CHECK_EXCEPTION(checked_product(-1, 4, "R*M"), InvalidArgument, (MessageHas{{"negative"}}));
}

BOOST_AUTO_TEST_SUITE_END()
