// The building blocks of the fused kernels (kernels.hpp, parallel.hpp) and the properties every
// fused pass owes its caller whatever the shape: it reads and writes nothing outside its
// arguments (checked by the asan preset, which runs this suite), and its result bits are a
// function of the input values only — not of the buffers' addresses, not of the thread count.
#include "gradproof/kernels.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/parallel.hpp"

#include <boost/test/unit_test.hpp>

#include <random>
#include <string>

using namespace gradproof;
using namespace gradproof::ops;

namespace {

template <class T>
Tensor<T> random_tensor(const Shape& s, std::uint64_t seed, double mean, double spread) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, spread);
  Tensor<T> t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<T>(dist(rng));
  return t;
}

// Restores the thread count of later loops when it goes out of scope.
struct ThreadsScope {
  int saved = parallel::max_threads();
  explicit ThreadsScope(int threads) { parallel::set_threads(threads); }
  ~ThreadsScope() { parallel::set_threads(saved); }
};

// The fused batch-norm training forward and backward on `shape` at `threads` threads. Each
// tensor is its own allocation of exactly its size, so a read past the end of `x` or `dy` is a
// heap over-read that AddressSanitizer reports (and that a release build can fault on).
template <class T>
void bn_fused_passes(const Shape& shape, int threads) {
  const ThreadsScope scope(threads);
  const Index C = shape[1];
  const Tensor<T> x = random_tensor<T>(shape, 1, 0.5, 1.0), dy = random_tensor<T>(shape, 2, 0.0, 1.0);
  const Tensor<T> gamma = random_tensor<T>({C}, 3, 1.0, 0.2), beta = random_tensor<T>({C}, 4, 0.0, 0.2);
  const auto f = batchnorm_forward_train<T>(x, &gamma, &beta, nullptr);
  const auto g = batchnorm_backward<T>(dy, x, &gamma, f.cache);
  BOOST_TEST(f.y.size() == x.size());
  BOOST_TEST(g.dx.size() == x.size());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(kernels)

// Each thread cuts its channels into blocks, larger first; when the next block is smaller, the
// vector that straddles the end of its last summed channel used to be loaded whole, up to a
// vector minus one value past the block — past the tensor when the block ends it. These are
// the shapes of issue 10 that hit it (forward at one thread, backward at two) and neighbours.
BOOST_AUTO_TEST_CASE(bn_fused_reads_nothing_past_the_end_of_its_inputs) {
  for (const Shape& s : {Shape{1, 131, 17}, Shape{1, 131, 594}, Shape{1, 3, 5, 7}, Shape{2, 130, 33}}) {
    BOOST_TEST_CONTEXT("shape " << to_string(s) << " at 1 thread") {
      bn_fused_passes<float>(s, 1);
      bn_fused_passes<double>(s, 1);
    }
  }
  for (const Shape& s : {Shape{8, 256, 17, 17}, Shape{8, 768, 14, 14}, Shape{32, 64, 35, 35}, Shape{1, 131, 594}}) {
    for (int threads : {2, 3}) {
      BOOST_TEST_CONTEXT("shape " << to_string(s) << " at " << threads << " threads") {
        bn_fused_passes<float>(s, threads);
        bn_fused_passes<double>(s, threads);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()  // kernels
