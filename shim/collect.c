/* Controller side of heap profiling (runs in `python -m ctprof`, called
 * through ctypes; never in the profiled program).
 *
 * A consumer reads one process's .heap ring and keeps, in the controller's
 * own memory: the interned allocation stacks with per-site statistics, the
 * table of live blocks, the totals and the peak (with the per-site live
 * bytes at the high-water mark, re-taken whenever the heap grows by 1%).
 * At the program's exit it classifies what is still allocated the way
 * valgrind's memcheck does, by a conservative scan of the program's memory
 * (read with process_vm_readv): blocks reachable from the roots (data and
 * bss of every module, thread stacks, the exiting thread's TLS) are "still
 * reachable"; of the rest, those pointed to by another lost block are
 * "indirectly lost" and the others "definitely lost". */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include "ctprof.h"

enum {
    ST_ALLOC_COUNT, ST_ALLOC_BYTES, ST_FREE_COUNT, ST_FREE_BYTES, ST_LIVE_COUNT, ST_LIVE_BYTES,
    ST_PEAK_COUNT, ST_PEAK_BYTES, ST_DEF_COUNT, ST_DEF_BYTES, ST_IND_COUNT, ST_IND_BYTES,
    ST_REACH_COUNT, ST_REACH_BYTES, ST_TRUNCATED, ST_POSS_COUNT, ST_POSS_BYTES, NSTAT = 18
};
enum {
    T_LIVE_BYTES, T_LIVE_COUNT, T_PEAK_BYTES, T_PEAK_COUNT, T_ALLOC_COUNT, T_ALLOC_BYTES, T_FREE_COUNT,
    T_FREE_BYTES, T_UNMATCHED_FREES, T_EVENTS, T_STACKS, T_SCANNED, T_SNAPSHOTS, T_MAX_LIVE_BLOCKS,
    T_SKIPPED_RECORDS, T_BAD_RECORDS, T_PYTHON_STACKS, NTOTAL = 17
};
/* A realloc in flight: its old block waits in the live table under this key
 * (never a user address on x86-64) until the realloc's outcome is known. */
#define STASH_KEY(tid) (1ull << 63 | (uint64_t)(tid))
#define BATCH_BYTES (1u << 20)

struct stack_entry {
    uint64_t hash;
    uint32_t off, depth;      /* into ippool (off DROPPED: handed over, see drop_taken_locked) */
    uint32_t id_plus1;        /* 0: empty slot */
    uint32_t truncated;
};

/* 24 bytes: the live-block table is probed at every event and holds
 * hundreds of thousands of blocks in a large program, so its size is its
 * cache misses. */
struct live_entry {
    uint64_t ptr;             /* 0: empty */
    uint64_t size;
    float weight;             /* what the block counts for: 1, or 1/p for a sampled one */
    uint32_t stack;
};

/* A block's count and bytes: its weight, and its size times its weight
 * (the same at its free as at its allocation: every sum returns to 0). */
static double entry_count(const struct live_entry *e) { return (double)e->weight; }
static double entry_bytes(const struct live_entry *e) { return (double)e->size * (double)e->weight; }

struct consumer {
    /* Held by whoever touches the rest: the drainer thread while it
     * consumes, the controller's Python while it reads figures or scans. */
    pthread_mutex_t lock;
    int wanted;               /* Python callers waiting for the lock: the drainer yields to them */
    double sample_bytes;
    int pid;
    /* the record the reader is stuck on, if any (see writer_gone) */
    uint64_t stuck_pos;       /* position + 1; 0: not stuck */
    uint64_t stuck_since, stuck_checked, stuck_execs;
    int64_t stuck_cpu;
    int started;
    unsigned char *batch;     /* records copied out, awaiting bookkeeping */
    uint64_t rd;              /* consumed up to here (and published to the writers) */
    struct stack_entry *stab;
    uint32_t stab_cap, nstacks;
    uint32_t *stack_slot;     /* id -> slot in stab */
    size_t slot_cap;
    uint64_t *ippool;         /* the addresses of stacks pool_first on */
    size_t ippool_len, ippool_cap;
    uint32_t pool_first;
    double *stats;            /* nstacks * NSTAT */
    size_t stats_cap;         /* in stacks */
    struct live_entry *live;
    size_t live_cap, live_n;
    double totals[NTOTAL];
    double snap_at;
    uint64_t *codeset;        /* code objects already handed over (pairs; see codeset_add) */
    int done;                 /* the live-block table is gone: nothing more is consumed */
    uint64_t grow_at, grow_size;  /* the ring's growth, as this side set it (heap_shared.grow_at) */
    size_t codeset_cap, codeset_n;
};

#define DROPPED UINT32_MAX

/* ---- small helpers ------------------------------------------------------------ */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}


/* Where a stack's Python frames start: the index of its PYFRAMES_MARK
 * (they follow it, two words each), or n if it has none. */
static uint32_t python_part(const uint64_t *ips, uint32_t n)
{
    uint32_t at = 0;
    while (at < n && ips[at] != PYFRAMES_MARK)
        at++;
    return at;
}

/* Room for `need` elements.  The new room is left as it comes: not zeroed,
 * its pages are not resident until used (a large program's pools are tens
 * of megabytes, up to half of it room to grow into). */
static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

CTPROF_API struct consumer *ctprof_heap_new(double sample_bytes, int pid)
{
    struct consumer *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    c->sample_bytes = sample_bytes;
    c->pid = pid;
    c->stab_cap = 1024;
    c->stab = calloc(c->stab_cap, sizeof *c->stab);
    c->live_cap = 1024;
    c->live = calloc(c->live_cap, sizeof *c->live);
    if (!c->stab || !c->live) {
        free(c->stab);
        free(c->live);
        free(c);
        return NULL;
    }
    return c;
}

static void drainer_remove(struct consumer *c);

CTPROF_API void ctprof_heap_delete(struct consumer *c)
{
    if (!c)
        return;
    drainer_remove(c);
    pthread_mutex_destroy(&c->lock);
    free(c->stab);
    free(c->stack_slot);
    free(c->ippool);
    free(c->stats);
    free(c->live);
    free(c->batch);
    free(c->codeset);
    free(c);
}

/* ---- stacks -------------------------------------------------------------------- */

static int stab_rehash(struct consumer *c)
{
    uint32_t cap = c->stab_cap * 2;
    struct stack_entry *n = calloc(cap, sizeof *n);
    if (!n)
        return -1;
    for (uint32_t i = 0; i < c->stab_cap; i++) {
        struct stack_entry *e = &c->stab[i];
        if (!e->id_plus1)
            continue;
        uint32_t j = (uint32_t)(e->hash & (cap - 1));
        while (n[j].id_plus1)
            j = (j + 1) & (cap - 1);
        n[j] = *e;
        c->stack_slot[e->id_plus1 - 1] = j;
    }
    free(c->stab);
    c->stab = n;
    c->stab_cap = cap;
    return 0;
}

static int64_t intern(struct consumer *c, const uint64_t *ips, uint32_t n, uint32_t truncated)
{
    uint64_t h = heap_stack_hash(ips, n, truncated);
    uint32_t mask = c->stab_cap - 1, i = (uint32_t)(h & mask);
    while (c->stab[i].id_plus1) {
        struct stack_entry *e = &c->stab[i];
        if (e->hash == h && e->depth == n && e->truncated == truncated &&
            (e->off == DROPPED || memcmp(c->ippool + e->off, ips, n * 8) == 0))
            return e->id_plus1 - 1;
        i = (i + 1) & mask;
    }
    uint32_t id = c->nstacks;
    if (grow((void **)&c->ippool, &c->ippool_cap, c->ippool_len + n, 8) ||
        grow((void **)&c->stats, &c->stats_cap, (size_t)id + 1, NSTAT * sizeof(double)))
        return -1;
    if (grow((void **)&c->stack_slot, &c->slot_cap, (size_t)id + 1, sizeof *c->stack_slot))
        return -1;
    memcpy(c->ippool + c->ippool_len, ips, n * 8);
    if (python_part(ips, n) < n)
        c->totals[T_PYTHON_STACKS]++;
    c->stab[i] = (struct stack_entry){h, (uint32_t)c->ippool_len, n, id + 1, truncated};
    c->stack_slot[id] = i;
    c->ippool_len += n;
    c->nstacks++;
    memset(c->stats + (size_t)id * NSTAT, 0, NSTAT * sizeof(double));
    c->stats[(size_t)id * NSTAT + ST_TRUNCATED] = truncated;
    if (c->nstacks * 2 > c->stab_cap && stab_rehash(c) != 0)
        return -1;
    return id;
}

/* The stack an ALLOC_KNOWN record names by its hash: its writer sent it
 * whole before.  Should that record have been skipped (its writer left the
 * hook half-way), the allocation still counts, under an empty truncated
 * stack. */
static int64_t known_stack(struct consumer *c, uint64_t h)
{
    uint32_t mask = c->stab_cap - 1, i = (uint32_t)(h & mask);
    for (; c->stab[i].id_plus1; i = (i + 1) & mask)
        if (c->stab[i].hash == h)
            return c->stab[i].id_plus1 - 1;
    static const uint64_t no_frames[1];
    return intern(c, no_frames, 0, 1);
}

/* ---- live blocks ------------------------------------------------------------------ */

static size_t live_home(const struct consumer *c, uint64_t ptr) { return (size_t)(mix(ptr) & (c->live_cap - 1)); }

static int live_rehash(struct consumer *c)
{
    size_t cap = c->live_cap * 2;
    struct live_entry *n = calloc(cap, sizeof *n), *old = c->live;
    if (!n)
        return -1;
    size_t old_cap = c->live_cap;
    c->live = n;
    c->live_cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].ptr)
            continue;
        size_t j = live_home(c, old[i].ptr);
        while (n[j].ptr)
            j = (j + 1) & (cap - 1);
        n[j] = old[i];
    }
    free(old);
    return 0;
}

