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
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/syscall.h>
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
#ifdef CTPROF_HEAP
    heap_thread_exit();
#endif
}

struct trampoline {
    void *(*fn)(void *);
    void *arg;
    int blocks_ours;          /* the creator's view of the mask, inherited */
};

static __thread int program_blocks_ours CTPROF_TLS;

static void *thread_main(void *p)
{
    struct trampoline t = *(struct trampoline *)p;
    munmap(p, sizeof t);
    program_blocks_ours = t.blocks_ours;
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
    t->blocks_ours = program_blocks_ours;
    int rc = real_pthread_create(thread, attr, thread_main, t);
    if (rc != 0)
        munmap(t, sizeof *t);
    return rc;
}

/* ---- fork, dlopen ----------------------------------------------------------- */

static void after_fork_child(void)
{
    sampler_fork_child();
    ctprof_forget_tid();
    if (!active)
        return;
#ifdef CTPROF_HEAP
    heap_after_fork(); /* first: none of the child's events may reach the parent's ring */
#endif
    int reused;
    struct ring r;
    if (ring_open(&r, session_dir, ".ring", ring_bytes, ring_bytes, &reused) != 0) {
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

/* The memory map changes: a new maps generation, whose snapshot the first
 * sample under it writes (maps.c), so a dlopen/dlclose loop costs no I/O. */
CTPROF_API void *dlopen(const char *file, int flags)
{
    if (!real_dlopen)
        real_dlopen = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
    void *h = active ? dlopen_as(__builtin_return_address(0), file, flags) : NULL;
    if (!h)
        h = real_dlopen(file, flags);
    if (active && h) {
#ifdef CTPROF_HEAP
        /* Allocation stacks are resolved against the snapshots too, and
         * no sample may ever be taken under this map (CTPROF_HZ=0): write
         * it now, as a heap-tracking run always did. */
        maps_snapshot(ring_now(), session_dir);
#else
        maps_changed(ring_now());
#endif
    }
    return h;
}

CTPROF_API int dlclose(void *handle)
{
    if (!real_dlclose)
        real_dlclose = (int (*)(void *))dlsym(RTLD_NEXT, "dlclose");
    if (active)
        maps_settle(ring_now());
    int rc = real_dlclose(handle);
    cfi_code_unmapped();     /* whatever is mapped there next has rules of its own */
    if (active)
        maps_changed(ring_now());
    return rc;
}

/* ---- exec: no signal of ours may reach the new image -------------------------
 * The new image starts with default dispositions, and the default action of
 * our real-time signal terminates: so before every exec the calling
 * thread's timer is stopped and any pending signal of ours discarded, and
 * if the exec fails both are restored (sampler_exec_prepare).  The list
 * variants are wrapped too: glibc's execl* and execvp* reach execve
 * internally, not through an interposable symbol. */

typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);
typedef int (*fexecve_fn)(int, char *const[], char *const[]);

static void *next_symbol(void **cache, const char *name)
{
    void *f = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
    if (!f) {
        f = dlsym(RTLD_NEXT, name);
        __atomic_store_n(cache, f, __ATOMIC_RELEASE);
    }
    return f;
}

#define NEXT(type, name) ((type)next_symbol(&next_##name, #name))
static void *next_execve, *next_execv, *next_execvp, *next_execvpe, *next_fexecve;

static void mask_ours(int how);
static int ours(void);

/* Run one exec call `call` between prepare and, on failure, restore.  The
 * new image inherits the signal mask the program believes it has: our
 * signal blocked if it asked for that (the timer is stopped by then), and
 * the new image's shim unblocks it again (ctprof_start). */
#define GUARDED_EXEC(call)                                   \
    do {                                                     \
        struct exec_guard guard;                             \
        int block_ = 0;                                      \
        if (active && sampler_exec_prepare(&guard) &&        \
            program_blocks_ours && ours()) {                 \
            block_ = 1;                                      \
            mask_ours(SIG_BLOCK);                            \
        }                                                    \
        int rc_ = (call);                                    \
        int errno_ = errno;                                  \
        if (block_)                                          \
            mask_ours(SIG_UNBLOCK);                          \
        if (active)                                          \
            sampler_exec_failed(&guard);                     \
        errno = errno_;                                      \
        return rc_;                                          \
    } while (0)

CTPROF_API int execve(const char *path, char *const argv[], char *const envp[])
{
    GUARDED_EXEC(NEXT(execve_fn, execve)(path, argv, envp));
}

CTPROF_API int execv(const char *path, char *const argv[])
{
    GUARDED_EXEC(NEXT(execv_fn, execv)(path, argv));
}

CTPROF_API int execvp(const char *file, char *const argv[])
{
    GUARDED_EXEC(NEXT(execv_fn, execvp)(file, argv));
}

CTPROF_API int execvpe(const char *file, char *const argv[], char *const envp[])
{
    GUARDED_EXEC(NEXT(execve_fn, execvpe)(file, argv, envp));
}

CTPROF_API int fexecve(int fd, char *const argv[], char *const envp[])
{
    GUARDED_EXEC(NEXT(fexecve_fn, fexecve)(fd, argv, envp));
}

static void *next_execveat;
CTPROF_API int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags)
{
    GUARDED_EXEC(NEXT(int (*)(int, const char *, char *const[], char *const[], int), execveat)(
        dirfd, path, argv, envp, flags));
}

