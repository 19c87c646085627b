// The rows a test run keeps and writes out as its part of results.json (support/record.hpp).
#include "support/record.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>

namespace gradproof::testing {
namespace {
std::mutex mutex;
std::vector<check::ResultRow> rows;
std::vector<check::AblationRow> ablations;
}  // namespace

void record(const check::ResultRow& row) {
  std::lock_guard lock(mutex);
  rows.push_back(row);
}

void record(const check::AblationRow& row) {
  std::lock_guard lock(mutex);
  ablations.push_back(row);
}

void write_part(const char* path) {
  std::error_code ec;  // a missing directory shows up below as a failure to open
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  std::ofstream out(path);
  if (!out) {
    std::cerr << "gradproof_tests: cannot write results part " << path << "\n";
    std::exit(3);
  }
  for (const auto& r : rows) {
    out << "R ";
    check::write_json(out, r);
    out << '\n';
  }
  for (const auto& a : ablations) {
    out << "A ";
    check::write_json(out, a);
    out << '\n';
  }
}

}  // namespace gradproof::testing
