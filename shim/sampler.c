/* CPU sampling: one CPU-time timer per thread, a signal handler that unwinds
 * the interrupted stack into the shared ring.
 *
 * Timer choice (best first, DESIGN.md): a per-thread perf_event software
 * task-clock (exact rates up to 10 kHz), then timer_create on the thread's
 * CPU clock, then ITIMER_PROF (both tick-driven, ~250 Hz at most here). */
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
#include <sys/syscall.h>
#include <sys/time.h>
#include "ctprof.h"

#define TIMER_MAGIC 0x43545046 /* sival_int of our posix timers */
#define MAX_PERF_FDS 4096

struct thread_state {
    int armed;
    int kind;
    int perf_fd;
    timer_t timer;
    uint64_t *scratch;            /* mmap'ed: the handler never mallocs */
    size_t scratch_bytes;
    struct stack_bounds bounds;
    int in_handler;
    unsigned samples;
};

static __thread struct thread_state ts CTPROF_TLS;

static struct ring *volatile cur_ring;
static struct sampler_config cfg;
static int process_kind;              /* timer kind chosen for this process */
static int installed;
static int perf_fds[MAX_PERF_FDS];    /* every live perf fd, for fork children */

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
int sampler_active(void) { return installed && cur_ring != NULL; }

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

