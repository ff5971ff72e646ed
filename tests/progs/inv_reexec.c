/* Burns some CPU, then execs itself with one less round, N times. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <time.h>

__attribute__((noinline)) static void image_work(double secs)
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
    int left = argc > 1 ? atoi(argv[1]) : 5;
    double secs = argc > 2 ? atof(argv[2]) : 0.02;
    image_work(secs);
    if (left > 0) {
        char n[16];
        snprintf(n, sizeof n, "%d", left - 1);
        execl("/proc/self/exe", argv[0], n, argc > 2 ? argv[2] : "0.02", (char *)NULL);
        perror("exec");
        return 99;
    }
    printf("re-exec done\n");
    return 0;
}
