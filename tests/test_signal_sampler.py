"""The in-process signal sampler (``ctprof run --sampler signal``) never
changes what the program does (issue 13).  Every program here is compiled
at test time and run twice, plainly and under ctprof; what it reports about
itself (exit status, its own counters, its output files) must be the same.
"""
from __future__ import annotations

import math
import os
import resource
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, ctprof, has_chain, load_profile, share

# ---- the programs ----------------------------------------------------------------

COMMON = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double cpu_now(void) {
    struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
static volatile uint64_t sink;
__attribute__((noinline)) static void spin_cpu(double seconds) {
    double end = cpu_now() + seconds;
    uint64_t x = 1;
    while (cpu_now() < end)
        for (int i = 0; i < 2000; i++) x = x * 6364136223846793005ull + 1442695040888963407ull;
    sink = x;
}
"""

REEXEC = COMMON + r"""
/* Re-executes itself through every member of the exec family in turn. */
int main(int argc, char **argv) {
    int left = argc > 1 ? atoi(argv[1]) : 0;
    spin_cpu(0.02);
    if (left == 0) return 7;
    char n[16]; snprintf(n, sizeof n, "%d", left - 1);
    extern char **environ;
    char *args[] = {argv[0], n, NULL};
    switch (left % 7) {
    case 0: execv(argv[0], args); break;
    case 1: execve(argv[0], args, environ); break;
    case 2: execvp(argv[0], args); break;
    case 3: execl(argv[0], argv[0], n, (char *)NULL); break;
    case 4: execle(argv[0], argv[0], n, (char *)NULL, environ); break;
    case 5: execvpe(argv[0], args, environ); break;
    case 6: { int fd = open(argv[0], O_RDONLY | O_CLOEXEC); fexecve(fd, args, environ); break; }
    }
    perror("exec");
    return 99;
}
"""

THREADED_EXEC = COMMON + r"""
/* Threads keep the CPU busy while another (not the main) thread execs the
 * program again: every thread's timer is live around the exec. */
static void *busy(void *p) { for (;;) spin_cpu(0.01); return p; }
static void *execer(void *p) {
    char **argv = p, n[16];
    spin_cpu(0.01);
    snprintf(n, sizeof n, "%d", atoi(argv[1]) - 1);
    execl(argv[0], argv[0], n, (char *)NULL);
    return NULL;
}
int main(int argc, char **argv) {
    spin_cpu(0.01);
    if (atoi(argv[1]) == 0) return 5;
    pthread_t t;
    for (int i = 0; i < 3; i++) pthread_create(&t, NULL, busy, NULL);
    pthread_create(&t, NULL, execer, argv);
    pthread_join(t, NULL);
    return 9;
}
"""

SYSCALLS = COMMON + r"""
#include <poll.h>
#include <semaphore.h>
#include <linux/futex.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
/* Counts system calls that fail with EINTR or come back short while the
 * thread alternates CPU work and calls. */
enum { POLL, NANOSLEEP, SELECT, EPOLL, FUTEX, SEM, PIPE_SHORT, SOCK_SHORT, N };
static const char *names[N] = {"poll", "nanosleep", "select", "epoll_wait", "futex", "sem_timedwait",
                               "pipe_short_write", "socket_short_send"};
static int counts[N];
#define BIG (8 << 20)
static void *drain(void *p) {
    int fd = *(int *)p; static char buf[1 << 16];
    while (read(fd, buf, sizeof buf) > 0) {}
    return NULL;
}
int main(void) {
    int pfd[2], sv[2], dummy[2];
    if (pipe(pfd) || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || pipe(dummy)) return 2;
    pthread_t t1, t2;
    pthread_create(&t1, NULL, drain, &pfd[0]);
    pthread_create(&t2, NULL, drain, &sv[1]);
    int ep = epoll_create1(0);
    struct epoll_event ev = {EPOLLIN, {0}};
    epoll_ctl(ep, EPOLL_CTL_ADD, dummy[0], &ev);
    sem_t sem; sem_init(&sem, 0, 0);
    int futex_word = 0;
    char *big = calloc(1, BIG);
    double end = cpu_now() + 1.5;
    for (int round = 0; cpu_now() < end || round < 3; round++) {
        spin_cpu(0.002);
        struct pollfd p = {dummy[0], POLLIN, 0};
        for (int i = 0; i < 50; i++) if (poll(&p, 1, 0) < 0 && errno == EINTR) counts[POLL]++;
        struct timespec ms = {0, 1000000};
        if (nanosleep(&ms, NULL) < 0 && errno == EINTR) counts[NANOSLEEP]++;
        fd_set r; FD_ZERO(&r); FD_SET(dummy[0], &r); struct timeval tv = {0, 1000};
        if (select(dummy[0] + 1, &r, NULL, NULL, &tv) < 0 && errno == EINTR) counts[SELECT]++;
        if (epoll_wait(ep, &ev, 1, 1) < 0 && errno == EINTR) counts[EPOLL]++;
        if (syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &ms, NULL, 0) < 0 && errno == EINTR) counts[FUTEX]++;
        struct timespec abs; clock_gettime(CLOCK_REALTIME, &abs);
        abs.tv_nsec += 1000000; if (abs.tv_nsec >= 1000000000) { abs.tv_sec++; abs.tv_nsec -= 1000000000; }
        if (sem_timedwait(&sem, &abs) < 0 && errno == EINTR) counts[SEM]++;
        if (round % 8 == 0) {
            if (write(pfd[1], big, BIG) != BIG) counts[PIPE_SHORT]++;
            if (send(sv[0], big, BIG, 0) != BIG) counts[SOCK_SHORT]++;
        }
    }
    for (int i = 0; i < N; i++) printf("%s %d\n", names[i], counts[i]);
    return 0;
}
"""

CLOSE_ALL = COMMON + r"""
#include <sys/resource.h>
/* Closes every descriptor above stderr, then writes its output through
 * stdio (flushed at exit): `nfiles` files of `lines` lines each. */
