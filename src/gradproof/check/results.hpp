/// \file
/// \brief Writing result rows and negative-control rows as JSON (the file the site renders).
#pragma once

#include "gradproof/check/compare.hpp"

#include <cmath>
#include <cstdio>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

namespace gradproof::check {

/// \brief One negative control: a term of a staged backward dropped or sign-flipped.
struct AblationRow {
  std::string op{};            ///< op family, e.g. `bn`
  std::string term{};          ///< formula id of the term changed
  std::string change{};        ///< `drop` or `flip`
  double max_abs_err = 0;    ///< largest |dx_changed − reference| over the checked shapes
  double max_rel_err = 0;    ///< the same relative to the largest reference value
  bool caught = false;       ///< did the oracle check fail?
  bool expected_caught = true;  ///< must it fail? (false only for a term that is zero)
  bool passed = false;       ///< caught == expected_caught (and, if not expected, no change beyond rounding)
  std::string note{};          ///< what was compared
};

namespace json {

/// A JSON string literal: quotes, backslashes and control characters escaped; UTF-8 passes through.
inline void string(std::ostream& out, const std::string& s) {
  out << '"';
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      case '\t': out << "\\t"; break;
      default:
        if (ch < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out << buf;
        } else {
          out << ch;
        }
    }
  }
  out << '"';
}

/// Numbers with full precision; NaN and infinities (not valid JSON) become `null`.
inline void number(std::ostream& out, double v) {
  if (!std::isfinite(v)) {
    out << "null";
    return;
  }
  std::ostringstream s;
  s.precision(17);
  s << v;
  out << s.str();
}

/// A JSON array of integers, e.g. a shape `[2,3,4]`.
inline void ints(std::ostream& out, const std::vector<std::int64_t>& v) {
  out << '[';
  for (std::size_t i = 0; i < v.size(); ++i) out << (i ? "," : "") << v[i];
  out << ']';
}

}  // namespace json

/// Writes one result row as a JSON object.
inline void write_json(std::ostream& out, const ResultRow& r) {
  out << "{\"formula\":";
  json::string(out, r.formula);
  out << ",\"test\":";
  json::string(out, r.test);
  out << ",\"oracle\":";
  json::string(out, r.oracle);
  out << ",\"dtype\":";
  json::string(out, r.dtype);
  out << ",\"kind\":";
  json::string(out, r.kind);
  out << ",\"shape\":";
  json::ints(out, r.shape);
  out << ",\"max_abs_err\":";
  json::number(out, r.max_abs_err);
  out << ",\"max_rel_err\":";
  json::number(out, r.max_rel_err);
  out << ",\"rel_defined\":" << (r.rel_defined ? "true" : "false");
  out << ",\"atol\":";
  json::number(out, r.atol);
  out << ",\"rtol\":";
  json::number(out, r.rtol);
  out << ",\"passed\":" << (r.passed ? "true" : "false") << ",\"worst_index\":";
  json::ints(out, r.worst_index);
  out << ",\"analytic\":";
  json::number(out, r.analytic);
  out << ",\"numeric\":";
  json::number(out, r.numeric);
  out << ",\"note\":";
  json::string(out, r.note);
  out << '}';
}

/// Writes one negative-control row as a JSON object.
inline void write_json(std::ostream& out, const AblationRow& r) {
  out << "{\"op\":";
  json::string(out, r.op);
  out << ",\"term\":";
  json::string(out, r.term);
  out << ",\"change\":";
  json::string(out, r.change);
  out << ",\"max_abs_err\":";
  json::number(out, r.max_abs_err);
  out << ",\"max_rel_err\":";
  json::number(out, r.max_rel_err);
  out << ",\"caught\":" << (r.caught ? "true" : "false")
      << ",\"expected_caught\":" << (r.expected_caught ? "true" : "false")
      << ",\"passed\":" << (r.passed ? "true" : "false") << ",\"note\":";
  json::string(out, r.note);
  out << '}';
}

}  // namespace gradproof::check
