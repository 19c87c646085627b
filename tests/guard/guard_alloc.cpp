// The guard-page allocator of guard_alloc.hpp: replacements of the global operator new and delete.
// Outside a scope they forward to malloc/free (aligned_alloc for the aligned forms). Inside, each
// allocation is its own mapping of whole pages plus one PROT_NONE page after (tail) or before
// (head) the buffer; delete finds it in a fixed table (no allocation of its own) and unmaps it.
#include "guard/guard_alloc.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define GRADPROOF_GUARD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GRADPROOF_GUARD_ASAN 1
#endif
#endif
#if defined(GRADPROOF_GUARD_ASAN)
extern "C" void __asan_set_death_callback(void (*callback)(void));
#endif

namespace {

using gradproof::guard::Placement;

std::atomic<int> g_mode{0};  // 0 off, 1 tail, 2 head
std::atomic<long> g_guarded{0};
std::atomic<long> g_live{0};  // guarded allocations not yet freed

struct Slot {
  void* user;
  void* base;
  std::size_t length;
};
constexpr std::size_t kSlots = 1 << 14;
Slot g_slots[kSlots];
std::size_t g_high = 0;  // slots [0, g_high) may be in use
std::mutex g_mutex;

std::size_t page_size() noexcept {
  static const std::size_t p = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

void* guarded(std::size_t n, std::size_t align, int mode) {
  const std::size_t page = page_size();
  const std::size_t data = (n + page - 1) / page * page + (align > page ? align : 0);
  const std::size_t length = data + page;
  void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw std::bad_alloc();
  char* b = static_cast<char*>(base);
  char* user;
  if (mode == 1) {  // tail: the buffer ends where the guard page begins
    if (mprotect(b + data, page, PROT_NONE) != 0) std::abort();
    const auto end = reinterpret_cast<std::uintptr_t>(b + data);
    user = reinterpret_cast<char*>((end - n) & ~(static_cast<std::uintptr_t>(align) - 1));
  } else {  // head: the buffer starts where the guard page ends
    if (mprotect(b, page, PROT_NONE) != 0) std::abort();
    user = b + page;
  }
  {
    const std::lock_guard<std::mutex> lock(g_mutex);
    std::size_t k = 0;
    while (k < g_high && g_slots[k].user != nullptr) ++k;
    if (k == kSlots) std::abort();
    g_slots[k] = {user, base, length};
    if (k == g_high) ++g_high;
  }
  g_guarded.fetch_add(1, std::memory_order_relaxed);
  g_live.fetch_add(1, std::memory_order_relaxed);
  return user;
}

// True (and the mapping released) when `p` is a guarded allocation.
bool release(void* p) noexcept {
  if (g_live.load(std::memory_order_acquire) == 0) return false;
  Slot found{nullptr, nullptr, 0};
  {
    const std::lock_guard<std::mutex> lock(g_mutex);
    for (std::size_t k = 0; k < g_high; ++k) {
      if (g_slots[k].user == p) {
        found = g_slots[k];
        g_slots[k] = {nullptr, nullptr, 0};
        while (g_high > 0 && g_slots[g_high - 1].user == nullptr) --g_high;
        break;
      }
    }
  }
  if (found.user == nullptr) return false;
  munmap(found.base, found.length);
  g_live.fetch_sub(1, std::memory_order_release);
  return true;
}

// `align` 0: the plain operator new. Guarded, it gets no alignment beyond n's own (the buffer
// ends exactly at the guard page; see guard_alloc.hpp).
void* allocate(std::size_t n, std::size_t align) {
  if (n == 0) n = 1;
  if (const int mode = g_mode.load(std::memory_order_relaxed)) return guarded(n, align == 0 ? 1 : align, mode);
  void* p = align == 0 ? std::malloc(n) : std::aligned_alloc(align, (n + align - 1) / align * align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void deallocate(void* p) noexcept {
  if (p != nullptr && !release(p)) std::free(p);
}

const char* (*g_label)() = nullptr;

void write_label() {
  if (g_label == nullptr) return;
  const char* l = g_label();
  static const char kPrefix[] = "guard: fault while running ";
  [[maybe_unused]] ssize_t w = write(2, kPrefix, sizeof kPrefix - 1);
  w = write(2, l, std::strlen(l));
  w = write(2, "\n", 1);
}

[[maybe_unused]] void on_fault(int sig) {
  write_label();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

}  // namespace

namespace gradproof::guard {

Scope::Scope(Placement p) { g_mode.store(p == Placement::tail ? 1 : 2); }
Scope::~Scope() { g_mode.store(0); }
long guarded_allocations() noexcept { return g_guarded.load(); }

void report_faults_with(const char* (*label)()) {
  g_label = label;
#if defined(GRADPROOF_GUARD_ASAN)
  __asan_set_death_callback(write_label);
#else
  struct sigaction sa {};
  sa.sa_handler = on_fault;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
#endif
}

}  // namespace gradproof::guard

// ---- The replaced global operators -----------------------------------------------------------
void* operator new(std::size_t n) { return allocate(n, 0); }
void* operator new[](std::size_t n) { return allocate(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return allocate(n, 0); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try { return allocate(n, 0); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { deallocate(p); }
void operator delete[](void* p) noexcept { deallocate(p); }
void operator delete(void* p, std::size_t) noexcept { deallocate(p); }
void operator delete[](void* p, std::size_t) noexcept { deallocate(p); }
void operator delete(void* p, std::align_val_t) noexcept { deallocate(p); }
void operator delete[](void* p, std::align_val_t) noexcept { deallocate(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { deallocate(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { deallocate(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { deallocate(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { deallocate(p); }
