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
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <asm/prctl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include "ctprof.h"

#define MAX_HEAP_DEPTH 256
/* return addresses, then maybe PYFRAMES_MARK and two words per Python frame */
#define MAX_HEAP_WORDS (MAX_HEAP_DEPTH + PYFRAMES_WORDS)

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
/* The event ring is the main heap metadata in the program, resident
 * whole.  The controller drains it in C as records arrive (collect.c, the
 * drainer), so it only has to hold what is written while the drainer
 * sleeps or waits for a CPU: 64 KiB.  A full-speed allocation loop fills
 * any size -- the controller sets the pace -- so more helps only to ride
 * through the drainer's pauses (RING_MAX_KB). */
#define RING_KB 64
/* ... and room to grow to, for a program that waits for the controller
 * with that ring (ctprof_heap_grow; the file's pages past RING_KB cost
 * nothing until written).  On a virtual machine the controller's drainer
 * is now and then off its CPU for milliseconds at a time, which a program
 * allocating flat out fills 64 KiB in; 512 KiB rides through nearly all
 * of it (measured on a g++ compile: 0.2 s of waits -> 0.015 s). */
#define RING_MAX_KB 512

static __thread uint64_t rng_state CTPROF_TLS;


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
    return (int64_t)(-heap_ln(1.0 - u) * (double)sample_bytes) + 1;
}

/* ---- the ring: reserve (bounded wait), claim, commit ----------------------------
 * A full ring means the controller is behind: wait for it, because a lost
 * event would make every later figure wrong.  But never without bound: the
 * controller is judged gone, once for the whole process, when its process is
 * dead (or a zombie), when it has been stopped (SIGSTOP, a debugger) for
 * STOPPED_NS, or when the ring has not moved for STALL_NS (stuck on
 * something).  Its heartbeat is not trusted alone: the controller's C
 * drainer writes it only while the controller's Python is seen alive.  From then on the hooks forward
 * only (heap_enabled = 0). */
#define STOPPED_NS 2000000000ull
#define STALL_NS 10000000000ull
#define PID_CHECK_NS 10000000ull

