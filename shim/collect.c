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
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include "ctprof.h"

enum {
    ST_ALLOC_COUNT, ST_ALLOC_BYTES, ST_FREE_COUNT, ST_FREE_BYTES, ST_LIVE_COUNT, ST_LIVE_BYTES,
    ST_PEAK_COUNT, ST_PEAK_BYTES, ST_DEF_COUNT, ST_DEF_BYTES, ST_IND_COUNT, ST_IND_BYTES,
    ST_REACH_COUNT, ST_REACH_BYTES, ST_TRUNCATED, NSTAT = 16
};
enum {
    T_LIVE_BYTES, T_LIVE_COUNT, T_PEAK_BYTES, T_PEAK_COUNT, T_ALLOC_COUNT, T_ALLOC_BYTES, T_FREE_COUNT,
    T_FREE_BYTES, T_UNMATCHED_FREES, T_EVENTS, T_STACKS, T_SCANNED, T_SNAPSHOTS, T_MAX_LIVE_BLOCKS, NTOTAL = 16
};

struct stack_entry {
    uint64_t hash;
    uint32_t off, depth;      /* into ippool */
    uint32_t id_plus1;        /* 0: empty slot */
    uint32_t truncated;
};

struct live_entry {
    uint64_t ptr;             /* 0: empty */
    double bytes, count;      /* weights: exact mode 1 and the size */
    uint64_t size;
    uint32_t stack;
    uint32_t pad;
};

struct consumer {
    double sample_bytes;
    struct stack_entry *stab;
    uint32_t stab_cap, nstacks;
    uint32_t *stack_slot;     /* id -> slot in stab */
    size_t slot_cap;
    uint64_t *ippool;
    size_t ippool_len, ippool_cap;
    double *stats;            /* nstacks * NSTAT */
    size_t stats_cap;         /* in stacks */
    struct live_entry *live;
    size_t live_cap, live_n;
    double totals[NTOTAL];
    double snap_at;
};

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

static uint64_t hash_ips(const uint64_t *ips, uint32_t n, uint32_t truncated)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n ^ ((uint64_t)truncated << 40);
    for (uint32_t i = 0; i < n; i++)
        h = mix(h ^ ips[i]) + i;
    return h | 1;
}

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
    memset((char *)q + *cap * elem, 0, (n - *cap) * elem);
    *p = q;
    *cap = n;
    return 0;
}

