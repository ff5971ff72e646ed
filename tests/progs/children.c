/* Forks a child that computes in child_work, and fork+execs `argv[1]`
 * (another program) if given; the parent computes in parent_work. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void child_work(double s)
{
    double end = cpu_now() + s;
    while (cpu_now() < end)
        for (int i = 0; i < 1000; i++) sink += i;
}

__attribute__((noinline)) void parent_work(double s)
{
    double end = cpu_now() + s;
    while (cpu_now() < end)
        for (int i = 0; i < 1000; i++) sink += i;
}

int main(int argc, char **argv)
{
    pid_t c = fork();
    if (c == 0) {
        child_work(0.3);
        _exit(0);
    }
    pid_t e = -1;
    if (argc > 1) {
        e = fork();
        if (e == 0) {
            execv(argv[1], argv + 1);
            _exit(127);
        }
    }
    parent_work(0.3);
    int st;
    waitpid(c, &st, 0);
    if (e > 0)
        waitpid(e, &st, 0);
    printf("children done\n");
    return 0;
}
