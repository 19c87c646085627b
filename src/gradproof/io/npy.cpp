// NumPy .npy files (see npy.hpp).
#include "gradproof/io/npy.hpp"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <sstream>

namespace gradproof::io {
namespace {

static_assert(std::endian::native == std::endian::little, "the .npy reader assumes a little-endian machine");

constexpr std::string_view kMagic("\x93NUMPY", 6);

[[noreturn]] void fail(const std::string& what, const std::string& msg) {
  throw InvalidArgument(what + ": " + msg);
}

std::string quoted(std::string_view s) {
  std::string out = "'";
  for (char c : s) out += std::isprint(static_cast<unsigned char>(c)) ? std::string(1, c) : "?";
  return out + "'";
}

// The header's dict: {'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }. Python literal
// syntax, restricted to what numpy writes and reads here: string keys; a string, a boolean or a
// tuple of non-negative integers as values.
struct Header {
  std::optional<std::string> descr;
  std::optional<bool> fortran;
  std::optional<Shape> shape;
};

class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  Header parse() {
    Header h;
    skip();
    expect('{');
    while (true) {
      skip();
      if (peek() == '}') { ++i_; break; }
      const std::string key = string();
      skip();
      expect(':');
      skip();
      if (key == "descr") {
        if (peek() != '\'' && peek() != '"')
          fail(what_, "header: 'descr' is not a simple type string (a structured dtype is not supported): " +
                          quoted(s_));
        h.descr = string();
      } else if (key == "fortran_order") {
        h.fortran = boolean();
      } else if (key == "shape") {
        h.shape = tuple();
      } else {
        fail(what_, "header has an unknown key " + quoted(key) + " (expected 'descr', 'fortran_order', 'shape')");
      }
      skip();
      if (peek() == ',') { ++i_; continue; }
      skip();
      expect('}');
      break;
    }
    skip();
    if (i_ != s_.size()) fail(what_, "header has text after its dict: " + quoted(s_.substr(i_)));
    if (!h.descr || !h.fortran || !h.shape)
      fail(what_, "header lacks " + std::string(!h.descr ? "'descr'" : !h.fortran ? "'fortran_order'" : "'shape'") +
                      ": " + quoted(s_));
    return h;
  }

 private:
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (peek() != c)
      fail(what_, std::string("malformed header: expected '") + c + "' at byte " + std::to_string(i_) + " of " +
                      quoted(s_));
    ++i_;
  }
  std::string string() {
    const char q = peek();
    if (q != '\'' && q != '"') expect('\'');
    ++i_;
    const std::size_t end = s_.find(q, i_);
    if (end == std::string_view::npos) fail(what_, "malformed header: unterminated string in " + quoted(s_));
    std::string out(s_.substr(i_, end - i_));
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.substr(i_, 4) == "True") { i_ += 4; return true; }
    if (s_.substr(i_, 5) == "False") { i_ += 5; return false; }
    fail(what_, "malformed header: 'fortran_order' is neither True nor False in " + quoted(s_));
  }
  Shape tuple() {
    expect('(');
    Shape shape;
    while (true) {
      skip();
      if (peek() == ')') { ++i_; break; }
      if (!std::isdigit(static_cast<unsigned char>(peek())))
        fail(what_, "header: the shape holds something other than a non-negative integer: " + quoted(s_));
      Index v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (__builtin_mul_overflow(v, Index(10), &v) || __builtin_add_overflow(v, Index(peek() - '0'), &v))
          fail(what_, "header: an extent of the shape overflows the index type: " + quoted(s_));
        ++i_;
      }
      if (peek() == 'L') ++i_;  // Python 2's long literal, which old numpy wrote
      shape.push_back(v);
      skip();
      if (peek() == ',') { ++i_; continue; }
      skip();
      expect(')');
      break;
    }
    return shape;
  }

  std::string_view s_;
  const std::string& what_;
  std::size_t i_ = 0;
};

