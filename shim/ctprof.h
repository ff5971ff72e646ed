/* ctprof shim: shared definitions and the safety contract of every function.
 *
 * Data flow: timer signal -> sampler.c handler -> unwind.c -> ring.c (shared
 * memory) -> controller (python -m ctprof) reads the ring.  preload.c holds
 * the process-level plumbing (constructor, threads, fork, dlopen, signal
 * conflicts) and only forwards to the other files.
 *
 * "AS-safe" below means async-signal-safe: callable from the sampling signal
 * handler (no malloc, no stdio, no locks; only syscalls and plain memory).
 */
#ifndef CTPROF_H
#define CTPROF_H

#include <stdint.h>
#include <stddef.h>
#include <signal.h>
#include <time.h>
#include <sys/time.h>

#define CTPROF_API __attribute__((visibility("default")))
#define CTPROF_TLS __attribute__((tls_model("initial-exec")))

/* ---- the shared ring file: <session>/<pid>.ring -------------------------
 * One 4096-byte header page, then `data_size` bytes of ring (a power of two).
 * Keep in sync with ctprof/capture/ring.py (FORMAT_VERSION there). */
#define CTPROF_MAGIC 0x46525443u /* "CTRF" */
#define CTPROF_RING_VERSION 1
#define CTPROF_HEADER_SIZE 4096

enum ctprof_timer_kind { TIMER_NONE = 0, TIMER_PERF = 1, TIMER_POSIX = 2, TIMER_ITIMER = 3 };

/* Notes the controller reports once (bits of ring_header.notes). */
enum {
    NOTE_TARGET_SIGPROF = 1u << 0,   /* target installed a SIGPROF handler */
    NOTE_TARGET_ITIMER = 1u << 1,    /* target armed ITIMER_PROF itself */
    NOTE_TARGET_OUR_SIGNAL = 1u << 2,/* target claimed the signal we sample with: chained */
    NOTE_PERF_FAILED = 1u << 3,      /* perf_event_open refused: fell back */
    NOTE_TIMER_FAILED = 1u << 4,     /* no timer could be armed at all */
    NOTE_TICK_TIMER = 1u << 5,       /* a forced timer_create/ITIMER_PROF: counts kernel
                                        time, so system calls may see EINTR */
};

struct ring_header {
    uint32_t magic, version;
    uint32_t pid, ppid;
    uint64_t data_size;
    uint64_t write_pos;       /* bytes reserved by writers (atomic, monotonic) */
    uint64_t read_pos;        /* bytes consumed by the controller (atomic) */
    uint64_t samples;         /* sample records committed (self-profiling only: the
                                 controller of `run` counts the records it reads) */
    uint64_t dropped;         /* samples lost because the ring was full (atomic) */
    uint64_t handler_ns;      /* time spent inside the handler (atomic) */
    uint64_t start_ns;        /* CLOCK_MONOTONIC at constructor */
    uint64_t end_ns;          /* CLOCK_MONOTONIC at normal exit, 0 otherwise */
    uint32_t maps_gen;        /* generation of the newest maps snapshot (atomic) */
    uint32_t timer_kind;      /* enum ctprof_timer_kind */
    uint32_t notes;           /* NOTE_* bits (atomic or) */
    uint32_t signo;           /* signal used for sampling */
    uint32_t hz;              /* requested rate */
    uint32_t max_depth;
    uint32_t pad;
    uint32_t maps_next;       /* next maps generation to hand out (atomic) */
    char exe[1024];           /* /proc/self/exe of the newest image */
    /* Lazy maps snapshots (maps.c); not read by the controller. */
    uint32_t maps_claimed;    /* newest generation whose snapshot someone started */
    uint32_t maps_written;    /* newest generation whose snapshot is complete */
};

/* ---- records ------------------------------------------------------------
 * Every record starts with this 8-byte header and is 8-byte aligned.
 * `size` (total bytes, header included) is stored last, with release order:
 * size == 0 means "reserved, not yet committed". */
struct rec_header {
    uint32_t size;
    uint16_t type;
    uint16_t flags;
};

