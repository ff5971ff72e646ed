/* The controller's Python-stack reader (loaded with ctypes by
 * ctprof/capture/pystacks.py; never inside a profiled program).
 *
 * The kernel sampler copies native registers and stack at each sample, but
 * a CPython thread's Python frames live in the heap, so they must be read
 * from the process while it still runs that code.  This thread watches the
 * perf rings the controller maps: for each new sample of a registered
 * CPython process it reads the thread's Python frames at once with
 * process_vm_readv (pywalk.c), typically well under a millisecond after the
 * sample, and appends them to an output buffer keyed by (pid, tid, time).
 * The first time it meets a code object it also copies its names and line
 * table, so nothing has to be read after the process is gone.
 *
 * The thread may have moved on between the sample and the read.  A read is
 * kept only if the sample itself shows the innermost frame read was running
 * then: the eval loop keeps that frame's address and an instruction
 * pointer into its code in registers, or saves them on the C stack when it
 * calls out.  Here the check is coarse (both values anywhere among the
 * sample's registers and stack copy: a failure is certain to be stale);
 * the controller repeats it exactly once the sample is unwound, against
 * the registers of the innermost _PyEval_EvalFrameDefault activation
 * (ctprof/capture/kernel.py), with the leaf frame and code range sent
 * along.  A read that fails is counted and the sample keeps its native
 * frames only: a Python function is never shown above C code it did not
 * call.
 *
 * The Python drain consumes each ring only up to this thread's cursor
 * (pyr_cursor) after taking the output (pyr_take), so every sample it
 * decodes already has its Python frames, and the kernel can never reuse
 * ring space this thread has not read.
 *
 * Output records (native endian), each 8-byte aligned:
 *   u32 type, u32 total bytes, then
 *   type 1 (sample): u32 pid, u32 tid, u64 time, u32 n, u32 0, u64 leaf frame address,
 *                    u64 lo, u64 hi (its code's instructions), n x (u64 code, u64 index|flags)
 *   type 2 (code):   u32 pid, i32 firstlineno, u64 address, then three
 *                    strings (qualname, filename, line table), each
 *                    u32 width (0 missing, 1/2/4 str, 1 bytes), u32 nbytes, bytes padded to 8. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "pywalk.h"

#define CTPROF_API __attribute__((visibility("default")))

#define MAX_RINGS 1024
#define MAX_PROCS 4096
#define MAX_DEPTH 512
#define MAX_TEXT 65536
#define PERF_RECORD_SAMPLE 9
/* A sample's Python frames are read from a thread that goes on running,
 * so they must be read within the moment it stays in one Python function:
 * often a few hundred microseconds.  Waking the reader at each sample
 * (perf's wakeup_events) costs the program a self-interrupt per sample
 * (measured here: +7 points at 4000 Hz), and polling every 50 us costs a
 * fifth of a CPU.  So the reader polls every IDLE_NS, and every DUE_NS
 * around the moment a ring's next sample is due (its last sample's time
 * plus the gap between its samples): on a 2-core VM, 47% of a test's
 * samples kept their Python frames with 200 us polling alone, 84-89% so. */
#define IDLE_NS 200000
#define DUE_NS 20000

enum { OUT_SAMPLE = 1, OUT_CODE = 2 };

struct seen {                    /* code object address -> fingerprint (pyw_fingerprint) */
    uint64_t *keys, *prints;
    size_t cap, used;
};

struct proc {
    int pid;
    uint64_t runtime, code_type;
    int64_t layout[PYL_COUNT];
    uint32_t last_tid;
    uint64_t last_tstate;
    struct seen seen;
};