int main(int argc, char **argv) {
    int nfiles = atoi(argv[2]), lines = atoi(argv[3]);
    for (int fd = 3; fd < 1024; fd++) close(fd);
    spin_cpu(0.05);
    FILE *f[1000];
    for (int i = 0; i < nfiles; i++) {
        char path[4096]; snprintf(path, sizeof path, "%s/out%d.txt", argv[1], i);
        if (!(f[i] = fopen(path, "w"))) { perror(path); return 3; }
    }
    for (int i = 0; i < nfiles; i++)
        for (int j = 0; j < lines; j++) fprintf(f[i], "file %d line %d\n", i, j);
    return 0;   /* stdio flushes at exit, after every library destructor */
}
"""

CLOSEFROM = COMMON + r"""
/* closefrom(3) or close_range(3, ~0U) while a thread runs: the program's
 * own descriptors go, and (under ctprof) sampling goes on. */
__attribute__((noinline)) static void after_close(double s) { spin_cpu(s); sink += 4; }
static void *worker(void *p) { spin_cpu(0.05); after_close(0.6); return p; }
int main(int argc, char **argv) {
    int mine = open("/dev/null", O_RDONLY);
    pthread_t t; pthread_create(&t, NULL, worker, NULL);
    spin_cpu(0.05);
    if (strcmp(argv[1], "closefrom") == 0) closefrom(3);
    else if (close_range(3, ~0u, 0) != 0) return 2;
    int gone = fcntl(mine, F_GETFD) == -1 && errno == EBADF;
    after_close(0.6);
    pthread_join(t, NULL);
    printf("closed %s\n", gone ? "yes" : "no");
    return 0;
}
"""

FD_LIMIT = COMMON + r"""
#include <sys/resource.h>
/* With 100 threads alive, how many files can the program open? */
static volatile int stop;
static void *idle(void *p) { spin_cpu(0.01); while (!stop) usleep(1000); return p; }
int main(int argc, char **argv) {
    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = atoi(argv[1]);
    if (setrlimit(RLIMIT_NOFILE, &rl)) return 2;
    pthread_t t[100];
    for (int i = 0; i < 100; i++) pthread_create(&t[i], NULL, idle, NULL);
    usleep(100000);
    int n = 0;
    while (open("/dev/null", O_RDONLY) >= 0) n++;
    stop = 1;
    for (int i = 0; i < 100; i++) pthread_join(t[i], NULL);
    printf("opened %d\n", n);
    return 0;
}
"""

JIT_THROW = r"""
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <sys/mman.h>
#include <pthread.h>
#include <time.h>
extern "C" void __register_frame(void *);
extern "C" void __deregister_frame(void *);
static double cpu_now() { timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec / 1e9; }
/* "JIT" code: push rbp; mov rbp,rsp; mov rax,rdi; 1: dec rax; jnz 1b; pop rbp; ret */
static const unsigned char code[] = {0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0xf8, 0x48, 0xff, 0xc8, 0x75, 0xfb, 0x5d, 0xc3};
static unsigned char eh[128];
static void put(size_t &o, const void *p, size_t n) { memcpy(eh + o, p, n); o += n; }
/* Registers a CIE+FDE for the code as a JIT does: from then on libgcc's
 * FDE lookup takes its object mutex during every throw. */
