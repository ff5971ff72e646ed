/* CPU sampling inside the program (`ctprof run --sampler signal`): one
 * CPU-time timer per thread, a signal handler that unwinds the interrupted
 * stack into the shared ring.
 *
 * What keeps it invisible to the program (issue 13):
 *  - The timer is a per-thread perf_event task-clock with exclude_kernel=1:
 *    an expiry while the thread is in the kernel produces no overflow, so
 *    the signal only ever interrupts user code, never a system call (no
 *    EINTR, no short write).  timer_create / ITIMER_PROF count kernel time
 *    and would interrupt system calls: they are used only when forced
 *    (CTPROF_TIMER), never as a silent fallback.
 *  - Before an exec the thread's timer is stopped and a pending signal of
 *    ours discarded (sampler_exec_prepare), restored if the exec fails.
 *  - The handler blocks every other signal while it runs (so no handler of
 *    the program can run inside it and longjmp out), calls nothing lazily
 *    bound (the shim is linked -z now) and no libgcc (unwind.c).
 *  - Our descriptors live above the program's soft RLIMIT_NOFILE where the
 *    hard limit allows, and are closed only while they are still ours.
 *  - preload.c keeps our signal out of the program's blocked sets and out
 *    of the sets it waits on (sigwait*, signalfd).
 * With CTPROF_HZ=0 no timer and no handler exist at all (the controller
 * samples from outside); thread records and stack bounds remain. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include "ctprof.h"

#define TIMER_MAGIC 0x43545046 /* sival_int of our posix timers */
#define MAX_PERF_FDS 4096

struct thread_state {
    int armed;
    int kind;
    int perf_fd;
    uint64_t perf_id;             /* PERF_EVENT_IOC_ID: is perf_fd still ours? */
    int owner_tid;                /* the thread these fields belong to (vfork children share them) */
    timer_t timer;
    uint64_t *scratch;            /* mmap'ed: the handler never mallocs */
    size_t scratch_bytes;
    struct stack_bounds bounds;
    int in_handler;
    int first_period;             /* the random first period is running */
    int exec_pending;             /* an exec is under way: take nothing, re-arm nothing */
    unsigned samples;
    uint64_t last_handler_ns;     /* CPU time of the last timed handler run */
};

static __thread struct thread_state ts CTPROF_TLS;

static struct ring *volatile cur_ring;
static struct sampler_config cfg;
static int process_kind;              /* timer kind chosen for this process */
static int installed;
static struct { int fd; uint64_t id; } perf_fds[MAX_PERF_FDS]; /* live perf fds (fd+1), for fork children */
static int sampling;                  /* a timer and our handler exist (CTPROF_HZ > 0) */

static struct sigaction chained;      /* the target's action for our signal */
static volatile int chained_set;

static int (*libc_sigaction)(int, const struct sigaction *, struct sigaction *);

int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    if (!libc_sigaction)
        libc_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    return libc_sigaction(sig, act, old);
}

const struct stack_bounds *sampler_bounds(void) { return &ts.bounds; }

int sampler_signal(void) { return process_kind == TIMER_ITIMER ? SIGPROF : cfg.signo; }
int sampler_active(void) { return installed && sampling && cur_ring != NULL; }

static void note(uint32_t bits)
{
    struct ring *r = cur_ring;
    if (r)
        __atomic_fetch_or(&r->hdr->notes, bits, __ATOMIC_RELAXED);
}

/* ---- the handler ----------------------------------------------------------- */

int sampler_owns(int sig, const siginfo_t *si)
{
    switch (ts.kind) {
    case TIMER_PERF:
        return sig == cfg.signo && si->si_fd == ts.perf_fd && si->si_code > 0 && si->si_code <= POLL_HUP;
    case TIMER_POSIX:
        return sig == cfg.signo && si->si_code == SI_TIMER && si->si_value.sival_int == TIMER_MAGIC;
    default:
        return sig == SIGPROF && process_kind == TIMER_ITIMER && si->si_code == SI_KERNEL;
    }
}

/* Bytes of the per-thread scratch area: the frames, then room for a maps
 * snapshot's path and copy buffer (maps.c), so nothing big lands on the
 * interrupted thread's stack, which may be 16 KiB in all. */
