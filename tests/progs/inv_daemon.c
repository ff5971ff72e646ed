/* Double fork + setsid: the daemon computes after the program has exited. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <time.h>

__attribute__((noinline)) static void daemon_work(double secs)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    volatile double x = 0;
    do {
        for (int i = 0; i < 10000; i++)
            x += i * 0.5;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) * 1e-9 < secs);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.5;
    if (fork() == 0) {
        setsid();
        if (fork() == 0) {
            usleep(100000); /* well after the program exited */
            daemon_work(secs);
            _exit(0);
        }
        _exit(0);
    }
    return 0;
}