enum { REC_SAMPLE = 1, REC_THREAD = 2, REC_ALLOC = 3, REC_FREE = 4, REC_REALLOC = 5, REC_EXEC = 6 };
/* selfprof.c (self-profiling from Python): a rec_sample whose `pad` holds the
 * number of Python frames; nips native ips follow, then 2 x uint64_t per
 * Python frame (code object address, lasti | PYFRAME_ENTRY). */
enum { REC_PYSAMPLE = 16 };
#define PYFRAME_ENTRY (1ull << 32)
/* ALLOC_KNOWN: the writer sent this stack whole before (to this ring, from
 * this thread): the record carries its heap_stack_hash() alone (nips 0, one
 * word after the record), not its frames. */
enum { ALLOC_SAMPLED = 1, ALLOC_TRUNCATED = 2, ALLOC_KNOWN = 4 };
enum { SAMPLE_TRUNCATED = 1 };
enum { THREAD_START = 0, THREAD_EXIT = 1 };

struct rec_sample {           /* followed by nips uint64_t, leaf first */
    struct rec_header h;
    uint32_t tid;
    uint32_t nips;
    uint32_t gen;             /* maps generation current at the sample */
    uint32_t pad;
    uint64_t time_ns;         /* CLOCK_MONOTONIC */
    uint64_t cpu_ns;          /* CLOCK_THREAD_CPUTIME_ID of the thread (0: not read this time) */
};

struct rec_thread {
    struct rec_header h;      /* flags: THREAD_START or THREAD_EXIT */
    uint32_t tid;
    uint32_t pad;
    uint64_t cpu_ns;
    char name[16];
};

/* Heap events (in <pid>.heap).  The .heap ring has its own protocol, because
 * a heap writer may wait (a full ring waits for the controller instead of
 * losing events) and must never be waited on forever itself:
 *  - writer (heap.c): CAS write_pos, then at once store a claim word over the
 *    8-byte header: its low half the record size, its high half
 *    HEAP_CLAIM | tid (so rec_header.flags has HEAP_BUSY set); then the body;
 *    then commit with a CAS of the claim word to the final header (release).
 *  - reader (collect.c): a committed record is consumed; a claimed one whose
 *    writer died (thread gone, or an exec since) or left the hook (ran on or
 *    sleeps long after claiming: longjmp out of a signal handler) is skipped
 *    by its size and counted; the reader zeroes consumed space.
 * An allocation of `size` bytes at `ptr` made from the stack ips[nips] (leaf
 * first, the caller of malloc first). */
#define HEAP_BUSY 0x8000u                 /* rec_header.flags of a claimed record */
#define HEAP_CLAIM 0x80000000u            /* high half of a claim word: HEAP_CLAIM | tid */
#define HEAP_MAX_RECORD 4096u             /* no heap record is larger (256 frames) */
enum { REC_REALLOC_FREE = 7, REC_PAD = 8 };   /* REC_PAD: nothing, up to where the ring grew */
struct rec_alloc {
    struct rec_header h;      /* flags: ALLOC_* */
    uint64_t ptr;
    uint64_t size;
    uint32_t tid;
    uint32_t nips;
};
struct rec_free {
    struct rec_header h;
    uint64_t ptr;
};
/* A realloc is two events, so that no other thread's use of either address
 * can be ordered wrongly against it: REC_REALLOC_FREE {old, tid} before the
 * real call (the old block may be handed to another thread inside it), and
 * REC_REALLOC after it (the new block may be one another thread freed just
 * before).  ptr == 0 and size > 0: the realloc failed and `old` is still
 * allocated.  REC_REALLOC is followed by nips return addresses. */
struct rec_realloc_free {
    struct rec_header h;
    uint64_t ptr;
    uint32_t tid;
    uint32_t pad;
};
struct rec_realloc {
    struct rec_header h;
    uint64_t old;
    uint64_t ptr;
    uint64_t size;
    uint32_t tid;
    uint32_t nips;
};

/* The heap part of a .heap ring's header page (at HEAP_SHARED_OFFSET).
 * Keep in sync with ctprof/memory/collect.py (HEAP_FIELDS). */