struct perf_ring {
    unsigned char *base;         /* the mmap: metadata page, then data */
    uint64_t size;               /* data bytes (a power of two) */
    uint64_t cursor;             /* position read up to (atomic) */
    uint64_t last_ns, gap_ns;    /* its last sample's time; the gap between its samples (average) */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;   /* procs and output */
static struct proc *procs[MAX_PROCS];
static int nprocs;
static struct perf_ring rings[MAX_RINGS];
static int nrings;
static unsigned char *out;
static size_t out_len, out_cap;
static pthread_t thread;
static int running, stop_flag;
static uint64_t samples_read, samples_stale;
static int sample_regs = 18;     /* registers in each sample (PERF_SAMPLE_REGS_USER) */

/* ---- memory of another process -------------------------------------------- */

static int read_remote(void *ctx, uint64_t addr, void *buf, size_t len)
{
    struct iovec local = {buf, len}, remote = {(void *)(uintptr_t)addr, len};
    return process_vm_readv((pid_t)(intptr_t)ctx, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

static struct pyw walker_of(struct proc *p)
{
    struct pyw w = {p->layout, read_remote, (void *)(intptr_t)p->pid};
    return w;
}

/* ---- output ---------------------------------------------------------------- */

static void emit(const void *rec, size_t len)
{
    if (out_len + len > out_cap) {
        size_t cap = out_cap ? out_cap * 2 : 1 << 20;
        while (cap < out_len + len)
            cap *= 2;
        unsigned char *grown = realloc(out, cap);
        if (!grown)
            return;                           /* dropped: the sample stays native-only */
        out = grown;
        out_cap = cap;
    }
    memcpy(out + out_len, rec, len);
    out_len += len;
}

static size_t put_text(unsigned char *dst, int width, const void *src, size_t n)
{
    uint32_t head[2] = {(uint32_t)width, (uint32_t)n};
    memcpy(dst, head, 8);
    memcpy(dst + 8, src, n);
    size_t padded = (n + 7) & ~(size_t)7;
    memset(dst + 8 + n, 0, padded - n);
    return 8 + padded;
}

/* ---- code objects ---------------------------------------------------------- */

static int seen_grow(struct seen *s)
{
    size_t cap = s->cap ? s->cap * 2 : 1024;
    uint64_t *keys = calloc(cap, 8), *prints = calloc(cap, 8);
    if (!keys || !prints) {
        free(keys);
        free(prints);
        return -1;
    }
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->keys[i])
            continue;
        size_t j = (s->keys[i] >> 4) & (cap - 1);
        while (keys[j])
            j = (j + 1) & (cap - 1);
        keys[j] = s->keys[i];
        prints[j] = s->prints[i];
    }
    free(s->keys);
    free(s->prints);
    s->keys = keys;
    s->prints = prints;
    s->cap = cap;
    return 0;
}

/* Has `code` with this fingerprint been emitted?  Records it if not. */
static int seen_before(struct seen *s, uint64_t code, uint64_t print)
{
    if ((s->used + 1) * 2 > s->cap && seen_grow(s) != 0)
        return 1;                             /* out of memory: emit nothing new */
    size_t j = (code >> 4) & (s->cap - 1);
    while (s->keys[j] && s->keys[j] != code)
        j = (j + 1) & (s->cap - 1);
    if (s->keys[j] == code && s->prints[j] == print)
        return 1;
    if (!s->keys[j])
        s->used++;
    s->keys[j] = code;
    s->prints[j] = print;
    return 0;
}

#define CODE_RECORD_MAX (24 + 3 * (8 + MAX_TEXT))

/* Build the output record of code object `code` in `rec` (CODE_RECORD_MAX
 * bytes); returns its length, 0 if `code` is not a code object. */
static size_t code_record(const struct pyw *w, int pid, uint64_t code_type, uint64_t code,
                          unsigned char *rec, unsigned char *text)
{
    const int64_t *L = w->layout;
    uint64_t type = 0;
    if (code_type && (w->read(w->ctx, code + 8, &type, 8) != 0 || type != code_type))
        return 0;                             /* not a code object (a torn read) */
    int32_t firstlineno = 0;
    w->read(w->ctx, code + (uint64_t)L[PYL_CODE_FIRSTLINENO], &firstlineno, 4);
    size_t len = 24;
    int width;
    uint64_t name = 0, file = 0, table = 0;
    int64_t name_off = L[PYL_CODE_QUALNAME] >= 0 ? L[PYL_CODE_QUALNAME] : L[PYL_CODE_NAME];
    w->read(w->ctx, code + (uint64_t)name_off, &name, 8);
    size_t n = pyw_str(w, name, text, MAX_TEXT, &width);
    len += put_text(rec + len, width, text, n);
    w->read(w->ctx, code + (uint64_t)L[PYL_CODE_FILENAME], &file, 8);
    n = pyw_str(w, file, text, MAX_TEXT, &width);
    len += put_text(rec + len, width, text, n);
    w->read(w->ctx, code + (uint64_t)L[PYL_CODE_LINETABLE], &table, 8);
    n = pyw_bytes(w, table, text, MAX_TEXT);
    len += put_text(rec + len, 1, text, n);
    uint32_t head[4] = {OUT_CODE, (uint32_t)len, (uint32_t)pid, (uint32_t)firstlineno};
    memcpy(rec, head, 16);
    memcpy(rec + 16, &code, 8);
    return len;
}

static void emit_code(struct proc *p, const struct pyw *w, uint64_t code)
{
    static unsigned char rec[CODE_RECORD_MAX], text[MAX_TEXT];   /* reader thread only */
    size_t len = code_record(w, p->pid, p->code_type, code, rec, text);
    if (len)
        emit(rec, len);
}

/* ---- samples --------------------------------------------------------------- */

static struct proc *find_proc(int pid)
{
    for (int i = 0; i < nprocs; i++)
        if (procs[i]->pid == pid)
            return procs[i];
    return NULL;
}

/* Does the sample (registers and stack copy, as 64-bit words) show the
 * thread running frame `leaf` of code object `code`? */
static int sample_shows(const struct pyw *w, const uint64_t *words, size_t nwords, uint64_t leaf, uint64_t code,
                        uint64_t *lo_out, uint64_t *hi_out)
{
    uint64_t lo, hi;
    if (pyw_code_range(w, code, &lo, &hi) != 0)
        return 0;
    *lo_out = lo;
    *hi_out = hi;
    int frame_seen = 0, instr_seen = 0;
    for (size_t i = 0; i < nwords && !(frame_seen && instr_seen); i++) {
        frame_seen |= words[i] == leaf;
        instr_seen |= words[i] >= lo && words[i] < hi;
    }
    return frame_seen && instr_seen;
}

/* The registers and stack copy of a sample record's body, as words. */
static const uint64_t *sample_words(const unsigned char *body, size_t len, size_t *nwords)
{
    size_t regs_at = 24, size_at = regs_at + 8 * (size_t)sample_regs;   /* pid tid time abi regs size */
    *nwords = 0;
    if (len < size_at + 8)
        return NULL;
    uint64_t abi, stack_size, dyn = 0;
    memcpy(&abi, body + 16, 8);
    memcpy(&stack_size, body + size_at, 8);
    if (!abi)
        return NULL;
    if (stack_size && size_at + 8 + stack_size + 8 <= len)
        memcpy(&dyn, body + size_at + 8 + stack_size, 8);
    if (dyn > stack_size)
        dyn = stack_size;
    /* registers then stack are contiguous but for the 8-byte size between:
     * the size word is a small number, harmless to scan along */
    *nwords = (size_at + 8 + dyn - regs_at) / 8;
    return (const uint64_t *)(body + regs_at);
}

static void read_sample(const unsigned char *body, size_t len)
{
    uint32_t pid, tid;
    uint64_t time;
    memcpy(&pid, body, 4);
    memcpy(&tid, body + 4, 4);
    memcpy(&time, body + 8, 8);
    static uint64_t frames[2 * MAX_DEPTH];
    static unsigned char rec[56 + 16 * MAX_DEPTH];
    pthread_mutex_lock(&lock);
    struct proc *p = find_proc((int)pid);
    if (!p) {
        pthread_mutex_unlock(&lock);
        return;
    }
    struct pyw w = walker_of(p);
    uint64_t ts = 0;
    if (p->last_tid == tid && pyw_is_thread(&w, p->last_tstate, tid))
        ts = p->last_tstate;
    else if ((ts = pyw_tstate_of(&w, p->runtime, tid)) != 0) {
        p->last_tid = tid;
        p->last_tstate = ts;
    }
    uint64_t leaf = 0;
    int n = ts ? pyw_frames(&w, ts, frames, MAX_DEPTH, &leaf) : 0;
    size_t nwords;
    const uint64_t *words = sample_words(body, len, &nwords);
    uint64_t lo = 0, hi = 0;
    if (n && !(words && sample_shows(&w, words, nwords, leaf, frames[0], &lo, &hi))) {
        samples_stale++;
        pthread_mutex_unlock(&lock);
        return;
    }
    for (int i = 0; i < n; i++) {
        uint64_t code = frames[2 * i];
        if (!seen_before(&p->seen, code, pyw_fingerprint(&w, code)))
            emit_code(p, &w, code);
    }
    if (n) {
        uint32_t head[4] = {OUT_SAMPLE, (uint32_t)(56 + 16 * n), pid, tid};
        uint32_t count[2] = {(uint32_t)n, 0};
        uint64_t check[3] = {leaf, lo, hi};
        memcpy(rec, head, 16);
        memcpy(rec + 16, &time, 8);
        memcpy(rec + 24, count, 8);
        memcpy(rec + 32, check, 24);
        memcpy(rec + 56, frames, 16 * (size_t)n);
        emit(rec, 56 + 16 * (size_t)n);
        samples_read++;
    }
    pthread_mutex_unlock(&lock);
}

static void perf_copy(const struct perf_ring *r, uint64_t pos, void *dst, size_t len)
{
    const unsigned char *data = r->base + 4096;
    uint64_t at = pos & (r->size - 1);
    size_t first = r->size - at < len ? (size_t)(r->size - at) : len;
    memcpy(dst, data + at, first);
    memcpy((unsigned char *)dst + first, data, len - first);
}

static void note_sample_time(struct perf_ring *r, uint64_t t)
{
    if (r->last_ns && t > r->last_ns) {
        uint64_t gap = t - r->last_ns;
        r->gap_ns = r->gap_ns ? (3 * r->gap_ns + gap) / 4 : gap;
    }
    r->last_ns = t;
}

/* How long the reader may sleep now: DUE_NS from shortly before a ring's
 * next sample is due until a little after, else up to IDLE_NS. */
static uint64_t sleep_ns(int n)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec, sleep = IDLE_NS;
    for (int i = 0; i < n; i++) {
        uint64_t gap = rings[i].gap_ns;
        if (gap < 4 * DUE_NS || gap > 100000000)      /* (no steady rate to go by) */
            continue;
        uint64_t early = gap / 8 < 150000 ? gap / 8 : 150000, late = gap / 4 < 300000 ? gap / 4 : 300000;
        uint64_t due = rings[i].last_ns + gap;
        if (now + early >= due && now <= due + late)
            return DUE_NS;
        if (now + early < due && due - early - now < sleep)
            sleep = due - early - now;
    }
    return sleep < DUE_NS ? DUE_NS : sleep;
}

