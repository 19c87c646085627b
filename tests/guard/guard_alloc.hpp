// A test allocator that puts every allocation made inside a guard::Scope against an inaccessible
// page, so that a read or a write one byte past the end (Placement::tail) or one byte before the
// start (Placement::head) faults at once, in any build: a release build without sanitizers
// segfaults on it instead of reading whatever lies next in the heap.
//
// It replaces the global operator new and delete of the program that links guard_alloc.cpp, so
// it sees the buffers of gradproof's tensors (std::vector) and of everything else allocated in a
// scope. With Placement::tail the last byte of a buffer of n bytes is the last byte before the
// guard page: the buffer starts at (page end − n), which is aligned to the largest power of two
// dividing n (at least the element size of a tensor), not to the 16 bytes operator new promises
// otherwise — gradproof's kernels must handle any element-aligned address (issue 10, defect 5),
// and this is where a kernel that assumed more would show it. Aligned operator new is honoured.
#pragma once

#include <cstddef>

namespace gradproof::guard {

enum class Placement { tail, head };

/// Guards every allocation of the process while it lives (scopes do not nest).
class Scope {
 public:
  explicit Scope(Placement p);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};

/// Allocations served with a guard page so far (for the self-test: the scope does take effect).
long guarded_allocations() noexcept;

/// Installs a handler that prints `label()` when the process faults (SIGSEGV, SIGBUS), then dies
/// of the signal; under AddressSanitizer it prints it after ASan's report instead.
void report_faults_with(const char* (*label)());

}  // namespace gradproof::guard
