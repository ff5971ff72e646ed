/* Process plumbing for the preloaded shim.  Reads the configuration from the
 * environment the controller set, opens the ring, snapshots the memory map,
 * starts sampling, and interposes the few libc functions whose effects the
 * profiler must see: thread creation, fork, dlopen/dlclose, and the target's
 * own use of our signal or of SIGPROF.  Everything else is forwarded. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/time.h>
#include "ctprof.h"

static char session_dir[2048];
static uint64_t ring_bytes = 16u << 20;
static struct ring main_ring, fork_ring;
static int active;
static pthread_key_t thread_key;

static int (*real_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static void *(*real_dlopen)(const char *, int);
static int (*real_dlclose)(void *);
static int (*real_setitimer)(__itimer_which_t, const struct itimerval *, struct itimerval *);

static struct ring *ring_now(void) { return fork_ring.hdr ? &fork_ring : &main_ring; }

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    return *end ? dflt : x;
}

static void fill_header(struct ring *r)
{
    struct ring_header *h = r->hdr;
    h->hz = (uint32_t)env_long("CTPROF_HZ", 99);
    h->max_depth = (uint32_t)env_long("CTPROF_MAX_DEPTH", 128);
    h->end_ns = 0;
    ssize_t n = readlink("/proc/self/exe", h->exe, sizeof h->exe - 1);
    h->exe[n > 0 ? n : 0] = 0;
}

/* ---- threads ------------------------------------------------------------- */

static void thread_gone(void *unused)
{
    (void)unused;
    sampler_thread_stop();
}

struct trampoline {
    void *(*fn)(void *);
    void *arg;
};

static void *thread_main(void *p)
{
    struct trampoline t = *(struct trampoline *)p;
    munmap(p, sizeof t);
#ifdef CTPROF_HEAP
    heap_hooks_pause(1); /* the shim's own allocations (pthread_getattr_np) are not the program's */
#endif
    sampler_thread_start();
    pthread_setspecific(thread_key, (void *)1); /* destructor stops the timer */
#ifdef CTPROF_HEAP
    heap_hooks_pause(0);
#endif
    return t.fn(t.arg);
}

CTPROF_API int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    if (!real_pthread_create)
        real_pthread_create = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(RTLD_NEXT, "pthread_create");
    if (!active)
        return real_pthread_create(thread, attr, fn, arg);
    /* mmap, not malloc: the heap hooks and the target's allocator stay out of it. */
    struct trampoline *t = mmap(NULL, sizeof *t, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED)
        return real_pthread_create(thread, attr, fn, arg);
    t->fn = fn;
    t->arg = arg;
    int rc = real_pthread_create(thread, attr, thread_main, t);
    if (rc != 0)
        munmap(t, sizeof *t);
    return rc;
}

/* ---- fork, dlopen ----------------------------------------------------------- */

static void after_fork_child(void)
{
    ctprof_forget_tid();
    if (!active)
        return;
#ifdef CTPROF_HEAP
    heap_after_fork(); /* first: none of the child's events may reach the parent's ring */
#endif
    int reused;
    struct ring r;
    if (ring_open(&r, session_dir, ".ring", ring_bytes, &reused) != 0) {
        active = 0;
        return;
    }
    fork_ring = r;
    fill_header(&fork_ring);
    maps_snapshot(&fork_ring, session_dir);
    sampler_after_fork(&fork_ring);
#ifdef CTPROF_HEAP
    heap_hooks_pause(1); /* the shim's own allocations are not the program's */
#endif
    sampler_thread_start();
    pthread_setspecific(thread_key, (void *)1);
#ifdef CTPROF_HEAP
    heap_hooks_pause(0);
#endif
}

/* glibc searches a bare library name along the RUNPATH of the object that
 * called dlopen.  Through this wrapper the caller would be the shim, so look
 * the name up along the real caller's search path ourselves and hand the
 * full path on; anything not found there goes on as it came. */
static void *dlopen_as(const void *caller, const char *file, int flags)
{
    struct link_map *lm = NULL;
    Dl_info info;
    if (!file || strchr(file, '/') || !dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm)
        return NULL;
    Dl_serinfo size;
    if (dlinfo(lm, RTLD_DI_SERINFOSIZE, &size) != 0 || size.dls_size > 8192)
        return NULL;
    union {
        Dl_serinfo info;
        char bytes[8192];
    } paths;
    paths.info.dls_size = size.dls_size;
    paths.info.dls_cnt = size.dls_cnt;
    if (dlinfo(lm, RTLD_DI_SERINFO, &paths.info) != 0)
        return NULL;
    for (unsigned i = 0; i < paths.info.dls_cnt; i++) {
        char path[4096];
        path_join3(path, sizeof path, paths.info.dls_serpath[i].dls_name, "/", file);
        if (access(path, F_OK) == 0)
            return real_dlopen(path, flags);
    }
    return NULL;
}