std::optional<NpyDtype> dtype_of(const std::string& descr) {
  static const std::map<std::string, NpyDtype> known = {
      {"<f2", NpyDtype::float16}, {"<V2", NpyDtype::bfloat16}, {"|V2", NpyDtype::bfloat16},
      {"<u2", NpyDtype::bfloat16}, {"<f4", NpyDtype::float32},  {"<f8", NpyDtype::float64},
      {"<i4", NpyDtype::int32},   {"<i8", NpyDtype::int64}};
  const auto it = known.find(descr);
  if (it == known.end()) return std::nullopt;
  return it->second;
}

std::string descr_of(NpyDtype d) {
  switch (d) {
    case NpyDtype::float16: return "<f2";
    case NpyDtype::bfloat16: return "<V2";
    case NpyDtype::float32: return "<f4";
    case NpyDtype::float64: return "<f8";
    case NpyDtype::int32: return "<i4";
    case NpyDtype::int64: return "<i8";
  }
  return "?";
}

// What a descr gradproof does not read holds, in words.
std::string unsupported(const std::string& descr) {
  std::string what;
  if (!descr.empty() && descr[0] == '>') what = "big-endian data";
  else if (descr.find('c') != std::string::npos) what = "complex numbers";
  else if (descr.find('O') != std::string::npos) what = "Python objects";
  else if (descr.find('b') != std::string::npos || descr.find('?') != std::string::npos) what = "booleans or bytes";
  else if (descr.find('i') != std::string::npos || descr.find('u') != std::string::npos) what = "integers of another width";
  else if (descr.find('U') != std::string::npos || descr.find('S') != std::string::npos) what = "strings";
  else if (descr.find('f') != std::string::npos) what = "floats of another width";
  else what = "an unsupported type";
  return "holds " + what + " (dtype " + quoted(descr) +
         "); gradproof reads little-endian float16 '<f2', bfloat16 ('<V2', '|V2' or uint16 '<u2'), float32 "
         "'<f4', float64 '<f8', int32 '<i4' and int64 '<i8'";
}

template <class T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class T>
void store(std::string& out, T v) {
  char b[sizeof v];
  std::memcpy(b, &v, sizeof v);
  out.append(b, sizeof v);
}

// The C-order offset of the element at Fortran-order position `f` of `shape`, and back: a
// Fortran file lists the first axis fastest.
std::vector<Index> fortran_to_c(ShapeView shape, Index n) {
  std::vector<Index> map(static_cast<std::size_t>(n));
  const std::size_t r = shape.size();
  std::vector<Index> idx(r, 0), cstride(r, 1);
  for (std::size_t k = r; k-- > 1;) cstride[k - 1] = cstride[k] * shape[k];
  for (Index f = 0; f < n; ++f) {
    Index c = 0;
    for (std::size_t k = 0; k < r; ++k) c += idx[k] * cstride[k];
    map[static_cast<std::size_t>(f)] = c;
    for (std::size_t k = 0; k < r; ++k) {  // the first axis runs fastest
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
  return map;
}

}  // namespace

const char* name(NpyDtype d) noexcept {
  switch (d) {
    case NpyDtype::float16: return "float16";
    case NpyDtype::bfloat16: return "bfloat16";
    case NpyDtype::float32: return "float32";
    case NpyDtype::float64: return "float64";
    case NpyDtype::int32: return "int32";
    case NpyDtype::int64: return "int64";
  }
  return "?";
}

std::size_t itemsize(NpyDtype d) noexcept {
  switch (d) {
    case NpyDtype::float16:
    case NpyDtype::bfloat16: return 2;
    case NpyDtype::float32:
    case NpyDtype::int32: return 4;
    case NpyDtype::float64:
    case NpyDtype::int64: return 8;
  }
  return 0;
}

bool is_float(NpyDtype d) noexcept { return d != NpyDtype::int32 && d != NpyDtype::int64; }

double half_to_double(std::uint16_t h) noexcept {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  double v;
  if (exp == 0) v = std::ldexp(frac, -24);
  else if (exp == 31) v = frac ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(frac + 1024, exp - 25);
  return sign ? -v : v;
}

std::uint16_t double_to_half(double v) noexcept {
  const std::uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::abs(v);
  if (std::isnan(v)) return sign | 0x7e00;
  if (a >= 65520.0) return sign | 0x7c00;  // rounds to above the largest finite, 65504
  if (a < std::ldexp(1.0, -14)) {          // subnormal: multiples of 2^-24
    const double m = std::nearbyint(std::ldexp(a, 24));  // ties to even (default rounding mode)
    return sign | static_cast<std::uint16_t>(m);           // m = 1024 becomes the smallest normal
  }
  int e;
  std::frexp(a, &e);  // a = f·2^e, f in [0.5, 1)
  const double m = std::nearbyint(std::ldexp(a, 11 - e));  // 11 significant bits, in [1024, 2048]
  Index bits = (Index(e - 1 + 15) << 10) + static_cast<Index>(m) - 1024;  // m = 2048 carries into the exponent
  return sign | static_cast<std::uint16_t>(bits);
}

double bfloat16_to_double(std::uint16_t b) noexcept {
  return static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16));
}