#define HEAP_SHARED_OFFSET 2048
#define HEAP_MAGIC 0x50414548u /* "HEAP" */
enum { EXIT_RUNNING = 0, EXIT_WAITING = 1, EXIT_SCANNED = 2 };
/* Why tracking stopped for good in a process (heap_shared.detached). */
enum { DETACH_NONE = 0, DETACH_RUN_ENDED = 1, DETACH_CONTROLLER_DEAD = 2, DETACH_CONTROLLER_STALLED = 3 };
struct heap_shared {
    uint32_t magic;
    uint32_t depth;           /* frames kept per allocation */
    uint64_t sample_bytes;    /* 0: exact; else mean bytes between samples */
    uint32_t exit_state;      /* EXIT_*: the controller scans while WAITING */
    uint32_t detached;        /* DETACH_*: set once (by either side); the hooks then only forward */
    uint64_t exit_sp;         /* stack pointer of the thread running exit */
    uint64_t exit_fs;         /* its thread pointer (TCB: dtv, pthread_setspecific data) */
    uint64_t exit_tid;
    uint64_t heartbeat_ns;    /* controller's CLOCK_MONOTONIC at its last drain (while its Python lives) */
    uint64_t lost;            /* events not recorded: ring full and the controller judged gone */
    uint64_t wait_ns;         /* time writers waited for ring space */
    uint64_t controller_pid;  /* written by the controller at its first drain */
    uint64_t timed_calls;     /* every 64th call is timed ... */
    uint64_t timed_ns;        /* ... and its time summed here */
    uint64_t sampled_free_overflow; /* sampled mode: set of sampled blocks overflowed */
    uint64_t unwind_cache_bytes; /* at exit: the unwind rule cache's resident part, every thread's memo and table of sent stacks */
    uint64_t detached_ns;     /* CLOCK_MONOTONIC when `detached` was set */
    uint64_t execs;           /* execs of this pid: a claim older than an exec is dead */
    uint64_t exec_pos;        /* ring position where the newest image's records start */
    uint64_t exit_tls_lo;     /* the exiting thread's static TLS blocks */
    uint64_t exit_tls_hi;
    uint32_t drain_wake;      /* futex: 1 while the controller's drainer sleeps on this ring */
    uint32_t spare;
    uint64_t own_lo, own_hi;  /* the sampled-block set: addresses, but no roots */
    /* The ring grows once (the controller decides, ctprof_heap_grow): the
     * records that start at or after position grow_at (0: not grown) use
     * the file's whole data area of grow_size bytes (set by the shim, 0 if
     * it could not map it), at offset (pos - (grow_at - data_size)) mod
     * grow_size; those before it the first data_size bytes, at pos mod
     * data_size.  grow_at is a multiple of data_size at least data_size past
     * the read position when it is set, so the two agree on every record
     * then unread, and no writer that missed it can reach it. */
    uint64_t grow_at;
    uint64_t grow_size;
    uint64_t own_cache_lo, own_cache_hi; /* the unwinder's rule cache: code addresses, no roots */
};

/* ---- heap.c (target side, only in the "mem" build) -------------------------
 * Called by the interposers in heaphooks.c with their recursion guard set;
 * never from a signal handler of ours.  Waits only while the ring is full and
 * the controller is draining it; a dead or stalled controller is decided once
 * per process (DETACH_*), after which nothing waits and the hooks forward. */
int heap_init(const char *dir);                 /* constructor */
void heap_after_fork(void);                     /* fork child: its own ring, first thing */
void heap_at_exit(void);                        /* wait (bounded) for the leak scan */
/* The shim's own bookkeeping (thread start, fork child setup) allocates:
 * heap_hooks_pause(1) makes the calling thread's allocations untracked until
 * heap_hooks_pause(0).  Not AS-safe, not nestable. */