static struct live_entry *live_find(struct consumer *c, uint64_t ptr, size_t *slot)
{
    size_t i = live_home(c, ptr), mask = c->live_cap - 1;
    while (c->live[i].ptr) {
        if (c->live[i].ptr == ptr) {
            *slot = i;
            return &c->live[i];
        }
        i = (i + 1) & mask;
    }
    *slot = i;
    return NULL;
}

static void live_delete(struct consumer *c, size_t i)
{
    size_t mask = c->live_cap - 1, j = i;
    for (;;) {
        c->live[i].ptr = 0;
        for (;;) {
            j = (j + 1) & mask;
            if (!c->live[j].ptr)
                goto done;
            size_t home = live_home(c, c->live[j].ptr);
            /* can the entry at j move back to i? */
            if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j))
                break;
        }
        c->live[i] = c->live[j];
        i = j;
    }
done:
    c->live_n--;
}

static void snapshot_peak(struct consumer *c)
{
    for (uint32_t s = 0; s < c->nstacks; s++) {
        double *st = c->stats + (size_t)s * NSTAT;
        st[ST_PEAK_BYTES] = st[ST_LIVE_BYTES];
        st[ST_PEAK_COUNT] = st[ST_LIVE_COUNT];
    }
    c->snap_at = c->totals[T_LIVE_BYTES];
    c->totals[T_SNAPSHOTS]++;
}

static void on_free(struct consumer *c, uint64_t ptr)
{
    size_t slot;
    struct live_entry *e = live_find(c, ptr, &slot);
    if (!e) {
        c->totals[T_UNMATCHED_FREES]++;
        return;
    }
    double *st = c->stats + (size_t)e->stack * NSTAT, count = entry_count(e), bytes = entry_bytes(e);
    st[ST_FREE_COUNT] += count;
    st[ST_FREE_BYTES] += bytes;
    st[ST_LIVE_COUNT] -= count;
    st[ST_LIVE_BYTES] -= bytes;
    c->totals[T_FREE_COUNT] += count;
    c->totals[T_FREE_BYTES] += bytes;
    c->totals[T_LIVE_COUNT] -= count;
    c->totals[T_LIVE_BYTES] -= bytes;
    live_delete(c, slot);
}

static void on_alloc(struct consumer *c, uint64_t ptr, uint64_t size, const uint64_t *ips, uint32_t n,
                     uint32_t flags)
{
    int64_t id = (flags & ALLOC_KNOWN) ? known_stack(c, ips[0]) : intern(c, ips, n, (flags & ALLOC_TRUNCATED) ? 1 : 0);
    if (id < 0)
        return;
    float weight = 1;
    if (flags & ALLOC_SAMPLED) {
        /* Sampled with probability p = 1 - exp(-size/mean): weigh by 1/p
         * so sums are unbiased estimates (as tcmalloc does). */
        double p = c->sample_bytes > 0 ? heap_sample_chance((double)size / c->sample_bytes) : 1.0;
        if (p <= 0)
            p = 1e-12;
        weight = (float)(1.0 / p);
    }
    size_t slot;
    if (live_find(c, ptr, &slot)) { /* a free we never saw: retire the old block */
        on_free(c, ptr);
        c->totals[T_UNMATCHED_FREES]++;
        live_find(c, ptr, &slot);
    }
    c->live[slot] = (struct live_entry){ptr, size, weight, (uint32_t)id};
    c->live_n++;
    double count = entry_count(&c->live[slot]), bytes = entry_bytes(&c->live[slot]);
    double *st = c->stats + (size_t)id * NSTAT;
    st[ST_ALLOC_COUNT] += count;
    st[ST_ALLOC_BYTES] += bytes;
    st[ST_LIVE_COUNT] += count;
    st[ST_LIVE_BYTES] += bytes;
    c->totals[T_ALLOC_COUNT] += count;
    c->totals[T_ALLOC_BYTES] += bytes;
    c->totals[T_LIVE_COUNT] += count;
    c->totals[T_LIVE_BYTES] += bytes;
    if (c->totals[T_LIVE_BYTES] > c->totals[T_PEAK_BYTES]) {
        c->totals[T_PEAK_BYTES] = c->totals[T_LIVE_BYTES];
        c->totals[T_PEAK_COUNT] = c->totals[T_LIVE_COUNT];
        /* The sites holding the peak, re-taken each time the heap has grown
         * by 1% since the last look: at most 1% off the exact peak. */
        if (c->totals[T_LIVE_BYTES] > c->snap_at * 1.01)
            snapshot_peak(c);
    }
    if ((double)c->live_n > c->totals[T_MAX_LIVE_BLOCKS])
        c->totals[T_MAX_LIVE_BLOCKS] = (double)c->live_n;
    if (c->live_n * 2 > c->live_cap)
        live_rehash(c);
}

/* exec replaced the program: its blocks are gone, not freed and not leaked. */
static void on_exec(struct consumer *c)
{
    for (size_t i = 0; i < c->live_cap; i++) {
        struct live_entry *e = &c->live[i];
        if (!e->ptr)
            continue;
        double *st = c->stats + (size_t)e->stack * NSTAT;
        st[ST_LIVE_COUNT] -= entry_count(e);
        st[ST_LIVE_BYTES] -= entry_bytes(e);
        c->totals[T_LIVE_COUNT] -= entry_count(e);
        c->totals[T_LIVE_BYTES] -= entry_bytes(e);
        e->ptr = 0;
    }
    c->live_n = 0;
}

/* Move the live entry at `from` to key `to` (still live, same statistics). */
static void live_move(struct consumer *c, uint64_t from, uint64_t to)
{
    size_t slot;
    struct live_entry *e = live_find(c, from, &slot);
    if (!e)
        return;
    struct live_entry saved = *e;
    live_delete(c, slot);
    if (live_find(c, to, &slot)) {      /* a stale stash (its realloc's end was lost) */
        on_free(c, to);
        live_find(c, to, &slot);
    }
    saved.ptr = to;
    c->live[slot] = saved;
    c->live_n++;
}

/* The old block of a realloc: out of reach of other threads' events, kept
 * aside until the realloc's outcome (on_realloc). */
static void on_realloc_free(struct consumer *c, uint64_t old, uint32_t tid)
{
    size_t slot;
    if (!live_find(c, old, &slot)) {
        c->totals[T_UNMATCHED_FREES]++;
        return;
    }
    live_move(c, old, STASH_KEY(tid));
}

static void on_realloc(struct consumer *c, const struct rec_realloc *r)
{
    size_t slot;
    int stashed = r->old && live_find(c, STASH_KEY(r->tid), &slot) != NULL;
    if (r->ptr == 0 && r->size > 0) {   /* failed: the old block is still allocated */
        if (stashed)
            live_move(c, STASH_KEY(r->tid), r->old);
        return;
    }
    if (stashed)
        on_free(c, STASH_KEY(r->tid));
    if (r->ptr)
        on_alloc(c, r->ptr, r->size, (const uint64_t *)(r + 1), r->nips, r->h.flags);
}

/* An ALLOC_KNOWN record holds no frames and one word, its stack's hash. */
static int stack_words_fit(uint32_t flags, uint32_t nips, size_t room)
{
    return !(flags & ALLOC_KNOWN) || (nips == 0 && room >= 8);
}

/* One committed record (already copied out of the ring).  Every length is
 * checked against the record's size: the ring is the program's memory. */
static void process(struct consumer *c, const unsigned char *buf, uint32_t size)
{
    const struct rec_header *h = (const void *)buf;
    c->totals[T_EVENTS]++;
    switch (h->type) {
    case REC_ALLOC: {
        const struct rec_alloc *a = (const void *)h;
        if (size < sizeof *a || a->nips > (size - sizeof *a) / 8 || !stack_words_fit(h->flags, a->nips, size - sizeof *a))
            break;
        on_alloc(c, a->ptr, a->size, (const uint64_t *)(a + 1), a->nips, h->flags);
        return;
    }
    case REC_FREE:
        if (size < sizeof(struct rec_free))
            break;
        on_free(c, ((const struct rec_free *)h)->ptr);
        return;
    case REC_REALLOC_FREE: {
        const struct rec_realloc_free *f = (const void *)h;
        if (size < sizeof *f)
            break;
        on_realloc_free(c, f->ptr, f->tid);
        return;
    }
    case REC_REALLOC: {
        const struct rec_realloc *r = (const void *)h;
        if (size < sizeof *r || r->nips > (size - sizeof *r) / 8 || !stack_words_fit(h->flags, r->nips, size - sizeof *r))
            break;
        on_realloc(c, r);
        return;
    }
    case REC_EXEC:
        on_exec(c);
        return;
    }
    c->totals[T_BAD_RECORDS]++;
}

/* ---- reading the ring ------------------------------------------------------------ */

/* CPU time of thread `tid` in ns, -1 if it no longer exists. */
static int64_t thread_cpu(int pid, uint32_t tid, char *state)
{
    char path[96], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%u/stat", pid, tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    unsigned long long utime = 0, stime = 0;
    char st = '?';
    if (!p || sscanf(p + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &st, &utime, &stime) != 3)
        return -1;
    if (st == 'Z' || st == 'X')
        return -1;
    *state = st;
    snprintf(path, sizeof path, "/proc/%d/task/%u/schedstat", pid, tid);
    f = fopen(path, "r");
    unsigned long long run_ns = 0;
    if (f) {
        int ok = fscanf(f, "%llu", &run_ns) == 1;
        fclose(f);
        if (ok)
            return (int64_t)run_ns;
    }
    return (int64_t)((utime + stime) * (1000000000ull / 100)); /* USER_HZ ticks */
}

/* The reader is stuck at `pos` on a record claimed by `tid` (0: reserved
 * but not even claimed).  Is its writer gone for good?  Yes if an exec
 * happened since (every thread of the old image died), if the thread no
 * longer exists, if it has run 20 ms of CPU since (a hook holds a claim for
 * a fraction of a microsecond, so it left the hook: longjmp out of a signal
 * handler), or if it has been asleep for a second.  A stopped process is
 * waited for: its writers may still finish. */
