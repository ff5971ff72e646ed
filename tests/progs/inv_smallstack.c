/* A thread with a 16 KiB stack whose function keeps 5 KiB of locals. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

__attribute__((noinline)) static void small_stack_work(double secs)
{
    volatile char locals[5 * 1024];
    memset((char *)locals, 1, sizeof locals);
    struct timespec t0, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    do {
        for (int i = 0; i < 5000; i++)
            locals[i % sizeof locals] += (char)i;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) * 1e-9 < secs);
}

static void *body(void *arg)
{
    small_stack_work(*(double *)arg);
    return NULL;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.5;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 16384);
    pthread_t t;
    if (pthread_create(&t, &a, body, &secs) != 0)
        return 2;
    pthread_join(t, NULL);
    puts("small stack done");
    return 0;
}