void heap_hooks_pause(int on);
extern int heap_enabled;                        /* tracking is on */
static inline int heap_active(void) { return __atomic_load_n(&heap_enabled, __ATOMIC_RELAXED); }
void heap_on_alloc(void *ptr, size_t size, void *frame);
void heap_on_free(void *ptr);
/* realloc: the old block's event before the real call, the new one's after. */
void heap_realloc_begin(void *old);
void heap_realloc_end(void *old, void *ptr, size_t size, void *frame);
const struct stack_bounds *sampler_bounds(void);
void heap_account_time(uint64_t ns);            /* a timed hook call */
void heap_thread_exit(void);                    /* the thread's last hook has run */

/* Sampled mode's fast path, inlined into the hooks so that an allocation
 * that is not sampled costs a subtraction, and a free of a block that was
 * not sampled a hash and a load. */
#define HEAP_FILTER_SIZE (1u << 16)
extern uint64_t heap_sampling;            /* mean bytes between samples; 0: exact */
extern int heap_free_all;                 /* the sampled set overflowed: report every free */
extern uint8_t *heap_filter;              /* sampled blocks per address bucket */
extern __thread int64_t heap_bytes_left CTPROF_TLS;
static inline uint64_t heap_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}
/* A heap stack's hash, as the writer (heap.c) and the controller's
 * consumer (collect.c) both compute it: the stack's identity in an
 * ALLOC_KNOWN record.  Never 0, and never a user-space address: the
 * writer's table of them, in the program's memory, holds nothing the leak
 * scan could take for a pointer to a block. */
static inline uint64_t heap_stack_hash(const uint64_t *ips, uint32_t n, uint32_t truncated)
{
    /* four lanes, four words at a time: their multiplications overlap
     * (the hook hashes every allocation's stack) */
    const uint64_t k = 0x9fb21c651e98df25ull;
    uint64_t a = 0x9e3779b97f4a7c15ull ^ n, b = 0xc2b2ae3d27d4eb4full ^ ((uint64_t)truncated << 40);
    uint64_t c = 0x165667b19e3779f9ull, d = 0x27d4eb2f165667c5ull;
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a = (a ^ ips[i]) * k;
        b = (b ^ ips[i + 1]) * k;
        c = (c ^ ips[i + 2]) * k;
        d = (d ^ ips[i + 3]) * k;
        a ^= a >> 29;
        b ^= b >> 29;
        c ^= c >> 29;
        d ^= d >> 29;
    }
    for (; i < n; i++) {
        a = (a ^ ips[i]) * k;
        a ^= a >> 29;
    }
    uint64_t h = a ^ (b << 16 | b >> 48) ^ (c << 32 | c >> 32) ^ (d << 48 | d >> 16);
    return heap_mix64(h * k) | 1ull << 63;
}
/* The two functions of libm sampled mode needs, here so that the shim does
 * not load libm into the program (its pages count in the program's RSS).
 * Both exact to a few ulps over the range used. */
/* ln(x) for x > 0: x = 2^e * m, m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh((m-1)/(m+1)). */
static inline double heap_ln(double x)
{
    union { double d; uint64_t u; } v = {x};
    int e = (int)((v.u >> 52) & 0x7ff) - 1023;
    v.u = (v.u & ((1ull << 52) - 1)) | (1023ull << 52);      /* m in [1, 2) */
    if (v.d > 1.4142135623730951) {
        v.d *= 0.5;
        e++;
    }
    double z = (v.d - 1) / (v.d + 1), z2 = z * z, term = z, sum = 0;
    for (int k = 1; k < 40; k += 2) {
        sum += term / k;
        term *= z2;
    }
    return 2 * sum + e * 0.6931471805599453;
}
/* 1 - exp(-x) for x >= 0 (the chance that a Poisson sampler with mean
 * distance 1 lands in an allocation of x). */
static inline double heap_sample_chance(double x)
{
    if (x > 40)
        return 1.0;
    if (x < 0.5) {                          /* -expm1(-x) by its series: no cancellation */
        double term = x, sum = 0;
        for (int k = 1; k < 30 && term != 0; k++) {
            sum += term;
            term *= -x / (k + 1);
        }
        return sum;
    }
    int k = (int)(x / 0.6931471805599453);
    double r = x - k * 0.6931471805599453, term = 1, e = 0;     /* exp(-x) = 2^-k exp(-r) */
    for (int i = 1; i < 30; i++) {
        e += term;
        term *= -r / i;
    }
    union { double d; uint64_t u; } scale = {.u = (uint64_t)(1023 - k) << 52};
    return 1.0 - e * scale.d;
}

