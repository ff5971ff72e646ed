/* For SECONDS, starts one short thread after another (each computes for
 * about 3 ms and ends); the main thread only starts and joins them. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile double sink;

static double thread_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((noinline)) static void short_thread_work(double secs)
{
    double t0 = thread_cpu(), x = 0;
    while (thread_cpu() - t0 < secs)
        for (int i = 0; i < 1000; i++)
            x += i * 0.5;
    sink = x;
}

static void *body(void *arg)
{
    short_thread_work(0.003);
    return arg;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 3.0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long n = 0;
    do {
        pthread_t th;
        pthread_create(&th, NULL, body, NULL);
        pthread_join(th, NULL);
        n++;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) * 1e-9 < secs);
    printf("threads %s\n", n > 10 ? "many" : "few");
    return 0;
}
