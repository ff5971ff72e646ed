/* Heap tracking, target side (only in the "mem" build of the shim).
 *
 * Every allocation and free the interposers in heaphooks.c report becomes
 * an event in this process's .heap ring: the pointer, the size and the
 * allocating call stack.  The live table, per-site statistics, the peak and
 * the leak scan all live in the controller (shim/collect.c), so the only
 * metadata in the profiled process is the ring itself and the unwinder's
 * rule cache: its heap is never touched, and whatever happens to it, every
 * event already written is safe in shared memory.
 *
 * Stacks are unwound by unwind_caller (unwind.c): cached CFI rules, with
 * libgcc's _Unwind_Backtrace for frames they cannot express. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <asm/prctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include "ctprof.h"

#define MAX_HEAP_DEPTH 256

static struct ring heap_ring;
static struct heap_shared *hs;
static char heap_dir[2048];
static int depth = 32;
static uint64_t sample_bytes;
uint64_t heap_sampling;
int heap_free_all;
uint8_t *heap_filter;
__thread int64_t heap_bytes_left CTPROF_TLS;
int heap_enabled; /* read inline by the hooks: tracking is on in this process */
#define active heap_enabled
/* The event ring is the only heap metadata in the program: keep it small
 * (CTPROF_MEM_RING_MB, default 2); the controller drains it continuously. */
static uint64_t ring_mb = 2;

static __thread uint64_t rng_state CTPROF_TLS;
static __thread int stack_slot CTPROF_TLS; /* index+1 in hs->stacks */


/* ---- sampled mode: which blocks were sampled ------------------------------------
 * Only sampled blocks produce free events.  A striped set of their
 * addresses, each stripe a tiny open-addressing table under a spinlock
 * (held for a few instructions, never across a call). */
#define SSET_STRIPES 256
#define SSET_SLOTS 512
struct sset_stripe {
    int lock;
    int count;
    uint64_t keys[SSET_SLOTS];
};
static struct sset_stripe *sset;
/* A count of sampled blocks per address bucket, read without a lock: a
 * zero means "not sampled", so most frees never touch a stripe lock.  (An
 * allocation happens-before its free, so the count is never stale-zero.) */
#define FILTER_SIZE HEAP_FILTER_SIZE
#define filter heap_filter

#define mix64 heap_mix64

