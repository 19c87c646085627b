/// \file
/// \brief The handwritten digits data set that Debian's python3-sklearn ships
/// (`sklearn/datasets/data/digits.csv.gz`: 1,797 images of 8×8 pixels with values 0–16, one image
/// per line as 64 pixel values and its label 0–9), read as a gzip file with zlib, and a fixed,
/// seeded, stratified train/test split.
///
/// Shape legend: `N` images, 64 pixels (row-major 8×8) per image.
#pragma once

#include "gradproof/tensor.hpp"

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace gradproof::train {

inline constexpr Index kPixels = 64;   ///< 8×8
inline constexpr Index kClasses = 10;  ///< the digits 0–9

/// Images and labels.
struct Digits {
  Tensor<float> pixels;       ///< `(N, 64)`: the raw values 0–16
  std::vector<Index> labels;  ///< `N` labels in 0–9
  /// Number of images.
  Index size() const noexcept { return static_cast<Index>(labels.size()); }
};

/// \brief Reads digits.csv.gz (gzip or plain text: zlib reads both).
/// \param path  the file
/// \throws InvalidArgument naming the file and the line when the file cannot be opened, a line
///         has other than 65 fields, a field is not a number, a pixel is outside [0, 16] or a
///         label is not an integer in 0–9, or the file holds no image.
Digits load_digits(const std::string& path);

/// The images `rows` of `d`, in that order.
/// \throws InvalidArgument if a row is out of range.
Digits subset(const Digits& d, const std::vector<Index>& rows);

/// A split: which rows of the data set are for training and which for testing.
struct Split {
  std::vector<Index> train;  ///< rows, in the order the shuffle left them
  std::vector<Index> test;   ///< rows, ascending
};

/// \brief A stratified split: each class gives the test set its share of `n_test` (largest
/// remainders, so that the shares add up to `n_test` exactly), chosen by a Fisher–Yates shuffle of
/// the class's rows driven by `std::mt19937_64(seed)` (whose sequence the C++ standard fixes; the
/// index is drawn without `std::uniform_int_distribution`, whose algorithm it does not). The same
/// data and seed give the same split with every compiler.
/// \param labels  one label per row, in [0, classes)
/// \param n_test  size of the test set, in [1, N − 1]
/// \param seed    the generator's seed
/// \throws InvalidArgument if `n_test` is out of range or a label is out of [0, 9].
Split stratified_split(const std::vector<Index>& labels, Index n_test, std::uint64_t seed);

/// \brief A uniform draw from [0, n) by rejection from a 64-bit generator's output (no modulo
/// bias; fixed by the generator's sequence alone).
template <class Rng>
Index uniform_index(Rng& rng, Index n) {
  const std::uint64_t un = static_cast<std::uint64_t>(n);
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % un;  // largest multiple of n
  std::uint64_t r;
  do r = rng();
  while (r >= limit);
  return static_cast<Index>(r % un);
}

/// Shuffles `v` in place (Fisher–Yates with uniform_index()).
template <class T, class Rng>
void shuffle(std::vector<T>& v, Rng& rng) {
  for (Index i = static_cast<Index>(v.size()) - 1; i > 0; --i)
    std::swap(v[static_cast<std::size_t>(i)], v[static_cast<std::size_t>(uniform_index(rng, i + 1))]);
}

}  // namespace gradproof::train
