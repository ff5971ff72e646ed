/* Self-profiling: sample threads of the process this library is loaded
 * into (Python loads it with ctypes for ctprof.profile()).
 *
 * Unlike the preloaded shim, timers are armed for *other* threads, from the
 * controlling (drain) thread: a perf_event task-clock event opened for a
 * thread id delivers its signal to that thread (F_SETOWN_EX F_OWNER_TID);
 * the fallback is timer_create on the thread's CPU clock with
 * SIGEV_THREAD_ID.  The handler finds its slot by si_fd / si_value, unwinds
 * the native stack (unwind.c), adds the thread's Python frames
 * (pylocal.c) and writes one REC_PYSAMPLE record into a ring (ring.c) that
 * the Python side drains with ctprof_ring_drain.
 *
 * The handler is async-signal-safe: no malloc, no locks, no stdio; scratch
 * memory is mmap'ed once per thread; errno is saved.  Once installed it
 * stays installed (inert between sessions), so a signal still queued when
 * profiling stops can never reach a default action that would kill the
 * process. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include "ctprof.h"

#define MAX_SLOTS 1024
#define SLOT_MAGIC 0x43540000 /* sival_int of our posix timers: magic | slot */

struct slot {
    int tid;                  /* 0: free */
    int fd;                   /* perf event, or -1 */
    int kind;                 /* TIMER_PERF or TIMER_POSIX */
    timer_t timer;
    struct stack_bounds bounds;
};

static struct slot slots[MAX_SLOTS];
static struct ring ring;
static uint64_t ring_bytes;
static int running;
static int active_handlers;
static int signo;
static int installed;
static struct sigaction previous;
static unsigned cfg_hz = 99;
static int cfg_depth = 128, cfg_pydepth = 128, cfg_python = 1;
static enum unwind_mode cfg_unwind = UNWIND_AUTO;
static int have_python;
static int unwinder_ready;

struct scratch_area {
    uint64_t *words;
    size_t count;
};
static __thread struct scratch_area scratch CTPROF_TLS;

/* ---- the handler (AS-safe) -------------------------------------------------- */

static int slot_of(int sig, const siginfo_t *si)
{
    if (sig != signo)
        return -1;
    if (si->si_code == SI_TIMER) {
        int v = si->si_value.sival_int;
        if ((v & ~0xFFFF) != SLOT_MAGIC)
            return -1;
        int i = v & 0xFFFF;
        return i < MAX_SLOTS && __atomic_load_n(&slots[i].tid, __ATOMIC_ACQUIRE) ? i : -1;
    }
    if (si->si_code <= 0)
        return -1;            /* sent by kill/sigqueue: not a perf event */
    for (int i = 0; i < MAX_SLOTS; i++)
        if (__atomic_load_n(&slots[i].tid, __ATOMIC_ACQUIRE) && slots[i].fd == si->si_fd)
            return i;
    return -1;
}

static void take_sample(int i, void *uc)
{
    uint64_t t0 = now_ns();
    size_t need = (size_t)cfg_depth + 2 * (size_t)cfg_pydepth + 8;
    if (scratch.count < need) {
        if (scratch.words)
            munmap(scratch.words, scratch.count * 8);
        void *p = mmap(NULL, need * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        scratch.words = p == MAP_FAILED ? NULL : p;
        scratch.count = p == MAP_FAILED ? 0 : need;
        if (!scratch.words)
            return;
    }
    int truncated = 0;
    int n = unwind_stack(cfg_unwind, uc, &slots[i].bounds, scratch.words, cfg_depth, &truncated);
    int np = have_python && cfg_python ? pylocal_frames(scratch.words + n, cfg_pydepth, 1) : 0;
    uint32_t size = (uint32_t)(sizeof(struct rec_sample) + (size_t)n * 8 + (size_t)np * 16);
    struct rec_sample *rec = ring_reserve(&ring, size);
    if (rec) {
        rec->h.type = REC_PYSAMPLE;
        rec->h.flags = truncated ? SAMPLE_TRUNCATED : 0;
        rec->tid = (uint32_t)ctprof_gettid();
        rec->nips = (uint32_t)n;
        rec->gen = 0;
        rec->pad = (uint32_t)np;
        rec->time_ns = t0;
        rec->cpu_ns = 0; /* unused here: thread CPU comes from /proc schedstat */
        memcpy(rec + 1, scratch.words, ((size_t)n + 2 * (size_t)np) * 8);
        ring_commit(rec, size);
        __atomic_fetch_add(&ring.hdr->samples, 1, __ATOMIC_RELAXED);
    }
    __atomic_fetch_add(&ring.hdr->handler_ns, now_ns() - t0, __ATOMIC_RELAXED);
}

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    int saved_errno = errno;
    int i = slot_of(sig, si);
    if (i < 0) {
        /* Not ours: whoever had the signal before us gets it. */
        if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction)
            previous.sa_sigaction(sig, si, uc);
        else if (!(previous.sa_flags & SA_SIGINFO) && previous.sa_handler != SIG_DFL &&
                 previous.sa_handler != SIG_IGN)
            previous.sa_handler(sig);
        errno = saved_errno;
        return;
    }
    __atomic_fetch_add(&active_handlers, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&running, __ATOMIC_SEQ_CST))
        take_sample(i, uc);
    if (slots[i].kind == TIMER_PERF && slots[i].fd >= 0)
        ioctl(slots[i].fd, PERF_EVENT_IOC_REFRESH, 1);
    __atomic_fetch_sub(&active_handlers, 1, __ATOMIC_SEQ_CST);
    errno = saved_errno;
}

