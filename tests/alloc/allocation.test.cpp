// The fused paths allocate nothing per call: after one warm-up call (which sizes the caller's
// buffers and wakes the thread team), calling an `*_into` function again makes no heap
// allocation on any thread. The counter sees every allocation of the process (see
// support/alloc_counter.cpp), so this binary holds only these tests.
#define BOOST_TEST_MODULE gradproof allocation
#include "gradproof/catalog/catalog.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/normalization.hpp"
#include "gradproof/ops/rmsnorm.hpp"
#include "gradproof/parallel.hpp"
#include "support/alloc_counter.hpp"
#include "support/inputs.hpp"

#include <boost/test/unit_test.hpp>

#include <tuple>
#include <vector>

using namespace gradproof;
using namespace gradproof::ops;
using gradproof::testing::allocations;

namespace {

// Allocations made by the second of two calls of `f`.
template <class F>
long allocations_of_second_call(F&& f) {
  f();
  const long before = allocations();
  f();
  return allocations() - before;
}

template <class S>
Tensor<S> input(const Shape& s) {
  return gradproof::testing::iota(s).cast<S>();
}

// Large enough to run on both threads (above parallel::kMinParallelWork elements).
const Shape kImage{4, 8, 40, 40};  // 51200 values; batch norm sets of 6400, group norm of 12800
const Shape kRows{64, 1024};       // layer / RMS norm rows that fit the column sums' inline buffer
const Shape kLongRows{16, 4096};   // rows past it: the per-thread scratch path

// Storage that escapes through a volatile pointer: the compiler may not elide its allocation.
double* volatile g_escape = nullptr;

struct Threads {  // both cores, as the benchmarks run
  Threads() { parallel::set_threads(2); }
};

}  // namespace

BOOST_GLOBAL_FIXTURE(Threads);

BOOST_AUTO_TEST_SUITE(allocation)

BOOST_AUTO_TEST_CASE(the_counter_sees_allocations) {
  // Negative control: a vector, and the allocating wrapper of the batch-norm backward.
  const long n = allocations_of_second_call([] {
    std::vector<double> v(1000);
    g_escape = v.data();
  });
  BOOST_TEST(n >= 1);
  const TensorF x = input<float>(kImage), g({8}, 1.5f), b({8}, 0.5f);
  const auto fwd = batchnorm_forward_train<float>(x, &g, &b, nullptr);
  BOOST_TEST(allocations_of_second_call([&] { batchnorm_backward<float>(x, x, &g, fwd.cache); }) >= 3);
}

using Scalars = std::tuple<float, double>;

