// `gradproof exercise OP DIR [--lang cpp|python]` writes a student workspace with one stub per
// chain-rule term of the op's staged backward; `gradproof grade DIR [--json FILE]` builds and runs
// the student's terms against the verified ones, term by term, and says what is wrong and how.
#pragma once

#include <string>
#include <vector>

namespace gradproof::cli {

// From the words after "exercise" / "grade"; throw UsageError for bad usage.
int exercise_main(const std::vector<std::string>& words);
int grade_main(const std::vector<std::string>& words);

// The ops that have a lesson, for the usage text.
std::string exercise_usage();

}  // namespace gradproof::cli