/* execl, execle, execlp: gather the list into an array on the stack (as
 * glibc does) and go through the wrapped vector forms. */
#define ARGV_FROM_LIST(first, ap, argv, extra)                          \
    size_t count_ = 1;                                                  \
    va_list copy_;                                                      \
    va_copy(copy_, ap);                                                 \
    while (va_arg(copy_, char *))                                       \
        count_++;                                                       \
    va_end(copy_);                                                      \
    char **argv = __builtin_alloca((count_ + 1) * sizeof(char *));      \
    argv[0] = (char *)(first);                                          \
    for (size_t i_ = 1; i_ <= count_; i_++)                             \
        argv[i_] = va_arg(ap, char *);                                  \
    extra

CTPROF_API int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    ARGV_FROM_LIST(arg, ap, argv, );
    va_end(ap);
    return execv(path, argv);
}

CTPROF_API int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    ARGV_FROM_LIST(arg, ap, argv, );
    va_end(ap);
    return execvp(file, argv);
}

CTPROF_API int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    ARGV_FROM_LIST(arg, ap, argv, char *const *envp = va_arg(ap, char *const *););
    va_end(ap);
    return execve(path, argv, envp);
}

/* ---- descriptors: "close everything" leaves ours ---------------------------
 * Our perf descriptors sit above the program's soft limit, out of reach of
 * close() loops; close_range and closefrom reach them too, and closing
 * them would silently end the sampling of every thread.  The range is
 * closed around them (the program cannot tell: it never had them). */

static void *next_close_range, *next_closefrom;
typedef int (*close_range_fn)(unsigned, unsigned, int);

/* Close [first, last] except our descriptors; -1 if that cannot be done
 * here (the caller then does the whole range). */
static int close_range_around_ours(unsigned first, unsigned last, int flags)
{
    int keep[256];
    int n = sampler_fds_in(first, last, keep, 256);
    if (n <= 0)
        return -1;
    close_range_fn real = NEXT(close_range_fn, close_range);
    int rc = 0;
    unsigned lo = first;
    for (int i = 0; i < n; i++) {
        if ((unsigned)keep[i] > lo && real(lo, (unsigned)keep[i] - 1, flags) != 0)
            rc = -1;
        lo = (unsigned)keep[i] + 1;
    }
    if (lo != 0 && lo <= last && real(lo, last, flags) != 0)
        rc = -1;
    return rc;
}

CTPROF_API int close_range(unsigned first, unsigned last, int flags)
{
    if (active && !(flags & CLOSE_RANGE_CLOEXEC) && first <= last) {
        int saved = errno;
        if (close_range_around_ours(first, last, flags) == 0) {
            errno = saved;
            return 0;
        }
    }
    return NEXT(close_range_fn, close_range)(first, last, flags);
}

CTPROF_API void closefrom(int lowfd)
{
    if (active && lowfd >= 0 && close_range_around_ours((unsigned)lowfd, ~0u, 0) == 0)
        return;
    NEXT(void (*)(int), closefrom)(lowfd);
}

/* ---- our signal stays deliverable ----------------------------------------------
 * A program that blocks every signal and waits for them with sigwait* or a
 * signalfd would otherwise block our timer signal and then receive it as
 * its own.  Our signal is taken out of every set the program blocks or
 * waits on; the program still sees its own view in the old sets it gets
 * back (sampler-blocked state kept per thread). */


static int ours(void) { return active && sampler_active() ? sampler_signal() : 0; }

/* Block or unblock our signal in this thread, past our own wrappers. */
static void mask_ours(int how)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sampler_signal());
    syscall(SYS_rt_sigprocmask, how, &set, NULL, _NSIG / 8);
}

/* At start: a parent may have handed the program a mask that blocks our
 * signal (an exec from a program that blocked everything).  The program
 * keeps that view; the signal itself is unblocked. */