static size_t frame_words(void) { return (size_t)cfg.max_depth + 1 + PYFRAMES_WORDS; }
static size_t scratch_need(void) { return frame_words() * sizeof(uint64_t) + MAPS_BUF_BYTES; }

static void take_sample(void *uc)
{
    struct ring *r = cur_ring;
    if (!r || ts.in_handler)
        return;
    ts.in_handler = 1;
    uint64_t t0 = now_ns();
    /* The handler's cost is measured in the thread's CPU time (a
     * preempted handler must not count the time it waited), every 8th
     * sample: the clock is a real syscall (~0.5 us).  The others are
     * charged the thread's last measurement. */
    int timed = (ts.samples++ & 7) == 0;
    uint64_t cpu0 = timed ? thread_cpu_ns() : 0;
    size_t need = scratch_need();
    if (!ts.scratch) {
        /* mmap is a plain syscall: safe here, unlike malloc. */
        void *p = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            ts.scratch = p;
            ts.scratch_bytes = need;
        }
    }
    if (ts.scratch) {
        int truncated = 0;
        int n = unwind_stack(cfg.unwind, uc, &ts.bounds, ts.scratch, cfg.max_depth, &truncated);
        n += pylocal_append(ts.scratch + n, (int)(frame_words() - (size_t)n), 1);
        uint32_t gen = __atomic_load_n(&r->hdr->maps_gen, __ATOMIC_ACQUIRE);
        /* The first sample under a new memory map writes its snapshot
         * (dlopen/dlclose only bump the generation: maps.c). */
        maps_ensure(r, cfg.dir, gen, (char *)(ts.scratch + frame_words()), MAPS_BUF_BYTES);
        uint32_t size = (uint32_t)(sizeof(struct rec_sample) + (size_t)n * 8);
        struct rec_sample *rec = ring_reserve(r, size);
        if (rec) {
            rec->h.type = REC_SAMPLE;
            rec->h.flags = truncated ? SAMPLE_TRUNCATED : 0;
            rec->tid = (uint32_t)ctprof_gettid();
            rec->nips = (uint32_t)n;
            rec->gen = gen;
            rec->time_ns = t0;
            rec->cpu_ns = cpu0;   /* 0: not read this time; the exit record has the final value */
            memcpy(rec + 1, ts.scratch, (size_t)n * 8);
            ring_commit(rec, size);  /* the controller counts the records it reads */
        }
    }
    if (timed)
        ts.last_handler_ns = thread_cpu_ns() - cpu0;
    __atomic_fetch_add(&r->hdr->handler_ns, ts.last_handler_ns, __ATOMIC_RELAXED);
    ts.in_handler = 0;
}

static void call_chained(int sig, siginfo_t *si, void *uc)
{
    if (!chained_set)
        return;
    if (chained.sa_flags & SA_SIGINFO) {
        if (chained.sa_sigaction)
            chained.sa_sigaction(sig, si, uc);
    } else if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN) {
        chained.sa_handler(sig);
    }
}

static uint64_t period_ns(void) { return 1000000000ull / (cfg.hz ? cfg.hz : 99); }

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    int saved_errno = errno;
    if (sampler_owns(sig, si)) {
        if (!ts.exec_pending) {
            take_sample(uc);
            if (ts.first_period) {
                /* The random first period has passed: the regular one from
                 * now on (the ioctl also clears the timer's remainder). */
                uint64_t p = period_ns();
                ioctl(ts.perf_fd, PERF_EVENT_IOC_PERIOD, &p);
                ts.first_period = 0;
            }
            /* Re-arm for one more overflow only now: a handler slower than
             * the period can never pile up queued signals (an overflowing
             * real-time queue would make the kernel send SIGIO, which kills
             * by default). */
            if (ts.kind == TIMER_PERF)
                ioctl(ts.perf_fd, PERF_EVENT_IOC_REFRESH, 1);
        }
        /* With ITIMER_PROF the target's own profiling timer is the same
         * timer: keep its handler fed if it armed one. */
        if (process_kind == TIMER_ITIMER && cur_ring &&
            (__atomic_load_n(&cur_ring->hdr->notes, __ATOMIC_RELAXED) & NOTE_TARGET_ITIMER))
            call_chained(sig, si, uc);
    } else {
        call_chained(sig, si, uc);
    }
    errno = saved_errno;
}

