/* 8 threads x 200,000 malloc/free pairs of mixed sizes: every update must
 * arrive (allocated - freed = live, exactly). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "churn.h"

#define PER_THREAD 200000

__attribute__((noinline)) static void *churn_thread(void *arg)
{
    churn_loop((long)arg, PER_THREAD);
    return NULL;
}

int main(void)
{
    pthread_t t[8];
    for (long i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, churn_thread, (void *)i);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    printf("threads done\n");
    return 0;
}