static int writer_gone(struct consumer *c, const struct heap_shared *hs, uint64_t pos, uint32_t tid)
{
    uint64_t now = now_ns(), execs = __atomic_load_n(&hs->execs, __ATOMIC_ACQUIRE);
    char state = '?';
    if (c->stuck_pos != pos + 1) {
        /* A writer is usually just finishing: look at /proc only if it is
         * still unfinished 10 ms from now (reading /proc on every catch-up
         * would slow the reader down to the writers' cost). */
        c->stuck_pos = pos + 1;
        c->stuck_since = c->stuck_checked = now;
        c->stuck_execs = execs;
        c->stuck_cpu = -2;                  /* not read yet */
        return 0;
    }
    if (execs != c->stuck_execs)
        return 1;
    if (!tid || now - c->stuck_checked < 10000000ull)
        return 0;
    c->stuck_checked = now;
    int64_t cpu = thread_cpu(c->pid, tid, &state);
    if (cpu < 0)
        return 1;
    if (c->stuck_cpu == -2) {
        c->stuck_cpu = cpu;
        return 0;
    }
    if (cpu - c->stuck_cpu > 20000000)
        return 1;
    return now - c->stuck_since > 1000000000ull && (state == 'S' || state == 'D');
}

/* Process a batch of records copied out of the ring. */
static void process_batch(struct consumer *c, const unsigned char *buf, size_t len)
{
    for (size_t off = 0; off < len;) {
        uint32_t size;
        memcpy(&size, buf + off, 4);
        process(c, buf + off, size);
        off += size;
    }
}

/* Where ring position `pos` lies in the singly mapped data area of `cap`
 * bytes (the first), or of grow_size once grown: the position to take
 * modulo *mask + 1 (see heap_shared.grow_at). */
static uint64_t ring_place(const struct consumer *c, uint64_t cap, uint64_t pos, uint64_t *mask)
{
    if (c->grow_at && pos >= c->grow_at) {
        *mask = c->grow_size - 1;
        return pos - (c->grow_at - cap);
    }
    *mask = cap - 1;
    return pos;
}

/* Zero ring positions [from, to) (to - from at most the ring's room). */
static void zero_span(const struct consumer *c, unsigned char *data, uint64_t cap, uint64_t from, uint64_t to)
{
    uint64_t mask;
    if (c->grow_at && from < c->grow_at && to > c->grow_at) {
        ring_zero(data, cap - 1, from, c->grow_at - from);
        from = c->grow_at;
    }
    uint64_t at = ring_place(c, cap, from, &mask);
    ring_zero(data, mask, at, to - from);
}

/* Consume every committed record of the mapped .heap file at `file_base`:
 * copy a batch out, give the space back to the writers at once, then do the
 * bookkeeping (the slow part) while they go on.  Returns the bytes consumed. */