static void stripe_lock(struct sset_stripe *s)
{
    while (__atomic_exchange_n(&s->lock, 1, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
}

static void stripe_unlock(struct sset_stripe *s) { __atomic_store_n(&s->lock, 0, __ATOMIC_RELEASE); }

static void sset_insert(uint64_t p)
{
    uint64_t h = mix64(p);
    struct sset_stripe *s = &sset[h % SSET_STRIPES];
    uint8_t *f = &filter[(h >> 8) % FILTER_SIZE];
    if (__atomic_add_fetch(f, 1, __ATOMIC_RELEASE) == 0)
        __atomic_store_n(f, 255, __ATOMIC_RELAXED); /* saturate, never wrap to "absent" */
    stripe_lock(s);
    if (s->count >= SSET_SLOTS * 3 / 4) {
        hs->sampled_free_overflow = 1;  /* from now on every free is reported */
        heap_free_all = 1;
    } else {
        uint32_t i = (uint32_t)(h >> 32) % SSET_SLOTS;
        while (s->keys[i] && s->keys[i] != p)
            i = (i + 1) % SSET_SLOTS;
        if (!s->keys[i])
            s->count++;
        s->keys[i] = p;
    }
    stripe_unlock(s);
}

static int sset_remove(uint64_t p)
{
    uint64_t h = mix64(p);
    uint8_t *f = &filter[(h >> 8) % FILTER_SIZE];
    if (!__atomic_load_n(f, __ATOMIC_ACQUIRE))
        return 0;
    struct sset_stripe *s = &sset[h % SSET_STRIPES];
    int found = 0;
    stripe_lock(s);
    uint32_t i = (uint32_t)(h >> 32) % SSET_SLOTS;
    while (s->keys[i]) {
        if (s->keys[i] == p) {
            found = 1;
            break;
        }
        i = (i + 1) % SSET_SLOTS;
    }
    if (found) {
        /* backward-shift deletion keeps probe chains intact */
        uint32_t j = i;
        for (;;) {
            s->keys[i] = 0;
            for (;;) {
                j = (j + 1) % SSET_SLOTS;
                if (!s->keys[j])
                    goto done;
                uint32_t home = (uint32_t)(mix64(s->keys[j]) >> 32) % SSET_SLOTS;
                if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j))
                    break;
            }
            s->keys[i] = s->keys[j];
            i = j;
        }
    done:
        s->count--;
        uint8_t v = __atomic_load_n(f, __ATOMIC_RELAXED);
        while (v && v != 255 && !__atomic_compare_exchange_n(f, &v, (uint8_t)(v - 1), 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
            ;
    }
    stripe_unlock(s);
    return found;
}

static int64_t next_sample_distance(void)
{
    if (!rng_state)
        rng_state = mix64(now_ns() ^ (uint64_t)ctprof_gettid() << 32) | 1;
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    double u = (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0; /* [0,1) */
    return (int64_t)(-log(1.0 - u) * (double)sample_bytes) + 1;
}

/* ---- events ------------------------------------------------------------------- */

static void *reserve(uint32_t size)
{
    return ring_reserve_wait(&heap_ring, size, &hs->heartbeat_ns, &hs->wait_ns, &hs->lost);
}

void heap_on_alloc(void *ptr, size_t size)
{
    uint16_t flags = 0;
    if (sample_bytes) {
        /* The hook has subtracted `size` from heap_bytes_left and found it
         * crossed zero.  A thread's first allocation only starts its count. */
        if (!rng_state) {
            heap_bytes_left += next_sample_distance();
            if (heap_bytes_left > 0)
                return;
        }
        heap_bytes_left = next_sample_distance();
        flags |= ALLOC_SAMPLED;
        sset_insert((uint64_t)(uintptr_t)ptr);
    }
    uint64_t ips[MAX_HEAP_DEPTH];
    int truncated = 0;
    int n = unwind_caller(sampler_bounds(), ips, depth, &truncated);
    uint32_t bytes = (uint32_t)(sizeof(struct rec_alloc) + (size_t)n * 8);
    struct rec_alloc *rec = reserve(bytes);
    if (!rec)
        return;
    rec->h.type = REC_ALLOC;
    rec->h.flags = flags | (truncated ? ALLOC_TRUNCATED : 0);
    rec->ptr = (uint64_t)(uintptr_t)ptr;
    rec->size = size;
    rec->tid = (uint32_t)ctprof_gettid();
    rec->nips = (uint32_t)n;
    memcpy(rec + 1, ips, (size_t)n * 8);
    ring_commit(rec, bytes);
}

void heap_on_free(void *ptr)
{
    if (sample_bytes && !sset_remove((uint64_t)(uintptr_t)ptr) && !heap_free_all)
        return;
    struct rec_free *rec = reserve(sizeof *rec);
    if (!rec)
        return;
    rec->h.type = REC_FREE;
    rec->h.flags = 0;
    rec->ptr = (uint64_t)(uintptr_t)ptr;
    ring_commit(rec, sizeof *rec);
}

void *heap_realloc_begin(void *old, size_t size)
{
    if (sample_bytes) {
        /* Estimates only: the old block's free, then a sampling decision
         * for the new one (heap_realloc_end). */
        if (old)
            heap_on_free(old);
        return NULL;
    }
    uint64_t ips[MAX_HEAP_DEPTH];
    int truncated = 0;
    int n = unwind_caller(sampler_bounds(), ips, depth, &truncated);
    uint32_t bytes = (uint32_t)(sizeof(struct rec_realloc) + (size_t)n * 8);
    struct rec_realloc *rec = reserve(bytes);
    if (!rec)
        return NULL;
    rec->h.type = REC_REALLOC;
    rec->h.flags = truncated ? ALLOC_TRUNCATED : 0;
    rec->old = (uint64_t)(uintptr_t)old;
    rec->ptr = 0;
    rec->size = size;
    rec->tid = (uint32_t)ctprof_gettid();
    rec->nips = (uint32_t)n;
    memcpy(rec + 1, ips, (size_t)n * 8);
    return rec;
}

void heap_realloc_end(void *recp, void *ptr, size_t size)
{
    struct rec_realloc *rec = recp;
    if (!rec) {
        if (sample_bytes && ptr && size && (heap_bytes_left -= (int64_t)size) <= 0)
            heap_on_alloc(ptr, size);
        return;
    }
    rec->ptr = (uint64_t)(uintptr_t)ptr;
    ring_commit(rec, (uint32_t)(sizeof *rec + (size_t)rec->nips * 8));
}

void heap_account_time(uint64_t ns)
{
    if (!hs)
        return;
    __atomic_fetch_add(&hs->timed_calls, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&hs->timed_ns, ns, __ATOMIC_RELAXED);
}

/* ---- threads and lifetime ------------------------------------------------------- */

void heap_thread_start(void)
{
    if (!active || stack_slot)
        return;
    const struct stack_bounds *b = sampler_bounds();
    if (!b->hi)
        return;
    for (int i = 0; i < HEAP_MAX_THREADS; i++) {
        uint64_t expect = 0, tid = (uint64_t)ctprof_gettid();
        if (__atomic_compare_exchange_n(&hs->stacks[i].tid, &expect, tid, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            hs->stacks[i].lo = b->lo;
            hs->stacks[i].hi = b->hi;
            stack_slot = i + 1;
            __atomic_fetch_add(&hs->nthreads, 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

void heap_thread_stop(void)
{
    if (!stack_slot || !hs)
        return;
    __atomic_store_n(&hs->stacks[stack_slot - 1].tid, 0, __ATOMIC_RELEASE);
    __atomic_fetch_sub(&hs->nthreads, 1, __ATOMIC_RELAXED);
    stack_slot = 0;
}

static int open_heap_ring(void)
{
    int reused;
    struct ring r;
    if (ring_open(&r, heap_dir, ".heap", ring_mb << 20, &reused) != 0)
        return -1;
    heap_ring = r;
    hs = (struct heap_shared *)((char *)r.hdr + HEAP_SHARED_OFFSET);
    if (reused) {            /* after exec: the old image's blocks are gone */
        hs->exit_state = EXIT_RUNNING;
        memset(hs->stacks, 0, sizeof hs->stacks);
        hs->nthreads = 0;
    }
    hs->depth = (uint32_t)depth;
    hs->sample_bytes = sample_bytes;
    __atomic_store_n(&hs->magic, HEAP_MAGIC, __ATOMIC_RELEASE);
    if (reused) {
        /* Tell the controller where the new image starts: every block of
         * the old one vanished with exec. */
        struct rec_header *rec = reserve(sizeof *rec);
        if (rec) {
            rec->type = REC_EXEC;
            rec->flags = 0;
            ring_commit(rec, sizeof *rec);
        }
    }
    return 0;
}

int heap_init(const char *dir)
{
    const char *d = getenv("CTPROF_MEM_DEPTH");
    const char *sb = getenv("CTPROF_MEM_SAMPLE");
    if (d && *d)
        depth = atoi(d);
    if (depth < 1)
        depth = 1;
    if (depth > MAX_HEAP_DEPTH)
        depth = MAX_HEAP_DEPTH;
    sample_bytes = sb && *sb ? strtoull(sb, NULL, 10) : 0;
    heap_sampling = sample_bytes;
    const char *rm = getenv("CTPROF_MEM_RING_MB");
    if (rm && *rm) {
        uint64_t v = strtoull(rm, NULL, 10);
        if (v >= 1 && v <= 1024 && !(v & (v - 1)))
            ring_mb = v;
    }
    if (strlen(dir) >= sizeof heap_dir)
        return -1;
    strcpy(heap_dir, dir);
    unwind_init();
    if (sample_bytes) {
        void *p = mmap(NULL, sizeof(struct sset_stripe) * SSET_STRIPES + FILTER_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -1;
        sset = p;
        filter = (uint8_t *)p + sizeof(struct sset_stripe) * SSET_STRIPES;
    }
    if (open_heap_ring() != 0)
        return -1;
    active = 1;
    return 0;
}

void heap_after_fork(void)
{
    if (!active)
        return;
    stack_slot = 0;
    if (sset)
        memset(sset, 0, sizeof(struct sset_stripe) * SSET_STRIPES + FILTER_SIZE);
    heap_free_all = 0;
    if (open_heap_ring() != 0)
        active = 0;
}

void heap_at_exit(void)
{
    if (!active || !hs)
        return;
    uint64_t sp, fs = 0;
    __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
    syscall(SYS_arch_prctl, ARCH_GET_FS, &fs);
    hs->exit_sp = sp;
    hs->exit_fs = fs;
    hs->unwind_cache_bytes = cfi_cache_bytes();
    hs->exit_tid = (uint64_t)ctprof_gettid();
    __atomic_store_n(&hs->exit_state, EXIT_WAITING, __ATOMIC_RELEASE);
    /* The controller drains the ring, scans our memory for pointers to
     * classify what is still allocated, then lets us go.  Never wait for a
     * controller that stopped answering. */
    uint64_t start = now_ns();
    while (__atomic_load_n(&hs->exit_state, __ATOMIC_ACQUIRE) == EXIT_WAITING) {
        uint64_t t = now_ns(), beat = __atomic_load_n(&hs->heartbeat_ns, __ATOMIC_RELAXED);
        if ((beat == 0 && t - start > 2000000000ull) || (beat && t - beat > 3000000000ull) ||
            t - start > 600000000000ull)
            break;
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
    }
}
