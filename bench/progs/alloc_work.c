/* Benchmark target for heap profiling: N threads (argv[1]) each make
 * argv[2] allocations of mixed sizes (16..4 KiB, a few large), keeping a
 * window of live blocks; prints the time of the work itself and the count. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long per_thread = 350000;
static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) static void *make_block(unsigned x)
{
    size_t n = (x & 1023) == 0 ? 65536 + (x >> 12) % 65536 : 16 + (x >> 8) % 1024;
    void *p = malloc(n);
    escape(p);
    return p;
}

__attribute__((noinline)) static void *worker(void *arg)
{
    unsigned x = (unsigned)(long)arg * 2654435761u + 1;
    void *window[256] = {0};
    for (long i = 0; i < per_thread; i++) {
        x = x * 1103515245u + 12345u;
        int slot = (int)((x >> 5) & 255);
        free(window[slot]);
        window[slot] = make_block(x);
    }
    for (int i = 0; i < 256; i++)
        free(window[i]);
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (argc > 2)
        per_thread = atol(argv[2]);
    pthread_t t[64];
    double start = now();
    for (long i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    printf("work_seconds %.6f\nallocations %ld\n", now() - start, per_thread * threads);
    return 0;
}