/* ---- control (called from Python through ctypes; not AS-safe) ---------------- */

static int pick_signal(void)
{
    /* A real-time signal nobody uses; SIGRTMIN+4 is the preloaded shim's. */
    for (int s = SIGRTMIN + 6; s < SIGRTMAX; s++) {
        struct sigaction cur;
        if (sigaction(s, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL)
            return s;
    }
    return -1;
}

static void unmap_ring(void)
{
    munmap(ring.data, 2 * ring_bytes);
    munmap(ring.hdr, CTPROF_HEADER_SIZE);
    ring.hdr = NULL;
}

/* Start a session: ring file <dir>/<pid>.ring of `ring_mb` MiB, rate `hz`,
 * native depth `max_depth`, Python depth `py_depth` (0: native only).
 * Returns 0 or -errno.  Threads are added with ctprof_self_add_thread. */
CTPROF_API int ctprof_self_start(const char *dir, unsigned hz, int max_depth, int py_depth, int unwind, int ring_mb)
{
    if (__atomic_load_n(&running, __ATOMIC_SEQ_CST) || ring.hdr)
        return -EBUSY;
    if (!unwinder_ready) {
        unwind_init();
        unwinder_ready = 1;
    }
    cfg_hz = hz ? hz : 99;
    cfg_depth = max_depth > 0 ? max_depth : 128;
    cfg_pydepth = py_depth > 0 ? py_depth : 1;
    cfg_python = py_depth > 0;
    cfg_unwind = unwind == UNWIND_FP ? UNWIND_FP : unwind == UNWIND_DWARF ? UNWIND_DWARF : UNWIND_AUTO;
    ring_bytes = (uint64_t)(ring_mb > 0 ? ring_mb : 16) << 20;
    int reused = 0;
    if (ring_open(&ring, dir, ".ring", ring_bytes, ring_bytes, &reused) != 0) {
        ring.hdr = NULL;
        return -(errno ? errno : EIO);
    }
    ring_bytes = ring.hdr->data_size;
    ring.hdr->hz = cfg_hz;
    ring.hdr->max_depth = (uint32_t)cfg_depth;
    ssize_t len = readlink("/proc/self/exe", ring.hdr->exe, sizeof ring.hdr->exe - 1);
    ring.hdr->exe[len > 0 ? len : 0] = 0;
    if (!installed) {
        int rc = 0;
        signo = pick_signal();
        if (signo < 0)
            rc = -EAGAIN;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (!rc && sigaction(signo, &sa, &previous) != 0)
            rc = -errno;
        if (rc) {   /* leave no ring behind: a later start must be able to try again */
            unmap_ring();
            return rc;
        }
        installed = 1;
    }
    ring.hdr->signo = (uint32_t)signo;
    __atomic_store_n(&running, 1, __ATOMIC_SEQ_CST);
    return 0;
}

/* Read Python frames with this layout (ctprof/capture/cpython.py, the
 * running interpreter's version); 1 if this process has the interpreter. */
CTPROF_API int ctprof_self_python_layout(const int64_t *layout)
{
    if (__atomic_load_n(&running, __ATOMIC_SEQ_CST))
        return have_python;
    have_python = pylocal_set_layout(layout);
    return have_python;
}

static int open_task_clock(int tid, int exclude_kernel)
{
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_TASK_CLOCK;
    a.sample_period = 1000000000ull / cfg_hz;
    a.disabled = 1;
    a.wakeup_events = 1;
    a.exclude_kernel = exclude_kernel;
    a.exclude_hv = 1;
    return (int)syscall(SYS_perf_event_open, &a, tid, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

static int arm_perf(struct slot *s, int tid)
{
    int fd = open_task_clock(tid, 0);
    if (fd < 0 && (errno == EACCES || errno == EPERM))
        fd = open_task_clock(tid, 1);
    if (fd < 0)
        return -1;
    struct f_owner_ex owner = {F_OWNER_TID, tid};
    if (fcntl(fd, F_SETFL, O_ASYNC | O_NONBLOCK) != 0 || fcntl(fd, F_SETSIG, signo) != 0 ||
        fcntl(fd, F_SETOWN_EX, &owner) != 0) {
        close(fd);
        return -1;
    }
    s->fd = fd;
    s->kind = TIMER_PERF;
    __atomic_store_n(&s->tid, tid, __ATOMIC_RELEASE);
    if (ioctl(fd, PERF_EVENT_IOC_REFRESH, 1) != 0) {
        __atomic_store_n(&s->tid, 0, __ATOMIC_RELEASE);
        close(fd);
        s->fd = -1;
        return -1;
    }
    return 0;
}

static int arm_posix(struct slot *s, int tid, int index)
{
    /* The CPU clock of another thread of this process (MAKE_THREAD_CPUCLOCK). */
    clockid_t clock = (clockid_t)((~(unsigned)tid << 3) | 4 | 2);
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = signo;
    sev.sigev_value.sival_int = SLOT_MAGIC | index;
    sev._sigev_un._tid = tid;
    if (timer_create(clock, &sev, &s->timer) != 0)
        return -1;
    s->fd = -1;
    s->kind = TIMER_POSIX;
    __atomic_store_n(&s->tid, tid, __ATOMIC_RELEASE);
    uint64_t p = 1000000000ull / cfg_hz;
    struct itimerspec its = {{(time_t)(p / 1000000000u), (long)(p % 1000000000u)},
                             {(time_t)(p / 1000000000u), (long)(p % 1000000000u)}};
    if (timer_settime(s->timer, 0, &its, NULL) != 0) {
        __atomic_store_n(&s->tid, 0, __ATOMIC_RELEASE);
        timer_delete(s->timer);
        return -1;
    }
    return 0;
}

/* Arm a timer for thread `tid` (`pthread_id`: its pthread_t if known, else 0,
 * used for the stack bounds of the fast unwinder).  Returns the timer kind
 * (TIMER_PERF, TIMER_POSIX) or -errno. */
CTPROF_API int ctprof_self_add_thread(int tid, unsigned long pthread_id)
{
    if (!__atomic_load_n(&running, __ATOMIC_SEQ_CST))
        return -EINVAL;
    int index = -1;
    for (int i = 0; i < MAX_SLOTS; i++) {
        if (slots[i].tid == tid)
            return slots[i].kind;
        if (index < 0 && slots[i].tid == 0)
            index = i;
    }
    if (index < 0)
        return -ENOSPC;
    struct slot *s = &slots[index];
    s->bounds.lo = s->bounds.hi = 0;
    if (pthread_id) {
        pthread_attr_t attr;
        void *addr;
        size_t size;
        if (pthread_getattr_np((pthread_t)pthread_id, &attr) == 0) {
            if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
                s->bounds.lo = (uintptr_t)addr;
                s->bounds.hi = (uintptr_t)addr + size;
            }
            pthread_attr_destroy(&attr);
        }
    }
    if (arm_perf(s, tid) == 0) {
        if (!ring.hdr->timer_kind)
            ring.hdr->timer_kind = TIMER_PERF;
        return TIMER_PERF;
    }
    int perf_errno = errno;
    if (arm_posix(s, tid, index) == 0) {
        __atomic_fetch_or(&ring.hdr->notes, NOTE_PERF_FAILED, __ATOMIC_RELAXED);
        if (!ring.hdr->timer_kind)
            ring.hdr->timer_kind = TIMER_POSIX;
        return TIMER_POSIX;
    }
    return -(errno == ESRCH || perf_errno == ESRCH ? ESRCH : errno ? errno : EINVAL);
}

static void disarm(struct slot *s)
{
    if (!s->tid)
        return;
    if (s->kind == TIMER_PERF) {
        ioctl(s->fd, PERF_EVENT_IOC_DISABLE, 0);
    } else if (s->kind == TIMER_POSIX) {
        timer_delete(s->timer);
    }
}

static void release(struct slot *s)
{
    if (!s->tid)
        return;
    __atomic_store_n(&s->tid, 0, __ATOMIC_RELEASE);
    if (s->kind == TIMER_PERF && s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->kind = TIMER_NONE;
}

static void wait_handlers(void)
{
    for (int spins = 0; spins < 100000 && __atomic_load_n(&active_handlers, __ATOMIC_SEQ_CST); spins++)
        sched_yield();
}

/* Stop sampling thread `tid` (it ended, or is no longer selected). */
CTPROF_API int ctprof_self_remove_thread(int tid)
{
    for (int i = 0; i < MAX_SLOTS; i++) {
        if (slots[i].tid == tid) {
            disarm(&slots[i]);
            wait_handlers();
            release(&slots[i]);
            return 0;
        }
    }
    return -ESRCH;
}

/* End the session: disarm every timer, wait for handlers in flight, unmap
 * the ring (the Python side keeps its own mapping of the file).  Returns
 * the number of samples written. */
CTPROF_API long ctprof_self_stop(void)
{
    if (!ring.hdr)
        return -EINVAL;
    __atomic_store_n(&running, 0, __ATOMIC_SEQ_CST);
    for (int i = 0; i < MAX_SLOTS; i++)
        disarm(&slots[i]);
    wait_handlers();
    for (int i = 0; i < MAX_SLOTS; i++)
        release(&slots[i]);
    wait_handlers();
    long samples = (long)ring.hdr->samples;
    ring.hdr->end_ns = now_ns();
    unmap_ring();
    ring.data = NULL;
    return samples;
}
