// Counts the heap allocations of the whole process (malloc, calloc, realloc, the aligned
// allocators and operator new, on every thread) and the bytes they request, so that a test can
// assert a call made none, or no large one.
#pragma once

namespace gradproof::testing {

/// Heap allocations made by the process so far.
long allocations() noexcept;

/// Bytes requested by those allocations (not net of frees): a call that requests a huge block
/// shows here even when the allocation succeeds lazily or is freed at once.
long long allocated_bytes() noexcept;

}  // namespace gradproof::testing