void sampler_chain(const struct sigaction *act, struct sigaction *old)
{
    if (old) {
        if (chained_set) {
            *old = chained;
        } else {
            memset(old, 0, sizeof *old);
            old->sa_handler = SIG_DFL;
        }
    }
    if (act) {
        chained = *act;
        chained_set = 1;
        note(cfg.signo == SIGPROF || process_kind == TIMER_ITIMER ? NOTE_TARGET_SIGPROF : NOTE_TARGET_OUR_SIGNAL);
    }
}

/* ---- descriptors ------------------------------------------------------------ */

static void remember_fd(int fd, uint64_t id, int add)
{
    for (int i = 0; i < MAX_PERF_FDS; i++) {
        int expect = add ? 0 : fd + 1;
        if (__atomic_compare_exchange_n(&perf_fds[i].fd, &expect, add ? fd + 1 : 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            if (add)
                perf_fds[i].id = id;
            return;
        }
    }
}

int sampler_fds_in(unsigned first, unsigned last, int *out, int cap)
{
    int n = 0;
    for (int i = 0; i < MAX_PERF_FDS; i++) {
        int v = __atomic_load_n(&perf_fds[i].fd, __ATOMIC_ACQUIRE);
        if (!v || (unsigned)(v - 1) < first || (unsigned)(v - 1) > last)
            continue;
        if (n == cap)
            return -1;
        int j = n++;                      /* insertion sort: a handful of fds */
        while (j > 0 && out[j - 1] > v - 1) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = v - 1;
    }
    return n;
}

static uint64_t event_id(int fd)
{
    uint64_t id = 0;
    if (ioctl(fd, PERF_EVENT_IOC_ID, &id) != 0)
        return 0;
    return id;
}

/* Close `fd` only if it is still our perf event: the program may have
 * closed it (a "close every descriptor" loop) and got the number back
 * for a file of its own, which we must not close under it. */
static void close_if_ours(int fd, uint64_t id)
{
    if (fd >= 0 && id && event_id(fd) == id)
        close(fd);
}

/* Held (by its owner's tid) while the soft limit is raised; fork waits for
 * it (sampler_fork_prepare): the kernel copies the limits and the memory
 * of a forking process at different moments, so a child could otherwise
 * get the raised limit with no trace of it in memory. */
static int fd_lock;
static int fork_took_fd_lock;

/* Move a new descriptor of ours out of the program's way.  Measured need:
 * one perf descriptor per thread took the lowest free numbers, so a
 * program that closes 3..1023 and opens its output got our old number
 * (and lost its output when we closed ours), and with 100 threads a
 * program limited to 1024 could open 938 files instead of 1021
 * (tests/test_signal_sampler.py; 1021 with this).  fcntl(F_DUPFD) can only
 * place a descriptor below the soft limit, but a descriptor above it
 * stays valid when the limit is lowered back: so where the hard limit
 * leaves room, the soft limit is raised for the one dup and restored
 * (under a lock among our own threads: two overlapping raises would
 * leave the raised value).  Otherwise the descriptor goes as high below
 * the soft limit as is free.  An mmap'ed event without a descriptor was
 * the other option, but re-arming one overflow at a time (see on_signal)
 * needs the descriptor for its ioctl. */
static void fd_lock_take(int tid)
{
    int expect = 0;
    while (!__atomic_compare_exchange_n(&fd_lock, &expect, tid, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        expect = 0;
        sched_yield();
    }
}

void sampler_fork_prepare(void)
{
    int tid = (int)syscall(SYS_gettid);
    fork_took_fd_lock = 0;
    if (__atomic_load_n(&fd_lock, __ATOMIC_ACQUIRE) == tid)
        return;   /* a handler of the program forking inside our own move */
    fd_lock_take(tid);
    fork_took_fd_lock = 1;
}

void sampler_fork_child(void)
{
    /* The forking thread took the lock: the child's one thread owns it. */
    __atomic_store_n(&fd_lock, 0, __ATOMIC_RELEASE);
}

void sampler_fork_parent(void)
{
    if (fork_took_fd_lock)
        __atomic_store_n(&fd_lock, 0, __ATOMIC_RELEASE);
}

static int move_fd_high(int fd)
{
    fd_lock_take((int)syscall(SYS_gettid));
    struct rlimit rl;
    int moved = -1;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur > 64) {
        rlim_t soft = rl.rlim_cur;
        if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > soft) {
            rlim_t room = rl.rlim_max == RLIM_INFINITY ? 65536 : rl.rlim_max - soft;
            rl.rlim_cur = soft + (room < 65536 ? room : 65536);
            if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
                moved = fcntl(fd, F_DUPFD_CLOEXEC, (int)soft);
                rl.rlim_cur = soft;
                setrlimit(RLIMIT_NOFILE, &rl);
            }
        }
        if (moved < 0)
            moved = fcntl(fd, F_DUPFD_CLOEXEC, (int)(soft > 512 ? soft - 256 : soft / 2));
    }
    __atomic_store_n(&fd_lock, 0, __ATOMIC_RELEASE);
    if (moved < 0)
        return fd;
    close(fd);
    return moved;
}

