// Counts the heap allocations of the whole process (malloc, calloc, realloc, the aligned
// allocators and operator new, on every thread), so that a test can assert a call made none.
#pragma once

namespace gradproof::testing {

/// Heap allocations made by the process so far.
long allocations() noexcept;

}  // namespace gradproof::testing
