/* A call graph with known shares, for --callers/--callees and --lines:
 *   main -> caller_a -> leaf_work          (1 unit of leaf work per round)
 *   main -> caller_b -> leaf_work          (3 units)
 *   main -> caller_b -> other_work         (2 units)
 * The program measures its own thread CPU time in each edge and prints it
 * (stderr) so tests compare the profile against the program's figures.
 * main calls its two callees from different lines: resolved with source
 * lines, main has a frame per call site. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile double sink;
static double via_a, via_b, other;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) double leaf_work(long n)
{
    double x = 0;
    for (long i = 0; i < n; i++)
        x += (double)i * 0.5 / (double)(i + 1);
    return x;
}

__attribute__((noinline)) double other_work(long n)
{
    double x = 1;
    for (long i = 0; i < n; i++)
        x = x * 1.0000001 + 1e-9;
    return x;
}

__attribute__((noinline)) void caller_a(long n)
{
    double t0 = cpu_now();
    sink += leaf_work(n);
    via_a += cpu_now() - t0;
}

__attribute__((noinline)) void caller_b(long n)
{
    double t0 = cpu_now();
    sink += leaf_work(3 * n);
    double t1 = cpu_now();
    sink += other_work(2 * n);
    via_b += t1 - t0;
    other += cpu_now() - t1;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    double start = cpu_now();
    while (cpu_now() - start < seconds) {
        caller_a(200000);
        caller_b(200000);
    }
    fprintf(stderr, "leaf_via_a=%.6f leaf_via_b=%.6f other=%.6f total=%.6f\n", via_a, via_b, other,
            cpu_now() - start);
    return 0;
}
