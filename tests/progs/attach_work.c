/* A program to attach to: main -> level_one -> level_two -> level_three ->
 * hot_leaf for a given wall time; a second thread (worker_leaf) starts
 * after `thread_delay` seconds, i.e. while ctprof is attached.  Its output
 * does not depend on timing and shows the state a profiler could disturb
 * (signal dispositions, the profiling timer), so an attached run must print
 * exactly what an unattached one prints.
 * usage: attach_work SECONDS [EXIT_CODE] [THREAD_DELAY] */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

volatile double sink;
static volatile int stop;
static double seconds, thread_delay;

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) double hot_leaf(int n)
{
    double x = 0;
    for (int i = 0; i < n; i++)
        x += (double)i * 0.5 / (i + 1);
    return x;
}

__attribute__((noinline)) double level_three(int n) { double r = hot_leaf(n); sink += r; return r + 1; }
__attribute__((noinline)) double level_two(int n) { double r = level_three(n); sink += r; return r + 2; }
__attribute__((noinline)) double level_one(int n) { double r = level_two(n); sink += r; return r + 3; }

__attribute__((noinline)) double worker_leaf(int n)
{
    double x = 1;
    for (int i = 0; i < n && !stop; i++)   /* reads a volatile: not hoisted */
        x = x * 1.0000001 + 1e-9;
    return x;
}

static void *worker(void *arg)
{
    (void)arg;
    while (!stop)
        sink += worker_leaf(50000);
    return NULL;
}

static volatile sig_atomic_t usr1;
static void on_usr1(int sig) { (void)sig; usr1++; }

int main(int argc, char **argv)
{
    seconds = argc > 1 ? atof(argv[1]) : 2.0;
    int code = argc > 2 ? atoi(argv[2]) : 0;
    thread_delay = argc > 3 ? atof(argv[3]) : 1e9;
    signal(SIGUSR1, on_usr1);
    double start = wall_now(), end = start + seconds;
    pthread_t t;
    int started = 0;
    long rounds = 0;
    while (wall_now() < end) {
        sink += level_one(20000);
        rounds++;
        if (!started && wall_now() - start >= thread_delay) {
            pthread_create(&t, NULL, worker, NULL);
            started = 1;
        }
    }
    stop = 1;
    if (started)
        pthread_join(t, NULL);
    raise(SIGUSR1);
    struct sigaction sa;
    struct itimerval it;
    int rt_default = 0;
    for (int s = SIGRTMIN; s <= SIGRTMAX; s++) {
        sigaction(s, NULL, &sa);
        rt_default += sa.sa_handler == SIG_DFL;
    }
    getitimer(ITIMER_PROF, &it);
    sigset_t mask;
    int blocked = 0;
    sigprocmask(SIG_BLOCK, NULL, &mask);
    for (int s = 1; s <= SIGRTMAX; s++)
        blocked += sigismember(&mask, s) == 1;
    printf("result %.6f usr1=%d rt_default=%d/%d itimer_prof=%ld blocked=%d worked=%d\n",
           hot_leaf(1000), (int)usr1, rt_default, SIGRTMAX - SIGRTMIN + 1,
           (long)(it.it_value.tv_sec + it.it_value.tv_usec), blocked, rounds > 0);
    fflush(stdout);
    return code;
}
