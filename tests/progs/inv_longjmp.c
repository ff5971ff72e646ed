/* Its own SIGALRM handler siglongjmps out, every millisecond, while it
 * computes: samples must keep coming. */
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static sigjmp_buf env;
static volatile long jumps;
static volatile sig_atomic_t armed; /* env is complete: the handler may jump */

static void on_alarm(int sig)
{
    (void)sig;
    if (armed) {
        armed = 0;
        siglongjmp(env, 1);
    }
}

static double cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((noinline)) static void jumpy_work(void)
{
    volatile double x = 0;
    for (;;)
        x += 0.5;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
    double end = cpu() + secs;
    while (cpu() < end) {
        if (sigsetjmp(env, 1) == 0) {
            armed = 1;
            jumpy_work();
        }
        jumps++;
    }
    printf("jumps %s\n", jumps > 10 ? "ok" : "few");
    return 0;
}