/* Could `p` be a sampled block?  (No false "no": see heap.c.) */
static inline int heap_maybe_sampled(const void *p)
{
    return heap_free_all || __atomic_load_n(&heap_filter[(heap_mix64((uint64_t)(uintptr_t)p) >> 8) % HEAP_FILTER_SIZE],
                                            __ATOMIC_ACQUIRE) != 0;
}

/* ---- ring.c ---------------------------------------------------------------*/
struct ring {
    struct ring_header *hdr;
    unsigned char *data;      /* mapped twice back to back: writes never wrap */
    /* The file's whole data area (heap rings: room to grow into, see
     * heap_shared.grow_at), mapped twice back to back too; NULL if the
     * file has no more than data_size. */
    unsigned char *grown;
    uint64_t grown_size;
};

/* Create or reopen (after exec) the ring file <dir>/<pid><suffix> of this
 * process (".ring" for samples, ".heap" for heap events).  Not AS-safe in
 * spirit (file creation) but uses only syscalls, so it is safe in a fork
 * child.  Returns 0 on success. */
int ring_open(struct ring *r, const char *dir, const char *suffix, uint64_t data_size, uint64_t file_data_size,
              int *reused);
/* Reserve `size` bytes (multiple of 8).  AS-safe, lock-free, never blocks:
 * NULL and `dropped` counted when full. */
void *ring_reserve(struct ring *r, uint32_t size);
/* Reserve without dropping: a full ring means waiting for the controller
 * (heap events must not be lost).  Gives up, counting `*lost`, only when the
 * controller's heartbeat stops.  Not AS-safe (sleeps). */
/* The controller's side (not for the program): copy ``n`` bytes at ring
 * position ``pos`` out of a singly mapped data area of ``mask + 1`` bytes,
 * wrapping around; and clear such a range.  Not async-signal-relevant. */
void ring_copy(unsigned char *dst, const unsigned char *data, uint64_t mask, uint64_t pos, uint32_t n);
void ring_zero(unsigned char *data, uint64_t mask, uint64_t pos, uint64_t n);
/* Publish a reserved record.  AS-safe. */
void ring_commit(void *rec, uint32_t size);
/* Controller side (called through ctypes): copy committed records from a
 * mapped ring file into `out`, mark them consumed.  Returns bytes copied. */
CTPROF_API size_t ctprof_ring_drain(void *file_base, void *out, size_t cap);

/* ---- unwind.c -------------------------------------------------------------*/
enum unwind_mode { UNWIND_AUTO = 0, UNWIND_FP = 1, UNWIND_DWARF = 2 };

struct stack_bounds { uintptr_t lo, hi; };

/* Load and warm up libgcc's unwinder (the heap hooks' last resort),
 * allocate the rule cache and find the shim's own code, outside any
 * handler.  Not AS-safe.  Idempotent. */
void unwind_init(void);
/* The stack of whoever called the interposer whose frame is `frame`
 * (__builtin_frame_address(0) in it), leaf (that caller) first.  Cached CFI
 * rules, libgcc's _Unwind_Backtrace if they give nothing.  Used by the heap
 * hooks; never from a signal handler (libgcc may take a lock). */
int unwind_caller(const struct stack_bounds *b, const void *frame, uint64_t *ips, int max, int *truncated);
/* Is the page at `page` mapped readable?  (cfi.c; AS-safe: one syscall,
 * nothing touched.) */
int page_readable(uint64_t page);

/* ---- Python frames of samples and heap events (pylocal.c) -----------------
 * A sample's or heap event's return addresses may be followed by
 * PYFRAMES_MARK and the thread's Python frames, two words each (pywalk.h's
 * format): the controller splits them off (ctprof/capture/pystacks.py). */