CTPROF_API struct consumer *ctprof_heap_new(double sample_bytes)
{
    struct consumer *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->sample_bytes = sample_bytes;
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

CTPROF_API void ctprof_heap_delete(struct consumer *c)
{
    if (!c)
        return;
    free(c->stab);
    free(c->stack_slot);
    free(c->ippool);
    free(c->stats);
    free(c->live);
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
    uint64_t h = hash_ips(ips, n, truncated);
    uint32_t mask = c->stab_cap - 1, i = (uint32_t)(h & mask);
    while (c->stab[i].id_plus1) {
        struct stack_entry *e = &c->stab[i];
        if (e->hash == h && e->depth == n && e->truncated == truncated &&
            memcmp(c->ippool + e->off, ips, n * 8) == 0)
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
    c->stab[i] = (struct stack_entry){h, (uint32_t)c->ippool_len, n, id + 1, truncated};
    c->stack_slot[id] = i;
    c->ippool_len += n;
    c->nstacks++;
    c->stats[(size_t)id * NSTAT + ST_TRUNCATED] = truncated;
    if (c->nstacks * 2 > c->stab_cap && stab_rehash(c) != 0)
        return -1;
    return id;
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
    double *st = c->stats + (size_t)e->stack * NSTAT;
    st[ST_FREE_COUNT] += e->count;
    st[ST_FREE_BYTES] += e->bytes;
    st[ST_LIVE_COUNT] -= e->count;
    st[ST_LIVE_BYTES] -= e->bytes;
    c->totals[T_FREE_COUNT] += e->count;
    c->totals[T_FREE_BYTES] += e->bytes;
    c->totals[T_LIVE_COUNT] -= e->count;
    c->totals[T_LIVE_BYTES] -= e->bytes;
    live_delete(c, slot);
}

static void on_alloc(struct consumer *c, uint64_t ptr, uint64_t size, const uint64_t *ips, uint32_t n,
                     uint32_t flags)
{
    int64_t id = intern(c, ips, n, (flags & ALLOC_TRUNCATED) ? 1 : 0);
    if (id < 0)
        return;
    double count = 1, bytes = (double)size;
    if (flags & ALLOC_SAMPLED) {
        /* Sampled with probability p = 1 - exp(-size/mean): weigh by 1/p
         * so sums are unbiased estimates (as tcmalloc does). */
        double p = c->sample_bytes > 0 ? 1.0 - exp(-(double)size / c->sample_bytes) : 1.0;
        if (p <= 0)
            p = 1e-12;
        count = 1.0 / p;
        bytes = (double)size / p;
    }
    size_t slot;
    if (live_find(c, ptr, &slot)) { /* a free we never saw: retire the old block */
        on_free(c, ptr);
        c->totals[T_UNMATCHED_FREES]++;
        live_find(c, ptr, &slot);
    }
    c->live[slot] = (struct live_entry){ptr, bytes, count, size, (uint32_t)id, 0};
    c->live_n++;
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
        st[ST_LIVE_COUNT] -= e->count;
        st[ST_LIVE_BYTES] -= e->bytes;
        c->totals[T_LIVE_COUNT] -= e->count;
        c->totals[T_LIVE_BYTES] -= e->bytes;
        e->ptr = 0;
    }
    c->live_n = 0;
}

static void process(struct consumer *c, const unsigned char *buf, size_t len)
{
    size_t off = 0;
    while (off + sizeof(struct rec_header) <= len) {
        const struct rec_header *h = (const void *)(buf + off);
        if (h->size < sizeof *h || off + h->size > len)
            break;
        c->totals[T_EVENTS]++;
        if (h->type == REC_ALLOC) {
            const struct rec_alloc *a = (const void *)h;
            on_alloc(c, a->ptr, a->size, (const uint64_t *)(a + 1), a->nips, h->flags);
        } else if (h->type == REC_FREE) {
            on_free(c, ((const struct rec_free *)h)->ptr);
        } else if (h->type == REC_EXEC) {
            on_exec(c);
        } else if (h->type == REC_REALLOC) {
            const struct rec_realloc *r = (const void *)h;
            if (!(r->ptr == 0 && r->size > 0)) {   /* a failed realloc changes nothing */
                if (r->old)
                    on_free(c, r->old);
                if (r->ptr)
                    on_alloc(c, r->ptr, r->size, (const uint64_t *)(r + 1), r->nips, h->flags);
            }
        }
        off += h->size;
    }
}

CTPROF_API size_t ctprof_heap_consume(struct consumer *c, void *file_base, void *buf, size_t cap)
{
    size_t total = 0, n;
    while ((n = ctprof_ring_drain(file_base, buf, cap)) > 0) {
        process(c, buf, n);
        total += n;
    }
    return total;
}

CTPROF_API void ctprof_heap_totals(struct consumer *c, double *out)
{
    c->totals[T_STACKS] = c->nstacks;
    memcpy(out, c->totals, sizeof c->totals);
}

CTPROF_API uint32_t ctprof_heap_nstacks(struct consumer *c) { return c->nstacks; }

/* Stack `id`: copies up to `max` ips (leaf first) and its NSTAT statistics;
 * returns the depth. */
CTPROF_API int ctprof_heap_stack(struct consumer *c, uint32_t id, uint64_t *ips, int max, double *stats)
{
    if (id >= c->nstacks)
        return -1;
    const struct stack_entry *e = &c->stab[c->stack_slot[id]];
    int n = (int)e->depth < max ? (int)e->depth : max;
    memcpy(ips, c->ippool + e->off, (size_t)n * 8);
    memcpy(stats, c->stats + (size_t)id * NSTAT, NSTAT * sizeof(double));
    return n;
}

/* ---- the leak scan -------------------------------------------------------------------- */

enum { UNREACHED = 0, REACHABLE = 1, INDIRECT = 2 };

struct block {
    uint64_t lo, hi;
    uint32_t live_slot;
    uint8_t state;
};

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
};

