/* Recursion argv[1] deep (default 3000), spinning at the bottom. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void bottom(double s)
{
    double end = cpu_now() + s;
    while (cpu_now() < end)
        for (int i = 0; i < 1000; i++) sink += i;
}

__attribute__((noinline)) int recurse(int depth, double s)
{
    if (depth <= 1) {
        bottom(s);
        return 1;
    }
    int r = recurse(depth - 1, s) + 1;
    sink += r;
    return r;
}

int main(int argc, char **argv)
{
    int depth = argc > 1 ? atoi(argv[1]) : 3000;
    double s = argc > 2 ? atof(argv[2]) : 0.5;
    printf("depth %d\n", recurse(depth, s));
    return 0;
}
