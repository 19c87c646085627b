/// \file
/// \brief NumPy `.npy` files: read and write the arrays that `gradproof check` compares.
///
/// The format (NumPy's `numpy.lib.format`): the magic `\x93NUMPY`, a version byte pair (1.0, 2.0
/// or 3.0), the header's length (2 bytes little-endian in 1.0, 4 bytes in 2.0 and 3.0), the header
/// (a Python dict literal with `descr`, `fortran_order` and `shape`, padded with spaces and ended
/// by a newline), then the data. Read here: little-endian `float16` (`<f2`), `bfloat16` (stored as
/// the raw 2-byte void `<V2`/`|V2` that ml_dtypes and `tensor.view(torch.int16)` dumps give, or
/// as `uint16` `<u2`), `float32` (`<f4`), `float64` (`<f8`), and the index types `int32` (`<i4`)
/// and `int64` (`<i8`), in C or Fortran order. Anything else is refused with an InvalidArgument
/// that names the file and what it holds. Every value of these types is exact in float64 (an
/// int64 beyond \f$2^{53}\f$ is refused), so an array is read as float64 values in C order
/// together with the dtype it was stored in.
#pragma once

#include "gradproof/tensor.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace gradproof::io {

/// The element types of a `.npy` file that gradproof reads and writes.
enum class NpyDtype { float16, bfloat16, float32, float64, int32, int64 };

/// The dtype's NumPy name (`float16`, `bfloat16`, `float32`, `float64`, `int32`, `int64`).
/// \param d  the dtype
const char* name(NpyDtype d) noexcept;

/// Bytes per element of `d`.
/// \param d  the dtype
std::size_t itemsize(NpyDtype d) noexcept;

/// Whether `d` is a floating-point type (the types of inputs and gradients; the others are indices).
/// \param d  the dtype
bool is_float(NpyDtype d) noexcept;

/// The largest header a file may have: NumPy's own limit (`max_header_size`, 10000 bytes), which
/// `numpy.load` also refuses to go past by default.
inline constexpr std::size_t kMaxNpyHeader = 10000;

/// An array read from a `.npy` file: its values in C (row-major) order as float64, its shape, and
/// how it was stored.
struct NpyArray {
  TensorD values;              ///< the values, row-major, exactly as stored (converted to float64)
  NpyDtype dtype{};            ///< the element type in the file
  bool fortran_order = false;  ///< whether the file stored them in Fortran (column-major) order
  int major_version = 1;       ///< the format version of the file: 1, 2 or 3
};

/// \brief Parses the bytes of a `.npy` file.
/// \param bytes  the whole file
/// \param what   the file's name, for error messages
/// \throws InvalidArgument naming `what` for a wrong magic, an unknown version, a header longer
///         than kMaxNpyHeader or than the file, a malformed header, an unsupported dtype (big-endian,
///         complex, object, structured, another integer width), a negative extent, a shape whose
///         element count overflows or whose bytes exceed those in the file (refused before anything
///         is allocated), truncated data, bytes after the data, or an int64 beyond \f$2^{53}\f$.
NpyArray parse_npy(std::string_view bytes, const std::string& what);

/// \brief Reads a `.npy` file (see parse_npy()).
/// \param path  the file
/// \throws InvalidArgument naming `path` if it cannot be opened or read, or as parse_npy().
NpyArray read_npy(const std::string& path);

/// \brief The bytes of a `.npy` file (format 1.0, header padded to 64 bytes as NumPy writes it).
/// \param shape    the extents, outermost first
/// \param values   `numel(shape)` values in C order
/// \param dtype    the element type written; values are rounded to it (to nearest, ties to even;
///                 an integer type takes integral values only)
/// \param fortran  write the data in Fortran order (the header says so); an array that is the same
///                 in both orders (at most one extent above 1, or empty) is written as C order, as numpy does
/// \throws InvalidArgument if an integer dtype is given a value that is not an integer in range.
std::string npy_bytes(ShapeView shape, const double* values, NpyDtype dtype, bool fortran = false);

/// \brief Writes a `.npy` file (see npy_bytes()).
/// \param path     the file (replaced)
/// \param values   the array, any shape (values in C order)
/// \param dtype    the element type written
/// \param fortran  write the data in Fortran order
/// \throws InvalidArgument naming `path` if it cannot be written completely.
void write_npy(const std::string& path, const TensorD& values, NpyDtype dtype = NpyDtype::float64,
               bool fortran = false);

/// The float16 value of the bits `h` (IEEE 754 binary16), exactly.
/// \param h  the bits
double half_to_double(std::uint16_t h) noexcept;

/// The bits of `v` rounded to float16 (to nearest, ties to even; overflow to ±Inf, NaN kept).
/// \param v  the value
std::uint16_t double_to_half(double v) noexcept;

/// The bfloat16 value of the bits `b` (the upper half of a float32), exactly.
/// \param b  the bits
double bfloat16_to_double(std::uint16_t b) noexcept;

/// The bits of `v` rounded to bfloat16 (to nearest, ties to even, from `v` rounded to float32).
/// \param v  the value
std::uint16_t double_to_bfloat16(double v) noexcept;

}  // namespace gradproof::io