std::uint16_t double_to_bfloat16(double v) noexcept {
  const std::uint32_t f = std::bit_cast<std::uint32_t>(static_cast<float>(v));
  if (std::isnan(v)) return static_cast<std::uint16_t>((f >> 16) | 0x40);
  const std::uint32_t rounded = f + 0x7fff + ((f >> 16) & 1);  // to nearest, ties to even
  return static_cast<std::uint16_t>(rounded >> 16);
}

NpyArray parse_npy(std::string_view bytes, const std::string& what) {
  if (bytes.size() < 8 || bytes.substr(0, 6) != kMagic)
    fail(what, "not a NumPy .npy file (it does not start with the magic \\x93NUMPY; " + std::to_string(bytes.size()) +
                   " bytes)");
  NpyArray a;
  const int major = static_cast<unsigned char>(bytes[6]), minor = static_cast<unsigned char>(bytes[7]);
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    fail(what, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                   " (gradproof reads 1.0, 2.0 and 3.0)");
  a.major_version = major;
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + len_bytes) fail(what, "truncated: the file ends inside the header length");
  const std::size_t header_len =
      major == 1 ? load<std::uint16_t>(bytes.data() + 8) : load<std::uint32_t>(bytes.data() + 8);
  if (header_len > kMaxNpyHeader)
    fail(what, "header too long: " + std::to_string(header_len) + " bytes (at most " + std::to_string(kMaxNpyHeader) +
                   ", numpy's own limit)");
  const std::size_t data_start = 8 + len_bytes + header_len;
  if (bytes.size() < data_start)
    fail(what, "truncated: the header is " + std::to_string(header_len) + " bytes but the file ends after " +
                   std::to_string(bytes.size() - 8 - len_bytes));
  const std::string_view text = bytes.substr(8 + len_bytes, header_len);
  const Header h = HeaderParser(text, what).parse();

  const auto dtype = dtype_of(*h.descr);
  if (!dtype) fail(what, unsupported(*h.descr));
  a.dtype = *dtype;
  a.fortran_order = *h.fortran;
  const auto n = try_numel(*h.shape);
  if (!n) fail(what, "shape " + to_string(*h.shape) + ": the product of the extents overflows the index type");
  const std::size_t have = bytes.size() - data_start, size = itemsize(a.dtype);
  // Compare counts, not bytes: n · size could overflow where n alone did not.
  if (static_cast<std::size_t>(*n) > have / size)
    fail(what, "truncated or wrong shape: shape " + to_string(*h.shape) + " of " + name(a.dtype) + " needs " +
                   std::to_string(*n) + " × " + std::to_string(size) + " bytes of data, the file has " +
                   std::to_string(have));
  if (have != static_cast<std::size_t>(*n) * size)
    fail(what, std::to_string(have - static_cast<std::size_t>(*n) * size) + " bytes after the data of shape " +
                   to_string(*h.shape) + " of " + name(a.dtype) + " (not a single array)");

  std::vector<double> v(static_cast<std::size_t>(*n));
  const char* p = bytes.data() + data_start;
  for (Index i = 0; i < *n; ++i, p += size) {
    double x = 0;
    switch (a.dtype) {
      case NpyDtype::float16: x = half_to_double(load<std::uint16_t>(p)); break;
      case NpyDtype::bfloat16: x = bfloat16_to_double(load<std::uint16_t>(p)); break;
      case NpyDtype::float32: x = load<float>(p); break;
      case NpyDtype::float64: x = load<double>(p); break;
      case NpyDtype::int32: x = load<std::int32_t>(p); break;
      case NpyDtype::int64: {
        const std::int64_t k = load<std::int64_t>(p);
        if (k > (std::int64_t(1) << 53) || k < -(std::int64_t(1) << 53))
          fail(what, "int64 element " + std::to_string(i) + " = " + std::to_string(k) +
                         " is beyond 2^53, not an index gradproof can hold exactly");
        x = static_cast<double>(k);
        break;
      }
    }
    v[static_cast<std::size_t>(i)] = x;
  }
  if (a.fortran_order && h.shape->size() > 1) {
    std::vector<double> c(v.size());
    const auto map = fortran_to_c(*h.shape, *n);
    for (std::size_t f = 0; f < v.size(); ++f) c[static_cast<std::size_t>(map[f])] = v[f];
    v = std::move(c);
  }
  a.values = TensorD(*h.shape, std::move(v));
  return a;
}

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open for reading");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, "read error");
  return parse_npy(bytes, path);
}

