// Shared by the op tests: deterministic inputs and the matcher for the messages of bad-input errors.
#pragma once

#include "gradproof/tensor.hpp"

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace gradproof::testing {

/// Passes when the exception message contains every fragment (argument name, expected, actual).
struct MessageHas {
  std::vector<std::string> fragments;
  bool operator()(const InvalidArgument& e) const {
    const std::string what = e.what();
    for (const auto& f : fragments) {
      if (what.find(f) == std::string::npos) {
        BOOST_TEST_MESSAGE("message \"" << what << "\" lacks \"" << f << "\"");
        return false;
      }
    }
    return true;
  }
};

/// A deterministic, irregular tensor: sin(1 + i) + 0.1·i, so no two values and no two sets coincide.
inline TensorD iota(const Shape& s) {
  TensorD t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = std::sin(1.0 + static_cast<double>(i)) + 0.1 * static_cast<double>(i);
  return t;
}

}  // namespace gradproof::testing
