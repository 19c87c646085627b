// NumPy .npy files (io/npy.hpp): every dtype and order read back as written, the bytes of known
// files (the header numpy writes, Fortran order, versions 2.0 and 3.0), and each malformed file
// refused with a message that names the file and what is wrong. Files written by numpy itself are
// read in tests/io/npy_numpy.py (ctest io.npy_numpy).
#include "gradproof/io/npy.hpp"
#include "support/inputs.hpp"

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

using namespace gradproof;
using namespace gradproof::io;
using gradproof::testing::iota;
using gradproof::testing::MessageHas;

namespace {

// A file with the given version, descr, order and shape header and raw data bytes.
std::string file(int major, const std::string& dict, const std::string& data) {
  std::string h = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  h.append((64 - (prefix + h.size() + 1) % 64) % 64, ' ');
  h += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  const std::uint32_t n = static_cast<std::uint32_t>(h.size());
  out.append(reinterpret_cast<const char*>(&n), major == 1 ? 2 : 4);
  return out + h + data;
}

template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

const NpyDtype kAll[] = {NpyDtype::float16, NpyDtype::bfloat16, NpyDtype::float32,
                         NpyDtype::float64, NpyDtype::int32,    NpyDtype::int64};

// Values every dtype holds exactly: small integers and halves.
TensorD exact_values(const Shape& s) {
  TensorD t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<double>(i % 7) - 3;
  return t;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(npy)

BOOST_AUTO_TEST_CASE(every_dtype_and_order_reads_back_as_written) {
  for (const Shape& s : {Shape{}, Shape{5}, Shape{3, 4}, Shape{2, 3, 4}, Shape{2, 0, 3}}) {
    const TensorD t = exact_values(s);
    for (NpyDtype d : kAll) {
      for (bool fortran : {false, true}) {
        const std::string bytes = npy_bytes(t.shape(), t.data(), d, fortran);
        BOOST_TEST((bytes.size() - static_cast<std::size_t>(t.size()) * itemsize(d)) % 64 == 0u,
                   "header padded to 64 bytes");
        const NpyArray a = parse_npy(bytes, "t.npy");
        BOOST_TEST((a.dtype == d), name(d));
        BOOST_TEST(a.fortran_order == (fortran && s.size() > 1 && t.size() > 0), to_string(s));
        BOOST_TEST(a.values.shape() == s, name(d) << " " << to_string(a.values.shape()));
        for (Index i = 0; i < t.size(); ++i) BOOST_TEST(a.values[i] == t[i], name(d) << " fortran=" << fortran << " " << i);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(the_header_is_the_one_numpy_writes) {
  // np.save(np.zeros((2, 3), np.float32)) in numpy 1.24: 152 bytes, a header of 0x76 = 118 bytes
  // (the dict, 21 − 1 spaces of room for the growing axis, padding to 128, a newline), 24 of data.
  const TensorD t = exact_values({2, 3});
  const std::string b = npy_bytes(t.shape(), t.data(), NpyDtype::float32);
  BOOST_TEST(b.substr(0, 10) == std::string("\x93NUMPY\x01\x00\x76\x00", 10));
  BOOST_TEST(b.substr(10, 60) == "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } ");
  BOOST_TEST(b.size() == 152u);
  BOOST_TEST(b[127] == '\n');
  BOOST_TEST(b.substr(70, 57) == std::string(57, ' '));
  const std::string v = npy_bytes(Shape{7}, exact_values({7}).data(), NpyDtype::float64);
  BOOST_TEST(v.substr(10, 58) == "{'descr': '<f8', 'fortran_order': False, 'shape': (7,), } ");
  BOOST_TEST(v.size() == 128u + 56u);
}

BOOST_AUTO_TEST_CASE(fortran_order_lists_the_first_axis_fastest) {
  // [[1, 2, 3], [4, 5, 6]] in Fortran order is 1 4 2 5 3 6.
  const std::string f = file(1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }",
                             raw(std::vector<double>{1, 4, 2, 5, 3, 6}));
  const NpyArray a = parse_npy(f, "f.npy");
  for (Index i = 0; i < 6; ++i) BOOST_TEST(a.values[i] == static_cast<double>(i + 1));
  // Rank 3, (2, 2, 2): Fortran position f = i + 2j + 4k holds element (i, j, k) = C offset 4i + 2j + k.
  std::vector<std::int32_t> data(8);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      for (int k = 0; k < 2; ++k) data[i + 2 * j + 4 * k] = 4 * i + 2 * j + k;
  const NpyArray b = parse_npy(file(1, "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 2, 2), }", raw(data)), "b.npy");
  for (Index i = 0; i < 8; ++i) BOOST_TEST(b.values[i] == static_cast<double>(i));
}

BOOST_AUTO_TEST_CASE(versions_2_and_3_are_read) {
  for (int major : {2, 3}) {
    const NpyArray a = parse_npy(file(major, "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }",
                                      raw(std::vector<std::int64_t>{-1, 0, 9007199254740992})),
                                 "v.npy");
    BOOST_TEST(a.major_version == major);
    BOOST_TEST(a.values[0] == -1.0);
    BOOST_TEST(a.values[2] == 9007199254740992.0);
  }
}

BOOST_AUTO_TEST_CASE(bfloat16_as_void_or_uint16_and_float16_bits) {
  // bfloat16 1.5 = 0x3FC0, -2 = 0xC000; float16 1.5 = 0x3E00, the smallest subnormal 0x0001 = 2^-24,
  // the largest finite 0x7BFF = 65504, Inf 0x7C00.
  for (const char* descr : {"<V2", "|V2", "<u2"}) {
    const NpyArray a = parse_npy(file(1, std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (2,), }",
                                      raw(std::vector<std::uint16_t>{0x3FC0, 0xC000})),
                                 "bf.npy");
    BOOST_TEST((a.dtype == NpyDtype::bfloat16));
    BOOST_TEST(a.values[0] == 1.5);
    BOOST_TEST(a.values[1] == -2.0);
  }
  const NpyArray h = parse_npy(file(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }",
                                    raw(std::vector<std::uint16_t>{0x3E00, 0x0001, 0x7BFF, 0x7C00})),
                               "h.npy");
  BOOST_TEST(h.values[0] == 1.5);
  BOOST_TEST(h.values[1] == std::ldexp(1.0, -24));
  BOOST_TEST(h.values[2] == 65504.0);
  BOOST_TEST(std::isinf(h.values[3]));
}

BOOST_AUTO_TEST_CASE(rounding_to_16_bits_is_to_nearest_ties_to_even) {
  // Every float16 bit pattern that is a number reads and writes back to itself.
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const double v = half_to_double(h);
    if (std::isnan(v)) continue;
    BOOST_TEST_REQUIRE(double_to_half(v) == h, "float16 bits " << b);
    const bool bf_roundtrip = std::isnan(bfloat16_to_double(h)) || double_to_bfloat16(bfloat16_to_double(h)) == h;
    BOOST_TEST_REQUIRE(bf_roundtrip, "bfloat16 bits " << b);
  }
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to 1 (even); 1 + 3·2^-11 to 1 + 2^-9.
  BOOST_TEST(double_to_half(1 + std::ldexp(1.0, -11)) == 0x3C00);
  BOOST_TEST(double_to_half(1 + 3 * std::ldexp(1.0, -11)) == 0x3C02);
  BOOST_TEST(double_to_half(65519.0) == 0x7BFF);
  BOOST_TEST(double_to_half(65520.0) == 0x7C00);
  BOOST_TEST(double_to_bfloat16(1 + std::ldexp(1.0, -8)) == 0x3F80);  // tie to even
  BOOST_TEST(double_to_bfloat16(1 + 3 * std::ldexp(1.0, -8)) == 0x3F82);
}

BOOST_AUTO_TEST_CASE(write_npy_writes_a_file_read_npy_reads) {
  const auto path = (std::filesystem::temp_directory_path() / "gradproof_npy_test.npy").string();
  const TensorD t = iota({3, 5});
  write_npy(path, t, NpyDtype::float64, true);
  const NpyArray a = read_npy(path);
  std::filesystem::remove(path);
  for (Index i = 0; i < t.size(); ++i) BOOST_TEST(a.values[i] == t[i]);
  BOOST_CHECK_EXCEPTION(read_npy("no/such/file.npy"), InvalidArgument, (MessageHas{{"no/such/file.npy", "cannot open"}}));
  BOOST_CHECK_EXCEPTION(write_npy("no/such/dir/x.npy", t), InvalidArgument, (MessageHas{{"no/such/dir/x.npy", "cannot open"}}));
}

BOOST_AUTO_TEST_CASE(an_integer_dtype_takes_only_integers) {
  const double v[] = {0.5};
  BOOST_CHECK_EXCEPTION(npy_bytes(Shape{1}, v, NpyDtype::int32), InvalidArgument, (MessageHas{{"0.5", "int32"}}));
}

// ---- Malformed files: each refused, naming the file and what is wrong -------------------------

const std::string kGood = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

BOOST_AUTO_TEST_CASE(wrong_magic_is_refused) {
  std::string f = file(1, kGood, std::string(24, '\0'));
  f[1] = 'M';
  BOOST_CHECK_EXCEPTION(parse_npy(f, "m.npy"), InvalidArgument, (MessageHas{{"m.npy", "magic"}}));
  BOOST_CHECK_EXCEPTION(parse_npy("PK\x03\x04", "z.npz"), InvalidArgument, (MessageHas{{"z.npz", "not a NumPy .npy file"}}));
}

BOOST_AUTO_TEST_CASE(unknown_version_is_refused) {
  std::string f = file(1, kGood, std::string(24, '\0'));
  f[6] = 4;
  BOOST_CHECK_EXCEPTION(parse_npy(f, "v.npy"), InvalidArgument, (MessageHas{{"v.npy", "version 4.0"}}));
}

BOOST_AUTO_TEST_CASE(truncated_data_is_refused) {
  const std::string f = file(1, kGood, std::string(23, '\0'));
  BOOST_CHECK_EXCEPTION(parse_npy(f, "t.npy"), InvalidArgument,
                        (MessageHas{{"t.npy", "truncated", "(2, 3)", "float32", "6 × 4", "has 23"}}));
}

BOOST_AUTO_TEST_CASE(truncated_header_is_refused) {
  const std::string f = file(1, kGood, "").substr(0, 40);
  BOOST_CHECK_EXCEPTION(parse_npy(f, "h.npy"), InvalidArgument, (MessageHas{{"h.npy", "truncated", "header"}}));
}

BOOST_AUTO_TEST_CASE(header_too_long_is_refused) {
  // A 2.0 file whose header claims 2^32 − 1 bytes: refused before anything is read or allocated.
  std::string f("\x93NUMPY\x02\x00\xff\xff\xff\xff", 12);
  BOOST_CHECK_EXCEPTION(parse_npy(f, "l.npy"), InvalidArgument, (MessageHas{{"l.npy", "header too long", "4294967295", "10000"}}));
  // And a well-formed one just over numpy's limit.
  const std::string big = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + std::string(10000, ' ');
  BOOST_CHECK_EXCEPTION(parse_npy(file(2, big, std::string(24, '\0')), "l2.npy"), InvalidArgument,
                        (MessageHas{{"l2.npy", "header too long"}}));
}

BOOST_AUTO_TEST_CASE(huge_shape_is_refused_before_allocating) {
  // The product overflows 64 bits.
  BOOST_CHECK_EXCEPTION(parse_npy(file(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387905, 4), }", ""),
                                  "o.npy"),
                        InvalidArgument, (MessageHas{{"o.npy", "(4611686018427387905, 4)", "overflows"}}));
  // The product fits but the bytes (2^61 × 8 overflows size_t) are not in the file: refused from the
  // element count, not from a byte count that wrapped around.
  BOOST_CHECK_EXCEPTION(parse_npy(file(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }",
                                       std::string(16, '\0')),
                                  "b.npy"),
                        InvalidArgument, (MessageHas{{"b.npy", "truncated or wrong shape", "2305843009213693952"}}));
  // An extent that does not fit in the index type at all.
  BOOST_CHECK_EXCEPTION(parse_npy(file(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,), }", ""),
                                  "e.npy"),
                        InvalidArgument, (MessageHas{{"e.npy", "overflows"}}));
}

