/* N threads (default 4) each spin for the same CPU time in thread_spin. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds = 0.5;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static void *thread_spin(void *arg)
{
    volatile unsigned long x = 0;
    double end = cpu_now() + seconds;
    char name[16];
    snprintf(name, sizeof name, "worker-%ld", (long)arg);
    pthread_setname_np(pthread_self(), name);
    while (cpu_now() < end)
        for (int i = 0; i < 1000; i++)
            x += i;
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2)
        seconds = atof(argv[2]);
    pthread_t t[64];
    for (long i = 0; i < n && i < 64; i++)
        pthread_create(&t[i], NULL, thread_spin, (void *)i);
    for (int i = 0; i < n && i < 64; i++)
        pthread_join(t[i], NULL);
    printf("threads done\n");
    return 0;
}
