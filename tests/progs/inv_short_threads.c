/* 200 threads of 0.12 ms of CPU each, one after the other, then the main
 * thread computes; prints the CPU seconds each part used. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double tcpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static volatile double sink;
static double thread_cpu[200];

__attribute__((noinline)) static void short_work(double secs)
{
    double t0 = tcpu(), x = 0;
    while (tcpu() - t0 < secs)
        for (int i = 0; i < 1000; i++)
            x += i * 0.25;
    sink = x;
}

static void *body(void *arg)
{
    short_work(0.00012);
    *(double *)arg = tcpu();
    return NULL;
}

__attribute__((noinline)) static void main_work(double secs)
{
    double t0 = tcpu(), x = 0;
    while (tcpu() - t0 < secs)
        for (int i = 0; i < 1000; i++)
            x -= i * 0.75; /* not the same code as short_work: gcc would fold the two */
    sink = x;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    double secs = argc > 2 ? atof(argv[2]) : 0.02;
    for (int i = 0; i < n && i < 200; i++) {
        pthread_t t;
        pthread_create(&t, NULL, body, &thread_cpu[i]);
        pthread_join(t, NULL);
    }
    double threads = 0;
    for (int i = 0; i < n && i < 200; i++)
        threads += thread_cpu[i];
    double t0 = tcpu();
    main_work(secs);
    printf("threads_cpu=%.6f main_cpu=%.6f\n", threads, tcpu() - t0);
    return 0;
}
