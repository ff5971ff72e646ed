/* The malloc family, interposed (only in the "mem" build of the shim).
 * These functions only forward: to the C library's allocator, and to heap.c
 * for the bookkeeping.
 *
 * Two traps handled here:
 *  - Resolving the real functions with dlsym allocates.  Until they are
 *    known, allocations come from a static bump buffer; those pointers are
 *    never handed to the real free or realloc.
 *  - Anything our bookkeeping calls may allocate again (libgcc's unwinder,
 *    the dynamic loader for TLS).  A per-thread "inside a hook" flag
 *    (initial-exec TLS: reading it never allocates) sends such nested calls
 *    straight to the real allocator, untracked, so the hooks never recurse.
 *    The same flag covers a signal handler that allocates while we are in a
 *    hook: it is served untracked instead of deadlocking. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include "ctprof.h"

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void *(*real_valloc)(size_t);
static void *(*real_pvalloc)(size_t);

static __thread int in_hook CTPROF_TLS;
static int resolving;

/* ---- bootstrap allocator ---------------------------------------------------- */
static _Alignas(64) unsigned char boot_buf[1 << 18];
static size_t boot_used;

static int is_boot(const void *p)
{
    return (const unsigned char *)p >= boot_buf && (const unsigned char *)p < boot_buf + sizeof boot_buf;
}

static void *boot_alloc(size_t n, size_t align)
{
    if (align < 16)
        align = 16;
    /* 16 bytes before each block hold its size, for realloc of a boot block */
    size_t used = __atomic_load_n(&boot_used, __ATOMIC_RELAXED), start, end;
    do {
        start = (used + 16 + align - 1) & ~(align - 1);
        end = start + n;
        if (end > sizeof boot_buf || end < start)
            return NULL;
    } while (!__atomic_compare_exchange_n(&boot_used, &used, end, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    memcpy(boot_buf + start - 16, &n, sizeof n);
    return boot_buf + start;
}

static size_t boot_size(const void *p)
{
    size_t n;
    memcpy(&n, (const unsigned char *)p - 16, sizeof n);
    return n;
}

static void resolve(void)
{
    if (resolving)
        return;
    resolving = 1;
    /* free and realloc first: once malloc is known, dlsym's own allocations
     * are real ones and must be released with the real functions. */
    real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    real_valloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "pvalloc");
    resolving = 0;
}

#define ENSURE(fn) do { if (!fn) resolve(); } while (0)

/* Run the bookkeeping for one call with the guard set; errno is the real
 * allocator's, whatever the bookkeeping did to it. */
static __thread uint32_t call_counter CTPROF_TLS;

void heap_hooks_pause(int on) { in_hook = on; }

static inline int tracking(void) { return !in_hook && heap_active(); }

/* Sampled mode: most allocations are not sampled; decide inline. */
static inline int unsampled(size_t n)
{
    return heap_sampling && (heap_bytes_left -= (int64_t)n) > 0;
}

/* `frame`: the interposer's own frame (__builtin_frame_address), whose
 * caller is the program's code: the unwinder starts there. */
static void track_alloc(void *p, size_t n, void *frame)
{
    int e = errno;
    in_hook = 1;
    /* Every 64th call is timed, for the "time in hooks" figure. */
    int timed = (++call_counter & 63) == 0;
    uint64_t t0 = timed ? now_ns() : 0;
    heap_on_alloc(p, n, frame);
    if (timed)
        heap_account_time(now_ns() - t0);
    in_hook = 0;
    errno = e;
}

CTPROF_API void *malloc(size_t n)
{
    if (!real_malloc) {
        resolve();
        if (!real_malloc)
            return boot_alloc(n, 16);
    }
    void *p = real_malloc(n);
    if (p && tracking() && !unsampled(n))
        track_alloc(p, n, __builtin_frame_address(0));
    return p;
}

CTPROF_API void *calloc(size_t n, size_t m)
{
    if (m && n > SIZE_MAX / m) {
        errno = ENOMEM;
        return NULL;
    }
    if (!real_calloc) {
        resolve();
        if (!real_calloc)
            return boot_alloc(n * m, 16); /* static memory is already zero */
    }
    void *p = real_calloc(n, m);
    if (p && tracking() && !unsampled(n * m))
        track_alloc(p, n * m, __builtin_frame_address(0));
    return p;
}

CTPROF_API void free(void *p)
{
    if (!p || is_boot(p))
        return;
    ENSURE(real_free);
    if (!real_free)
        return; /* only while resolving, and only for memory we could not have handed out */
    if (tracking() && (!heap_sampling || heap_maybe_sampled(p))) {
        /* Record the free before the memory can be handed to another thread. */
        int e = errno;
        in_hook = 1;
        heap_on_free(p);
        in_hook = 0;
        errno = e;
    }
    real_free(p);
}

CTPROF_API void *realloc(void *p, size_t n)
{
    if (p && is_boot(p)) {
        void *q = malloc(n ? n : 1);
        if (q) {
            size_t old = boot_size(p);
            memcpy(q, p, old < n ? old : n);
        }
        return q;
    }
    ENSURE(real_realloc);
    if (!real_realloc) {
        errno = ENOMEM;
        return NULL;
    }
    if (!tracking())
        return real_realloc(p, n);
    int e = errno;
    in_hook = 1;
    heap_realloc_begin(p);
    errno = e;
    void *q = real_realloc(p, n);
    e = errno;
    heap_realloc_end(p, q, n, __builtin_frame_address(0));
    in_hook = 0;
    errno = e;
    return q;
}

CTPROF_API void *reallocarray(void *p, size_t n, size_t m)
{
    if (m && n > SIZE_MAX / m) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n * m);
}

CTPROF_API int posix_memalign(void **out, size_t align, size_t n)
{
    ENSURE(real_posix_memalign);
    if (!real_posix_memalign)
        return ENOMEM;
    int rc = real_posix_memalign(out, align, n);
    if (rc == 0 && *out && tracking() && !unsampled(n))
        track_alloc(*out, n, __builtin_frame_address(0));
    return rc;
}

#define ALIGNED(name, args, call, size)             \
    CTPROF_API void *name args                      \
    {                                               \
        ENSURE(real_##name);                        \
        if (!real_##name) {                         \
            errno = ENOMEM;                         \
            return NULL;                            \
        }                                           \
        void *p = real_##name call;                 \
        if (p && tracking() && !unsampled(size))    \
            track_alloc(p, size, __builtin_frame_address(0)); \
        return p;                                   \
    }

ALIGNED(aligned_alloc, (size_t align, size_t n), (align, n), n)
ALIGNED(memalign, (size_t align, size_t n), (align, n), n)
ALIGNED(valloc, (size_t n), (n), n)
ALIGNED(pvalloc, (size_t n), (n), n)