CTPROF_API void *dlopen(const char *file, int flags)
{
    if (!real_dlopen)
        real_dlopen = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
    void *h = active ? dlopen_as(__builtin_return_address(0), file, flags) : NULL;
    if (!h)
        h = real_dlopen(file, flags);
    if (active && h)
        maps_snapshot(ring_now(), session_dir);
    return h;
}

CTPROF_API int dlclose(void *handle)
{
    if (!real_dlclose)
        real_dlclose = (int (*)(void *))dlsym(RTLD_NEXT, "dlclose");
    int rc = real_dlclose(handle);
    if (active)
        maps_snapshot(ring_now(), session_dir);
    return rc;
}

/* ---- the target's own signals and timers ----------------------------------- */

CTPROF_API int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    if (active && sampler_active() && sig == sampler_signal()) {
        /* Our handler stays; the target's is called for signals that are
         * not our timer's. */
        sampler_chain(act, old);
        return 0;
    }
    if (active && sig == SIGPROF && act && ((act->sa_flags & SA_SIGINFO) || act->sa_handler != SIG_DFL))
        __atomic_fetch_or(&ring_now()->hdr->notes, NOTE_TARGET_SIGPROF, __ATOMIC_RELAXED);
    return real_sigaction(sig, act, old);
}

CTPROF_API sighandler_t signal(int sig, sighandler_t handler)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART; /* glibc's signal() has BSD semantics */
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, sig);
    if (sigaction(sig, &sa, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

CTPROF_API int setitimer(__itimer_which_t which, const struct itimerval *restrict nv, struct itimerval *restrict ov)
{
    if (!real_setitimer)
        real_setitimer = (int (*)(__itimer_which_t, const struct itimerval *, struct itimerval *))dlsym(RTLD_NEXT, "setitimer");
    if (active && which == ITIMER_PROF && nv && (nv->it_value.tv_sec || nv->it_value.tv_usec))
        __atomic_fetch_or(&ring_now()->hdr->notes, NOTE_TARGET_ITIMER, __ATOMIC_RELAXED);
    return real_setitimer(which, nv, ov);
}

/* ---- start and end ------------------------------------------------------------ */

static enum unwind_mode parse_unwind(const char *v)
{
    if (v && !strcmp(v, "fp"))
        return UNWIND_FP;
    if (v && !strcmp(v, "dwarf"))
        return UNWIND_DWARF;
    return UNWIND_AUTO;
}

__attribute__((constructor)) static void ctprof_start(void)
{
    const char *dir = getenv("CTPROF_SESSION");
    if (!dir || !*dir || strlen(dir) >= sizeof session_dir)
        return; /* loaded without a controller (e.g. through ctypes): stay inert */
    strcpy(session_dir, dir);
    long mb = env_long("CTPROF_RING_MB", 16);
    if (mb >= 1 && mb <= 1024 && !(mb & (mb - 1)))
        ring_bytes = (uint64_t)mb << 20;
    int reused;
    if (ring_open(&main_ring, session_dir, ".ring", ring_bytes, &reused) != 0)
        return;
    fill_header(&main_ring);
    maps_snapshot(&main_ring, session_dir);

    struct sampler_config c;
    c.hz = (unsigned)main_ring.hdr->hz;
    c.signo = SIGRTMIN + (int)env_long("CTPROF_SIGNAL_OFFSET", 4);
    const char *timer = getenv("CTPROF_TIMER");
    c.forced_timer = !timer ? 0 : !strcmp(timer, "perf") ? TIMER_PERF : !strcmp(timer, "posix") ? TIMER_POSIX
                                : !strcmp(timer, "itimer") ? TIMER_ITIMER : 0;
    c.unwind = parse_unwind(getenv("CTPROF_UNWIND"));
    c.max_depth = (int)main_ring.hdr->max_depth;

    pthread_key_create(&thread_key, thread_gone);
    pthread_atfork(NULL, NULL, after_fork_child);
    if (sampler_install(&main_ring, &c) != 0)
        return;
    active = 1;
    sampler_thread_start();
#ifdef CTPROF_HEAP
    heap_init(session_dir);
#endif
    pthread_setspecific(thread_key, (void *)1);
}

__attribute__((destructor)) static void ctprof_stop(void)
{
    if (!active)
        return;
#ifdef CTPROF_HEAP
    heap_at_exit();
#endif
    sampler_thread_stop();
    ring_now()->hdr->end_ns = now_ns();
}
