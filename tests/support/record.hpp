// Collects the result rows that a test run produces and writes them for results.json.
#pragma once

#include "gradproof/check/results.hpp"

#include <vector>

namespace gradproof::testing {

/// Keeps a result row for this run's results file.
void record(const check::ResultRow& row);
/// Keeps a negative-control row for this run's results file.
void record(const check::AblationRow& row);
/// Writes every kept row to `path` as JSON lines (`R {...}` or `A {...}`); the `gradproof collect`
/// command merges the parts of all suites into results.json.
void write_part(const char* path);

}  // namespace gradproof::testing
