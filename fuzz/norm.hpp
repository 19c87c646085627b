// The part of the layer-, group- and instance-norm harnesses that is the same for the three: an
// Op describes how to decode its configuration and which functions to call; this runs forward
// (allocating or *_into), the staged and the fused backward, and compares them in float64.
#pragma once

#include "fuzz.hpp"

#include "gradproof/ops/normalization.hpp"

namespace gradproof::fuzz {

inline Index norm_set(const void* ctx, Index i) { return i / static_cast<const ops::NormSets*>(ctx)->M; }
inline Index norm_param(const void* ctx, Index i) {
  const auto* s = static_cast<const ops::NormSets*>(ctx);
  return s->param(i / s->M, i % s->M);
}
inline SetsView sets_view(const ops::NormSets& s, bool centred) {
  return {s.size(), s.R, s.params(), s.M, centred, norm_set, norm_param, &s};
}

/// `Op` provides: `template <class T> Config config(Reader&, const Shape&, std::uint8_t misuse)`, `Shape param_shape(
/// const Shape& x, const Config&)`, and the calls forward / forward_into / staged / fused /
/// fused_into for Tensor<T>. `Op::eval` (optional) says the cache holds running statistics.
template <class Op, class T>
void run_norm(Reader& r, const Shape& shape) {
  const bool affine = r.byte() % 4 != 0, with_beta = r.flag(), into = r.flag();
  const std::uint8_t misuse = r.byte();  // < 16: one argument of a wrong shape, which must be refused
  const auto cfg = Op::template config<T>(r, shape, misuse);
  r.seed(r.byte() * 0x100000001b3ull + shape.size());
  const Shape pshape = Op::param_shape(shape, cfg);
  // One decision per statement: the order in which the input is read must not depend on the
  // compiler's order of evaluating arguments.
  const ValueRange vx = ValueRange::of(r);
  const Tensor<T> x = tensor<T>(r, shape, vx);
  const Shape dyshape = misuse == 1 ? other_shape(shape, r) : shape;
  const ValueRange vdy = ValueRange::of(r);
  const Tensor<T> dy = tensor<T>(r, dyshape, vdy);
  const Shape gshape = misuse == 0 ? other_shape(pshape, r) : pshape;
  const Tensor<T> gamma = tensor<T>(r, gshape, {1.0, 0.5});
  const Tensor<T> beta = tensor<T>(r, pshape, {0.0, 1.0});
  const Tensor<T>* g = affine ? &gamma : nullptr;
  const Tensor<T>* b = affine && with_beta ? &beta : nullptr;

  ops::NormForward<T> f;
  if (into) {
    f.y = Tensor<T>(misuse == 2 ? other_shape(shape, r) : shape);
    Op::forward_into(x, g, b, cfg, f.y, f.cache);
  } else {
    f = Op::forward(x, g, b, cfg);
  }
  const auto staged = Op::staged(dy, x, g, f.cache);
  ops::NormGrads<T> fused;
  if (into) {
    fused = {Tensor<T>(misuse == 3 ? other_shape(shape, r) : shape), Tensor<T>(f.cache.param_shape),
             Tensor<T>(f.cache.param_shape)};
    Op::fused_into(dy, x, g, f.cache, fused.dx, g ? &fused.dgamma : nullptr, b ? &fused.dbeta : nullptr);
  } else {
    fused = Op::fused(dy, x, g, f.cache);
  }
  if constexpr (std::is_same_v<T, double>) {
    const ops::NormSets& sets = f.cache.sets;
    const SetsView s = sets_view(sets, true);
    if (f.cache.training) check_stats(Op::name, s, x.data(), f.cache.mean.data(), f.cache.var.data());
    check_y(Op::name, s, x.data(), g ? g->data() : nullptr, b ? b->data() : nullptr, f.cache.mean.data(),
            f.cache.invstd.data(), f.y.data());
    check_grads(Op::name, s, x.data(), dy.data(), g ? g->data() : nullptr, f.cache.mean.data(), f.cache.invstd.data(),
                staged.dx.data(), fused.dx.data(), g ? staged.dgamma.data() : nullptr, g ? fused.dgamma.data() : nullptr,
                b ? staged.dbeta.data() : nullptr, b ? fused.dbeta.data() : nullptr);
    trace(Op::name, f.cache.training ? "compared" : "eval compared", shape);
  }
}

/// The entry point of a norm-family harness.
template <class Op>
int norm_fuzz(const std::uint8_t* data, std::size_t size) {
  return run_one(data, size, [](Reader& r) {
    const bool also_float = r.flag();
    const auto shape = r.shape(static_cast<std::size_t>(r.in_range(1, 5)));  // ranks 1 and 5 must be refused
    if (!shape) return;
    Reader again = r;  // the same decisions and values for both types
    run_norm<Op, double>(r, *shape);
    if (also_float) run_norm<Op, float>(again, *shape);
  });
}

}  // namespace gradproof::fuzz
