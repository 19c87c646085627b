// Reading digits.csv.gz with zlib, and the stratified split.
#include "gradproof/train/digits.hpp"

#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <memory>
#include <random>
#include <string_view>

namespace gradproof::train {

namespace {

struct GzClose {
  void operator()(gzFile f) const noexcept { gzclose(f); }
};

[[noreturn]] void bad(const std::string& path, long line, const std::string& what) {
  throw InvalidArgument("load_digits: " + path + ":" + std::to_string(line) + ": " + what);
}

}  // namespace

Digits load_digits(const std::string& path) {
  std::unique_ptr<gzFile_s, GzClose> f(gzopen(path.c_str(), "rb"));
  if (!f)
    throw InvalidArgument("load_digits: cannot open '" + path +
                          "' (expected sklearn's digits.csv.gz; Debian package python3-sklearn)");
  std::vector<float> pixels;
  std::vector<Index> labels;
  std::string line;
  char buf[4096];
  long lineno = 0;
  bool eof = false;
  while (!eof) {
    // One line, however long, from the decompressed stream.
    line.clear();
    for (;;) {
      if (gzgets(f.get(), buf, sizeof buf) == nullptr) {
        int err = 0;
        const char* msg = gzerror(f.get(), &err);
        if (err != Z_OK && err != Z_BUF_ERROR) bad(path, lineno + 1, std::string("cannot decompress: ") + msg);
        eof = true;
        break;
      }
      line += buf;
      if (!line.empty() && line.back() == '\n') break;
    }
    if (eof && line.empty()) break;
    ++lineno;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line.empty()) continue;  // a trailing empty line
    std::vector<double> fields;
    std::string_view rest(line);
    for (;;) {
      const auto comma = rest.find(',');
      std::string_view tok = rest.substr(0, comma);
      while (!tok.empty() && tok.front() == ' ') tok.remove_prefix(1);
      while (!tok.empty() && tok.back() == ' ') tok.remove_suffix(1);
      double v = 0;
      const auto [end, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
      if (tok.empty() || ec != std::errc() || end != tok.data() + tok.size())
        bad(path, lineno, "field " + std::to_string(fields.size() + 1) + " is not a number: '" + std::string(tok) + "'");
      fields.push_back(v);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    if (static_cast<Index>(fields.size()) != kPixels + 1)
      bad(path, lineno, "expected 65 fields (64 pixels and the label); got " + std::to_string(fields.size()));
    for (Index p = 0; p < kPixels; ++p) {
      const double v = fields[static_cast<std::size_t>(p)];
      if (!(v >= 0 && v <= 16))
        bad(path, lineno, "pixel " + std::to_string(p) + " is " + std::to_string(v) + "; expected a value in [0, 16]");
      pixels.push_back(static_cast<float>(v));
    }
    const double label = fields.back();
    if (!(label >= 0 && label <= 9) || label != std::floor(label))
      bad(path, lineno, "the label is " + std::to_string(label) + "; expected an integer in 0-9");
    labels.push_back(static_cast<Index>(label));
  }
  if (labels.empty()) throw InvalidArgument("load_digits: " + path + " holds no image (expected lines of 65 fields)");
  const Index n = static_cast<Index>(labels.size());
  return {Tensor<float>({n, kPixels}, std::move(pixels)), std::move(labels)};
}

Digits subset(const Digits& d, const std::vector<Index>& rows) {
  Digits out{Tensor<float>({static_cast<Index>(rows.size()), kPixels}), {}};
  out.labels.reserve(rows.size());
  for (std::size_t k = 0; k < rows.size(); ++k) {
    const Index r = rows[k];
    if (r < 0 || r >= d.size())
      throw InvalidArgument("subset: row " + std::to_string(r) + " is outside [0, " + std::to_string(d.size()) + ")");
    std::copy_n(d.pixels.data() + r * kPixels, kPixels, out.pixels.data() + static_cast<Index>(k) * kPixels);
    out.labels.push_back(d.labels[static_cast<std::size_t>(r)]);
  }
  return out;
}

Split stratified_split(const std::vector<Index>& labels, Index n_test, std::uint64_t seed) {
  const Index n = static_cast<Index>(labels.size());
  if (n_test < 1 || n_test > n - 1)
    throw InvalidArgument("stratified_split: n_test must be in [1, " + std::to_string(n - 1) + "] for " +
                          std::to_string(n) + " rows; got " + std::to_string(n_test));
  std::array<std::vector<Index>, kClasses> rows;
  for (Index i = 0; i < n; ++i) {
    const Index c = labels[static_cast<std::size_t>(i)];
    if (c < 0 || c >= kClasses)
      throw InvalidArgument("stratified_split: label of row " + std::to_string(i) + " is " + std::to_string(c) +
                            "; expected 0-9");
    rows[static_cast<std::size_t>(c)].push_back(i);
  }
  // Each class's share n_c · n_test / N, rounded down; the rows left over go to the classes with
  // the largest remainders (ties: the lower class).
  std::array<Index, kClasses> take{};
  std::array<std::pair<Index, Index>, kClasses> rem{};  // (remainder numerator, class)
  Index given = 0;
  for (Index c = 0; c < kClasses; ++c) {
    const Index nc = static_cast<Index>(rows[static_cast<std::size_t>(c)].size());
    take[static_cast<std::size_t>(c)] = nc * n_test / n;
    rem[static_cast<std::size_t>(c)] = {nc * n_test % n, c};
    given += take[static_cast<std::size_t>(c)];
  }
  std::stable_sort(rem.begin(), rem.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (Index k = 0; given < n_test; ++k, ++given) ++take[static_cast<std::size_t>(rem[static_cast<std::size_t>(k)].second)];
  std::mt19937_64 rng(seed);
  Split s;
  for (Index c = 0; c < kClasses; ++c) {
    auto& r = rows[static_cast<std::size_t>(c)];
    shuffle(r, rng);
    const auto t = static_cast<std::ptrdiff_t>(take[static_cast<std::size_t>(c)]);
    s.test.insert(s.test.end(), r.begin(), r.begin() + t);
    s.train.insert(s.train.end(), r.begin() + t, r.end());
  }
  std::sort(s.test.begin(), s.test.end());
  shuffle(s.train, rng);
  return s;
}

}  // namespace gradproof::train