#define PYFRAMES_MARK 0xFFFFFFFFFFFFF0F0ull
#define PYHEAP_MAX_FRAMES 64
#define PYFRAMES_WORDS (1 + 2 * PYHEAP_MAX_FRAMES)
/* In these events each index word carries the code object's fingerprint
 * (pyw_fingerprint) in bits 33-63. */
#define PYFRAME_PRINT_SHIFT 33
/* Find the interpreter of this image and its layout in CTPROF_PYLAYOUTS
 * (constructor time, not AS-safe). */
void pylocal_init_from_env(void);
/* Append PYFRAMES_MARK and the calling thread's Python frames to `out`
 * (room for `room` words); returns the words written (0: no Python frames).
 * AS-safe: no allocation, no locks.  `in_signal`: called from a signal
 * handler, which may find the frame chain half updated (every page is then
 * checked on every read, none remembered). */
int pylocal_append(uint64_t *out, int room, int in_signal);
/* Fill ips[] (leaf first) from the interrupted context `uc`.  AS-safe:
 * only cfi.c's walker (never libgcc, nothing lazily bound), every memory
 * read validated, so a sample on a coroutine stack, inside swapcontext or
 * in JIT code cannot fault or block.  Returns the frame count (>= 1);
 * *truncated set if the stack was deeper than max. */
int unwind_stack(enum unwind_mode mode, void *uc, const struct stack_bounds *b,
                 uint64_t *ips, int max, int *truncated);

/* ---- cfi.c: cached DWARF CFI unwinder -------------------------------------- */
/* Allocate the rule cache.  Not AS-safe (mmap once at start). */
void cfi_init(void);
/* Code was unmapped (dlclose): cached rules are recomputed when next met. */
void cfi_code_unmapped(void);
/* Bytes of the unwinder's caches that are resident: the pages of the rule
 * cache touched so far (mincore), and every thread's memo of its last walk. */
uint64_t cfi_cache_bytes(void);
/* Where the rule cache lies (0, 0 without one): none of it is a root of
 * the leak scan. */
void cfi_cache_range(uint64_t *lo, uint64_t *hi);
enum {
    CFI_RULES = 1,        /* use .eh_frame rules (else the frame-pointer chain only) */
    CFI_ANY_MEMORY = 2,   /* reads outside [sp, stack top) through process_vm_readv
                             (signal handlers: coroutine stacks, sigaltstack) */
    CFI_STRICT = 4,       /* a frame without a rule fails the walk (-1): the
                             caller has a better fallback (libgcc) */
    CFI_MEMO = 8,         /* start from the thread's last walk where it still
                             holds (ordinary context only: heap hooks) */
    CFI_RETURN_ADDRESS = 16, /* the first pc is a return address, not exact */
};
/* Unwind from registers (pc, sp, fp) within stack bounds `b`, leaf first.
 * The first pc is exact, later ones return addresses.  Leading frames whose
 * pc is in [skip_lo, skip_hi) are walked but not recorded (skip_lo ==
 * skip_hi: none).  A frame without a usable rule is stepped through its
 * frame pointer (CFI_STRICT: -1 instead).  Returns the frame count.
 * AS-safe: no libgcc, no locks, never faults (every read validated). */
int cfi_unwind(uint64_t pc, uint64_t sp, uint64_t fp, const struct stack_bounds *b,
               uint64_t *ips, int max, uint64_t skip_lo, uint64_t skip_hi, int flags, int *truncated);
/* Unmap the calling thread's page for validated reads.  At thread exit. */
void cfi_thread_exit(void);

/* ---- sampler.c ------------------------------------------------------------*/
struct sampler_config {
    unsigned hz;              /* 0: no timer and no handler at all */
    const char *dir;          /* session directory (maps snapshots) */
    int signo;                /* sampling signal for perf/posix timers */
    int forced_timer;         /* 0 = best available, else enum timer kind */
    enum unwind_mode unwind;
    int max_depth;
};