static void register_jit(void *fn) {
    size_t o = 0; uint32_t len = 20, zero = 0;
    put(o, &len, 4); put(o, &zero, 4);
    const unsigned char cie[] = {1, 'z', 'R', 0, 1, 0x78, 16, 1, 0x00, 0x0c, 7, 8, 0x90, 1, 0, 0};
    put(o, cie, sizeof cie);
    len = 36; uint32_t cie_ptr = 28; uint64_t begin = (uint64_t)fn, range = sizeof code;
    put(o, &len, 4); put(o, &cie_ptr, 4); put(o, &begin, 8); put(o, &range, 8);
    const unsigned char fde[] = {0, 0x41, 0x0e, 16, 0x86, 2, 0x43, 0x0d, 6, 0, 0, 0, 0, 0, 0, 0};
    put(o, fde, sizeof fde);
    put(o, &zero, 4);
    __register_frame(eh);
}
__attribute__((noinline)) static void thrower(int i) { if (i >= 0) throw std::runtime_error("x"); }
static void *throw_loop(void *p) {
    long caught = 0;
    double end = cpu_now() + 1.5;
    while (cpu_now() < end)
        for (int i = 0; i < 100; i++) try { thrower(i); } catch (const std::exception &) { caught++; }
    *(long *)p = caught;
    return nullptr;
}
int main() {
    void *mem = mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(mem, code, sizeof code);
    register_jit(mem);
    long (*jit)(long) = (long (*)(long))mem;
    long caught = 0;
    pthread_t t; pthread_create(&t, nullptr, throw_loop, &caught);
    double end = cpu_now() + 1.5;
    while (cpu_now() < end) jit(1000000);
    pthread_join(t, nullptr);
    printf("caught %s\n", caught > 0 ? "some" : "none");
    return 0;
}
"""

SMALL_STACK = COMMON + r"""
/* A thread on a 16 KiB stack with about 5 KiB of locals in use. */
__attribute__((noinline)) static uint64_t deep_locals(int rounds) {
    volatile char buf[5 * 1024];
    uint64_t h = 0;
    for (int r = 0; r < rounds; r++)
        for (unsigned i = 0; i < sizeof buf; i++) { buf[i] = (char)(i * r); h = h * 31 + buf[i]; }
    return h;
}
static void *worker(void *p) {
    double end = cpu_now() + 1.0;
    uint64_t h = 0;
    while (cpu_now() < end) h += deep_locals(50);
    *(uint64_t *)p = h;
    return NULL;
}
int main(void) {
    pthread_attr_t a; pthread_attr_init(&a);
    if (pthread_attr_setstacksize(&a, 16384)) return 2;
    uint64_t h; pthread_t t;
    if (pthread_create(&t, &a, worker, &h)) return 3;
    pthread_join(t, NULL);
    puts("survived");
    return 0;
}
"""

COROUTINES = COMMON + r"""
#include <ucontext.h>
/* Two coroutines on 16 KiB heap stacks, switching all the time. */
static ucontext_t main_ctx, co_ctx[2];
static uint64_t work[2];
static void body(int id) {
    for (;;) {
        for (int i = 0; i < 200; i++) work[id] = work[id] * 6364136223846793005ull + 1;
        swapcontext(&co_ctx[id], id == 0 ? &co_ctx[1] : &main_ctx);
    }
}
int main(void) {
    for (int i = 0; i < 2; i++) {
        getcontext(&co_ctx[i]);
        co_ctx[i].uc_stack.ss_sp = malloc(16384);
        co_ctx[i].uc_stack.ss_size = 16384;
        co_ctx[i].uc_link = &main_ctx;
        makecontext(&co_ctx[i], (void (*)(void))body, 1, i);
    }
    double end = cpu_now() + 1.0;
    long switches = 0;
    while (cpu_now() < end) { swapcontext(&main_ctx, &co_ctx[0]); switches++; }
    printf("done %s\n", switches > 0 ? "switching" : "idle");
    return 0;
}
"""

BLOCKED = COMMON + r"""
#include <poll.h>
#include <sys/signalfd.h>
/* Every signal blocked in every thread; the main thread waits for signals
 * with sigtimedwait (argv[1] == "wait") or a signalfd ("fd"), or execs
 * itself ("exec") and the new image looks at the mask it inherited. */
