/* Benchmark target: does a fixed amount of work in N threads (argv[1],
 * default 1) and prints how long the work itself took, so start-up and
 * the profiler's post-processing do not count. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long iterations = 60000000;
volatile unsigned long sink;

__attribute__((noinline)) static unsigned long mix(unsigned long x) { return x * 6364136223846793005ul + 1442695040888963407ul; }
__attribute__((noinline)) static unsigned long inner(long n, unsigned long x)
{
    for (long i = 0; i < n; i++)
        x = mix(x) ^ (x >> 17);
    return x;
}
__attribute__((noinline)) static unsigned long middle(long n, unsigned long x)
{
    for (int k = 0; k < 100; k++)
        x = inner(n / 100, x);
    return x;
}

static void *worker(void *arg)
{
    sink += middle(iterations, (unsigned long)arg);
    return NULL;
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now(void) { return clock_s(CLOCK_MONOTONIC); }

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (argc > 2)
        iterations = atol(argv[2]);
    pthread_t t[64];
    double start = now(), cpu_start = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    printf("work_seconds %.6f\n", now() - start);
    /* CPU the work took (user and kernel: a profiler's interrupts, stack
     * copies and signal handlers are charged here), and the whole process's */
    printf("work_cpu_seconds %.6f\n", clock_s(CLOCK_PROCESS_CPUTIME_ID) - cpu_start);
    printf("process_cpu_seconds %.6f\n", clock_s(CLOCK_PROCESS_CPUTIME_ID));
    return 0;
}
