/* 8 threads x 200,000 malloc/free pairs of mixed sizes: every update must
 * arrive (allocated - freed = live, exactly). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

#define PER_THREAD 200000

__attribute__((noinline)) static void *churn_thread(void *arg)
{
    unsigned x = (unsigned)(long)arg * 2654435761u + 1;
    void *keep[16] = {0};
    for (int i = 0; i < PER_THREAD; i++) {
        x = x * 1103515245u + 12345u;
        size_t n = 16 + (x >> 8) % 512;
        int slot = (int)(x >> 4) % 16;
        if (keep[slot])
            free(keep[slot]);
        keep[slot] = malloc(n);
        escape(keep[slot]);
    }
    for (int i = 0; i < 16; i++)
        free(keep[i]);
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