/* Read every whole record of ring `r` that is new since its cursor. */
static int scan_ring(struct perf_ring *r)
{
    uint64_t head = __atomic_load_n((uint64_t *)(r->base + 1024), __ATOMIC_ACQUIRE);
    uint64_t pos = __atomic_load_n(&r->cursor, __ATOMIC_RELAXED);
    int work = 0;
    while (pos + 8 <= head) {
        uint32_t type;
        uint16_t size;
        unsigned char hdr[8];
        perf_copy(r, pos, hdr, 8);
        memcpy(&type, hdr, 4);
        memcpy(&size, hdr + 6, 2);
        if (size < 8 || pos + size > head)
            break;
        if (type == PERF_RECORD_SAMPLE && size >= 24) {
            static uint64_t words[65536 / 8];   /* a record's size is 16 bits */
            unsigned char *body = (unsigned char *)words;
            perf_copy(r, pos + 8, body, size - 8u);
            read_sample(body, size - 8u);
            note_sample_time(r, words[1]);
        }
        pos += size;
        work = 1;
    }
    __atomic_store_n(&r->cursor, pos, __ATOMIC_RELEASE);
    return work;
}

static void *reader_main(void *arg)
{
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);  /* wake when asked, not 50 us later */
    while (!__atomic_load_n(&stop_flag, __ATOMIC_ACQUIRE)) {
        int work = 0, n = __atomic_load_n(&nrings, __ATOMIC_ACQUIRE);
        for (int i = 0; i < n; i++)
            work |= scan_ring(&rings[i]);
        if (!work) {
            struct timespec ts = {0, (long)sleep_ns(n)};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* ---- control (from Python through ctypes) ---------------------------------- */

/* Watch the ring mapped at `base` with `size` data bytes, from its current
 * tail.  Returns its index, or -1. */
CTPROF_API int pyr_add_ring(void *base, uint64_t size)
{
    if (nrings >= MAX_RINGS || (size & (size - 1)))
        return -1;
    struct perf_ring *r = &rings[nrings];
    r->base = base;
    r->size = size;
    r->cursor = __atomic_load_n((uint64_t *)((unsigned char *)base + 1032), __ATOMIC_ACQUIRE);
    __atomic_store_n(&nrings, nrings + 1, __ATOMIC_RELEASE);
    return nrings - 1;
}

/* Position up to which ring `i` has been read (the drain may consume up to it). */
CTPROF_API uint64_t pyr_cursor(int i)
{
    return i >= 0 && i < nrings ? __atomic_load_n(&rings[i].cursor, __ATOMIC_ACQUIRE) : 0;
}

CTPROF_API int pyr_start(void)
{
    if (running)
        return 0;
    stop_flag = 0;
    if (pthread_create(&thread, NULL, reader_main, NULL) != 0)
        return -1;
    running = 1;
    return 0;
}

CTPROF_API void pyr_stop(void)
{
    if (!running)
        return;
    __atomic_store_n(&stop_flag, 1, __ATOMIC_RELEASE);
    pthread_join(thread, NULL);
    running = 0;
}

/* Read the Python frames of process `pid` from now on. */
CTPROF_API int pyr_add_process(int pid, uint64_t runtime, uint64_t code_type, const int64_t *layout)
{
    struct proc *p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    p->pid = pid;
    p->runtime = runtime;
    p->code_type = code_type;
    memcpy(p->layout, layout, sizeof p->layout);
    pthread_mutex_lock(&lock);
    int ok = nprocs < MAX_PROCS && !find_proc(pid);
    if (ok)
        procs[nprocs++] = p;
    pthread_mutex_unlock(&lock);
    if (!ok)
        free(p);
    return ok ? 0 : -1;
}

CTPROF_API void pyr_remove_process(int pid)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < nprocs; i++) {
        if (procs[i]->pid != pid)
            continue;
        free(procs[i]->seen.keys);
        free(procs[i]->seen.prints);
        free(procs[i]);
        procs[i] = procs[--nprocs];
        break;
    }
    pthread_mutex_unlock(&lock);
}