std::string npy_bytes(ShapeView shape, const double* values, NpyDtype dtype, bool fortran) {
  const Index n = numel(shape, "npy_bytes: shape");
  // As numpy: an array that is both C- and Fortran-contiguous (at most one extent above 1, or no
  // elements) is written as C order.
  fortran = fortran && n > 0 && std::ranges::count_if(shape, [](Index d) { return d > 1; }) > 1;
  std::string dict = "{'descr': '" + descr_of(dtype) + "', 'fortran_order': " + (fortran ? "True" : "False") +
                     ", 'shape': (";
  for (std::size_t k = 0; k < shape.size(); ++k) dict += (k ? ", " : "") + std::to_string(shape[k]);
  dict += shape.size() == 1 ? ",), }" : "), }";
  // As numpy 1.24's np.save (numpy/lib/format.py): room for the growing axis to reach 21 digits,
  // then spaces so that magic + length + header + '\n' is a multiple of 64 (a whole 64 when it
  // already is), then '\n'. The bytes are those np.save writes for the same array.
  if (!shape.empty()) dict.append(21 - std::to_string(shape[fortran ? shape.size() - 1 : 0]).size(), ' ');
  dict.append(64 - (10 + dict.size() + 1) % 64, ' ');
  dict += '\n';
  std::string out(kMagic);
  out += '\x01';
  out += '\x00';
  store<std::uint16_t>(out, static_cast<std::uint16_t>(dict.size()));
  out += dict;
  std::vector<Index> order(static_cast<std::size_t>(n));
  if (fortran) order = fortran_to_c(shape, n);
  else for (Index i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  out.reserve(out.size() + static_cast<std::size_t>(n) * itemsize(dtype));
  for (Index i = 0; i < n; ++i) {
    const double x = values[order[static_cast<std::size_t>(i)]];
    const auto integral = [&](double lo, double hi) {
      if (!(x == std::trunc(x) && x >= lo && x <= hi)) {
        std::ostringstream msg;
        msg << "npy_bytes: element " << order[static_cast<std::size_t>(i)] << " = " << x << " is not an " << name(dtype);
        throw InvalidArgument(msg.str());
      }
    };
    switch (dtype) {
      case NpyDtype::float16: store(out, double_to_half(x)); break;
      case NpyDtype::bfloat16: store(out, double_to_bfloat16(x)); break;
      case NpyDtype::float32: store(out, static_cast<float>(x)); break;
      case NpyDtype::float64: store(out, x); break;
      case NpyDtype::int32: integral(-2147483648.0, 2147483647.0); store(out, static_cast<std::int32_t>(x)); break;
      case NpyDtype::int64: integral(-9007199254740992.0, 9007199254740992.0); store(out, static_cast<std::int64_t>(x)); break;
    }
  }
  return out;
}

void write_npy(const std::string& path, const TensorD& values, NpyDtype dtype, bool fortran) {
  const std::string bytes = npy_bytes(values.shape(), values.data(), dtype, fortran);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail(path, "cannot open for writing");
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (out.fail()) fail(path, "cannot write " + std::to_string(bytes.size()) + " bytes");
}

}  // namespace gradproof::io