/* Install the handler and remember the config.  Not AS-safe. */
int sampler_install(struct ring *r, const struct sampler_config *c);
/* Arm the CPU-time timer of the calling thread.  Not AS-safe (may malloc
 * nothing, but calls pthread functions).  Idempotent. */
void sampler_thread_start(void);
/* Disarm the calling thread's timer and emit its exit record. */
void sampler_thread_stop(void);
/* pthread_atfork prepare/parent handlers: no fork while a thread of ours
 * has the soft fd limit raised (see sampler.c, move_fd_high). */
void sampler_fork_prepare(void);
void sampler_fork_parent(void);
void sampler_fork_child(void);     /* first thing in the child's handler */
/* In a fork child: forget the parent's threads and switch to ring `r`. */
void sampler_after_fork(struct ring *r);
/* Emit a THREAD record for the calling thread (name, cpu time). */
void sampler_thread_record(int what);
/* Around an exec in the calling thread: stop its timer and discard a
 * pending signal of ours (so none reaches the new image), and undo that if
 * the exec failed.  Not AS-safe; a no-op in a vfork child. */
struct exec_guard {
    int active, itimer_stopped;
    struct itimerspec posix_old;
    struct itimerval itimer_old;
};
int sampler_exec_prepare(struct exec_guard *g);
void sampler_exec_failed(struct exec_guard *g);
/* Our live perf descriptors in [first, last], ascending, into out[cap];
 * -1 if more than cap.  For close_range/closefrom. */
int sampler_fds_in(unsigned first, unsigned last, int *out, int cap);
/* Is this signal/siginfo one of our timer's?  AS-safe. */
int sampler_owns(int sig, const siginfo_t *si);
/* Called by preload.c when the target claims our signal. */
void sampler_chain(const struct sigaction *act, struct sigaction *old);
/* Signal currently used for sampling (SIGPROF for the itimer fallback). */
int sampler_signal(void);
int sampler_active(void);
/* The C library's sigaction, bypassing our own interposer. */
int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old);

/* ---- maps.c ---------------------------------------------------------------
 * Copies of /proc/self/maps in <dir>/<pid>.maps.<gen>; samples carry the
 * generation current when they were taken (ring_header.maps_gen). */
/* Take a new generation and write its snapshot now (start, fork, exec).
 * Only syscalls; not from the handler. */
void maps_snapshot(struct ring *r, const char *dir);
/* The map changed (dlopen/dlclose): a new generation, written lazily by
 * the first sample that uses it.  No file I/O: a program that loads and
 * unloads libraries in a loop pays an atomic or two per call. */
void maps_changed(struct ring *r);
/* Before unmapping code (dlclose): wait (bounded) for a snapshot another
 * thread is writing, so it still shows what its samples saw. */
void maps_settle(struct ring *r);
/* Write generation `gen` unless someone has.  AS-safe (only syscalls; the
 * caller lends `buf`, MAPS_BUF_BYTES, so nothing big goes on its stack). */
#define MAPS_BUF_BYTES 8192
void maps_ensure(struct ring *r, const char *dir, uint32_t gen, char *buf, size_t cap);

/* ---- small helpers (util.c) ------------------------------------------------*/
uint64_t now_ns(void);                    /* CLOCK_MONOTONIC, AS-safe */
uint64_t thread_cpu_ns(void);             /* AS-safe */
int ctprof_gettid(void);                  /* AS-safe, cached per thread */
void ctprof_forget_tid(void);             /* in a fork child */
size_t fmt_u64(char *out, uint64_t v);    /* AS-safe decimal formatting */
void path_join3(char *out, size_t cap, const char *a, const char *b, const char *c);

/* ---- pylocal.c: Python frames of the calling thread ("self" build too) ---
 * pylocal_set_layout: read frames with this layout (pywalk.h's PYL_COUNT
 * values) in the interpreter this process runs; 1 if it has one.
 * pylocal_frames: the calling thread's frames, pywalk.h's pairs, leaf
 * first; AS-safe (checked reads, no locks, no allocation). */
int pylocal_set_layout(const int64_t *values);
int pylocal_frames(uint64_t *out, int max, int in_signal);

#endif