BOOST_AUTO_TEST_CASE_TEMPLATE(batchnorm_into_allocates_nothing, S, Scalars) {
  const Tensor<S> x = input<S>(kImage), dy = input<S>(kImage), g({8}, S(1.5)), b({8}, S(0.5));
  auto running = BatchNormRunningStats<S>::fresh(8);
  auto fwd = batchnorm_forward_train<S>(x, &g, &b, &running);
  Tensor<S> dx(kImage), dg({8}), db({8});
  BOOST_TEST(allocations_of_second_call([&] {
               batchnorm_forward_train_into<S>(x, &g, &b, &running, {}, fwd.y, fwd.cache);
             }) == 0);
  BOOST_TEST(allocations_of_second_call([&] { batchnorm_backward_into<S>(dy, x, &g, fwd.cache, dx, &dg, &db); }) == 0);
  auto eval = batchnorm_forward_eval<S>(x, &g, &b, running);
  BOOST_TEST(allocations_of_second_call([&] {
               batchnorm_forward_eval_into<S>(x, &g, &b, running, {}, eval.y, eval.cache);
             }) == 0);
  BOOST_TEST(allocations_of_second_call([&] { batchnorm_backward_into<S>(dy, x, &g, eval.cache, dx, &dg, &db); }) == 0);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(layernorm_into_allocates_nothing, S, Scalars) {
  for (const Shape& shape : {kRows, kLongRows}) {
    const Shape row{shape[1]};
    const Tensor<S> x = input<S>(shape), dy = input<S>(shape), g = input<S>(row), b = input<S>(row);
    const LayerNormConfig cfg{row};
    auto fwd = layernorm_forward<S>(x, &g, &b, cfg);
    Tensor<S> dx(shape), dg(row), db(row);
    BOOST_TEST(allocations_of_second_call([&] { layernorm_forward_into<S>(x, &g, &b, cfg, fwd.y, fwd.cache); }) == 0,
               "forward, rows of " << shape[1]);
    BOOST_TEST(allocations_of_second_call([&] { layernorm_backward_into<S>(dy, x, &g, fwd.cache, dx, &dg, &db); }) == 0,
               "backward, rows of " << shape[1]);
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(rmsnorm_into_allocates_nothing, S, Scalars) {
  for (const Shape& shape : {kRows, kLongRows}) {
    const Shape row{shape[1]};
    const Tensor<S> x = input<S>(shape), dy = input<S>(shape), g = input<S>(row);
    RMSNormConfig cfg;
    cfg.normalized_shape = row;
    auto fwd = rmsnorm_forward<S>(x, &g, cfg);
    Tensor<S> dx(shape), dg(row);
    BOOST_TEST(allocations_of_second_call([&] { rmsnorm_forward_into<S>(x, &g, cfg, fwd.y, fwd.cache); }) == 0,
               "forward, rows of " << shape[1]);
    BOOST_TEST(allocations_of_second_call([&] { rmsnorm_backward_into<S>(dy, x, &g, fwd.cache, dx, &dg); }) == 0,
               "backward, rows of " << shape[1]);
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(groupnorm_into_allocates_nothing, S, Scalars) {
  const Tensor<S> x = input<S>(kImage), dy = input<S>(kImage), g = input<S>({8}), b = input<S>({8});
  const GroupNormConfig cfg{2};
  auto fwd = groupnorm_forward<S>(x, &g, &b, cfg);
  Tensor<S> dx(kImage), dg({8}), db({8});
  BOOST_TEST(allocations_of_second_call([&] { groupnorm_forward_into<S>(x, &g, &b, cfg, fwd.y, fwd.cache); }) == 0);
  BOOST_TEST(allocations_of_second_call([&] { groupnorm_backward_into<S>(dy, x, &g, fwd.cache, dx, &dg, &db); }) == 0);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(instancenorm_into_allocates_nothing, S, Scalars) {
  const Tensor<S> x = input<S>(kImage), dy = input<S>(kImage), g = input<S>({8}), b = input<S>({8});
  auto running = InstanceNormRunningStats<S>::fresh(8);
  const InstanceNormConfig cfg;
  auto fwd = instancenorm_forward_train<S>(x, &g, &b, &running, cfg);
  Tensor<S> dx(kImage), dg({8}), db({8});
  BOOST_TEST(allocations_of_second_call([&] {
               instancenorm_forward_train_into<S>(x, &g, &b, &running, cfg, fwd.y, fwd.cache);
             }) == 0);
  BOOST_TEST(allocations_of_second_call([&] { instancenorm_backward_into<S>(dy, x, &g, fwd.cache, dx, &dg, &db); }) == 0);
  auto eval = instancenorm_forward_eval<S>(x, &g, &b, running, cfg);
  BOOST_TEST(allocations_of_second_call([&] {
               instancenorm_forward_eval_into<S>(x, &g, &b, running, cfg, eval.y, eval.cache);
             }) == 0);
}

// A corrupt cache is refused before its shapes size an allocation (issue 10, defect 7): the
// allocating backward passes used to allocate dγ and dβ from the cache's shapes first, and
// validate after. Each cache here claims 2^24 channels or parameters (64 MiB of float per
// output); the call must throw having requested well under 1 MiB (the exception and its
// message).
BOOST_AUTO_TEST_CASE(a_corrupt_cache_is_refused_before_anything_is_allocated) {
  constexpr Index kHuge = Index(1) << 24;
  constexpr long long kSmall = 1 << 20;
  const auto bytes_of_failing_call = [](auto&& f) {
    const long long before = gradproof::testing::allocated_bytes();
    bool refused = false;
    try {
      f();
    } catch (const InvalidArgument&) {
      refused = true;
    }
    BOOST_TEST(refused);
    return gradproof::testing::allocated_bytes() - before;
  };
  const TensorF x = input<float>({4, 8, 5}), g({8}, 1.5f), b({8}, 0.5f);

  auto bn = batchnorm_forward_train<float>(x, &g, &b, nullptr).cache;
  bn.dims.C = kHuge;
  BOOST_TEST(bytes_of_failing_call([&] { batchnorm_backward<float>(x, x, &g, bn); }) < kSmall);
  BOOST_TEST(bytes_of_failing_call([&] { batchnorm_backward_staged<float>(x, x, &g, bn); }) < kSmall);

  // Layer norm without γ but with β: nothing else checks the parameter shape the cache records.
  const Shape row{5};
  const TensorF bl({5}, 0.5f);
  auto ln = layernorm_forward<float>(x, nullptr, &bl, {row}).cache;
  ln.param_shape = {kHuge};
  BOOST_TEST(bytes_of_failing_call([&] { layernorm_backward<float>(x, x, nullptr, ln); }) < kSmall);
  BOOST_TEST(bytes_of_failing_call([&] { layernorm_backward_staged<float>(x, x, nullptr, ln); }) < kSmall);

  auto gn = groupnorm_forward<float>(x, nullptr, &b, {2}).cache;
  gn.param_shape = {kHuge};
  BOOST_TEST(bytes_of_failing_call([&] { groupnorm_backward<float>(x, x, nullptr, gn); }) < kSmall);
  BOOST_TEST(bytes_of_failing_call([&] { groupnorm_backward_staged<float>(x, x, nullptr, gn); }) < kSmall);

  auto in = instancenorm_forward_train<float>(x, nullptr, &b, nullptr).cache;
  in.param_shape = {kHuge};
  BOOST_TEST(bytes_of_failing_call([&] { instancenorm_backward<float>(x, x, nullptr, in); }) < kSmall);
  BOOST_TEST(bytes_of_failing_call([&] { instancenorm_backward_staged<float>(x, x, nullptr, in); }) < kSmall);

  const TensorF bc({40}, 0.5f);
  auto core = norm::forward<float>({4, 40, 1, 1}, x, nullptr, &bc).cache;
  core.param_shape = {kHuge};
  BOOST_TEST(bytes_of_failing_call([&] { norm::backward<float>(x, x, nullptr, core); }) < kSmall);
  BOOST_TEST(bytes_of_failing_call([&] { norm::backward_staged<float>(x, x, nullptr, core); }) < kSmall);
}

// Every `*_into` call that an op declared through the harness names (catalog IntoCase).
BOOST_AUTO_TEST_CASE(declared_into_calls_allocate_nothing) {
  const auto& cases = gradproof::catalog::registry().into_cases;
  BOOST_TEST_REQUIRE(!cases.empty());
  for (const auto& c : cases) {
    const auto call = c.into.make();
    BOOST_TEST(allocations_of_second_call(call) == 0, c.op << ": " << c.into.name);
  }
}

BOOST_AUTO_TEST_SUITE_END()