static void *worker(void *p) { spin_cpu(1.0); return p; }
__attribute__((noinline)) static void after_exec(void) { spin_cpu(0.5); sink += 3; }
int main(int argc, char **argv) {
    sigset_t all; sigfillset(&all);
    if (strcmp(argv[1], "inherited") == 0) {
        after_exec();
        sigset_t now; pthread_sigmask(SIG_SETMASK, NULL, &now);
        printf("mask full: %d\n", sigismember(&now, SIGRTMIN + 4));
        return 0;
    }
    if (strcmp(argv[1], "exec") == 0) {
        sigprocmask(SIG_BLOCK, &all, NULL);
        spin_cpu(0.2);
        execl(argv[0], argv[0], "inherited", (char *)NULL);
        return 4;
    }
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_t t; pthread_create(&t, NULL, worker, NULL);
    spin_cpu(0.3);
    int sfd = strcmp(argv[1], "fd") == 0 ? signalfd(-1, &all, 0) : -1;
    for (int i = 0; i < 12; i++) {
        int sig = -1;
        if (sfd >= 0) {
            struct pollfd p = {sfd, POLLIN, 0};
            if (poll(&p, 1, 100) > 0) sig = 0;
        } else {
            struct timespec tmo = {0, 100000000};
            sig = sigtimedwait(&all, NULL, &tmo);
        }
        if (sig >= 0) { printf("unexpected signal %d\n", sig); return 3; }
    }
    pthread_join(t, NULL);
    sigset_t now; pthread_sigmask(SIG_SETMASK, NULL, &now);
    printf("mask full: %d\n", sigismember(&now, SIGRTMIN + 4));
    return 0;
}
"""

LONGJMP = COMMON + r"""
#include <setjmp.h>
#include <sys/time.h>
/* The program's own SIGALRM handler siglongjmp()s out, every millisecond. */
static sigjmp_buf env;
static volatile long jumps;
static void on_alarm(int s) { (void)s; jumps++; siglongjmp(env, 1); }
int main(void) {
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    double start = cpu_now();
    /* the jump target is set before the first alarm can come (armed after
     * it, a loaded machine could deliver one first: a jump to nowhere) */
    if (sigsetjmp(env, 1) == 0)
        setitimer(ITIMER_REAL, &it, NULL);
    while (cpu_now() - start < 1.5) spin_cpu(0.0001);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("cpu %.6f jumped %s\n", cpu_now() - start, jumps > 0 ? "yes" : "no");
    return 0;
}
"""

SHORT_THREADS = COMMON + r"""
/* 400 threads of ~0.2 ms CPU each, one at a time, and a main thread that
 * works longer; each reports the CPU time its work took. */
static double short_cpu;
/* (the additions keep the calls from becoming tail jumps, which would
 * leave these frames out of the stacks, and the two functions from being
 * folded into one) */
__attribute__((noinline)) static void short_work(double s) { spin_cpu(s); sink += 1; }
__attribute__((noinline)) static void long_work(double s) { spin_cpu(s); sink += 2; }
static void *run_short(void *p) {
    double t0 = cpu_now(); short_work(0.0002); *(double *)p = cpu_now() - t0; return NULL;
}
int main(void) {
    for (int i = 0; i < 400; i++) {
        double c; pthread_t t; pthread_create(&t, NULL, run_short, &c); pthread_join(t, NULL);
        short_cpu += c;
    }
    double t0 = cpu_now(); long_work(0.08); double long_cpu = cpu_now() - t0;
    printf("%.9f %.9f\n", short_cpu, long_cpu);
    return 0;
}
"""

DLOPEN_LOOP = COMMON + r"""
#include <dlfcn.h>
/* dlopen/dlclose in a loop, calling into the library each time. */
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    for (int i = 0; i < n; i++) {
        void *h = dlopen(argv[1], RTLD_NOW);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 2; }
        void (*f)(double) = (void (*)(double))dlsym(h, "lib_hot");
        f(0.0005);
        dlclose(h);
    }
    puts("loaded");
    return 0;
}
"""

DLOPEN_LIB = COMMON + r"""
void lib_hot(double s) { spin_cpu(s); sink++; }
"""

THREAD_MAPS = COMMON + r"""
/* 3000 short threads, one after the other; then the process's private
 * writable memory (VmData, kB): what a page left behind per thread adds up to. */
