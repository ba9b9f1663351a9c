/* Shared C definitions of every pgo allocator: the test build's fill
   switch and patterns, valgrind mempool hooks, overflow checks, branch
   hints and atomics.  One home for them, so that each allocator family and
   third-party Cython code cimporting two allocators see one definition.
   Declared for Cython in pgo_defs.pxd (re-exported by _typedefs.pxd). */
#ifndef PGO_DEFS_H
#define PGO_DEFS_H

#include <stddef.h>

/* 1 in the test build (PGO_TEST_BUILD=1): blocks are filled with
   PGO_FILL_ALLOC when handed out and PGO_FILL_FREE when given back. */
#ifndef PGO_DEBUG_FILL
#define PGO_DEBUG_FILL 0
#endif
#define PGO_FILL_ALLOC 0xA5
#define PGO_FILL_FREE 0x5A
/* Test build: bytes reserved after every stack and slab block, filled
   with PGO_FILL_ALLOC and checked when the block is freed. */
#define PGO_CANARY (PGO_DEBUG_FILL ? 8 : 0)
#define PGO_MAX_ALIGN 4096
#define pgo_likely(x) __builtin_expect(!!(x), 1)
#define pgo_unlikely(x) __builtin_expect(!!(x), 0)

/* Symbols of pgo's own .c files: shared between the files linked into one
   extension module, never exported from it. */
#define PGO_INTERNAL __attribute__((visibility("hidden")))

/* Test build, valgrind headers present: each allocator is a valgrind
   mempool, so memcheck sees pgo's blocks as it sees malloc's (a read of
   a freed block is an error).  Everywhere else these are no-ops. */
#if PGO_DEBUG_FILL && defined(__has_include)
#  if __has_include(<valgrind/memcheck.h>)
#    include <valgrind/memcheck.h>
#    define PGO_VALGRIND 1
#  endif
#endif
#ifndef PGO_VALGRIND
#  define PGO_VALGRIND 0
#  define pgo_vg_create(pool) ((void)0)
#  define pgo_vg_destroy(pool) ((void)0)
#  define pgo_vg_alloc(pool, p, n) ((void)0)
#  define pgo_vg_free(pool, p) ((void)0)
#  define pgo_vg_trim(pool, p, n) ((void)0)
#  define pgo_vg_noaccess(p, n) ((void)0)
#  define pgo_vg_defined(p, n) ((void)0)
#else
#  define pgo_vg_create(pool) VALGRIND_CREATE_MEMPOOL((pool), 0, 0)
#  define pgo_vg_destroy(pool) VALGRIND_DESTROY_MEMPOOL((pool))
#  define pgo_vg_alloc(pool, p, n) VALGRIND_MEMPOOL_ALLOC((pool), (p), (n))
#  define pgo_vg_free(pool, p) VALGRIND_MEMPOOL_FREE((pool), (p))
#  define pgo_vg_trim(pool, p, n) VALGRIND_MEMPOOL_TRIM((pool), (p), (n))
#  define pgo_vg_noaccess(p, n) VALGRIND_MAKE_MEM_NOACCESS((p), (n))
#  define pgo_vg_defined(p, n) VALGRIND_MAKE_MEM_DEFINED((p), (n))
#endif

static inline int pgo_mul_overflow(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out);
}

static inline int pgo_add_overflow(size_t a, size_t b, size_t *out) {
    return __builtin_add_overflow(a, b, out);
}

/* For the few fields read without an allocator's lock (address bounds,
   on/off switches) and counters bumped from any thread. */
#define pgo_atomic_load(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define pgo_atomic_store(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define pgo_atomic_inc(p) ((void)__atomic_fetch_add((p), 1, __ATOMIC_RELAXED))

#endif