static void adopt_inherited_mask(void)
{
    sigset_t cur;
    int sig = ours();
    if (!sig || syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &cur, _NSIG / 8) != 0)
        return;
    if (sigismember(&cur, sig) == 1) {
        program_blocks_ours = 1;
        mask_ours(SIG_UNBLOCK);
    }
}

/* *set without our signal, in `copy`; the set itself if ours is not in it. */
static const sigset_t *without_ours(const sigset_t *set, sigset_t *copy)
{
    int sig = ours();
    if (!set || !sig || sigismember(set, sig) != 1)
        return set;
    *copy = *set;
    sigdelset(copy, sig);
    return copy;
}

static void note_mask(int how, const sigset_t *set, sigset_t *old, int was_blocked)
{
    int sig = ours();
    if (!sig)
        return;
    if (old) {
        if (was_blocked)
            sigaddset(old, sig);
        else
            sigdelset(old, sig);
    }
    if (set) {
        int in = sigismember(set, sig) == 1;
        if (how == SIG_SETMASK)
            program_blocks_ours = in;
        else if (how == SIG_BLOCK && in)
            program_blocks_ours = 1;
        else if (how == SIG_UNBLOCK && in)
            program_blocks_ours = 0;
    }
}

static void *next_sigprocmask, *next_pthread_sigmask, *next_sigwait, *next_sigwaitinfo,
    *next_sigtimedwait, *next_signalfd;
typedef int (*mask_fn)(int, const sigset_t *, sigset_t *);

/* sigprocmask and pthread_sigmask alike: our signal never blocked for
 * real, the program's wish for it noted (both return 0 on success). */
static int mask_without_ours(mask_fn real, int how, const sigset_t *set, sigset_t *old)
{
    sigset_t copy;
    int was = program_blocks_ours;
    const sigset_t *use = how == SIG_UNBLOCK ? set : without_ours(set, &copy);
    int rc = real(how, use, old);
    if (rc == 0)
        note_mask(how, set, old, was);
    return rc;
}

CTPROF_API int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    return mask_without_ours(NEXT(mask_fn, sigprocmask), how, set, old);
}

CTPROF_API int pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
{
    return mask_without_ours(NEXT(mask_fn, pthread_sigmask), how, set, old);
}

CTPROF_API int sigwait(const sigset_t *set, int *sig)
{
    sigset_t copy;
    return NEXT(int (*)(const sigset_t *, int *), sigwait)(without_ours(set, &copy), sig);
}

CTPROF_API int sigwaitinfo(const sigset_t *set, siginfo_t *info)
{
    sigset_t copy;
    return NEXT(int (*)(const sigset_t *, siginfo_t *), sigwaitinfo)(without_ours(set, &copy), info);
}

CTPROF_API int sigtimedwait(const sigset_t *set, siginfo_t *info, const struct timespec *timeout)
{
    sigset_t copy;
    return NEXT(int (*)(const sigset_t *, siginfo_t *, const struct timespec *), sigtimedwait)(
        without_ours(set, &copy), info, timeout);
}

CTPROF_API int signalfd(int fd, const sigset_t *mask, int flags)
{
    sigset_t copy;
    return NEXT(int (*)(int, const sigset_t *, int), signalfd)(fd, without_ours(mask, &copy), flags);
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
    if (ring_open(&main_ring, session_dir, ".ring", ring_bytes, ring_bytes, &reused) != 0)
        return;
    fill_header(&main_ring);
    maps_snapshot(&main_ring, session_dir);
    pylocal_init_from_env();   /* a CPython program: its Python frames go with each event */

    struct sampler_config c;
    c.hz = (unsigned)main_ring.hdr->hz;   /* 0: sampled from outside, no timer here */
    c.dir = session_dir;
    c.signo = SIGRTMIN + (int)env_long("CTPROF_SIGNAL_OFFSET", 4);
    const char *timer = getenv("CTPROF_TIMER");
    c.forced_timer = !timer ? 0 : !strcmp(timer, "perf") ? TIMER_PERF : !strcmp(timer, "posix") ? TIMER_POSIX
                                : !strcmp(timer, "itimer") ? TIMER_ITIMER : 0;
    c.unwind = parse_unwind(getenv("CTPROF_UNWIND"));
    c.max_depth = (int)main_ring.hdr->max_depth;

    pthread_key_create(&thread_key, thread_gone);
    pthread_atfork(sampler_fork_prepare, sampler_fork_parent, after_fork_child);
    if (sampler_install(&main_ring, &c) != 0)
        return;
    active = 1;
    adopt_inherited_mask();
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
