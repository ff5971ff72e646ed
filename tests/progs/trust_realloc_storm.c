/* THREADS threads on one arena (run with MALLOC_ARENA_MAX=1 and tcache
 * off): each does ROUNDS of malloc -> realloc -> free and malloc -> free,
 * so addresses one thread's realloc releases or takes are at once another
 * thread's.  Everything is freed.  Usage: trust_realloc_storm THREADS ROUNDS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static long rounds;

static void *storm(void *arg)
{
    unsigned x = (unsigned)(long)arg * 2654435761u + 1;
    for (long i = 0; i < rounds; i++) {
        x = x * 1103515245u + 12345u;
        char *a = malloc(24 + (x >> 8) % 200);
        a[0] = 1;
        char *b = realloc(a, 24 + (x >> 16) % 400);
        b[0] = 2;
        free(b);
        char *c = malloc(24 + (x >> 20) % 100);
        c[0] = 3;
        free(c);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int n = atoi(argv[1]);
    rounds = atol(argv[2]);
    pthread_t t[64];
    for (int i = 0; i < n && i < 64; i++)
        pthread_create(&t[i], NULL, storm, (void *)(long)i);
    for (int i = 0; i < n && i < 64; i++)
        pthread_join(t[i], NULL);
    printf("storm done\n");
    return 0;
}