static size_t consume_locked(struct consumer *c, void *file_base)
{
    if (c->done)
        return 0;
    struct ring_header *h = file_base;
    struct heap_shared *hs = (struct heap_shared *)((char *)file_base + HEAP_SHARED_OFFSET);
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != CTPROF_MAGIC ||
        __atomic_load_n(&hs->magic, __ATOMIC_ACQUIRE) != HEAP_MAGIC)
        return 0;
    uint64_t cap = h->data_size;
    if (cap < 65536 || (cap & (cap - 1)))
        return 0;
    unsigned char *data = (unsigned char *)file_base + CTPROF_HEADER_SIZE;
    uint64_t mask;
    if (!c->started) {
        c->batch = malloc(BATCH_BYTES);
        if (!c->batch)
            return 0;
        c->started = 1;
        c->rd = __atomic_load_n(&h->read_pos, __ATOMIC_RELAXED);
    }
    uint64_t rd = c->rd, start = rd;
    uint64_t w = __atomic_load_n(&h->write_pos, __ATOMIC_ACQUIRE);
    for (;;) {
        size_t len = 0;
        while (rd < w && len + HEAP_MAX_RECORD <= BATCH_BYTES) {
            uint64_t at = ring_place(c, cap, rd, &mask);
            uint64_t *hp = (uint64_t *)(data + (at & mask));
            uint64_t word = __atomic_load_n(hp, __ATOMIC_ACQUIRE);
            uint32_t size = (uint32_t)word;
            uint32_t high = (uint32_t)(word >> 32);
            /* Everything reserved before the newest image's start was
             * written by a thread that exec killed, if it is unfinished. */
            uint64_t exec_pos = __atomic_load_n(&hs->exec_pos, __ATOMIC_ACQUIRE);
            if (word == 0) {
                /* Reserved, not yet claimed: a writer between its two
                 * instructions, or one an exec killed there (its size is
                 * unknown: skip to where the new image starts). */
                if (exec_pos > rd && exec_pos <= w) {
                    c->totals[T_SKIPPED_RECORDS]++;
                    zero_span(c, data, cap, rd, exec_pos);
                    rd = exec_pos;
                    continue;
                }
                break;
            }
            if (size < sizeof(struct rec_header) || (size & 7) || size > HEAP_MAX_RECORD || size > w - rd) {
                c->totals[T_BAD_RECORDS]++;  /* scribbled on: drop what is there */
                zero_span(c, data, cap, rd, w);
                rd = w;
                break;
            }
            if (high & HEAP_CLAIM) {
                if (rd >= exec_pos && !writer_gone(c, hs, rd, high & ~HEAP_CLAIM))
                    break;
                /* Take the space back from the writer (its commit then fails). */
                if (!__atomic_compare_exchange_n(hp, &word, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                    continue;
                c->totals[T_SKIPPED_RECORDS]++;
            } else if ((uint16_t)high != REC_PAD) {  /* (a pad: the ring's growth starts past it) */
                ring_copy(c->batch + len, data, mask, at, size);
                len += size;
            }
            ring_zero(data, mask, at, size);
            rd += size;
            c->stuck_pos = 0;
            if (rd == w)
                w = __atomic_load_n(&h->write_pos, __ATOMIC_ACQUIRE);
        }
        c->rd = rd;
        __atomic_store_n(&h->read_pos, rd, __ATOMIC_RELEASE);  /* the space is the writers' again */
        if (!len)
            break;
        process_batch(c, c->batch, len);
        if (__atomic_load_n(&c->wanted, __ATOMIC_ACQUIRE))
            break;            /* the controller's Python waits for the lock: it goes first */
        w = __atomic_load_n(&h->write_pos, __ATOMIC_ACQUIRE);
    }
    return rd - start;
}

static void totals_locked(struct consumer *c, double *out)
{
    c->totals[T_STACKS] = c->nstacks;
    memcpy(out, c->totals, sizeof c->totals);
}

static uint32_t nstacks_locked(struct consumer *c) { return c->nstacks; }

/* Stacks `first`, `first`+1, ... packed into `out` (room for `cap` words),
 * as many as fit whole: each is its depth d (with bit 32 set if the stack
 * was cut at the depth limit), then its d ips (leaf first).
 * *next receives the first stack not written; returns the words written.
 * One call hands the controller thousands of stacks (a large program
 * leaves 100,000); their figures come apart (ctprof_heap_stats), as they
 * change until the end and the addresses never do. */
static size_t stacks_locked(struct consumer *c, uint32_t first, uint64_t *out, size_t cap, uint32_t *next)
{
    size_t used = 0;
    uint32_t id = first;
    if (first < c->pool_first) {      /* handed over and dropped: not again */
        *next = first;
        return 0;
    }
    for (; id < c->nstacks; id++) {
        const struct stack_entry *e = &c->stab[c->stack_slot[id]];
        size_t need = 1 + (size_t)e->depth;
        if (used + need > cap)
            break;
        out[used] = e->depth | (uint64_t)(e->truncated != 0) << 32;   /* (cut at the depth limit) */
        memcpy(out + used + 1, c->ippool + e->off, (size_t)e->depth * 8);
        used += need;
    }
    *next = id;
    return used;
}

/* The code objects (address, fingerprint) met in Python frames, each
 * handed to the controller once: an open-addressing set of pairs. */
static int codeset_add(struct consumer *c, uint64_t addr, uint64_t print)
{
    if (2 * (c->codeset_n + 1) > c->codeset_cap) {
        size_t cap = c->codeset_cap ? 2 * c->codeset_cap : 1024;
        uint64_t *n = calloc(cap, 2 * sizeof *n);
        if (!n)
            return 1;           /* no room to remember it: hand it over again */
        for (size_t i = 0; i < c->codeset_cap; i++) {
            uint64_t *e = c->codeset + 2 * i;
            if (!e[0])
                continue;
            size_t j = mix(e[0] ^ e[1]) & (cap - 1);
            while (n[2 * j])
                j = (j + 1) & (cap - 1);
            n[2 * j] = e[0];
            n[2 * j + 1] = e[1];
        }
        free(c->codeset);
        c->codeset = n;
        c->codeset_cap = cap;
    }
    size_t j = mix(addr ^ print) & (c->codeset_cap - 1);
    for (;; j = (j + 1) & (c->codeset_cap - 1)) {
        uint64_t *e = c->codeset + 2 * j;
        if (!e[0]) {
            e[0] = addr;
            e[1] = print;
            c->codeset_n++;
            return 1;
        }
        if (e[0] == addr && e[1] == print)
            return 0;
    }
}

/* The code objects first met in the Python frames of stacks `first`,
 * `first`+1, ...: (address, fingerprint) pairs into `out` (room for `cap`
 * words).  *next receives the first stack not scanned; returns the words
 * written.  The controller reads each one while the process lives: only
 * the new ones, so that it keeps up with a program making thousands of
 * stacks a second. */
static size_t python_frames_locked(struct consumer *c, uint32_t first, uint64_t *out, size_t cap, uint32_t *next)
{
    size_t used = 0;
    uint32_t id = first < c->pool_first ? c->pool_first : first;   /* (dropped ones have no Python frames) */
    for (; id < c->nstacks && used + 2 * PYHEAP_MAX_FRAMES <= cap; id++) {
        const struct stack_entry *e = &c->stab[c->stack_slot[id]];
        const uint64_t *ips = c->ippool + e->off;
        for (uint32_t k = python_part(ips, e->depth) + 1; k + 1 < e->depth; k += 2) {
            uint64_t print = ips[k + 1] >> PYFRAME_PRINT_SHIFT;
            if (ips[k] && codeset_add(c, ips[k], print)) {
                out[used++] = ips[k];
                out[used++] = print;
            }
        }
    }
    *next = id;
    return used;
}

/* The controller's Python holds the addresses of stacks [0, upto) (they
 * come over while the program runs): the pool lets them go and keeps only
 * the later ones, so that a large program's addresses (tens of megabytes)
 * are not held twice.  A dropped stack is found again by its hash, depth
 * and truncation alone, as the writers' ALLOC_KNOWN records already name
 * it by its hash.  Not in a process with Python frames: a stack's code
 * objects are named from the pool, after the interpreter is found. */
static void drop_taken_locked(struct consumer *c, uint32_t upto)
{
    if (upto > c->nstacks)
        upto = c->nstacks;
    if (upto <= c->pool_first || c->totals[T_PYTHON_STACKS] > 0)
        return;
    /* stacks are added in id order: those before `upto` come first */
    size_t cut = upto < c->nstacks ? c->stab[c->stack_slot[upto]].off : c->ippool_len;
    memmove(c->ippool, c->ippool + cut, (c->ippool_len - cut) * 8);
    c->ippool_len -= cut;
    for (uint32_t id = c->pool_first; id < upto; id++)
        c->stab[c->stack_slot[id]].off = DROPPED;
    for (uint32_t id = upto; id < c->nstacks; id++)
        c->stab[c->stack_slot[id]].off -= (uint32_t)cut;
    c->pool_first = upto;
    if (c->ippool_cap > 4 * c->ippool_len + (1u << 16)) {   /* give the room back */
        size_t cap = 2 * c->ippool_len + (1u << 15);
        uint64_t *p = realloc(c->ippool, cap * 8);
        if (p) {
            c->ippool = p;
            c->ippool_cap = cap;
        }
    }
}

/* The process is over and scanned: its live-block table (the consumer's
 * largest with the stacks) goes before the controller builds the profile
 * beside the rest.  Nothing is consumed after this. */
static void forget_live_locked(struct consumer *c)
{
    free(c->live);
    free(c->batch);
    c->live = NULL;
    c->batch = NULL;
    c->live_cap = c->live_n = 0;
    c->done = 1;
}

/* x rounded half to even, as Python's round() (no libm: the shim links
 * nothing but libc).  Figures are counts and bytes, far below 2^63. */
static int64_t round_even(double x)
{
    double t = x < 0 ? -x : x;
    int64_t n = (int64_t)t;
    double frac = t - (double)n;
    if (frac > 0.5 || (frac == 0.5 && (n & 1)))
        n++;
    return x < 0 ? -n : n;
}

/* The statistics of stacks `first` .. `first`+`count`-1 (as many as
 * exist) into `out`, NSTAT each, rounded to whole numbers: the profile's
 * columns, made a column at a time by slicing instead of a Python round()
 * per figure (1.5 million of them after a large compile); returns how
 * many stacks. */
static size_t stats_locked(struct consumer *c, uint32_t first, int64_t *out, size_t count)
{
    if (first >= c->nstacks)
        return 0;
    if (count > c->nstacks - first)
        count = c->nstacks - first;
    const double *in = c->stats + (size_t)first * NSTAT;
    for (size_t i = 0; i < count * NSTAT; i++)
        out[i] = round_even(in[i]);
    return count;
}

/* ---- the leak scan -------------------------------------------------------------------
 * Classes as valgrind's memcheck defines them:
 *   still reachable  a chain of start pointers leads to it from a root;
 *   possibly lost    reachable only through a chain with an interior pointer
 *                    (or, in sampled mode, pointed to from memory whose
 *                    blocks were not sampled, so whose reachability we
 *                    cannot know);
 *   indirectly lost  pointed to only by lost blocks;
 *   definitely lost  no pointer to it from anything reachable.
 * A "start pointer" points at most 16 bytes into a block: layouts with a
 * header word before the data (C++ new[] with its count, glibc's DTV whose
 * thread pointer holds &dtv[1]) are as reachable as valgrind's heuristics
 * make them. */

enum { UNREACHED = 0, REACHABLE = 1, POSSIBLE = 2, INDIRECT = 3 };
/* kinds of root range handed in by the Python side */
enum { RANGE_ROOT = 0, RANGE_HEAP = 1, RANGE_ARENA_LIKE = 2, RANGE_MALLOC_STATE = 3 };
#define START_SLACK 16 /* a pointer at most this far in is a start pointer */

struct block {
    uint64_t lo, hi;
    uint32_t live_slot;
    uint8_t state;
};

/* The pages that hold a block, each with the blocks touching it (indexes
 * [first, end) of the sorted blocks): most words of a program's memory are
 * not pointers, or point outside the heap (code, data, a compiler's own
 * mmapped arenas), and one probe here rules them out without a binary
 * search over all the blocks. */
struct page_slot {
    uint64_t page_plus1;      /* 0: empty */
    uint32_t first, end;
};

/* The allocator's heap ranges ([heap], thread arenas), from their first
 * block to their last, read whole before the blocks are followed: the
 * blocks are scanned from this copy, not read one by one (a g++
 * compile's cc1plus follows 63,000 blocks at its exit: 50 ms of
 * process_vm_readv through batches of 256 pieces, against 6 ms to read
 * its 10 MiB heap at once and 21-31 ms to scan it; `as` leaves 16,000
 * unfreed blocks, each read on its own when its lost group is looked
 * for).  Only while they total HEAP_IMAGE_MAX: the copy counts in the
 * controller's peak memory, so a larger heap is read block by block. */
struct heap_image {
    uint64_t lo, hi;
    unsigned char *data;
};
#define HEAP_IMAGE_MAX (32u << 20)

/* Before the page index, one bit per 2 MiB region that holds a block
 * (hashed into 32 Ki bits: 4 KiB, at hand in the CPU's first-level
 * cache).  Most words of a large program's memory that look like heap
 * addresses point into its own arenas (a compiler's trees) or its code,
 * not into a malloc block: the bit says so without the page index's
 * probe (a cache miss in a table of 128 KiB and more). */
#define REGION_SHIFT 21
#define REGION_BITS 15
#define REGION_WORDS ((1u << REGION_BITS) / 64)

struct scan {
    struct consumer *c;
    int pid;
    struct block *blocks;
    size_t n;
    uint32_t *work;
    size_t work_n;
    unsigned char *buf;
    size_t buf_cap;
    uint64_t *heartbeat;
    struct page_slot *pages;
    uint64_t page_mask;       /* slots - 1 (a power of two) */
    /* Set while the roots are scanned by two threads: what each word
     * found is noted here (per block: HIT_START, HIT_INSIDE), not marked,
     * so the threads share nothing they write (see scan_roots). */
    uint8_t *hits;
    int malloc_state;         /* the words being scanned are the C library's data (RANGE_MALLOC_STATE) */
    struct heap_image *images;    /* sorted by address */
    size_t nimages;
    uint64_t regions[REGION_WORDS];   /* see mark_regions */
};
enum { HIT_START = 1, HIT_INSIDE = 2 };

/* Where glibc's malloc puts the chunk after a block of `size` bytes at
 * `lo` (x86-64: 16-byte header before the block, chunks a multiple of 16
 * and at least 32 bytes, the last 8 bytes of a block the next chunk's
 * first field).  For a size of 16k + 1..8 it lies inside the block, and
 * the malloc state in the C library's data (its top chunk, its bins) points
 * there: a pointer to the allocator's next chunk, not into this block. */
static uint64_t next_chunk(uint64_t lo, uint64_t size)
{
    uint64_t chunk = (size + 8 + 15) & ~15ull;
    return lo - 16 + (chunk < 32 ? 32 : chunk);
}

static int by_lo(const void *a, const void *b)
{
    const struct block *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* The first block whose end is above v. */
static size_t first_above(const struct scan *s, uint64_t v)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->blocks[mid].hi <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

#define PAGE_SHIFT_SCAN 12

static uint32_t region_bit(uint64_t addr)
{
    return (uint32_t)(((addr >> REGION_SHIFT) * 0x9E3779B97F4A7C15ull) >> (64 - REGION_BITS));
}

/* Set the region bits of every block (sorted). */
static void mark_regions(struct scan *s)
{
    for (size_t b = 0; b < s->n; b++)
        for (uint64_t r = s->blocks[b].lo >> REGION_SHIFT; r <= (s->blocks[b].hi - 1) >> REGION_SHIFT; r++) {
            uint32_t bit = region_bit(r << REGION_SHIFT);
            s->regions[bit / 64] |= 1ull << (bit % 64);
        }
}

static uint64_t page_hash(uint64_t page, uint64_t mask)
{
    return (page * 0x9E3779B97F4A7C15ull >> 20) & mask;
}

/* At most this many pages are indexed (4 GiB of live blocks; the table is
 * then at most 32 MiB): the index grows with the live bytes, not with the
 * blocks, and a larger heap is scanned with the binary search alone. */
#define MAX_INDEXED_PAGES (1u << 20)

/* Index every page a block touches (blocks sorted, so a page's blocks are
 * consecutive).  The table holds at most one slot per block plus one per
 * page of live memory, at most half full; without it (too many pages, or
 * no memory) the scan goes on without (s->pages stays NULL). */
static void index_pages(struct scan *s)
{
    uint64_t want = 0;
    for (size_t b = 0; b < s->n; b++)
        want += ((s->blocks[b].hi - 1) >> PAGE_SHIFT_SCAN) - (s->blocks[b].lo >> PAGE_SHIFT_SCAN) + 1;
    if (want > MAX_INDEXED_PAGES)
        return;
    uint64_t slots = 1024;
    while (slots < 2 * want)
        slots <<= 1;
    s->pages = calloc(slots, sizeof *s->pages);
    if (!s->pages)
        return;
    s->page_mask = slots - 1;
    for (size_t b = 0; b < s->n; b++) {
        for (uint64_t pg = s->blocks[b].lo >> PAGE_SHIFT_SCAN; pg <= (s->blocks[b].hi - 1) >> PAGE_SHIFT_SCAN; pg++) {
            uint64_t h = page_hash(pg, s->page_mask);
            while (s->pages[h].page_plus1 && s->pages[h].page_plus1 != pg + 1)
                h = (h + 1) & s->page_mask;
            if (!s->pages[h].page_plus1)
                s->pages[h] = (struct page_slot){pg + 1, (uint32_t)b, (uint32_t)b + 1};
            else
                s->pages[h].end = (uint32_t)b + 1;
        }
    }
}

/* The block holding address v, or s->n if none. */
static size_t block_at(const struct scan *s, uint64_t v)
{
    if (!s->pages) {                 /* no memory for the index: search all the blocks */
        size_t b = first_above(s, v);
        return b < s->n && v >= s->blocks[b].lo ? b : s->n;
    }
    uint64_t pg = v >> PAGE_SHIFT_SCAN;
    uint64_t h = page_hash(pg, s->page_mask);
    while (s->pages[h].page_plus1 != pg + 1) {
        if (!s->pages[h].page_plus1)
            return s->n;
        h = (h + 1) & s->page_mask;
    }
    size_t lo = s->pages[h].first, hi = s->pages[h].end;
    while (lo < hi) {                /* the first of them whose end is above v */
        size_t mid = (lo + hi) / 2;
        if (s->blocks[mid].hi <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->pages[h].end && v >= s->blocks[lo].lo ? lo : s->n;
}

static void mark(struct scan *s, size_t b, uint8_t state)
{
    s->blocks[b].state = state;
    s->work[s->work_n++] = (uint32_t)b;
}

/* Every word in p[0, len) (read from address `addr`) that points into a
 * block.  `source` is how the memory itself is reached: REACHABLE (a root
 * or reachable block), POSSIBLE, or INDIRECT (the lost-group phase).
 * Words lying inside tracked blocks are skipped when `skip_blocks` (a root
 * range that happens to contain blocks: they are scanned as blocks). */
static void scan_words(struct scan *s, const unsigned char *p, uint64_t addr, size_t len, uint8_t source,
                       int skip_blocks)
{
    if (!s->n)
        return;
    uint64_t min = s->blocks[0].lo, max = s->blocks[s->n - 1].hi;
    size_t next = skip_blocks ? first_above(s, addr) : s->n;
    for (size_t i = 0; i + 8 <= len; i += 8) {
        if (next < s->n && addr + i >= s->blocks[next].lo) {
            if (addr + i < s->blocks[next].hi) {
                i = ((s->blocks[next].hi - addr + 7) & ~7ull) - 8;
                continue;
            }
            next = first_above(s, addr + i);
            i -= 8;
            continue;
        }
        uint64_t v;
        memcpy(&v, p + i, 8);
        if (v < min || v >= max)
            continue;
        uint32_t bit = region_bit(v);
        if (!(s->regions[bit / 64] >> (bit % 64) & 1))
            continue;
        size_t b = block_at(s, v);
        if (b == s->n)
            continue;
        if (s->hits) {               /* (a root: the source is REACHABLE) */
            if (s->malloc_state && v == next_chunk(s->blocks[b].lo, s->blocks[b].hi - s->blocks[b].lo))
                continue;
            s->hits[b] |= v - s->blocks[b].lo <= START_SLACK ? HIT_START : HIT_INSIDE;
            continue;
        }
        uint8_t st = s->blocks[b].state;
        if (source == INDIRECT) {
            if (st == UNREACHED)
                mark(s, b, INDIRECT);
        } else if (source == REACHABLE && v - s->blocks[b].lo <= START_SLACK) {
            if (st == UNREACHED || st == POSSIBLE)
                mark(s, b, REACHABLE);
        } else if (st == UNREACHED) {
            mark(s, b, POSSIBLE);
        }
    }
}

static ssize_t read_remote(int pid, uint64_t addr, void *dst, size_t len)
{
    struct iovec local = {dst, len}, remote = {(void *)(uintptr_t)addr, len};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

static void beat(struct scan *s)
{
    if (s->heartbeat)  /* the program waits for us only while we show signs of life */
        __atomic_store_n(s->heartbeat, now_ns(), __ATOMIC_RELAXED);
}

/* The copy of [lo, hi) in a heap image, NULL if none holds it. */
static const unsigned char *image_of(const struct scan *s, uint64_t lo, uint64_t hi)
{
    size_t a = 0, z = s->nimages;
    while (a < z) {                  /* the first image ending above lo */
        size_t mid = (a + z) / 2;
        if (s->images[mid].hi <= lo)
            a = mid + 1;
        else
            z = mid;
    }
    if (a < s->nimages && lo >= s->images[a].lo && hi <= s->images[a].hi)
        return s->images[a].data + (lo - s->images[a].lo);
    return NULL;
}

/* Read [lo, hi) in chunks (unreadable pages skipped) and scan it; a
 * chunk a heap image holds is scanned from the copy. */
static void scan_range(struct scan *s, uint64_t lo, uint64_t hi, uint8_t source, int skip_blocks)
{
    const size_t chunk = 1 << 20;
    lo &= ~7ull;
    for (uint64_t a = lo; a < hi; a += chunk) {
        size_t len = hi - a < chunk ? (size_t)(hi - a) : chunk;
        const unsigned char *copy = image_of(s, a, a + len);
        if (copy) {
            scan_words(s, copy, a, len, source, skip_blocks);
        } else if (read_remote(s->pid, a, s->buf, len) == (ssize_t)len) {
            scan_words(s, s->buf, a, len, source, skip_blocks);
        } else {
            for (uint64_t pg = a; pg < a + len; pg = (pg & ~4095ull) + 4096) {
                size_t l = (size_t)(((pg & ~4095ull) + 4096 < a + len ? (pg & ~4095ull) + 4096 : a + len) - pg);
                if (read_remote(s->pid, pg, s->buf, l) == (ssize_t)l)
                    scan_words(s, s->buf, pg, l, source, skip_blocks);
            }
        }
        beat(s);
    }
}

/* Drain the work list: read the listed blocks in batches and scan each
 * with its own state as the source (a block in a heap image straight from
 * the copy). */
static void drain_work(struct scan *s)
{
    while (s->work_n) {
        struct iovec local[256], remote[256];
        uint32_t which[256];
        size_t k = 0, used = 0;
        while (s->work_n && k < 256) {
            uint32_t b = s->work[s->work_n - 1];
            uint64_t len = s->blocks[b].hi - s->blocks[b].lo;
            const unsigned char *copy = image_of(s, s->blocks[b].lo, s->blocks[b].hi);
            if (copy) {                         /* (what it marks is pushed, and taken next) */
                s->work_n--;
                scan_words(s, copy, s->blocks[b].lo, len, s->blocks[b].state, 0);
                continue;
            }
            if (len > s->buf_cap) {             /* huge block: on its own, in chunks */
                if (k)
                    break;
                s->work_n--;
                for (uint64_t a = s->blocks[b].lo; a < s->blocks[b].hi; a += s->buf_cap) {
                    size_t l = s->blocks[b].hi - a < s->buf_cap ? (size_t)(s->blocks[b].hi - a) : s->buf_cap;
                    if (read_remote(s->pid, a, s->buf, l) == (ssize_t)l)
                        scan_words(s, s->buf, a, l, s->blocks[b].state, 0);
                }
                continue;
            }
            if (used + len > s->buf_cap)
                break;
            s->work_n--;
            local[k] = (struct iovec){s->buf + used, len};
            remote[k] = (struct iovec){(void *)(uintptr_t)s->blocks[b].lo, len};
            which[k] = b;
            k++;
            used += len;
        }
        if (!k)
            continue;
        beat(s);
        /* The states now: a block pushed twice (possibly, then reachable)
         * is scanned with its final state either way. */
        ssize_t got = process_vm_readv(s->pid, local, k, remote, k, 0);
        for (size_t i = 0; i < k; i++) {
            if (got != (ssize_t)used &&
                read_remote(s->pid, (uint64_t)(uintptr_t)remote[i].iov_base, local[i].iov_base, local[i].iov_len) !=
                    (ssize_t)local[i].iov_len)
                continue;
            scan_words(s, local[i].iov_base, (uint64_t)(uintptr_t)remote[i].iov_base, local[i].iov_len,
                       s->blocks[which[i]].state, 0);
        }
    }
}

/* ---- the roots, on two threads --------------------------------------------------
 * A large program's roots are most of the scan (a compiler's own
 * mmapped arenas: 262 MiB read and scanned in 0.2 s, while the program
 * waits in its exit), and reading and scanning them needs nothing but the
 * sorted blocks.  So two threads (the program's exit leaves the machine
 * idle) take 1 MiB pieces of the roots in turn, each noting what its words
 * point to in a table of its own; the marks then follow from both tables
 * at once.  The states come out as scanning the roots one by one gives:
 * a block is reachable if any root word points to its start, else
 * possibly lost if any points inside it. */
#define ROOT_PIECE (1u << 20)

struct root_pieces {
    const uint64_t *ranges;   /* (lo, hi, kind) of each root range, nranges of them */
    int nranges;
    uint64_t next;            /* the next piece: range << 32 | piece within it (atomic) */
};

/* The next piece [*lo, *hi) of the roots not taken yet, and its range's
 * kind; 0 when none is left. */
static int take_piece(struct root_pieces *p, uint64_t *lo, uint64_t *hi, uint64_t *kind)
{
    for (;;) {
        uint64_t at = __atomic_load_n(&p->next, __ATOMIC_ACQUIRE);
        int r = (int)(at >> 32);
        if (r >= p->nranges)
            return 0;
        const uint64_t *range = p->ranges + 3 * r;
        uint64_t start = (range[0] & ~7ull) + (at & 0xffffffffu) * (uint64_t)ROOT_PIECE;
        uint64_t next = start + ROOT_PIECE < range[1] ? at + 1 : (uint64_t)(r + 1) << 32;
        if (start >= range[1]) {           /* (an empty range) */
            __atomic_compare_exchange_n(&p->next, &at, (uint64_t)(r + 1) << 32, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
            continue;
        }
        if (__atomic_compare_exchange_n(&p->next, &at, next, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *lo = start;
            *hi = start + ROOT_PIECE < range[1] ? start + ROOT_PIECE : range[1];
            *kind = range[2];
            return 1;
        }
    }
}

struct root_worker {
    struct scan s;            /* a copy: its own buffer and hit table, the blocks shared */
    struct root_pieces *pieces;
};

static void *scan_root_pieces(void *arg)
{
    struct root_worker *w = arg;
    uint64_t lo, hi, kind;
    while (take_piece(w->pieces, &lo, &hi, &kind)) {
        w->s.malloc_state = kind == RANGE_MALLOC_STATE;
        scan_range(&w->s, lo, hi, REACHABLE, 1);
    }
    return NULL;
}

/* Scan the root ranges ((lo, hi, kind) triples) on this thread and one more, then
 * mark what they reach.  -1 if out of memory (nothing marked). */
static int scan_roots(struct scan *s, const uint64_t *roots, int nroots)
{
    struct root_pieces pieces = {roots, nroots, 0};
    struct root_worker w[2];
    for (int i = 0; i < 2; i++) {
        w[i].s = *s;
        w[i].pieces = &pieces;
        w[i].s.hits = calloc(s->n ? s->n : 1, 1);
        w[i].s.buf = i ? malloc(ROOT_PIECE) : s->buf;
        w[i].s.buf_cap = i ? ROOT_PIECE : s->buf_cap;
    }
    int ok = w[0].s.hits && w[1].s.hits && w[1].s.buf;
    pthread_t helper;
    int helped = ok && pthread_create(&helper, NULL, scan_root_pieces, &w[1]) == 0;
    if (ok) {
        scan_root_pieces(&w[0]);          /* (takes every piece if no helper started) */
        if (helped)
            pthread_join(helper, NULL);
        for (size_t b = 0; b < s->n; b++) {
            uint8_t h = w[0].s.hits[b] | w[1].s.hits[b];
            if (h & HIT_START)
                mark(s, b, REACHABLE);
            else if (h & HIT_INSIDE)
                mark(s, b, POSSIBLE);
        }
    }
    free(w[0].s.hits);
    free(w[1].s.hits);
    free(w[1].s.buf);
    return ok ? 0 : -1;
}

static uint64_t range_kind(const struct scan *s, const uint64_t *range)
{
    if (range[2] != RANGE_ARENA_LIKE)
        return range[2];
    size_t b = first_above(s, range[0]);
    return b < s->n && s->blocks[b].lo < range[1] ? RANGE_HEAP : RANGE_ROOT;
}

static int by_image_lo(const void *a, const void *b)
{
    const struct heap_image *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Read the heap ranges (see struct heap_image) that hold blocks, if they
 * total HEAP_IMAGE_MAX at most; a range that cannot be read whole, or
 * without memory for it, is left to the block by block reads. */
static void read_images(struct scan *s, const uint64_t *ranges, int nranges)
{
    uint64_t total = 0;
    int heaps = 0;
    for (int r = 0; r < nranges; r++)
        if (range_kind(s, ranges + 3 * r) == RANGE_HEAP) {
            total += ranges[3 * r + 1] - ranges[3 * r];
            heaps++;
        }
    if (!heaps || total > HEAP_IMAGE_MAX || !(s->images = calloc((size_t)heaps, sizeof *s->images)))
        return;
    for (int r = 0; r < nranges; r++) {
        uint64_t lo = ranges[3 * r], hi = ranges[3 * r + 1];
        if (range_kind(s, ranges + 3 * r) != RANGE_HEAP || hi <= lo)
            continue;
        /* only the pages from its first block to its last (a heap's top
         * is often free memory) */
        size_t first = first_above(s, lo), last = first_above(s, hi);
        if (first >= s->n || s->blocks[first].lo >= hi)
            continue;
        if (last < s->n && s->blocks[last].lo < hi)
            last++;                  /* (the block holding hi - 1, if one does) */
        lo = s->blocks[first].lo > lo ? s->blocks[first].lo & ~4095ull : lo;
        hi = s->blocks[last - 1].hi < hi ? (s->blocks[last - 1].hi + 4095) & ~4095ull : hi;
        /* mapped, not malloc'ed: glibc would raise its mmap threshold to
         * the size of a large block freed, and the next process's copy
         * would then stay in the controller's heap, resident, once freed
         * (13 MB after `as`'s scan) */
        unsigned char *data = mmap(NULL, hi - lo, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (data == MAP_FAILED)
            data = NULL;
        uint64_t a = lo;
        for (; data && a < hi; a += ROOT_PIECE) {
            size_t len = hi - a < ROOT_PIECE ? (size_t)(hi - a) : ROOT_PIECE;
            if (read_remote(s->pid, a, data + (a - lo), len) != (ssize_t)len)
                break;
            beat(s);
        }
        if (data && a >= hi)
            s->images[s->nimages++] = (struct heap_image){lo, hi, data};
        else if (data)
            munmap(data, hi - lo);
    }
    qsort(s->images, s->nimages, sizeof *s->images, by_image_lo);
}

static void free_scan(struct scan *s)
{
    free(s->blocks);
    free(s->work);
    free(s->buf);
    free(s->pages);
    for (size_t i = 0; i < s->nimages; i++)
        munmap(s->images[i].data, s->images[i].hi - s->images[i].lo);
    free(s->images);
}

/* Classify every live block.  `ranges` holds nranges (lo, hi, kind)
 * triples: RANGE_ROOT memory is a root (words inside tracked blocks
 * skipped); RANGE_HEAP is the allocator's own memory (free chunks with
 * stale pointers, untracked blocks): not a root, but in sampled mode the
 * home of the unsampled blocks, so what it points to is only "possibly
 * lost", never definitely.  RANGE_ARENA_LIKE (an anonymous mapping where
 * malloc puts its thread arenas) is heap if it holds a tracked block, else a
 * root (a thread stack can start there too).  Returns 0, or -1 if memory
 * could not be read. */
static int scan_locked(struct consumer *c, int pid, const uint64_t *ranges, int nranges, uint64_t *heartbeat)
{
    struct scan s = {.c = c, .pid = pid, .buf_cap = ROOT_PIECE, .heartbeat = heartbeat};
    /* each block enters the work list at most four times (possibly,
     * reachable; twice in the last phase) */
    s.blocks = malloc((c->live_n + 1) * sizeof *s.blocks);
    s.work = malloc((4 * c->live_n + 1) * sizeof *s.work);
    s.buf = malloc(s.buf_cap);
    if (!s.blocks || !s.work || !s.buf) {
        free_scan(&s);
        return -1;
    }
    for (size_t i = 0; i < c->live_cap; i++) {
        if (!c->live[i].ptr || (c->live[i].ptr >> 63))  /* empty, or a realloc that never finished */
            continue;
        uint64_t size = c->live[i].size ? c->live[i].size : 1;
        s.blocks[s.n++] = (struct block){c->live[i].ptr, c->live[i].ptr + size, (uint32_t)i, UNREACHED};
    }
    qsort(s.blocks, s.n, sizeof *s.blocks, by_lo);
    index_pages(&s);
    mark_regions(&s);
    uint64_t probe;
    if (s.n && read_remote(pid, s.blocks[0].lo, &probe, 1) != 1) {
        free_scan(&s);
        return -1;
    }
    /* 1. everything reachable from the roots */
    uint64_t *roots = malloc((3 * (size_t)nranges + 1) * sizeof *roots);
    int nroots = 0;
    for (int r = 0; roots && r < nranges; r++) {
        uint64_t kind = range_kind(&s, ranges + 3 * r);
        if (kind == RANGE_ROOT || kind == RANGE_MALLOC_STATE) {
            memcpy(roots + 3 * nroots, ranges + 3 * r, 2 * sizeof *roots);
            roots[3 * nroots + 2] = kind;
            nroots++;
        }
    }
    if (!roots || scan_roots(&s, roots, nroots) != 0) {
        free(roots);
        free_scan(&s);
        return -1;
    }
    free(roots);
    read_images(&s, ranges, nranges);
    drain_work(&s);
    /* 2. sampled mode: what untracked heap memory points to */
    if (c->sample_bytes > 0) {
        for (int r = 0; r < nranges; r++) {
            if (range_kind(&s, ranges + 3 * r) == RANGE_HEAP) {
                scan_range(&s, ranges[3 * r], ranges[3 * r + 1], POSSIBLE, 1);
                drain_work(&s);
            }
        }
    }
    /* 3. among the rest, blocks pointed to by another lost block are
     *    indirectly lost; the others lead their group: definitely lost */
    for (size_t b = 0; b < s.n; b++) {
        if (s.blocks[b].state != UNREACHED)
            continue;
        mark(&s, b, INDIRECT);                  /* so its pointers to itself are ignored */
        drain_work(&s);
        s.blocks[b].state = UNREACHED;          /* the leader stays definitely lost */
    }
    for (uint32_t i = 0; i < c->nstacks; i++) {
        double *st = c->stats + (size_t)i * NSTAT;
        st[ST_DEF_COUNT] = st[ST_DEF_BYTES] = st[ST_IND_COUNT] = st[ST_IND_BYTES] = 0;
        st[ST_REACH_COUNT] = st[ST_REACH_BYTES] = st[ST_POSS_COUNT] = st[ST_POSS_BYTES] = 0;
    }
    static const int base_of[] = {[UNREACHED] = ST_DEF_COUNT, [REACHABLE] = ST_REACH_COUNT,
                                  [POSSIBLE] = ST_POSS_COUNT, [INDIRECT] = ST_IND_COUNT};
    for (size_t b = 0; b < s.n; b++) {
        const struct live_entry *e = &c->live[s.blocks[b].live_slot];
        double *st = c->stats + (size_t)e->stack * NSTAT;
        int base = base_of[s.blocks[b].state];
        st[base] += entry_count(e);
        st[base + 1] += entry_bytes(e);
    }
    c->totals[T_SCANNED] = 1;
    free_scan(&s);
    return 0;
}

/* ---- the entry points of the controller's Python: each under the consumer's lock ---- */

/* When the controller's Python last called in (see the drainer). */
static uint64_t python_seen_ns;

static void python_seen(void) { __atomic_store_n(&python_seen_ns, now_ns(), __ATOMIC_RELAXED); }

/* Python's calls take the lock before the drainer: it is asked to let go
 * between batches (a program allocating flat out keeps it busy for good). */
static void lock_for_python(struct consumer *c)
{
    python_seen();
    __atomic_add_fetch(&c->wanted, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_lock(&c->lock);
    __atomic_sub_fetch(&c->wanted, 1, __ATOMIC_ACQ_REL);
}

CTPROF_API size_t ctprof_heap_consume(struct consumer *c, void *file_base)
{
    lock_for_python(c);
    size_t r = consume_locked(c, file_base);
    pthread_mutex_unlock(&c->lock);
    return r;
}

CTPROF_API void ctprof_heap_totals(struct consumer *c, double *out)
{
    lock_for_python(c);
    totals_locked(c, out);
    pthread_mutex_unlock(&c->lock);
}

CTPROF_API uint32_t ctprof_heap_nstacks(struct consumer *c)
{
    lock_for_python(c);
    uint32_t r = nstacks_locked(c);
    pthread_mutex_unlock(&c->lock);
    return r;
}

CTPROF_API size_t ctprof_heap_stacks(struct consumer *c, uint32_t first, uint64_t *out, size_t cap, uint32_t *next)
{
    lock_for_python(c);
    size_t r = stacks_locked(c, first, out, cap, next);
    pthread_mutex_unlock(&c->lock);
    return r;
}

CTPROF_API int ctprof_heap_scan(struct consumer *c, int pid, const uint64_t *ranges, int nranges, uint64_t *heartbeat)
{
    lock_for_python(c);
    int r = scan_locked(c, pid, ranges, nranges, heartbeat);
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* Let the ring grow into the rest of its file (see heap_shared.grow_at):
 * from a data_size past what is read, as the shim mapped it.  The
 * geometry is this side's own copy, checked against the file's length
 * here: the header is the program's to scribble on.  1 if it grew. */
static int grow_locked(struct consumer *c, void *file_base, uint64_t file_bytes)
{
    struct ring_header *h = file_base;
    struct heap_shared *hs = (struct heap_shared *)((char *)file_base + HEAP_SHARED_OFFSET);
    uint64_t cap = h->data_size, size = __atomic_load_n(&hs->grow_size, __ATOMIC_ACQUIRE);
    if (c->grow_at || !c->started || c->done || cap < 65536 || (cap & (cap - 1)) || size <= cap ||
        (size & (size - 1)) || file_bytes < CTPROF_HEADER_SIZE + size)
        return 0;
    c->grow_size = size;
    /* (released: the drainer reads it without the lock, see drain_sleep) */
    __atomic_store_n(&c->grow_at, (c->rd + 2 * cap - 1) & ~(cap - 1), __ATOMIC_RELEASE);
    __atomic_store_n(&hs->grow_at, c->grow_at, __ATOMIC_RELEASE);
    return 1;
}

CTPROF_API int ctprof_heap_grow(struct consumer *c, void *file_base, uint64_t file_bytes)
{
    lock_for_python(c);
    int r = grow_locked(c, file_base, file_bytes);
    pthread_mutex_unlock(&c->lock);
    return r;
}

CTPROF_API void ctprof_heap_drop_taken(struct consumer *c, uint32_t upto)
{
    lock_for_python(c);
    drop_taken_locked(c, upto);
    pthread_mutex_unlock(&c->lock);
}

CTPROF_API size_t ctprof_heap_python_frames(struct consumer *c, uint32_t first, uint64_t *out, size_t cap,
                                           uint32_t *next)
{
    lock_for_python(c);
    size_t r = python_frames_locked(c, first, out, cap, next);
    pthread_mutex_unlock(&c->lock);
    return r;
}

CTPROF_API void ctprof_heap_forget_live(struct consumer *c)
{
    lock_for_python(c);
    forget_live_locked(c);
    pthread_mutex_unlock(&c->lock);
}

CTPROF_API size_t ctprof_heap_stats(struct consumer *c, uint32_t first, int64_t *out, size_t count)
{
    lock_for_python(c);
    size_t r = stats_locked(c, first, out, count);
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* ---- the drainer ----------------------------------------------------------------------
 * A thread of the controller drains every registered ring in C.  The
 * controller's Python threads take turns at the interpreter lock every few
 * milliseconds, time in which an allocation loop fills a small ring:
 * drained from Python, the ring had to be large, and it is the main
 * metadata in the program.  The drainer sleeps on the ring that moved most
 * (a futex in its shared header) until its writers find a quarter of it
 * waiting, or for DRAIN_IDLE_NS at most (spinning instead would take a CPU
 * from the program on a small machine).  Each pass writes every ring's
 * heartbeat (the shim's sign that the controller lives), but only while
 * the controller's Python has called in within PYTHON_QUIET_NS: a
 * controller whose Python died or hangs must not keep a program waiting
 * at its exit for a leak scan that never comes.  A ring whose consumer is
 * busy (the controller reading its figures, or the leak scan) is skipped
 * for that pass. */
#define DRAIN_IDLE_NS 1000000
#define PYTHON_QUIET_NS 5000000000ull
struct drained {
    struct consumer *c;
    void *base;                    /* the mapped .heap file */
    double python_stacks_told;     /* its stacks with Python frames when last told */
    int exit_told;                 /* its process waiting at exit was told */
};
static struct {
    pthread_mutex_t lock;          /* guards everything below */
    struct drained *list;
    size_t n, cap;
    pthread_t thread;
    int running, stop;
    int over;                      /* stopped for the run: a ring added late is the caller's to drain */
    int watch_fd_plus1;            /* inotify on the session directory (0: none) */
    int wanted;                    /* callers waiting for the lock: the drainer lets them in first */
    uint32_t *sleeping_on;         /* the futex word it sleeps on (NULL: none), for lock_drainer's wake */
} drainer = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* End the drainer's sleep (it sleeps holding its lock, up to
 * DRAIN_IDLE_NS): each new process's drain_add, and its removal, waited
 * for it, 0.5-1.5 ms each.  Only the wake, never a store: the ring it
 * sleeps on may be unmapped once it has woken (the kernel then says
 * EFAULT).  A wake that comes before the sleep is lost: the sleeper looks
 * at `wanted` and `stop` after it said where it sleeps. */
static void wake_drainer_sleep(void)
{
    uint32_t *sleeping = __atomic_load_n(&drainer.sleeping_on, __ATOMIC_SEQ_CST);
    if (sleeping)
        syscall(SYS_futex, sleeping, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* The lock for a caller other than the drainer thread.  The mutex is not
 * fair and the drainer takes it again the moment it lets go, so a caller
 * could wait through dozens of its passes (ctprof_heap_drain_stop waited
 * 23-67 ms at the end of a run); it waits for `wanted` to clear instead. */
static void lock_drainer(void)
{
    __atomic_add_fetch(&drainer.wanted, 1, __ATOMIC_SEQ_CST);
    wake_drainer_sleep();
    pthread_mutex_lock(&drainer.lock);
    __atomic_sub_fetch(&drainer.wanted, 1, __ATOMIC_ACQ_REL);
}

static struct heap_shared *shared_of(void *base) { return (struct heap_shared *)((char *)base + HEAP_SHARED_OFFSET); }

/* What the controller's Python must do soon, raised by the drainer: a
 * process waits at its exit for the leak scan, or new stacks hold Python
 * frames whose code objects are to be read while they exist.  Python
 * sleeps on this futex between its looks (ctprof_heap_wait_attention):
 * without it, it would poll every millisecond for those two, taking CPU
 * from the drainer and the program on a small machine. */
static uint32_t attention;

static void raise_attention(void)
{
    if (!__atomic_exchange_n(&attention, 1, __ATOMIC_ACQ_REL))
        syscall(SYS_futex, &attention, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Does ring d call for the controller's Python?  (consumer lock held) */
static int needs_python(struct drained *d)
{
    int want = 0;
    if (d->c->totals[T_PYTHON_STACKS] != d->python_stacks_told) {
        d->python_stacks_told = d->c->totals[T_PYTHON_STACKS];
        want = 1;
    }
    int waiting = __atomic_load_n(&shared_of(d->base)->exit_state, __ATOMIC_ACQUIRE) == EXIT_WAITING;
    if (waiting && !d->exit_told)
        want = 1;
    d->exit_told = waiting;     /* (an exec'd image runs, and exits, again) */
    return want;
}

/* Block (without the GIL: an ordinary ctypes call) until the drainer
 * raises attention or `ms` milliseconds pass; 1 if it was raised. */
CTPROF_API int ctprof_heap_wait_attention(int ms)
{
    python_seen();
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    if (!__atomic_load_n(&attention, __ATOMIC_ACQUIRE))
        syscall(SYS_futex, &attention, FUTEX_WAIT_PRIVATE, 0, &t, NULL, 0);
    return (int)__atomic_exchange_n(&attention, 0, __ATOMIC_ACQ_REL);
}

/* Wake the Python thread waiting above (the run is over). */
CTPROF_API void ctprof_heap_raise_attention(void) { raise_attention(); }

/* Wake the process of the ring mapped at `base` in its exit hook, which
 * sleeps on its exit state until the controller has set it (it looked
 * every 0.5 ms: a short process of a build waited 0.25 ms more for
 * nothing). */
CTPROF_API void ctprof_heap_exit_wake(void *base)
{
    syscall(SYS_futex, &shared_of(base)->exit_state, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* One pass over every ring (drainer.lock held); returns the base of the
 * one that moved most, NULL if none moved. */
static void *drain_pass(void)
{
    size_t most = 0;
    void *hot = NULL;
    uint64_t now = now_ns();
    int python_alive = now - __atomic_load_n(&python_seen_ns, __ATOMIC_RELAXED) < PYTHON_QUIET_NS;
    for (size_t i = 0; i < drainer.n; i++) {
        struct drained *d = &drainer.list[i];
        if (python_alive)
            __atomic_store_n(&shared_of(d->base)->heartbeat_ns, now, __ATOMIC_RELAXED);
        if (__atomic_load_n(&d->c->wanted, __ATOMIC_ACQUIRE) || pthread_mutex_trylock(&d->c->lock) != 0)
            continue;
        size_t n = consume_locked(d->c, d->base);
        int wake = needs_python(d);
        pthread_mutex_unlock(&d->c->lock);
        if (wake)
            raise_attention();
        if (n > most) {
            most = n;
            hot = d->base;
        }
    }
    return hot;
}

/* The consumer of the ring mapped at `base`, NULL if it is not registered
 * (any more).  (drainer.lock held) */
static struct consumer *consumer_of(void *base)
{
    for (size_t i = 0; i < drainer.n; i++)
        if (drainer.list[i].base == base)
            return drainer.list[i].c;
    return NULL;
}

/* The drainer's sleep: on the futex `word` while it holds 1, for
 * DRAIN_IDLE_NS at most, and not at all once a caller wants the lock or
 * the drainer is to stop.  It says where it sleeps first, so that
 * lock_drainer can end the sleep (wake_drainer_sleep). */
static void sleep_on(uint32_t *word)
{
    struct timespec idle = {0, DRAIN_IDLE_NS};
    __atomic_store_n(&drainer.sleeping_on, word, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&drainer.stop, __ATOMIC_SEQ_CST) && !__atomic_load_n(&drainer.wanted, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, word, FUTEX_WAIT, 1, &idle, NULL, 0);
    __atomic_store_n(&drainer.sleeping_on, NULL, __ATOMIC_SEQ_CST);
}

/* Sleep until `base`'s writers (`c`'s) have a quarter of its ring waiting (they
 * wake us), or DRAIN_IDLE_NS -- at once if the last pass moved records
 * and a quarter already waits.  (A pass that moved nothing sleeps
 * whatever waits: a record whose writer stopped inside the hook holds the
 * ring up until it is judged gone, and must not be spun on.)  With no
 * ring (`c` NULL), DRAIN_IDLE_NS or until a caller wants the lock. */
static void drain_sleep(struct consumer *c, void *base, int moved)
{
    if (!c) {
        static uint32_t no_ring = 1;     /* (never changes: only a wake ends the sleep early) */
        sleep_on(&no_ring);
        return;
    }
    struct ring_header *h = base;
    struct heap_shared *hs = shared_of(base);
    __atomic_store_n(&hs->drain_wake, 1, __ATOMIC_SEQ_CST);
    /* a writer that claimed before it could see the flag did not wake us */
    uint64_t waiting = __atomic_load_n(&h->write_pos, __ATOMIC_SEQ_CST) - __atomic_load_n(&h->read_pos, __ATOMIC_SEQ_CST);
    /* the ring's room as this side set it, not as the header says */
    uint64_t room = __atomic_load_n(&c->grow_at, __ATOMIC_ACQUIRE) ? c->grow_size : h->data_size;
    if (!moved || waiting < room / 4)
        sleep_on(&hs->drain_wake);
    __atomic_store_n(&hs->drain_wake, 0, __ATOMIC_SEQ_CST);
}

static void *drain_main(void *arg);

/* A new process's ring fills in its first millisecond of allocating,
 * and it then waits until the controller's Python has found the file and
 * handed it to us (a look every 10 ms: `as` after a compile waited 1-21
 * ms).  So the drainer also reads the session directory's inotify events,
 * at most every WATCH_STEP_NS, and calls Python at once when a .heap file
 * appeared.  (drainer.lock held) */
#define WATCH_STEP_NS 1000000
static void watch_new_rings(void)
{
    static uint64_t looked_ns;        /* (a busy drainer passes thousands of times a second) */
    uint64_t now = now_ns();
    if (!drainer.watch_fd_plus1 || now - looked_ns < WATCH_STEP_NS)
        return;
    looked_ns = now;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int found = 0;
    ssize_t n;
    while ((n = read(drainer.watch_fd_plus1 - 1, buf, sizeof buf)) > 0) {
        for (char *p = buf; p + sizeof(struct inotify_event) <= buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            size_t len = e->len ? strnlen(e->name, e->len) : 0;
            if (len > 5 && !memcmp(e->name + len - 5, ".heap", 5))
                found = 1;
            p += sizeof *e + e->len;
        }
    }
    if (found)
        raise_attention();
}

/* (drainer.lock held) */
static void start_drainer_locked(void)
{
    if (!drainer.running) {
        drainer.stop = 0;
        drainer.running = pthread_create(&drainer.thread, NULL, drain_main, NULL) == 0;
    }
}

/* The ring slept on is the last one that moved.  drainer.lock is held
 * while sleeping (at most DRAIN_IDLE_NS), so no ring leaves the list, or
 * is unmapped, under the sleeper. */
static void *drain_main(void *arg)
{
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);  /* wake when asked, not 50 us later */
    void *hot = NULL;
    while (!__atomic_load_n(&drainer.stop, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&drainer.lock);
        watch_new_rings();
        void *moved = drain_pass();
        if (__atomic_load_n(&drainer.stop, __ATOMIC_ACQUIRE)) {
            pthread_mutex_unlock(&drainer.lock);
            break;
        }
        if (moved)
            hot = moved;
        struct consumer *c = hot ? consumer_of(hot) : NULL;
        if (!c)
            hot = NULL;
        drain_sleep(c, hot, moved != NULL);
        pthread_mutex_unlock(&drainer.lock);
        while (__atomic_load_n(&drainer.wanted, __ATOMIC_ACQUIRE) && !__atomic_load_n(&drainer.stop, __ATOMIC_ACQUIRE))
            sched_yield();
    }
    return NULL;
}

/* Drain `c`'s ring, mapped at `base`, from the drainer thread from now on
 * (started at the first ring).  -1: no thread; the caller drains it. */
CTPROF_API int ctprof_heap_drain_add(struct consumer *c, void *base)
{
    python_seen();
    int rc = -1;
    lock_drainer();
    /* (after drain_stop -- the run's last look finds a new ring -- no
     * thread starts again: nothing would stop it) */
    if (!drainer.over)
        start_drainer_locked();
    if (drainer.n == drainer.cap) {
        size_t cap = drainer.cap ? 2 * drainer.cap : 16;
        struct drained *list = realloc(drainer.list, cap * sizeof *list);
        if (list) {
            drainer.list = list;
            drainer.cap = cap;
        }
    }
    if (drainer.running && drainer.n < drainer.cap) {
        drainer.list[drainer.n++] = (struct drained){c, base, 0, 0};
        rc = 0;
    }
    pthread_mutex_unlock(&drainer.lock);
    return rc;
}

/* No pass touches `c` once this returns. */
static void drainer_remove(struct consumer *c)
{
    lock_drainer();
    for (size_t i = 0; i < drainer.n; i++)
        if (drainer.list[i].c == c) {
            drainer.list[i] = drainer.list[--drainer.n];
            break;
        }
    pthread_mutex_unlock(&drainer.lock);
}

static void *close_quietly(void *fd)
{
    close((int)(intptr_t)fd);
    return NULL;
}

/* Close an inotify descriptor on a thread of its own: closing one waits
 * for a grace period of the kernel's (6-22 ms at the end of a g++
 * compile's run, on the path to its profile). */
static void close_later(int fd)
{
    pthread_attr_t attr;
    pthread_t thread;
    int started = 0;
    if (pthread_attr_init(&attr) == 0) {
        started = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
                  pthread_create(&thread, &attr, close_quietly, (void *)(intptr_t)fd) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started)
        close(fd);
}

/* Watch the session directory `dir` for new rings (see watch_new_rings),
 * with the drainer running from now on.  -1 if inotify is refused (the
 * files are then found by Python's looks alone). */
CTPROF_API int ctprof_heap_watch(const char *dir)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd >= 0 && inotify_add_watch(fd, dir, IN_CREATE | IN_MOVED_TO) < 0) {
        close(fd);
        fd = -1;
    }
    lock_drainer();
    drainer.over = 0;              /* a new run (whether watched or not) */
    if (fd >= 0) {
        if (drainer.watch_fd_plus1)
            close_later(drainer.watch_fd_plus1 - 1);
        drainer.watch_fd_plus1 = fd + 1;
        start_drainer_locked();
    }
    pthread_mutex_unlock(&drainer.lock);
    return fd >= 0 ? 0 : -1;
}

/* Stop the drainer thread for the rest of the run (the rings stay
 * registered: a last pass from the caller's ctprof_heap_consume finishes
 * them, and rings added from now on are drained the same way). */
CTPROF_API void ctprof_heap_drain_stop(void)
{
    /* Stop it now (lock_drainer ends its sleep): the end of a run waited
     * for it a millisecond twice.  (Set again below, under the lock: a
     * drainer started meanwhile starts with it clear.) */
    __atomic_store_n(&drainer.stop, 1, __ATOMIC_SEQ_CST);
    lock_drainer();
    int watch_fd = drainer.watch_fd_plus1 - 1;
    drainer.watch_fd_plus1 = 0;
    int running = drainer.running;
    pthread_t thread = drainer.thread;
    drainer.running = 0;
    drainer.over = 1;
    __atomic_store_n(&drainer.stop, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&drainer.lock);
    if (running)
        pthread_join(thread, NULL);
    if (watch_fd >= 0)
        close_later(watch_fd);
}
