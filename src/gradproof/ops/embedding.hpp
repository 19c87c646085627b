/// \file
/// \brief Embedding (a lookup table): forward, staged and fused backward.
///
/// Semantics of PyTorch's `torch.nn.Embedding(num_embeddings, embedding_dim, padding_idx=None)`
/// and `torch.nn.functional.embedding(input, weight, padding_idx)`:
/// \f[ y_{q,d} = W_{\mathrm{idx}_q,\,d}, \f]
/// for every position \f$q\f$ of the integer tensor of indices. The indices are not
/// differentiable; the gradient of the weight adds the rows of \f$dy\f$ of every position that
/// looked up a row into that row, \f$dW_{r} = \sum_{q:\,\mathrm{idx}_q = r} dy_q\f$, except the
/// row `padding_idx`, which gets no gradient (its value is a constant of the graph: the forward
/// still reads it, as PyTorch's does).
///
/// Shape legend:
/// - `indices`: any shape (`Q` positions), values in `[0, num_embeddings)`;
/// - `weight`, `dweight`: `(num_embeddings, embedding_dim)` = `(V, D)`;
/// - `y`, `dy`: `indices.shape + (D,)`.
///
/// The fused backward splits the columns `D` over the threads; each thread adds the positions in
/// their order, so every element of `dweight` is the same sum in the same order at any number of
/// threads (bit for bit).
#pragma once

#include "gradproof/ops/layout.hpp"
#include "gradproof/parallel.hpp"
#include "gradproof/tensor.hpp"

#include <cstdint>
#include <optional>
#include <sstream>