/* ---- timers -------------------------------------------------------------- */

static int open_task_clock(uint64_t period)
{
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_TASK_CLOCK;
    a.sample_period = period;
    a.disabled = 1;
    a.wakeup_events = 1;
    /* User mode only: an expiry while the thread runs in the kernel makes
     * no overflow, so our signal can never interrupt a system call (which
     * would then fail with EINTR or return short).  Time in system calls
     * is therefore not sampled in this mode. */
    a.exclude_kernel = 1;
    a.exclude_hv = 1;
    return (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

/* A uniform draw in [1, n]; a per-thread xorshift seeded from the clock
 * and the tid (no libc state, no locks). */
static uint64_t random_upto(uint64_t n)
{
    uint64_t x = now_ns() ^ ((uint64_t)ctprof_gettid() << 32) ^ (uint64_t)(uintptr_t)&x;
    for (int i = 0; i < 4; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return 1 + x % n;
}

static int arm_perf(void)
{
    /* A thread's first sample comes after a random part of the period
     * (uniform), so a thread that runs less than one period is still
     * sampled with the right probability; the handler then sets the
     * regular period. */
    int fd = open_task_clock(random_upto(period_ns()));
    if (fd < 0)
        return -1;
    /* Move first: the signal's si_fd is the number O_ASYNC was set on. */
    fd = move_fd_high(fd);
    struct f_owner_ex owner = {F_OWNER_TID, ctprof_gettid()};
    uint64_t id = event_id(fd);
    if (!id || fcntl(fd, F_SETFL, O_ASYNC | O_NONBLOCK) != 0 || fcntl(fd, F_SETSIG, cfg.signo) != 0 ||
        fcntl(fd, F_SETOWN_EX, &owner) != 0) {
        close(fd);
        return -1;
    }
    ts.perf_fd = fd;
    ts.perf_id = id;
    ts.first_period = 1;
    ts.kind = TIMER_PERF;
    remember_fd(fd, id, 1);
    if (ioctl(fd, PERF_EVENT_IOC_REFRESH, 1) != 0) {
        remember_fd(fd, id, 0);
        close(fd);
        ts.kind = TIMER_NONE;
        return -1;
    }
    return 0;
}

static void posix_period(struct itimerspec *its, uint64_t first)
{
    uint64_t p = period_ns();
    its->it_interval.tv_sec = (time_t)(p / 1000000000u);
    its->it_interval.tv_nsec = (long)(p % 1000000000u);
    its->it_value.tv_sec = (time_t)(first / 1000000000u);
    its->it_value.tv_nsec = (long)(first % 1000000000u);
}

static int arm_posix(void)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = cfg.signo;
    sev.sigev_value.sival_int = TIMER_MAGIC;
    sev._sigev_un._tid = ctprof_gettid();
    if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &ts.timer) != 0)
        return -1;
    ts.kind = TIMER_POSIX;
    struct itimerspec its;
    posix_period(&its, random_upto(period_ns()));
    if (timer_settime(ts.timer, 0, &its, NULL) != 0) {
        timer_delete(ts.timer);
        ts.kind = TIMER_NONE;
        return -1;
    }
    return 0;
}

static int arm_itimer(void)
{
    uint64_t p = period_ns() / 1000;
    struct itimerval it = {{(time_t)(p / 1000000), (suseconds_t)(p % 1000000)},
                           {(time_t)(p / 1000000), (suseconds_t)(p % 1000000)}};
    return (int)syscall(SYS_setitimer, ITIMER_PROF, &it, NULL);
}

