/* main -> level_one -> level_two -> level_three -> hot_leaf, all CPU in the
 * leaf and its callers; used to check complete call chains. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile double sink;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
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

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    double end = cpu_now() + seconds;
    while (cpu_now() < end)
        sink += level_one(20000);
    printf("chain done\n");
    return 0;
}