static void detach(uint32_t why)
{
    uint32_t none = DETACH_NONE;
    if (__atomic_compare_exchange_n(&hs->detached, &none, why, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        __atomic_store_n(&hs->detached_ns, now_ns(), __ATOMIC_RELEASE);
    __atomic_store_n(&heap_enabled, 0, __ATOMIC_RELAXED);
}

/* The controller's process state from /proc: 'D'ead (gone or a zombie),
 * 'T' stopped, 'R' anything else (also when it cannot be read: a pid we may
 * not look at is alive).  Only syscalls, no allocation. */
static char controller_state(void)
{
    pid_t pid = (pid_t)__atomic_load_n(&hs->controller_pid, __ATOMIC_RELAXED);
    if (pid <= 0)
        return 'R';
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 'D';
    char path[48] = "/proc/", buf[256];
    size_t n = 6 + fmt_u64(path + 6, (uint64_t)pid);
    memcpy(path + n, "/stat", 6);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 'R';
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got <= 0)
        return 'R';
    buf[got] = 0;
    const char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return 'R';
    char st = p[2];
    return st == 'Z' || st == 'X' ? 'D' : st == 'T' || st == 't' ? 'T' : 'R';
}

/* Should a writer that has waited since `since` for a ring last seen moving
 * at `moved` give up?  Decides (and records) the detach.  *stopped_since:
 * when the controller was first seen stopped (0: not stopped). */
static int give_up(uint64_t t, uint64_t moved, uint64_t *checked, uint64_t *stopped_since)
{
    if (__atomic_load_n(&hs->detached, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&heap_enabled, 0, __ATOMIC_RELAXED);
        return 1;
    }
    if (t - *checked >= PID_CHECK_NS) {
        *checked = t;
        char st = controller_state();
        if (st == 'D') {
            detach(DETACH_CONTROLLER_DEAD);
            return 1;
        }
        *stopped_since = st == 'T' ? (*stopped_since ? *stopped_since : t) : 0;
    }
    /* `moved` may be the controller's heartbeat, written after `t` was
     * read: later than `t`, it means "just now", not a wrapped difference. */
    uint64_t idle = t > moved ? t - moved : 0;
    if ((*stopped_since && t - *stopped_since > STOPPED_NS) || idle > STALL_NS) {
        detach(DETACH_CONTROLLER_STALLED);
        return 1;
    }
    return 0;
}

/* Wake the controller's drainer if it sleeps on this ring (collect.c): a
 * quarter of the ring is waiting.  One writer's syscall per sleep. */
static void wake_drainer(void)
{
    if (__atomic_load_n(&hs->drain_wake, __ATOMIC_SEQ_CST) && __atomic_exchange_n(&hs->drain_wake, 0, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, &hs->drain_wake, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Fill the ring from w to grow_at (less than a record, and room for it
 * checked) with a record the controller skips, if w is still the write
 * position. */
static void pad_to_growth(struct ring_header *h, uint64_t w, uint64_t grow_at)
{
    if (!__atomic_compare_exchange_n(&h->write_pos, &w, grow_at, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        return;
    __atomic_store_n((uint64_t *)(heap_ring.data + (w & (h->data_size - 1))),
                     (grow_at - w) | (uint64_t)REC_PAD << 32, __ATOMIC_RELEASE);
}

/* Reserve and claim `size` bytes; NULL (counted in `lost`) once the
 * controller is gone.  *pos gets the record's ring position. */
static void *reserve(uint32_t size, uint32_t tid, uint64_t *pos)
{
    struct ring_header *h = heap_ring.hdr;
    uint64_t cap = h->data_size, since = 0, moved = 0, checked = 0, stopped = 0, last_rd = 0;
    int spins = 0;
    if (__atomic_load_n(&hs->detached, __ATOMIC_RELAXED)) {
        __atomic_store_n(&heap_enabled, 0, __ATOMIC_RELAXED);
        goto lose;
    }
    for (;;) {
        /* The read position before grow_at: a writer that sees no grow_at
         * read it no later than the controller set grow_at, so it cannot
         * reserve past grow_at (which is data_size beyond that). */
        uint64_t rd = __atomic_load_n(&h->read_pos, __ATOMIC_ACQUIRE);
        /* (never set without the larger view: only a scribble could) */
        uint64_t grow_at = heap_ring.grown ? __atomic_load_n(&hs->grow_at, __ATOMIC_ACQUIRE) : 0;
        uint64_t w = __atomic_load_n(&h->write_pos, __ATOMIC_RELAXED);
        uint64_t room = grow_at && w >= grow_at ? heap_ring.grown_size : cap;
        if (grow_at && w < grow_at && w + size > grow_at) {
            if (grow_at - rd <= cap) {       /* no record crosses grow_at */
                pad_to_growth(h, w, grow_at);
                continue;
            }
        } else if (w + size - rd <= room) {
            if (!__atomic_compare_exchange_n(&h->write_pos, &w, w + size, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                continue;
            if (w + size - rd >= room / 4)
                wake_drainer();
            uint64_t *rec = grow_at && w >= grow_at
                ? (uint64_t *)(heap_ring.grown + ((w - (grow_at - cap)) & (heap_ring.grown_size - 1)))
                : (uint64_t *)(heap_ring.data + (w & (cap - 1)));
            __atomic_store_n(rec, (uint64_t)size | (uint64_t)(HEAP_CLAIM | tid) << 32,
                             __ATOMIC_RELAXED);
            if (since)
                __atomic_fetch_add(&hs->wait_ns, now_ns() - since, __ATOMIC_RELAXED);
            if (pos)
                *pos = w;
            return rec;
        }
        wake_drainer();
        uint64_t t = now_ns();
        if (!since) {
            since = moved = checked = t;
            last_rd = rd;
        } else if (rd != last_rd) {
            last_rd = rd;
            moved = t;
        }
        if (give_up(t, moved, &checked, &stopped))
            goto lose;
        if (++spins < 64) {
            __builtin_ia32_pause();
        } else {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
lose:
    __atomic_fetch_add(&hs->lost, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* Publish a claimed record.  A CAS, not a store: if the controller judged
 * this claim abandoned (we were stopped for long inside the hook) and
 * skipped it, the space is no longer ours and the header stays untouched.
 * Returns whether the record was published. */
static int commit(void *rec, uint32_t size, uint32_t tid, uint16_t type, uint16_t flags)
{
    uint64_t claim = (uint64_t)size | (uint64_t)(HEAP_CLAIM | tid) << 32;
    uint64_t final = (uint64_t)size | (uint64_t)type << 32 | (uint64_t)flags << 48;
    return __atomic_compare_exchange_n((uint64_t *)rec, &claim, final, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

/* ---- stacks already sent ------------------------------------------------------ */

/* The stacks this thread sent whole to the ring, by hash (direct-mapped,
 * 16 KiB of its own mapped on first need, counted in the metadata figure).
 * One sent again goes as its hash alone (ALLOC_KNOWN): 40 bytes in the ring
 * instead of up to 300, and the controller neither hashes nor compares it.
 * A program allocates from a few thousand stacks millions of times.  A
 * fork child's new ring knows none of them: heap_after_fork empties the
 * table of its one thread (after an exec, thread-local state starts
 * empty anyway). */
#define SENT_SLOTS 2048
#define SENT_BYTES (SENT_SLOTS * sizeof(uint64_t))
static __thread uint64_t *sent CTPROF_TLS;
static __thread int sent_gone CTPROF_TLS;   /* the thread is exiting: no new mmap to leak */
static uint64_t sent_total_bytes;           /* every thread's table */

/* The slot of `hash` in this thread's table; NULL without one. */
static uint64_t *sent_slot(uint64_t hash)
{
    if (!sent) {
        if (sent_gone)
            return NULL;
        void *p = mmap(NULL, SENT_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        sent = p;
        __atomic_fetch_add(&sent_total_bytes, SENT_BYTES, __ATOMIC_RELAXED);
    }
    return &sent[hash & (SENT_SLOTS - 1)];
}

void heap_thread_exit(void)
{
    uint64_t *p = sent;
    sent = NULL;
    sent_gone = 1;
    if (p) {
        munmap(p, SENT_BYTES);
        __atomic_fetch_sub(&sent_total_bytes, SENT_BYTES, __ATOMIC_RELAXED);
    }
}

/* How a record carries its stack: its frames, or its hash alone when this
 * thread sent it whole before. */
struct stack_out {
    const uint64_t *words;
    uint32_t nwords, nips;
    uint16_t flags;                 /* ALLOC_TRUNCATED, ALLOC_KNOWN */
    uint64_t hash;
    uint64_t *slot;                 /* where to note it as sent (NULL: known, or no table) */
};

static void stack_out(struct stack_out *o, const uint64_t *ips, int n, int truncated)
{
    truncated = !!truncated;        /* as the consumer hashes it: (flags & ALLOC_TRUNCATED) != 0 */
    o->hash = heap_stack_hash(ips, (uint32_t)n, (uint32_t)truncated);
    o->flags = truncated ? ALLOC_TRUNCATED : 0;
    o->slot = sent_slot(o->hash);
    if (o->slot && *o->slot == o->hash) {
        o->words = &o->hash;
        o->nwords = 1;
        o->nips = 0;
        o->flags |= ALLOC_KNOWN;
        o->slot = NULL;
    } else {
        o->words = ips;
        o->nwords = o->nips = (uint32_t)n;
    }
}

/* The record holding the stack whole was published (`committed`): from
 * now on the stack is known.  (One the controller skipped is not: the next
 * record sends it whole again.) */
static void stack_sent(const struct stack_out *o, int committed)
{
    if (o->slot && committed)
        *o->slot = o->hash;
}

/* ---- events ------------------------------------------------------------------- */

/* The allocating call stack, leaf first (the caller of the interposer whose
 * frame is `frame`), then maybe its Python frames: MAX_HEAP_WORDS at most. */
static int caller_stack(void *frame, uint64_t *ips, int *truncated)
{
    int n = unwind_caller(sampler_bounds(), frame, ips, depth, truncated);
    return n + pylocal_append(ips + n, MAX_HEAP_WORDS - n, 0);
}

void heap_on_alloc(void *ptr, size_t size, void *frame)
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
    uint64_t ips[MAX_HEAP_WORDS];
    int truncated = 0;
    int n = caller_stack(frame, ips, &truncated);
    struct stack_out st;
    stack_out(&st, ips, n, truncated);
    uint32_t bytes = (uint32_t)(sizeof(struct rec_alloc) + (size_t)st.nwords * 8);
    uint32_t tid = (uint32_t)ctprof_gettid();
    struct rec_alloc *rec = reserve(bytes, tid, NULL);
    if (!rec)
        return;
    rec->ptr = (uint64_t)(uintptr_t)ptr;
    rec->size = size;
    rec->tid = tid;
    rec->nips = st.nips;
    memcpy(rec + 1, st.words, (size_t)st.nwords * 8);
    stack_sent(&st, commit(rec, bytes, tid, REC_ALLOC, flags | st.flags));
}

void heap_on_free(void *ptr)
{
    if (sample_bytes && !sset_remove((uint64_t)(uintptr_t)ptr) && !heap_free_all)
        return;
    uint32_t tid = (uint32_t)ctprof_gettid();
    struct rec_free *rec = reserve(sizeof *rec, tid, NULL);
    if (!rec)
        return;
    rec->ptr = (uint64_t)(uintptr_t)ptr;
    commit(rec, sizeof *rec, tid, REC_FREE, 0);
}

void heap_realloc_begin(void *old)
{
    if (!old)
        return;
    if (sample_bytes) {
        /* Estimates only: the old block's free, then a sampling decision
         * for the new one (heap_realloc_end). */
        heap_on_free(old);
        return;
    }
    uint32_t tid = (uint32_t)ctprof_gettid();
    struct rec_realloc_free *rec = reserve(sizeof *rec, tid, NULL);
    if (!rec)
        return;
    rec->ptr = (uint64_t)(uintptr_t)old;
    rec->tid = tid;
    rec->pad = 0;
    commit(rec, sizeof *rec, tid, REC_REALLOC_FREE, 0);
}

void heap_realloc_end(void *old, void *ptr, size_t size, void *frame)
{
    if (sample_bytes) {
        if (ptr && size && (heap_bytes_left -= (int64_t)size) <= 0)
            heap_on_alloc(ptr, size, frame);
        return;
    }
    uint64_t ips[MAX_HEAP_WORDS];
    int truncated = 0;
    int n = caller_stack(frame, ips, &truncated);
    struct stack_out st;
    stack_out(&st, ips, n, truncated);
    uint32_t bytes = (uint32_t)(sizeof(struct rec_realloc) + (size_t)st.nwords * 8);
    uint32_t tid = (uint32_t)ctprof_gettid();
    struct rec_realloc *rec = reserve(bytes, tid, NULL);
    if (!rec)
        return;
    rec->old = (uint64_t)(uintptr_t)old;
    rec->ptr = (uint64_t)(uintptr_t)ptr;
    rec->size = size;
    rec->tid = tid;
    rec->nips = st.nips;
    memcpy(rec + 1, st.words, (size_t)st.nwords * 8);
    stack_sent(&st, commit(rec, bytes, tid, REC_REALLOC, st.flags));
}

void heap_account_time(uint64_t ns)
{
    if (!hs)
        return;
    __atomic_fetch_add(&hs->timed_calls, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&hs->timed_ns, ns, __ATOMIC_RELAXED);
}

/* ---- lifetime ------------------------------------------------------------------- */

static int open_heap_ring(void)
{
    int reused;
    struct ring r;
    if (ring_open(&r, heap_dir, ".heap", RING_KB << 10, RING_MAX_KB << 10, &reused) != 0)
        return -1;
    heap_ring = r;
    hs = (struct heap_shared *)((char *)r.hdr + HEAP_SHARED_OFFSET);
    if (!reused)
        hs->grow_size = r.grown_size;  /* (0: the controller never grows it) */
    else if (__atomic_load_n(&hs->grow_size, __ATOMIC_ACQUIRE) != r.grown_size)
        return -1;           /* (never seen: this image could not map what the last one did) */
    if (reused) {            /* after exec: the old image's blocks are gone */
        hs->exit_state = EXIT_RUNNING;
        /* every thread of the old image died with the exec: the controller
         * skips their unfinished claims */
        __atomic_fetch_add(&hs->execs, 1, __ATOMIC_RELEASE);
        if (__atomic_load_n(&hs->detached, __ATOMIC_ACQUIRE))
            return -1;       /* the old image had already let go */
    }
    hs->depth = (uint32_t)depth;
    hs->sample_bytes = sample_bytes;
    /* ctprof's own memory in the program holds no roots of the leak scan:
     * the sampled-block set (addresses of blocks: it would keep every
     * sampled block "still reachable") and the rule cache (1.5 MiB to read
     * at every exit).  Said in every ring this image opens: a fork child's
     * new one too. */
    if (sset) {
        hs->own_lo = (uint64_t)(uintptr_t)sset;
        hs->own_hi = hs->own_lo + sizeof(struct sset_stripe) * SSET_STRIPES + FILTER_SIZE;
    }
    cfi_cache_range(&hs->own_cache_lo, &hs->own_cache_hi);
    __atomic_store_n(&hs->magic, HEAP_MAGIC, __ATOMIC_RELEASE);
    if (reused) {
        /* Tell the controller where the new image starts: every block of
         * the old one vanished with exec. */
        /* Publish where it will go before reserving it: the ring may be
         * full behind a record the exec cut short, which the controller can
         * skip only by knowing where this image's records start.  (We are
         * the only thread: the old image's died with the exec.) */
        __atomic_store_n(&hs->exec_pos, __atomic_load_n(&r.hdr->write_pos, __ATOMIC_ACQUIRE), __ATOMIC_RELEASE);
        uint32_t tid = (uint32_t)ctprof_gettid();
        struct rec_header *rec = reserve(sizeof *rec, tid, NULL);
        if (rec)
            commit(rec, sizeof *rec, tid, REC_EXEC, 0);
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
    /* Nothing of this child may reach the parent's ring: stop first, then
     * start again on our own ring. */
    active = 0;
    if (sset)
        memset(sset, 0, sizeof(struct sset_stripe) * SSET_STRIPES + FILTER_SIZE);
    heap_free_all = 0;
    if (sent)                /* the new ring knows none of the stacks sent to the parent's */
        memset(sent, 0, SENT_BYTES);
    if (open_heap_ring() == 0)
        active = 1;
}

/* The static TLS blocks of the calling thread (x86-64: just below its
 * thread pointer): pointers held in `__thread` variables are roots. */
static int tls_block(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    uint64_t *range = data;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_TLS || !info->dlpi_tls_data)
            continue;
        uint64_t lo = (uint64_t)(uintptr_t)info->dlpi_tls_data, hi = lo + ph->p_memsz;
        if (!range[0] || lo < range[0])
            range[0] = lo;
        if (hi > range[1])
            range[1] = hi;
    }
    return 0;
}

void heap_at_exit(void)
{
    if (!active || !hs || __atomic_load_n(&hs->detached, __ATOMIC_ACQUIRE))
        return;
    uint64_t sp, fs = 0, tls[2] = {0, 0};
    __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
    syscall(SYS_arch_prctl, ARCH_GET_FS, &fs);
    dl_iterate_phdr(tls_block, tls);
    hs->exit_sp = sp;
    hs->exit_fs = fs;
    hs->exit_tls_lo = tls[0];
    hs->exit_tls_hi = tls[1];
    hs->unwind_cache_bytes = cfi_cache_bytes() + __atomic_load_n(&sent_total_bytes, __ATOMIC_RELAXED);
    hs->exit_tid = (uint64_t)ctprof_gettid();
    __atomic_store_n(&hs->exit_state, EXIT_WAITING, __ATOMIC_RELEASE);
    wake_drainer();     /* (if it sleeps on this ring: it tells the controller's Python now) */
    /* The controller drains the ring, scans our memory for pointers to
     * classify what is still allocated, then lets us go.  It heartbeats
     * while it works; a dead, stopped or silent (10 s) controller is not
     * waited for, and nothing is waited for beyond ten minutes. */
    uint64_t start = now_ns(), checked = start, stopped = 0;
    while (__atomic_load_n(&hs->exit_state, __ATOMIC_ACQUIRE) == EXIT_WAITING) {
        uint64_t t = now_ns(), beat = __atomic_load_n(&hs->heartbeat_ns, __ATOMIC_RELAXED);
        /* "moving" here is the controller's heartbeat: the scan beats as it reads */
        if (t - start > 600000000000ull || give_up(t, beat > start ? beat : start, &checked, &stopped))
            break;
        /* the controller wakes us when it is done (ctprof_heap_exit_wake);
         * the timeout keeps the checks above going */
        struct timespec ts = {0, 2000000};
        syscall(SYS_futex, &hs->exit_state, FUTEX_WAIT, EXIT_WAITING, &ts, NULL, 0);
    }
}
