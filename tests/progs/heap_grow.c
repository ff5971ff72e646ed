/* Heap events before, across and after the controller grows the event ring
 * (the test makes it grow at once): 4 threads x 150,000 malloc/free pairs
 * of mixed sizes, then a pause, then the same again (tens of MB of records,
 * round the grown ring many times), then optionally exec of argv[1] in the
 * same process, whose image writes on into the grown ring.  Every count
 * must arrive exactly; the 5 x 70 bytes of before_exec are not leaks. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "churn.h"

#define THREADS 4
#define PER_THREAD 150000

__attribute__((noinline)) static void *churn_early(void *arg) { churn_loop((long)arg, PER_THREAD); return NULL; }
__attribute__((noinline)) static void *churn_late(void *arg) { churn_loop((long)arg + THREADS, PER_THREAD); return NULL; }

static void in_threads(void *(*fn)(void *))
{
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, fn, (void *)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
}

__attribute__((noinline)) void before_exec(void) { for (int i = 0; i < 5; i++) escape(malloc(70)); }

int main(int argc, char **argv)
{
    in_threads(churn_early);
    struct timespec pause = {0, 300000000};
    nanosleep(&pause, NULL);
    in_threads(churn_late);
    before_exec();
    printf("churned\n");
    fflush(stdout);
    if (argc > 1)
        execv(argv[1], argv + 1);
    return 0;
}