static int by_lo(const void *a, const void *b)
{
    const struct block *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static int64_t find_block(const struct scan *s, uint64_t v)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->blocks[mid].hi <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < s->n && s->blocks[lo].lo <= v && v < s->blocks[lo].hi)
        return (int64_t)lo;
    return -1;
}

/* Every word in [p, p+len) that points into a block in state `from` moves
 * it to state `to` and onto the work list. */
static void scan_words(struct scan *s, const unsigned char *p, size_t len, uint8_t from, uint8_t to)
{
    if (!s->n)
        return;
    uint64_t min = s->blocks[0].lo, max = s->blocks[s->n - 1].hi;
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        if (v < min || v >= max)
            continue;
        int64_t b = find_block(s, v);
        if (b >= 0 && s->blocks[b].state == from) {
            s->blocks[b].state = to;
            s->work[s->work_n++] = (uint32_t)b;
        }
    }
}

static ssize_t read_remote(int pid, uint64_t addr, void *dst, size_t len)
{
    struct iovec local = {dst, len}, remote = {(void *)(uintptr_t)addr, len};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

/* Scan a root range page-run by page-run; unreadable pages are skipped. */
static void scan_range(struct scan *s, uint64_t lo, uint64_t hi)
{
    const size_t chunk = 1 << 20;
    lo &= ~7ull;
    for (uint64_t a = lo; a < hi; a += chunk) {
        size_t len = hi - a < chunk ? (size_t)(hi - a) : chunk;
        ssize_t got = read_remote(s->pid, a, s->buf, len);
        if (got == (ssize_t)len) {
            scan_words(s, s->buf, len, UNREACHED, REACHABLE);
        } else {
            for (uint64_t pg = a; pg < a + len; pg = (pg & ~4095ull) + 4096) {
                size_t l = (size_t)(((pg & ~4095ull) + 4096 < a + len ? (pg & ~4095ull) + 4096 : a + len) - pg);
                if (read_remote(s->pid, pg, s->buf, l) == (ssize_t)l)
                    scan_words(s, s->buf, l, UNREACHED, REACHABLE);
            }
        }
        if (s->heartbeat)
            __atomic_store_n(s->heartbeat, now_ns(), __ATOMIC_RELAXED);
    }
}

/* Drain the work list: read the contents of listed blocks in batches and
 * scan them for more pointers. */
static void drain_work(struct scan *s, uint8_t from, uint8_t to)
{
    while (s->work_n) {
        struct iovec local[256], remote[256];
        size_t k = 0, used = 0;
        while (s->work_n && k < 256) {
            uint32_t b = s->work[s->work_n - 1];
            uint64_t len = s->blocks[b].hi - s->blocks[b].lo;
            if (len > s->buf_cap) {             /* huge block: on its own, in chunks */
                if (k)
                    break;
                s->work_n--;
                for (uint64_t a = s->blocks[b].lo; a < s->blocks[b].hi; a += s->buf_cap) {
                    size_t l = s->blocks[b].hi - a < s->buf_cap ? (size_t)(s->blocks[b].hi - a) : s->buf_cap;
                    if (read_remote(s->pid, a, s->buf, l) == (ssize_t)l)
                        scan_words(s, s->buf, l, from, to);
                }
                continue;
            }
            if (used + len > s->buf_cap)
                break;
            s->work_n--;
            local[k] = (struct iovec){s->buf + used, len};
            remote[k] = (struct iovec){(void *)(uintptr_t)s->blocks[b].lo, len};
            k++;
            used += len;
        }
        if (!k)
            continue;
        if (s->heartbeat)  /* the program waits for us only while we show signs of life */
            __atomic_store_n(s->heartbeat, now_ns(), __ATOMIC_RELAXED);
        ssize_t got = process_vm_readv(s->pid, local, k, remote, k, 0);
        if (got == (ssize_t)used) {
            for (size_t i = 0; i < k; i++)
                scan_words(s, local[i].iov_base, local[i].iov_len, from, to);
        } else {
            for (size_t i = 0; i < k; i++)
                if (read_remote(s->pid, (uint64_t)(uintptr_t)remote[i].iov_base, local[i].iov_base, local[i].iov_len) ==
                    (ssize_t)local[i].iov_len)
                    scan_words(s, local[i].iov_base, local[i].iov_len, from, to);
        }
    }
}

/* Classify every live block.  `ranges` holds nranges (lo, hi) root ranges.
 * Returns 0, or -1 if memory could not be read at all. */
CTPROF_API int ctprof_heap_scan(struct consumer *c, int pid, const uint64_t *ranges, int nranges, uint64_t *heartbeat)
{
    struct scan s = {c, pid, NULL, 0, NULL, 0, NULL, 8u << 20, heartbeat};
    s.blocks = malloc((c->live_n + 1) * sizeof *s.blocks);
    s.work = malloc((c->live_n + 1) * sizeof *s.work);
    s.buf = malloc(s.buf_cap);
    if (!s.blocks || !s.work || !s.buf) {
        free(s.blocks);
        free(s.work);
        free(s.buf);
        return -1;
    }
    for (size_t i = 0; i < c->live_cap; i++) {
        if (!c->live[i].ptr)
            continue;
        uint64_t size = c->live[i].size ? c->live[i].size : 1;
        s.blocks[s.n++] = (struct block){c->live[i].ptr, c->live[i].ptr + size, (uint32_t)i, UNREACHED};
    }
    qsort(s.blocks, s.n, sizeof *s.blocks, by_lo);
    int readable = s.n == 0;
    uint64_t probe;
    if (s.n && read_remote(pid, s.blocks[0].lo, &probe, 1) == 1)
        readable = 1;
    if (!readable) {
        free(s.blocks);
        free(s.work);
        free(s.buf);
        return -1;
    }
    /* 1. everything reachable from the roots */
    for (int r = 0; r < nranges; r++) {
        scan_range(&s, ranges[2 * r], ranges[2 * r + 1]);
        drain_work(&s, UNREACHED, REACHABLE);
    }
    /* 2. among the rest, blocks pointed to by another lost block are
     *    indirectly lost; the others lead their group: definitely lost */
    for (size_t b = 0; b < s.n; b++) {
        if (s.blocks[b].state != UNREACHED)
            continue;
        s.work[s.work_n++] = (uint32_t)b;
        s.blocks[b].state = INDIRECT;       /* so its own pointers to itself are ignored */
        drain_work(&s, UNREACHED, INDIRECT);
        s.blocks[b].state = UNREACHED;      /* the leader stays definitely lost */
    }
    for (uint32_t i = 0; i < c->nstacks; i++) {
        double *st = c->stats + (size_t)i * NSTAT;
        st[ST_DEF_COUNT] = st[ST_DEF_BYTES] = st[ST_IND_COUNT] = st[ST_IND_BYTES] = 0;
        st[ST_REACH_COUNT] = st[ST_REACH_BYTES] = 0;
    }
    for (size_t b = 0; b < s.n; b++) {
        const struct live_entry *e = &c->live[s.blocks[b].live_slot];
        double *st = c->stats + (size_t)e->stack * NSTAT;
        int base = s.blocks[b].state == REACHABLE ? ST_REACH_COUNT : s.blocks[b].state == INDIRECT ? ST_IND_COUNT : ST_DEF_COUNT;
        st[base] += e->count;
        st[base + 1] += e->bytes;
    }
    c->totals[T_SCANNED] = 1;
    free(s.blocks);
    free(s.work);
    free(s.buf);
    return 0;
}