BOOST_AUTO_TEST_CASE(bytes_after_the_data_are_refused) {
  BOOST_CHECK_EXCEPTION(parse_npy(file(1, kGood, std::string(28, '\0')), "x.npy"), InvalidArgument,
                        (MessageHas{{"x.npy", "4 bytes after the data"}}));
}

BOOST_AUTO_TEST_CASE(unsupported_dtypes_are_refused_naming_what_the_file_holds) {
  const std::pair<const char*, const char*> cases[] = {{">f8", "big-endian"},    {"<c16", "complex"},
                                                       {"|O", "Python objects"}, {"|b1", "booleans"},
                                                       {"<i2", "integers of another width"}, {"<U3", "strings"},
                                                       {"<f16", "floats of another width"}};
  for (const auto& [descr, holds] : cases) {
    const std::string f = file(1, std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (1,), }",
                               std::string(16, '\0'));
    BOOST_CHECK_EXCEPTION(parse_npy(f, "d.npy"), InvalidArgument, (MessageHas{{"d.npy", holds, descr}}));
  }
  const std::string structured = file(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", "");
  BOOST_CHECK_EXCEPTION(parse_npy(structured, "s.npy"), InvalidArgument, (MessageHas{{"s.npy", "structured"}}));
}

BOOST_AUTO_TEST_CASE(malformed_headers_are_refused) {
  const std::pair<const char*, const char*> cases[] = {
      {"{'descr': '<f4', 'shape': (2, 3), }", "lacks 'fortran_order'"},
      {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 3), }", "neither True nor False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", "non-negative integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}", "unknown key 'extra'"},
      {"['descr', '<f4']", "expected '{'"},
      {"{'descr': '<f4", "unterminated string"}};
  for (const auto& [dict, expect] : cases)
    BOOST_CHECK_EXCEPTION(parse_npy(file(1, dict, std::string(24, '\0')), "p.npy"), InvalidArgument,
                          (MessageHas{{"p.npy", expect}}));
}

BOOST_AUTO_TEST_CASE(int64_beyond_2_to_53_is_refused) {
  const std::string f = file(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
                             raw(std::vector<std::int64_t>{(std::int64_t(1) << 53) + 1}));
  BOOST_CHECK_EXCEPTION(parse_npy(f, "i.npy"), InvalidArgument, (MessageHas{{"i.npy", "9007199254740993", "2^53"}}));
}

BOOST_AUTO_TEST_SUITE_END()
