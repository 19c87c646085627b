// The building blocks of the fused kernels (kernels.hpp, parallel.hpp) and the properties every
// fused pass owes its caller whatever the shape: it reads and writes nothing outside its
// arguments (checked by the asan preset, which runs this suite), and its result bits are a
// function of the input values only — not of the buffers' addresses, not of the thread count.
#include "gradproof/kernels.hpp"
#include "gradproof/ops/batchnorm.hpp"
#include "gradproof/ops/groupnorm.hpp"
#include "gradproof/ops/instancenorm.hpp"
#include "gradproof/ops/layernorm.hpp"
#include "gradproof/ops/rmsnorm.hpp"
#include "gradproof/parallel.hpp"

#include <boost/test/unit_test.hpp>

#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

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


// A copy of `t`'s values that starts `offset` values past a 64-byte boundary of its storage:
// the same values at another address mod 64 (offsets 0..15 cover every float position).
template <class T>
struct Placed {
  std::vector<T> storage;
  T* data;
  Placed(const T* values, Index n, Index offset) : storage(static_cast<std::size_t>(n + offset + 64 / sizeof(T))) {
    auto* base = reinterpret_cast<std::uintptr_t>(storage.data()) % 64
                     ? storage.data() + (64 - reinterpret_cast<std::uintptr_t>(storage.data()) % 64) / sizeof(T)
                     : storage.data();
    data = base + offset;
    std::copy_n(values, n, data);
  }
  Placed(const Tensor<T>& t, Index offset) : Placed(t.data(), t.size(), offset) {}
};

// The outputs of one run, concatenated, to be compared bit for bit.
template <class T>
using Bits = std::vector<T>;

template <class T>
void append(Bits<T>& out, const T* p, Index n) {
  out.insert(out.end(), p, p + n);
}