static void stack_bounds_of_self(struct stack_bounds *b)
{
    pthread_attr_t attr;
    void *addr;
    size_t size;
    b->lo = b->hi = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
            b->lo = (uintptr_t)addr;
            b->hi = (uintptr_t)addr + size;
        }
        pthread_attr_destroy(&attr);
    }
}

void sampler_thread_record(int what)
{
    struct ring *r = cur_ring;
    if (!r)
        return;
    struct rec_thread *rec = ring_reserve(r, sizeof *rec);
    if (!rec)
        return;
    rec->h.type = REC_THREAD;
    rec->h.flags = (uint16_t)what;
    rec->tid = (uint32_t)ctprof_gettid();
    rec->cpu_ns = thread_cpu_ns();
    memset(rec->name, 0, sizeof rec->name);
    prctl(PR_GET_NAME, rec->name, 0, 0, 0);
    ring_commit(rec, sizeof *rec);
}

void sampler_thread_start(void)
{
    if (!installed || ts.armed)
        return;
    ts.armed = 1;
    ts.owner_tid = ctprof_gettid();
    stack_bounds_of_self(&ts.bounds);
    sampler_thread_record(THREAD_START);
    if (!sampling)
        return;
    switch (process_kind) {
    case TIMER_PERF:
        if (arm_perf() == 0)
            return;
        note(NOTE_TIMER_FAILED);
        return;
    case TIMER_POSIX:
        if (arm_posix() == 0)
            return;
        note(NOTE_TIMER_FAILED);
        return;
    case TIMER_ITIMER:
        ts.kind = TIMER_ITIMER; /* process-wide timer, armed once */
        return;
    default:
        return;
    }
}

void sampler_thread_stop(void)
{
    if (!ts.armed)
        return;
    int kind = ts.kind;
    ts.kind = TIMER_NONE;     /* from here a late signal is not taken as ours */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (kind == TIMER_PERF) {
        remember_fd(ts.perf_fd, 0, 0);
        close_if_ours(ts.perf_fd, ts.perf_id);
    } else if (kind == TIMER_POSIX) {
        timer_delete(ts.timer);
    }
    ts.armed = 0;
    sampler_thread_record(THREAD_EXIT);
    if (ts.scratch) {
        uint64_t *p = ts.scratch;
        ts.scratch = NULL;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        munmap(p, ts.scratch_bytes);
    }
    cfi_thread_exit();
}

/* ---- exec ------------------------------------------------------------------- */

/* The signal mask through the kernel directly: preload.c wraps the
 * library's sigprocmask. */
static void raw_mask(int how, const sigset_t *set, sigset_t *old)
{
    syscall(SYS_rt_sigprocmask, how, set, old, _NSIG / 8);
}

int sampler_exec_prepare(struct exec_guard *g)
{
    memset(g, 0, sizeof *g);
    /* A vfork child runs on its parent's thread-local data: the timer is
     * the parent's, leave it alone. */
    if (!installed || !sampling || !ts.armed || (int)syscall(SYS_gettid) != ts.owner_tid)
        return 0;
    g->active = 1;
    ts.exec_pending = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (ts.kind == TIMER_PERF) {
        ioctl(ts.perf_fd, PERF_EVENT_IOC_DISABLE, 0);
    } else if (ts.kind == TIMER_POSIX) {
        struct itimerspec zero;
        memset(&zero, 0, sizeof zero);
        timer_settime(ts.timer, 0, &zero, &g->posix_old);
    }
    if (process_kind == TIMER_ITIMER && cur_ring &&
        !(__atomic_load_n(&cur_ring->hdr->notes, __ATOMIC_RELAXED) & NOTE_TARGET_ITIMER)) {
        /* ITIMER_PROF survives exec; ours must not. */
        struct itimerval zero;
        memset(&zero, 0, sizeof zero);
        syscall(SYS_setitimer, ITIMER_PROF, &zero, &g->itimer_old);
        g->itimer_stopped = 1;
    }
    /* A signal of ours already queued (our signal blocked at this moment,
     * e.g. an exec from inside a handler) would survive into the new
     * image, where nothing handles it: take it out now.  With the timer
     * stopped no new one can come. */
    sigset_t ours, old;
    sigemptyset(&ours);
    sigaddset(&ours, sampler_signal());
    raw_mask(SIG_BLOCK, &ours, &old);
    struct timespec zero_wait = {0, 0};
    for (int i = 0; i < 64; i++)
        if (syscall(SYS_rt_sigtimedwait, &ours, NULL, &zero_wait, _NSIG / 8) < 0)
            break;
    raw_mask(SIG_SETMASK, &old, NULL);
    return 1;
}