/* Bytes of output waiting. */
CTPROF_API size_t pyr_pending(void)
{
    pthread_mutex_lock(&lock);
    size_t n = out_len;
    pthread_mutex_unlock(&lock);
    return n;
}

/* Move up to `cap` bytes of whole records into `dst`; returns the bytes moved. */
CTPROF_API size_t pyr_take(void *dst, size_t cap)
{
    pthread_mutex_lock(&lock);
    size_t n = 0;
    while (n + 8 <= out_len) {
        uint32_t len;
        memcpy(&len, out + n + 4, 4);
        if (n + len > cap)
            break;
        n += len;
    }
    memcpy(dst, out, n);
    memmove(out, out + n, out_len - n);
    out_len -= n;
    pthread_mutex_unlock(&lock);
    return n;
}

/* Samples read with Python frames, and samples whose thread had moved on
 * before its frames were read. */
CTPROF_API void pyr_counts(uint64_t *read, uint64_t *stale)
{
    pthread_mutex_lock(&lock);
    *read = samples_read;
    *stale = samples_stale;
    pthread_mutex_unlock(&lock);
}

/* How many registers each sample carries (popcount of sample_regs_user). */
CTPROF_API void pyr_set_sample_regs(int n)
{
    sample_regs = n;
}

/* The output record of one code object of process `pid`, read now, into
 * `dst` (for heap stacks, whose frames the program's own hooks recorded),
 * and its fingerprint now (to compare with the one recorded then).
 * Returns its length, 0 if unreadable, not a code object or over `cap`. */