static void *run(void *p) { spin_cpu(0.0005); return p; }
int main(void) {
    for (int i = 0; i < 3000; i++) { pthread_t t; pthread_create(&t, NULL, run, NULL); pthread_join(t, NULL); }
    FILE *f = fopen("/proc/self/status", "r"); char line[256]; long kb = -1;
    while (fgets(line, sizeof line, f)) sscanf(line, "VmData: %ld", &kb);
    printf("%ld\n", kb);
    return 0;
}
"""

SIGNAL_STATE = COMMON + r"""
#include <dirent.h>
/* Is a handler installed for SIGRTMIN+4 (the kernel's SigCgt mask, which
 * no wrapper can hide), and is there a perf_event descriptor? */
int main(void) {
    spin_cpu(0.05);
    char line[256]; unsigned long long caught = 0;
    FILE *st = fopen("/proc/self/status", "r");
    while (fgets(line, sizeof line, st)) sscanf(line, "SigCgt: %llx", &caught);
    fclose(st);
    int set = (caught >> (SIGRTMIN + 4 - 1)) & 1;
    int perf = 0; DIR *d = opendir("/proc/self/fd"); struct dirent *e;
    while ((e = readdir(d))) {
        char p[300], t[300]; snprintf(p, sizeof p, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(p, t, sizeof t - 1);
        if (n > 0) { t[n] = 0; perf += strstr(t, "perf_event") != NULL; }
    }
    printf("handler %s perf %d\n", set ? "set" : "default", perf);
    return 0;
}
"""


@pytest.fixture(scope="module")
def cc(tmp_path_factory):
    """Compile one of the programs above (once per module)."""
    directory = tmp_path_factory.mktemp("sigprogs")
    built = {}

    def compile_(name, source, *flags, cpp=False, shared=False):
        if name in built:
            return built[name]
        src = directory / (name + (".cpp" if cpp else ".c"))
        src.write_text(source)
        out = str(directory / (name + (".so" if shared else "")))
        cmd = ["c++" if cpp else "cc", "-O2", *flags, "-o", out, str(src), "-pthread", "-ldl"]
        if shared:
            cmd[1:1] = ["-shared", "-fPIC"]
        subprocess.run(cmd, check=True, capture_output=True)
        built[name] = out
        return out
    return compile_


def plain(argv, cwd, timeout=120):
    """The program without ctprof: what every profiled run is held to."""
    return subprocess.run(argv, cwd=str(cwd), capture_output=True, timeout=timeout)


def profiled(tmp_path, argv, *options, timeout=180, name="out.ctprof"):
    out = str(tmp_path / name)
    proc = ctprof(["run", "--sampler", "signal", "-q", "-o", out, *options, "--", *argv],
                  cwd=str(tmp_path), timeout=timeout)
    profile = load_profile(out)[0] if os.path.exists(out) else None
    return proc, profile


def samples(profile) -> int:
    return profile.total("samples") if profile is not None else 0


# ---- 1. exec ------------------------------------------------------------------------

SHELL_EXEC = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; exec /bin/true"


def test_shell_script_that_execs_survives(tmp_path):
    """The exec'd image never receives a timer signal of ours (it would die
    of SIGRTMIN+4's default action: exit 166)."""
    assert plain(["sh", "-c", SHELL_EXEC], tmp_path).returncode == 0
    for run in range(8):
        proc, _ = profiled(tmp_path, ["sh", "-c", SHELL_EXEC], "--hz", "999", name=f"sh{run}.ctprof")
        assert proc.returncode == 0, (run, proc.stderr.decode()[-2000:])


def test_program_that_reexecs_itself_through_every_exec_call(cc, tmp_path):
    prog = cc("reexec", REEXEC)
    expected = plain([prog, "21"], tmp_path).returncode
    assert expected == 7
    for run in range(3):
        proc, profile = profiled(tmp_path, [prog, "21"], "--hz", "1000", name=f"re{run}.ctprof")
        assert proc.returncode == expected, proc.stderr.decode()[-2000:]
        assert samples(profile) > 0


def test_exec_from_a_thread_while_others_run(cc, tmp_path):
    prog = cc("threaded_exec", THREADED_EXEC)
    expected = plain([prog, "15"], tmp_path).returncode
    assert expected == 5
    for run in range(3):
        proc, profile = profiled(tmp_path, [prog, "15"], "--hz", "4000", name=f"te{run}.ctprof")
        assert proc.returncode == expected, proc.stderr.decode()[-2000:]
        assert samples(profile) > 0


# ---- 2. system calls -----------------------------------------------------------------

def test_no_system_call_is_interrupted(cc, tmp_path):
    """The timer counts user time only (exclude_kernel): no EINTR, no short
    write or send, where the plain run has none either."""
    prog = cc("syscalls", SYSCALLS)
    base = plain([prog], tmp_path)
    assert base.returncode == 0
    proc, profile = profiled(tmp_path, [prog], "--hz", "1000")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode() == base.stdout.decode()
    assert all(line.endswith(" 0") for line in base.stdout.decode().splitlines())
    assert samples(profile) > 100


# ---- 3. descriptors ----------------------------------------------------------------------

def test_program_that_closes_every_descriptor_keeps_its_output(cc, tmp_path):
    prog = cc("close_all", CLOSE_ALL)
    out = tmp_path / "one"
    out.mkdir()
    proc, _ = profiled(tmp_path, [prog, str(out), "1", "20000"], "--hz", "999")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert (out / "out0.txt").read_text().count("\n") == 20000


def test_our_descriptor_number_reused_by_the_program_is_not_closed(cc, tmp_path):
    """With the fd limit at 1024 (soft and hard) our perf descriptor lies
    below 1024: the program closes it, reopens the number for one of its
    1000 output files, and our exit must not close that file."""
    prog = cc("close_all", CLOSE_ALL)
    out = tmp_path / "many"
    out.mkdir()
    cmd = (f"ulimit -n 1024 && exec {shlex.quote(sys.executable)} -m ctprof run --sampler signal -q "
           f"-o {shlex.quote(str(tmp_path / 'many.ctprof'))} --hz 999 -- {shlex.quote(prog)} {shlex.quote(str(out))} 1000 20")
    proc = subprocess.run(["sh", "-c", cmd], cwd=str(tmp_path), capture_output=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    short = [i for i in range(1000) if (out / f"out{i}.txt").read_text().count("\n") != 20]
    assert short == []


@pytest.mark.parametrize("how", ["closefrom", "close_range"])
def test_closing_every_descriptor_does_not_end_sampling(cc, tmp_path, how):
    prog = cc("closefrom", CLOSEFROM)
    base = plain([prog, how], tmp_path)
    assert base.returncode == 0 and base.stdout == b"closed yes\n"
    proc, profile = profiled(tmp_path, [prog, how], "--hz", "999")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == base.stdout
    # both threads' 0.6 s after the close are sampled (0.5 of the expected
    # 1200 samples leaves room for a loaded machine)
    after = share(profile, lambda names: any(n.startswith("after_close") for n in names)) * samples(profile)
    assert after > 0.5 * 999 * 1.2


def test_threads_take_none_of_the_programs_descriptors(cc, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard descriptor limit ({hard}) leaves no room above the program's 1024")
    prog = cc("fd_limit", FD_LIMIT)
    base = plain([prog, "1024"], tmp_path)
    assert base.returncode == 0 and base.stdout.startswith(b"opened ")
    proc, profile = profiled(tmp_path, [prog, "1024"], "--hz", "999")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == base.stdout
    assert samples(profile) > 0


FORK_STORM = COMMON + r"""
#include <sys/resource.h>
#include <sys/wait.h>
/* Fork 150 times while two threads keep starting threads (whose perf
 * descriptors ctprof moves above the soft limit): every child must see
 * the program's own limit. */
static volatile int stop;
static void *noop(void *p) { return p; }
static void *creator(void *p) {
    while (!stop) { pthread_t t; pthread_create(&t, NULL, noop, NULL); pthread_join(t, NULL); }
    return p;
}
int main(void) {
    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = 1024; setrlimit(RLIMIT_NOFILE, &rl);
    pthread_t c[2];
    for (int i = 0; i < 2; i++) pthread_create(&c[i], NULL, creator, NULL);
    int bad = 0;
    for (int i = 0; i < 150; i++) {
        pid_t p = fork();
        if (p == 0) { struct rlimit r; getrlimit(RLIMIT_NOFILE, &r); _exit(r.rlim_cur == 1024 ? 0 : 1); }
        int st; waitpid(p, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) bad++;
    }
    stop = 1;
    for (int i = 0; i < 2; i++) pthread_join(c[i], NULL);
    printf("bad children %d\n", bad);
    return 0;
}
"""


def test_fork_while_threads_start_leaves_the_children_the_programs_limit(cc, tmp_path):
    prog = cc("fork_storm", FORK_STORM)
    base = plain([prog], tmp_path)
    assert base.returncode == 0 and base.stdout == b"bad children 0\n"
    proc, _ = profiled(tmp_path, [prog], "--hz", "999")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == base.stdout


# ---- 4. JIT frames, small stacks -------------------------------------------------------------

def test_registered_jit_frames_and_throwing_do_not_deadlock(cc, tmp_path):
    prog = cc("jit_throw", JIT_THROW, cpp=True)
    base = plain([prog], tmp_path)
    assert base.returncode == 0 and base.stdout == b"caught some\n"
    proc, profile = profiled(tmp_path, [prog], "--hz", "4000", timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == base.stdout
    # Samples in the JIT code (no FDE) continue through its frame pointer
    # to main.
    jit_to_main = share(profile, lambda names: len(names) >= 2 and names[-2] == "main"
                        and "jit" not in names[-1] and "main" != names[-1])
    assert samples(profile) > 1000 and jit_to_main > 0.1


PLT_CALLS = COMMON + r"""
/* Calls into libc through the PLT all the time. */
__attribute__((noinline)) static long hammer(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s += labs(-i) + getpid();
    return s;
}
int main(void) {
    long s = 0; double end = cpu_now() + 1.0;
    while (cpu_now() < end) s += hammer(10000);
    printf("%d\n", s > 0);
    return 0;
}
"""


def test_samples_in_plt_stubs_keep_their_callers(cc, tmp_path):
    """Without libgcc in the handler, the PLT's CFA expression is read by
    our own unwinder: samples in a PLT stub still reach main."""
    prog = cc("plt_calls", PLT_CALLS)
    proc, profile = profiled(tmp_path, [prog], "--hz", "999")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert samples(profile) > 100
    assert share(profile, lambda names: "main" in names) > 0.99


SIGNAL_FRAMES = COMMON + r"""
#include <sys/time.h>
/* 0.8 ms of every 2 ms, whatever the machine's speed, is spent inside the
 * program's own SIGALRM handler (clock_gettime is async-signal-safe). */
__attribute__((noinline)) static void in_handler_work(void) {
    double end = cpu_now() + 0.0008;
    while (cpu_now() < end)
        for (int i = 0; i < 2000; i++) sink = sink * 31 + i;
}
static void on_alarm(int s) { (void)s; in_handler_work(); sink++; }
__attribute__((noinline)) static void main_loop(void) { spin_cpu(1.0); sink++; }
int main(void) {
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 2000}, {0, 2000}};
    setitimer(ITIMER_REAL, &it, NULL);
    main_loop();
    puts("ok");
    return 0;
}
"""


def test_samples_in_a_signal_handler_continue_below_the_signal_frame(cc, tmp_path):
    prog = cc("signal_frames", SIGNAL_FRAMES)
    proc, profile = profiled(tmp_path, [prog], "--hz", "999")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    in_handler = share(profile, lambda names: "in_handler_work" in names)
    through = share(profile, lambda names: has_chain(names, ("main", "main_loop")) and "in_handler_work" in names)
    assert in_handler > 0.2 and through > 0.95 * in_handler


@pytest.mark.parametrize("hz", ["99", "1000"])
def test_thread_with_a_16k_stack_survives(cc, tmp_path, hz):
    prog = cc("small_stack", SMALL_STACK)
    base = plain([prog], tmp_path)
    assert base.returncode == 0 and base.stdout == b"survived\n"
    proc, profile = profiled(tmp_path, [prog], "--hz", hz)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == base.stdout
    assert samples(profile) > 0.5 * int(hz) * 1.0


# ---- 5. coroutines -------------------------------------------------------------------------------

def test_ucontext_coroutines_on_small_heap_stacks(cc, tmp_path):
    prog = cc("coroutines", COROUTINES)
    base = plain([prog], tmp_path)
    assert base.returncode == 0
    for run in range(3):
        proc, profile = profiled(tmp_path, [prog], "--hz", "4000", name=f"co{run}.ctprof")
        assert proc.returncode == base.returncode, proc.stderr.decode()[-2000:]
        assert proc.stdout == base.stdout
        assert samples(profile) > 1000


# ---- 6. blocked signals -------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["wait", "fd", "exec"])
def test_program_blocking_every_signal_never_receives_ours(cc, tmp_path, how):
    prog = cc("blocked", BLOCKED)
    base = plain([prog, how], tmp_path)
    assert base.returncode == 0, base.stdout
    proc, profile = profiled(tmp_path, [prog, how], "--hz", "999")
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()[-2000:]
    # the program's view of its mask is its own: everything blocked (after
    # an exec too), and it is still sampled
    assert proc.stdout == base.stdout == b"mask full: 1\n"
    if how == "exec":
        assert share(profile, lambda names: any(n.startswith("after_exec") for n in names)) * samples(profile) \
            > 0.5 * 999 * 0.5
    else:
        assert samples(profile) > 0.5 * 999 * 1.3


# ---- 7. fairness and lost samples ------------------------------------------------------------

def test_handler_that_siglongjmps_out_does_not_stop_sampling(cc, tmp_path):
    prog = cc("longjmp", LONGJMP)
    proc, profile = profiled(tmp_path, [prog], "--hz", "499")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    cpu = float(proc.stdout.split()[1])
    assert proc.stdout.endswith(b"jumped yes\n")
    # samples per CPU-second as asked, within 5 sigma of a Poisson count
    expected = 499 * cpu
    assert samples(profile) > expected - 5 * math.sqrt(expected) - 0.1 * expected


def test_threads_shorter_than_a_period_get_their_share(cc, tmp_path):
    prog = cc("short_threads", SHORT_THREADS)
    proc, profile = profiled(tmp_path, [prog], "--hz", "1000")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    short_cpu, long_cpu = (float(x) for x in proc.stdout.split())
    p = short_cpu / (short_cpu + long_cpu)        # the share the program measured itself
    counts = {"short_work": 0, "long_work": 0}
    for names, value in profile.named_stacks("samples"):
        for fn in counts:   # gcc may name them short_work.constprop.0
            if any(name.startswith(fn) for name in names):
                counts[fn] += value
    n = sum(counts.values())
    assert n > 60
    observed = counts["short_work"] / n
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(observed - p) <= 5 * sigma, (observed, p, n)


# ---- 8. cost of dlopen, thread exit ---------------------------------------------------------------

def test_dlopen_loop_writes_snapshots_only_for_sampled_maps(cc, tmp_path):
    lib = cc("libhot", DLOPEN_LIB, shared=True)
    prog = cc("dlopen_loop", DLOPEN_LOOP)
    proc, profile = profiled(tmp_path, [prog, lib, "2000"], "--hz", "499")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    session = load_profile(str(tmp_path / "out.ctprof"))[1]
    (process,) = [p for p in session.processes.values() if p.exe.endswith("dlopen_loop")]
    # 4000 map changes; a new snapshot only where a sample needed one
    assert len(process.maps) <= samples(profile) + 2
    # and the library's samples still have their names
    in_lib = share(profile, lambda names: "lib_hot" in names or any("libhot" in n for n in names))
    named = share(profile, lambda names: "lib_hot" in names)
    assert in_lib > 0.5 and named >= 0.95 * in_lib


def test_thread_exit_unmaps_our_pages(cc, tmp_path):
    prog = cc("thread_maps", THREAD_MAPS)
    base = int(plain([prog], tmp_path).stdout)
    proc, profile = profiled(tmp_path, [prog], "--hz", "10000")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert samples(profile) > 1000
    # the unwind rule cache (1.5 MiB) and the like, not a page per thread (12 MiB)
    assert int(proc.stdout) - base < 4096


# ---- 9. no timer at all -------------------------------------------------------------------------------

def test_hz_zero_installs_no_timer_and_no_handler(cc, tmp_path):
    from ctprof.capture.build import shim_path
    prog = cc("signal_state", SIGNAL_STATE)
    session = tmp_path / "session"
    session.mkdir(mode=0o700)
    env = {**os.environ, "CTPROF_SESSION": str(session), "CTPROF_HZ": "0", "LD_PRELOAD": shim_path("cpu")}
    proc = subprocess.run([prog], capture_output=True, env=env, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout == b"handler default perf 0\n"
    names = sorted(os.listdir(session))
    # the ring and the first maps snapshot are there all the same
    assert any(n.endswith(".ring") for n in names) and any(".maps.0" in n for n in names)
    # with a rate, the handler and one perf descriptor exist (the check sees them)
    env["CTPROF_HZ"] = "99"
    session2 = tmp_path / "session2"
    session2.mkdir(mode=0o700)
    env["CTPROF_SESSION"] = str(session2)
    proc = subprocess.run([prog], capture_output=True, env=env, timeout=60)
    assert proc.stdout == b"handler set perf 1\n"