namespace gradproof::ops {

/// Hyper-parameters of embedding (PyTorch's names and defaults).
struct EmbeddingConfig {
  Index num_embeddings = 0;  ///< \f$V\f$, rows of `weight`
  Index embedding_dim = 0;   ///< \f$D\f$, columns of `weight`
  /// The row that gets no gradient; negative values count from the end (`-1` is row `V - 1`), as
  /// in PyTorch; `std::nullopt` (PyTorch's `None`) for none.
  std::optional<Index> padding_idx = std::nullopt;
};

/// What the backward passes need from the forward pass (the indices are passed again).
template <class Scalar>
struct EmbeddingCache {
  Shape indices_shape;  ///< shape of the indices
  Shape y_shape;        ///< `indices_shape + (D,)`
  Index Q = 0;          ///< positions: `numel(indices)`
  Index V = 0;          ///< `num_embeddings`
  Index D = 0;          ///< `embedding_dim`
  Index padding = -1;   ///< the padding row in `[0, V)`, or `-1` for none
};

/// Output of the forward pass: `y` and the cache for backward.
template <class Scalar>
struct EmbeddingForward {
  Tensor<Scalar> y;               ///< `indices.shape + (D,)`
  EmbeddingCache<Scalar> cache;  ///< the shapes and the resolved padding row
};

/// Gradient of the loss with respect to the weight (the indices have none).
template <class Scalar>
struct EmbeddingGrads {
  Tensor<Scalar> dweight;  ///< `(V, D)`
};

/// \brief Scales applied to each term of the staged backward (1 is the derivation; the negative
/// controls drop (0) or flip (−1) it).
struct EmbeddingTermScales {
  double dweight = 1;  ///< embedding.dweight: the scatter-add of the rows of dy
};

namespace detail::embedding {

constexpr const char* kEmbedding = "embedding";

/// The value of a scalar of the oracles with its derivative part dropped: the padding row is a
/// constant of the graph.
template <class S>
S constant(const S& v) {
  if constexpr (requires { v.value(); }) return S(constant(v.value()));
  else if constexpr (requires { v.imag(); }) return S(v.real());
  else return v;
}

template <class Scalar>
void shapes(const Tensor<std::int64_t>& indices, const Tensor<Scalar>& weight,
            const EmbeddingConfig& cfg, EmbeddingCache<Scalar>& c) {
  if (cfg.num_embeddings < 1 || cfg.embedding_dim < 1) {
    std::ostringstream msg;
    msg << "embedding: num_embeddings and embedding_dim must be >= 1; got " << cfg.num_embeddings
        << " and " << cfg.embedding_dim;
    throw InvalidArgument(msg.str());
  }
  const std::array<Index, 2> ws{cfg.num_embeddings, cfg.embedding_dim};
  require_shape(weight, ws, kEmbedding, "weight (num_embeddings, embedding_dim)");
  Index pad = -1;
  if (cfg.padding_idx) {
    const Index p = *cfg.padding_idx;
    if (p >= cfg.num_embeddings || p < -cfg.num_embeddings) {
      std::ostringstream msg;
      msg << "embedding: padding_idx must be within num_embeddings, in [" << -cfg.num_embeddings
          << ", " << cfg.num_embeddings << "); got " << p;
      throw InvalidArgument(msg.str());
    }
    pad = p < 0 ? p + cfg.num_embeddings : p;
  }
  for (Index q = 0; q < indices.size(); ++q)
    if (indices[q] < 0 || indices[q] >= cfg.num_embeddings) {
      std::ostringstream msg;
      msg << "embedding: index " << indices[q] << " at flat position " << q
          << " of indices of shape " << to_string(indices.shape()) << " is out of range [0, "
          << cfg.num_embeddings << ") (num_embeddings)";
      throw InvalidArgument(msg.str());
    }
  if (!same_shape(c.indices_shape, indices.shape()) ||
      c.y_shape.size() != indices.shape().size() + 1 || c.y_shape.back() != cfg.embedding_dim) {
    c.indices_shape = indices.shape();
    c.y_shape = indices.shape();
    c.y_shape.push_back(cfg.embedding_dim);
  }
  c.Q = indices.size();
  c.V = cfg.num_embeddings;
  c.D = cfg.embedding_dim;
  c.padding = pad;
}

template <class Scalar>
void check_backward(const Tensor<Scalar>& dy, const Tensor<std::int64_t>& indices,
                    const EmbeddingCache<Scalar>& c) {
  if (!same_shape(indices.shape(), c.indices_shape)) {
    std::ostringstream msg;
    msg << "embedding: cache was made for indices of shape " << to_string(c.indices_shape)
        << " but indices has shape " << to_string(indices.shape());
    throw InvalidArgument(msg.str());
  }
  require_shape(dy, c.y_shape, kEmbedding, "dy (must match y)");
}

}  // namespace detail::embedding

/// \brief Forward pass writing into caller-provided `y` and `cache`; allocates nothing when the
/// cache is reused.
/// \param indices  integer tensor of any shape, values in `[0, num_embeddings)`
/// \param weight   `(num_embeddings, embedding_dim)`
/// \param cfg      `num_embeddings`, `embedding_dim`, `padding_idx`
/// \param y        output, preallocated `indices.shape + (embedding_dim,)`
/// \param cache    output
/// \throws InvalidArgument for an index out of range (naming it, its position and the range), a
///         `padding_idx` outside `[-V, V)`, a `weight` not `(V, D)`, or `y` of another shape.
template <class Scalar>
void embedding_forward_into(const Tensor<std::int64_t>& indices, const Tensor<Scalar>& weight,
                            const EmbeddingConfig& cfg, Tensor<Scalar>& y,
                            EmbeddingCache<Scalar>& cache) {
  detail::embedding::shapes(indices, weight, cfg, cache);
  require_shape(y, cache.y_shape, detail::embedding::kEmbedding, "y (output)");
  const Index D = cache.D;
  for (Index q = 0; q < cache.Q; ++q) {
    const Index r = indices[q];
    //! [embedding.forward]
    // y_q = W[idx_q]; the padding row is read as a constant (no derivative flows into it).
    for (Index d = 0; d < D; ++d)
      y[q * D + d] =
          r == cache.padding ? detail::embedding::constant(weight[r * D + d]) : weight[r * D + d];
    //! [embedding.forward]
  }
}

/// \brief Forward pass (allocating wrapper of embedding_forward_into()).
template <class Scalar>
EmbeddingForward<Scalar> embedding_forward(const Tensor<std::int64_t>& indices,
                                           const Tensor<Scalar>& weight,
                                           const EmbeddingConfig& cfg) {
  EmbeddingForward<Scalar> out;
  detail::embedding::shapes(indices, weight, cfg, out.cache);
  out.y = Tensor<Scalar>(out.cache.y_shape);
  embedding_forward_into(indices, weight, cfg, out.y, out.cache);
  return out;
}

/// \brief Staged backward pass: the scatter-add of the rows of `dy`, position by position.
/// \param dy       `indices.shape + (D,)`
/// \param indices  the forward's indices
/// \param cache    from the forward pass
/// \param scales   term scales for the negative controls; leave at the default
/// \throws InvalidArgument if `dy` or `indices` does not match the cache.
template <class Scalar>
EmbeddingGrads<Scalar> embedding_backward_staged(const Tensor<Scalar>& dy,
                                                 const Tensor<std::int64_t>& indices,
                                                 const EmbeddingCache<Scalar>& cache,
                                                 const EmbeddingTermScales& scales = {}) {
  detail::embedding::check_backward(dy, indices, cache);
  const Index D = cache.D;
  EmbeddingGrads<Scalar> g{Tensor<Scalar>({cache.V, D})};
  // Step 1. W_{r,d} reaches y_{q,d} of every position q with idx_q = r, with derivative 1.
  for (Index q = 0; q < cache.Q; ++q) {
    const Index r = indices[q];
    if (r == cache.padding) continue;  // the padding row is a constant: no gradient
    //! [embedding.dweight]
    // dW[idx_q] += dy_q: repeated indices add into the same row, in the order of q
    for (Index d = 0; d < D; ++d) g.dweight[r * D + d] += Scalar(scales.dweight) * dy[q * D + d];
    //! [embedding.dweight]
  }
  return g;
}

/// \brief Fused backward pass writing into a caller-provided `dweight`; allocates nothing.
/// Deterministic: the columns are split over the threads and each adds the positions in order.
/// \param dy       `indices.shape + (D,)`
/// \param indices  the forward's indices
/// \param cache    from the forward pass
/// \param dweight  output `(V, D)`, overwritten
/// \throws InvalidArgument on mismatched shapes of any argument or output.
template <class Scalar>
void embedding_backward_into(const Tensor<Scalar>& dy, const Tensor<std::int64_t>& indices,
                             const EmbeddingCache<Scalar>& cache, Tensor<Scalar>& dweight) {
  using namespace detail::embedding;
  check_backward(dy, indices, cache);
  const std::array<Index, 2> ws{cache.V, cache.D};
  require_shape(dweight, ws, kEmbedding, "dweight (output)");
  const Index Q = cache.Q, D = cache.D, pad = cache.padding;
  const std::int64_t* idx = indices.data();
  const Scalar* g = dy.data();
  Scalar* dw = dweight.data();
  //! [embedding.dweight_fused]
  // Each thread owns a range of columns [d0, d1) of every row: it zeroes them, then adds dy_q's
  // columns into row idx_q for q in order. No two threads write the same element, and each
  // element's sum runs over q in the same order at any thread count.
  parallel::parallel_ranges(D, cache.V * D + Q * D, [&](Index d0, Index d1, Index, Index) {
    for (Index r = 0; r < cache.V; ++r)
      for (Index d = d0; d < d1; ++d) dw[r * D + d] = Scalar(0);
    for (Index q = 0; q < Q; ++q) {
      const Index r = idx[q];
      if (r == pad) continue;
      Scalar* row = dw + r * D;
      const Scalar* src = g + q * D;
      for (Index d = d0; d < d1; ++d) row[d] += src[d];
    }
  });
  //! [embedding.dweight_fused]
}

/// \brief Fused backward pass (allocating wrapper of embedding_backward_into()).
template <class Scalar>
EmbeddingGrads<Scalar> embedding_backward(const Tensor<Scalar>& dy,
                                          const Tensor<std::int64_t>& indices,
                                          const EmbeddingCache<Scalar>& cache) {
  EmbeddingGrads<Scalar> g{Tensor<Scalar>({cache.V, cache.D})};
  embedding_backward_into(dy, indices, cache, g.dweight);
  return g;
}

using EmbeddingForwardF = EmbeddingForward<float>;   ///< float alias
using EmbeddingForwardD = EmbeddingForward<double>;  ///< double alias

}  // namespace gradproof::ops