CTPROF_API size_t pyr_code_record(int pid, uint64_t code, uint64_t code_type, const int64_t *layout,
                                  void *dst, size_t cap, uint32_t *fingerprint)
{
    unsigned char *rec = malloc(CODE_RECORD_MAX), *text = malloc(MAX_TEXT);
    size_t len = 0;
    if (rec && text) {
        struct pyw w = {layout, read_remote, (void *)(intptr_t)pid};
        *fingerprint = pyw_fingerprint(&w, code);
        len = code_record(&w, pid, code_type, code, rec, text);
        if (len > cap)
            len = 0;
        memcpy(dst, rec, len);
    }
    free(rec);
    free(text);
    return len;
}

static void *tid_probe(void *arg)
{
    *(pid_t *)arg = (pid_t)syscall(SYS_gettid);
    unsigned char *self = (unsigned char *)pthread_self();
    pid_t tid = *(pid_t *)arg;
    for (int off = 0; off < 2048; off += 4) {
        pid_t v;
        memcpy(&v, self + off, 4);
        if (v == tid) {
            *(pid_t *)arg = -off - 1;
            return NULL;
        }
    }
    *(pid_t *)arg = 0;
    return NULL;
}

/* Offset of the kernel thread id inside glibc's struct pthread (what a
 * pthread_t points to), found in a fresh thread (whose tid is not the pid);
 * -1 if not found.  CPython 3.9/3.10 keep only the pthread_t. */
CTPROF_API int pyr_pthread_tid_offset(void)
{
    pthread_t t;
    pid_t result = 0;
    if (pthread_create(&t, NULL, tid_probe, &result) != 0)
        return -1;
    pthread_join(t, NULL);
    return result < 0 ? -result - 1 : -1;
}