template <class T>
bool same_bits(const Bits<T>& a, const Bits<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Runs `pass(offset)` at every offset 0..15 and 1, 2 and 3 threads (offsets 0, 5 and 11 only at
// 2 and 3 threads, to keep the time down) and checks that every run gives the bits of offset
// 0 at one thread.
template <class T>
void same_bits_everywhere(const std::string& what, const std::function<Bits<T>(Index)>& pass) {
  Bits<T> reference;
  {
    const ThreadsScope one(1);
    reference = pass(0);
  }
  for (int threads : {1, 2, 3}) {
    const ThreadsScope scope(threads);
    for (Index offset = 0; offset < 16; ++offset) {
      if (threads > 1 && offset != 0 && offset != 5 && offset != 11) continue;
      BOOST_TEST(same_bits(pass(offset), reference),
                 what << ": bits differ at offset " << offset << " and " << threads << " thread(s)");
    }
  }
}

// Forward and fused backward of a member of the family with a mean (layer, group, instance
// norm) through its kernels, every buffer at `offset`; the cache for the backward is the one of
// the public forward (the same for every run).
template <class T>
std::function<Bits<T>(Index)> norm_passes(const NormForward<T>& f, const Tensor<T>& x, const Tensor<T>& dy,
                                          const Tensor<T>& gamma, const Tensor<T>& beta) {
  return [&f, &x, &dy, &gamma, &beta](Index offset) {
    const NormSets& s = f.cache.sets;
    Placed<T> px(x, offset), pdy(dy, offset), pg(gamma, offset), pb(beta, offset), py(x, offset), pdx(x, offset);
    Placed<T> mean(x.data(), s.R, offset), var(x.data(), s.R, offset), invstd(x.data(), s.R, offset);
    Placed<T> dg(gamma, offset), db(gamma, offset);
    norm::forward_kernel<T>(s, px.data, pg.data, pb.data, 1e-5, py.data, mean.data, var.data, invstd.data);
    norm::backward_kernel<T>(s, pdy.data, px.data, pg.data, f.cache, pdx.data, dg.data, db.data);
    Bits<T> out;
    append(out, py.data, x.size());
    append(out, mean.data, s.R);
    append(out, var.data, s.R);
    append(out, invstd.data, s.R);
    append(out, pdx.data, x.size());
    append(out, dg.data, gamma.size());
    append(out, db.data, gamma.size());
    return out;
  };
}

template <class T>
void layernorm_bits(const Shape& shape) {
  const Index M = shape.back();
  const Tensor<T> x = random_tensor<T>(shape, 5, 0.3, 1.0), dy = random_tensor<T>(shape, 6, 0.0, 1.0);
  const Tensor<T> g = random_tensor<T>({M}, 7, 1.0, 0.2), b = random_tensor<T>({M}, 8, 0.0, 0.2);
  const auto f = layernorm_forward<T>(x, &g, &b, {.normalized_shape = {M}});
  same_bits_everywhere<T>("layernorm " + to_string(shape), norm_passes<T>(f, x, dy, g, b));
}

template <class T>
void groupnorm_bits(const Shape& shape, Index groups) {
  const Index C = shape[1];
  const Tensor<T> x = random_tensor<T>(shape, 5, 0.3, 1.0), dy = random_tensor<T>(shape, 6, 0.0, 1.0);
  const Tensor<T> g = random_tensor<T>({C}, 7, 1.0, 0.2), b = random_tensor<T>({C}, 8, 0.0, 0.2);
  const auto f = groupnorm_forward<T>(x, &g, &b, {.num_groups = groups});
  same_bits_everywhere<T>("groupnorm " + to_string(shape), norm_passes<T>(f, x, dy, g, b));
}

template <class T>
void instancenorm_bits(const Shape& shape) {
  const Index C = shape[1];
  const Tensor<T> x = random_tensor<T>(shape, 5, 0.3, 1.0), dy = random_tensor<T>(shape, 6, 0.0, 1.0);
  const Tensor<T> g = random_tensor<T>({C}, 7, 1.0, 0.2), b = random_tensor<T>({C}, 8, 0.0, 0.2);
  const auto f = instancenorm_forward_train<T>(x, &g, &b, nullptr, {});
  same_bits_everywhere<T>("instancenorm " + to_string(shape), norm_passes<T>(f, x, dy, g, b));
}

template <class T>
void rmsnorm_bits(const Shape& shape) {
  const Index M = shape.back();
  const Tensor<T> x = random_tensor<T>(shape, 5, 0.3, 1.0), dy = random_tensor<T>(shape, 6, 0.0, 1.0);
  const Tensor<T> g = random_tensor<T>({M}, 7, 1.0, 0.2);
  const auto f = rmsnorm_forward<T>(x, &g, {.normalized_shape = {M}});
  same_bits_everywhere<T>("rmsnorm " + to_string(shape), [&](Index offset) {
    const NormSets& s = f.cache.sets;
    Placed<T> px(x, offset), pdy(dy, offset), pg(g, offset), py(x, offset), pdx(x, offset), dg(g, offset);
    Placed<T> ms(x.data(), s.R, offset), inv(x.data(), s.R, offset);
    norm::detail::rmsnorm_forward_rows<T>(s, px.data, pg.data, f.cache.eps, py.data, ms.data, inv.data);
    norm::detail::rmsnorm_backward_rows<T>(s, pdy.data, px.data, pg.data, f.cache.invrms.data(), pdx.data, dg.data);
    Bits<T> out;
    append(out, py.data, x.size());
    append(out, ms.data, s.R);
    append(out, inv.data, s.R);
    append(out, pdx.data, x.size());
    append(out, dg.data, g.size());
    return out;
  });
}

// The sums of map_sum2_segments() and sum2_segments() — all of batch norm's statistics and
// parameter gradients come from them — over a block of `segments` channels of `L` values, the
// mapped and the summed run at `offset`, summing the next block of `summed` channels.
template <class T>
Bits<double> segment_sums(Index L, Index segments, Index summed, Index offset) {
  const Tensor<T> v = random_tensor<T>({2 * segments * L}, 9, 0.5, 1.0);
  Placed<T> src(v, offset);
  std::vector<T> dst_storage(static_cast<std::size_t>(segments * L + 32));
  T* dst = dst_storage.data() + offset;
  const auto terms = [](auto a) { return std::pair{a, a * a}; };
  const auto map = [](auto a) { return a + T(1); };
  std::vector<kernels::Sums2<T>> first(static_cast<std::size_t>(segments)), next(static_cast<std::size_t>(summed));
  kernels::sum2_segments(first.data(), L, segments, [&](Index) { return terms; }, Index(-1), src.data);
  kernels::map_sum2_segments(next.data(), summed, dst, L, segments, offset % 2 == 1, [&](Index) { return map; },
                             [&](Index) { return terms; }, segments * L, Index(-1), src.data);
  Bits<double> out;
  for (auto& a : first) out.push_back(a.total().first), out.push_back(a.total().second);
  for (auto& a : next) out.push_back(a.total().first), out.push_back(a.total().second);
  for (Index i = 0; i < segments * L; ++i) out.push_back(dst[i]);
  return out;
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


// Issue 10, defect 5: the result bits are a function of the input values only. Every buffer of
// a pass at 16 element offsets from a 64-byte boundary (the peeling of a vector loop to an
// aligned address must not change the order of a sum) and at 1, 2 and 3 threads (a sum over
// rows that several threads share must not be taken per thread), forward and fused backward,
// float and double, including tensors of 4 MiB and more (written with streaming stores).
BOOST_AUTO_TEST_CASE(norm_results_do_not_depend_on_alignment_or_threads) {
  layernorm_bits<float>({64, 200});
  layernorm_bits<double>({33, 130});
  layernorm_bits<float>({1024, 1100});  // 4.5 MB
  groupnorm_bits<float>({4, 12, 9, 11}, 3);
  groupnorm_bits<double>({2, 8, 5, 7}, 4);
  groupnorm_bits<float>({4, 32, 96, 96}, 8);  // 4.7 MB
  instancenorm_bits<float>({4, 6, 13, 7});
  instancenorm_bits<double>({2, 5, 9, 9});
  instancenorm_bits<float>({4, 32, 96, 96});
  rmsnorm_bits<float>({64, 200});
  rmsnorm_bits<double>({33, 130});
  rmsnorm_bits<float>({1024, 1100});
}

BOOST_AUTO_TEST_CASE(segment_sums_do_not_depend_on_alignment) {
  for (const auto& [L, segments, summed] : {std::tuple<Index, Index, Index>{17, 5, 4}, {33, 3, 3}, {16, 4, 1},
                                            {200, 7, 6}, {9, 2, 2}}) {
    const Bits<double> f0 = segment_sums<float>(L, segments, summed, 0), d0 = segment_sums<double>(L, segments, summed, 0);
    for (Index offset = 1; offset < 16; ++offset) {
      BOOST_TEST(same_bits(segment_sums<float>(L, segments, summed, offset), f0),
                 "float L=" << L << " segments=" << segments << " summed=" << summed << " offset " << offset);
      BOOST_TEST(same_bits(segment_sums<double>(L, segments, summed, offset), d0),
                 "double L=" << L << " segments=" << segments << " summed=" << summed << " offset " << offset);
    }
  }
}

// Batch norm's public API at 1, 2 and 3 threads (which change how channels are cut into blocks
// and which blocks are pipelined), including a 4.3 MB tensor.
BOOST_AUTO_TEST_CASE(batchnorm_results_do_not_depend_on_threads) {
  for (const Shape& shape : {Shape{4, 37, 9, 11}, Shape{2, 32, 128, 130}, Shape{8, 256, 17, 17}}) {
    const Index C = shape[1];
    const TensorF x = random_tensor<float>(shape, 1, 0.5, 1.0), dy = random_tensor<float>(shape, 2, 0.0, 1.0);
    const TensorF g = random_tensor<float>({C}, 3, 1.0, 0.2), b = random_tensor<float>({C}, 4, 0.0, 0.2);
    const auto run = [&] {
      const auto f = batchnorm_forward_train<float>(x, &g, &b, nullptr);
      const auto d = batchnorm_backward<float>(dy, x, &g, f.cache);
      Bits<float> out;
      for (const TensorF* t : {&f.y, &f.cache.mean, &f.cache.var, &f.cache.invstd, &d.dx, &d.dgamma, &d.dbeta})
        append(out, t->data(), t->size());
      return out;
    };
    Bits<float> reference;
    {
      const ThreadsScope one(1);
      reference = run();
    }
    for (int threads : {2, 3}) {
      const ThreadsScope scope(threads);
      BOOST_TEST(same_bits(run(), reference), "batchnorm " << to_string(shape) << " at " << threads << " threads");
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()  // kernels
