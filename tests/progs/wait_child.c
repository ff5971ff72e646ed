/* A parent that only forks a busy child and waits for it (as a compiler
 * driver waits for cc1plus).  Each prints its own CPU time in ns:
 * "parent PID NS" / "child PID NS". */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long cpu_ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void burn(double seconds)
{
    volatile unsigned long x = 0;
    long long start = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
    while (cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - start < seconds * 1e9)
        for (int i = 0; i < 100000; i++)
            x += i;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 0.5;
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        burn(seconds);
        printf("child %d %lld\n", getpid(), cpu_ns(CLOCK_PROCESS_CPUTIME_ID));
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    /* the process clock counts this process only, never a waited-for child */
    printf("parent %d %lld\n", getpid(), cpu_ns(CLOCK_PROCESS_CPUTIME_ID));
    return 0;
}