static void take_sample(void *uc)
{
    struct ring *r = cur_ring;
    if (!r || ts.in_handler)
        return;
    ts.in_handler = 1;
    uint64_t t0 = now_ns();
    size_t need = ((size_t)cfg.max_depth + 1) * sizeof(uint64_t);
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
        uint32_t size = (uint32_t)(sizeof(struct rec_sample) + (size_t)n * 8);
        struct rec_sample *rec = ring_reserve(r, size);
        if (rec) {
            rec->h.type = REC_SAMPLE;
            rec->h.flags = truncated ? SAMPLE_TRUNCATED : 0;
            rec->tid = (uint32_t)ctprof_gettid();
            rec->nips = (uint32_t)n;
            rec->gen = __atomic_load_n(&r->hdr->maps_gen, __ATOMIC_ACQUIRE);
            rec->time_ns = t0;
            /* The thread's CPU clock is a real syscall (~0.5 us here): read
             * it every 8th sample; the exit record carries the final value. */
            rec->cpu_ns = (ts.samples++ & 7) == 0 ? thread_cpu_ns() : 0;
            memcpy(rec + 1, ts.scratch, (size_t)n * 8);
            ring_commit(rec, size);  /* the controller counts the records it reads */
        }
    }
    __atomic_fetch_add(&r->hdr->handler_ns, now_ns() - t0, __ATOMIC_RELAXED);
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

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    int saved_errno = errno;
    if (sampler_owns(sig, si)) {
        take_sample(uc);
        /* Re-arm for one more overflow only now: a handler slower than the
         * period can never pile up queued signals (an overflowing real-time
         * queue would make the kernel send SIGIO, which kills by default). */
        if (ts.kind == TIMER_PERF)
            ioctl(ts.perf_fd, PERF_EVENT_IOC_REFRESH, 1);
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

/* ---- timers -------------------------------------------------------------- */

static void remember_fd(int fd, int add)
{
    for (int i = 0; i < MAX_PERF_FDS; i++) {
        int expect = add ? 0 : fd + 1;
        if (__atomic_compare_exchange_n(&perf_fds[i], &expect, add ? fd + 1 : 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            return;
    }
}

static uint64_t period_ns(void) { return 1000000000ull / (cfg.hz ? cfg.hz : 99); }

static int open_task_clock(int exclude_kernel)
{
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_TASK_CLOCK;
    a.sample_period = period_ns();
    a.disabled = 1;
    a.wakeup_events = 1;
    a.exclude_kernel = exclude_kernel;
    a.exclude_hv = 1;
    return (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

static int arm_perf(void)
{
    /* Counting kernel time too charges syscalls to their caller, as
     * ITIMER_PROF would; unprivileged users may only count user time. */
    int fd = open_task_clock(0);
    if (fd < 0 && (errno == EACCES || errno == EPERM))
        fd = open_task_clock(1);
    if (fd < 0)
        return -1;
    struct f_owner_ex owner = {F_OWNER_TID, ctprof_gettid()};
    if (fcntl(fd, F_SETFL, O_ASYNC | O_NONBLOCK) != 0 || fcntl(fd, F_SETSIG, cfg.signo) != 0 ||
        fcntl(fd, F_SETOWN_EX, &owner) != 0) {
        close(fd);
        return -1;
    }
    ts.perf_fd = fd;
    ts.kind = TIMER_PERF;
    remember_fd(fd, 1);
    if (ioctl(fd, PERF_EVENT_IOC_REFRESH, 1) != 0) {
        remember_fd(fd, 0);
        close(fd);
        ts.kind = TIMER_NONE;
        return -1;
    }
    return 0;
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
    uint64_t p = period_ns();
    struct itimerspec its = {{(time_t)(p / 1000000000u), (long)(p % 1000000000u)},
                             {(time_t)(p / 1000000000u), (long)(p % 1000000000u)}};
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
    stack_bounds_of_self(&ts.bounds);
    sampler_thread_record(THREAD_START);
    switch (process_kind) {
    case TIMER_PERF:
        if (arm_perf() == 0)
            return;
        /* this thread could not get a perf event: try a posix timer */
        __attribute__((fallthrough));
    case TIMER_POSIX:
        if (arm_posix() == 0)
            return;
        note(NOTE_TIMER_FAILED);
        return;
    default:
        ts.kind = TIMER_ITIMER; /* process-wide timer, armed once */
        return;
    }
}

void sampler_thread_stop(void)
{
    if (!ts.armed)
        return;
    if (ts.kind == TIMER_PERF) {
        remember_fd(ts.perf_fd, 0);
        close(ts.perf_fd);
    } else if (ts.kind == TIMER_POSIX) {
        timer_delete(ts.timer);
    }
    ts.kind = TIMER_NONE;
    ts.armed = 0;
    sampler_thread_record(THREAD_EXIT);
}

int sampler_install(struct ring *r, const struct sampler_config *c)
{
    cfg = *c;
    if (cfg.max_depth < 1)
        cfg.max_depth = 128;
    cur_ring = r;
    unwind_init();

    /* Pick the process's timer kind by trying it on this thread. */
    int want = cfg.forced_timer;
    process_kind = TIMER_NONE;
    if (want == 0 || want == TIMER_PERF) {
        int fd = open_task_clock(0);
        if (fd < 0)
            fd = open_task_clock(1);
        if (fd >= 0) {
            close(fd);
            process_kind = TIMER_PERF;
        } else {
            note(NOTE_PERF_FAILED);
        }
    }
    if (process_kind == TIMER_NONE && want != TIMER_ITIMER) {
        timer_t t;
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_NONE;
        if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &t) == 0) {
            timer_delete(t);
            process_kind = TIMER_POSIX;
        }
    }
    if (process_kind == TIMER_NONE)
        process_kind = TIMER_ITIMER;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
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
    if (process_kind == TIMER_ITIMER && arm_itimer() != 0)
        note(NOTE_TIMER_FAILED);
    return 0;
}

void sampler_after_fork(struct ring *r)
{
    /* The child has one thread.  The perf events it inherited count the
     * parent's threads: close them all; timers are not inherited. */
    for (int i = 0; i < MAX_PERF_FDS; i++) {
        int v = perf_fds[i];
        if (v) {
            close(v - 1);
            perf_fds[i] = 0;
        }
    }
    ts.armed = 0;
    ts.kind = TIMER_NONE;
    ts.in_handler = 0;
    cur_ring = r;
    r->hdr->timer_kind = (uint32_t)process_kind;
    r->hdr->signo = (uint32_t)sampler_signal();
    if (process_kind == TIMER_ITIMER)
        arm_itimer();
}
