/* Works in work_before_death, then ends the way argv[1] says:
 * segv, abort, _exit, sigkill, exit7. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void work_before_death(double s)
{
    double end = cpu_now() + s;
    while (cpu_now() < end)
        for (int i = 0; i < 1000; i++) sink += i;
}

int main(int argc, char **argv)
{
    const char *how = argc > 1 ? argv[1] : "exit7";
    work_before_death(0.4);
    if (!strcmp(how, "segv")) {
        volatile int *p = (int *)16;
        *p = 1;
    } else if (!strcmp(how, "abort")) {
        abort();
    } else if (!strcmp(how, "_exit")) {
        _exit(3);
    } else if (!strcmp(how, "sigkill")) {
        kill(getpid(), SIGKILL);
    }
    return 7;
}