void sampler_exec_failed(struct exec_guard *g)
{
    if (!g->active)
        return;
    if (g->itimer_stopped)
        syscall(SYS_setitimer, ITIMER_PROF, &g->itimer_old, NULL);
    if (ts.kind == TIMER_POSIX)
        timer_settime(ts.timer, 0, &g->posix_old, NULL);
    ts.exec_pending = 0;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (ts.kind == TIMER_PERF)
        ioctl(ts.perf_fd, PERF_EVENT_IOC_REFRESH, 1);
}

/* ---- start, fork ------------------------------------------------------------- */

int sampler_install(struct ring *r, const struct sampler_config *c)
{
    cfg = *c;
    if (cfg.max_depth < 1)
        cfg.max_depth = 128;
    cur_ring = r;
    unwind_init();
    process_kind = TIMER_NONE;
    r->hdr->timer_kind = TIMER_NONE;
    if (cfg.hz == 0) {
        /* CPU samples come from outside (the controller's perf events):
         * no timer, no handler, nothing of ours in the program's signals. */
        installed = 1;
        return 0;
    }

    /* perf_event only, unless a tick-driven timer is forced: they count
     * kernel time and so interrupt system calls (EINTR, short writes). */
    int want = cfg.forced_timer;
    if (want == 0 || want == TIMER_PERF) {
        int fd = open_task_clock(period_ns());
        if (fd >= 0) {
            close(fd);
            process_kind = TIMER_PERF;
        } else {
            note(NOTE_PERF_FAILED);
        }
    } else if (want == TIMER_POSIX) {
        timer_t t;
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_NONE;
        if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &t) == 0) {
            timer_delete(t);
            process_kind = TIMER_POSIX;
        }
    } else if (want == TIMER_ITIMER) {
        process_kind = TIMER_ITIMER;
    }
    if (process_kind == TIMER_NONE) {
        note(NOTE_TIMER_FAILED);
        installed = 1;
        return 0;
    }
    if (process_kind != TIMER_PERF)
        note(NOTE_TICK_TIMER);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    /* Every other signal waits while the handler runs (~2 us): a handler
     * of the program that ran inside ours and siglongjmp'ed out would leave
     * ours half done (in_handler set for ever: no more samples). */
    sigfillset(&sa.sa_mask);
    int sig = sampler_signal();
    struct sigaction prev;
    if (real_sigaction(sig, &sa, &prev) != 0)
        return -1;
    if ((prev.sa_flags & SA_SIGINFO) || (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN)) {
        /* Someone (an earlier image? another preload?) owns it: chain. */
        chained = prev;
        chained_set = 1;
        note(NOTE_TARGET_OUR_SIGNAL);
    }
    r->hdr->timer_kind = (uint32_t)process_kind;
    r->hdr->signo = (uint32_t)sig;
    installed = 1;
    sampling = 1;
    if (process_kind == TIMER_ITIMER && arm_itimer() != 0)
        note(NOTE_TIMER_FAILED);
    return 0;
}

void sampler_after_fork(struct ring *r)
{

    /* The child has one thread.  The perf events it inherited count the
     * parent's threads: close them all (those still ours); timers are not
     * inherited. */
    for (int i = 0; i < MAX_PERF_FDS; i++) {
        int v = perf_fds[i].fd;
        if (v) {
            close_if_ours(v - 1, perf_fds[i].id);
            perf_fds[i].fd = 0;
        }
    }
    ts.armed = 0;
    ts.kind = TIMER_NONE;
    ts.in_handler = 0;
    ts.exec_pending = 0;
    cur_ring = r;
    r->hdr->timer_kind = (uint32_t)process_kind;
    r->hdr->signo = (uint32_t)sampler_signal();
    if (process_kind == TIMER_ITIMER && sampling)
        arm_itimer();
}
