// The allocation counter of alloc_counter.hpp. Under AddressSanitizer, ASan owns the allocator and
// calls a hook on every allocation. Otherwise this file interposes the C allocation functions
// (operator new and libgomp allocate through them) and forwards them to the next definition,
// glibc's, found with dlsym(RTLD_NEXT). dlsym may itself allocate while it resolves the names;
// those requests are served from a static buffer, since the real allocator is not known yet.
#include "support/alloc_counter.hpp"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace {
std::atomic<long> g_allocations{0};
std::atomic<long long> g_bytes{0};
void count(std::size_t bytes) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  g_bytes.fetch_add(static_cast<long long>(bytes), std::memory_order_relaxed);
}
}  // namespace

long gradproof::testing::allocations() noexcept { return g_allocations.load(std::memory_order_relaxed); }
long long gradproof::testing::allocated_bytes() noexcept { return g_bytes.load(std::memory_order_relaxed); }

#if defined(__SANITIZE_ADDRESS__)

extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*, std::size_t),
                                                         void (*free_hook)(const volatile void*));
namespace {
void on_malloc(const volatile void*, std::size_t n) { count(n); }
void on_free(const volatile void*) {}
[[maybe_unused]] const int g_installed = __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}  // namespace

#else

#include <dlfcn.h>

namespace {

alignas(64) char g_boot[1 << 16];
std::atomic<std::size_t> g_boot_used{0};
thread_local bool t_resolving = false;

bool from_boot(const void* p) noexcept {
  const char* c = static_cast<const char*>(p);
  return c >= g_boot && c < g_boot + sizeof g_boot;
}

void* boot_alloc(std::size_t n) noexcept {  // static storage is zero: it serves calloc as well
  const std::size_t size = (n + 63) & ~std::size_t(63);
  const std::size_t at = g_boot_used.fetch_add(size);
  if (at + size > sizeof g_boot) std::abort();
  return g_boot + at;
}

struct Real {
  void* (*malloc)(std::size_t);
  void* (*calloc)(std::size_t, std::size_t);
  void* (*realloc)(void*, std::size_t);
  void (*free)(void*);
  void* (*memalign)(std::size_t, std::size_t);
  int (*posix_memalign)(void**, std::size_t, std::size_t);
  void* (*aligned_alloc)(std::size_t, std::size_t);
  void* (*valloc)(std::size_t);
};

template <class F>
F next(const char* name) noexcept {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

// Resolved on first use. While it resolves, t_resolving routes this thread's requests to the
// static buffer, so the initialisation never re-enters itself.
const Real& real() noexcept {
  static const Real r = [] {
    t_resolving = true;
    const Real x{next<decltype(Real::malloc)>("malloc"),       next<decltype(Real::calloc)>("calloc"),
                 next<decltype(Real::realloc)>("realloc"),     next<decltype(Real::free)>("free"),
                 next<decltype(Real::memalign)>("memalign"),   next<decltype(Real::posix_memalign)>("posix_memalign"),
                 next<decltype(Real::aligned_alloc)>("aligned_alloc"), next<decltype(Real::valloc)>("valloc")};
    t_resolving = false;
    if (!x.malloc || !x.calloc || !x.realloc || !x.free || !x.memalign || !x.posix_memalign || !x.aligned_alloc ||
        !x.valloc)
      std::abort();
    return x;
  }();
  return r;
}

}  // namespace

extern "C" {

void* malloc(std::size_t n) {
  if (t_resolving) return boot_alloc(n);
  count(n);
  return real().malloc(n);
}

void* calloc(std::size_t k, std::size_t n) {
  if (t_resolving) return boot_alloc(k * n);
  count(k * n);
  return real().calloc(k, n);
}

void* realloc(void* p, std::size_t n) {
  if (from_boot(p)) {  // move a bootstrap block to the real heap
    void* q = malloc(n);
    if (q) std::memcpy(q, p, std::min<std::size_t>(n, static_cast<std::size_t>(g_boot + sizeof g_boot - static_cast<char*>(p))));
    return q;
  }
  count(n);
  return real().realloc(p, n);
}

void free(void* p) {
  if (p == nullptr || from_boot(p)) return;
  if (t_resolving) return;  // freed while resolving: a block of the real heap, leaked once
  real().free(p);
}

void* memalign(std::size_t a, std::size_t n) {
  count(n);
  return real().memalign(a, n);
}

int posix_memalign(void** out, std::size_t a, std::size_t n) {
  count(n);
  return real().posix_memalign(out, a, n);
}

void* aligned_alloc(std::size_t a, std::size_t n) {
  count(n);
  return real().aligned_alloc(a, n);
}

void* valloc(std::size_t n) {
  count(n);
  return real().valloc(n);
}

}  // extern "C"

#endif
