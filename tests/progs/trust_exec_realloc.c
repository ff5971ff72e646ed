/* Workers grow 4 MiB blocks to 8 MiB with realloc in a loop while the
 * main thread execs another program: they die wherever they are, possibly
 * inside a heap hook.  Usage: trust_exec_realloc PROGRAM [ARGS] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int started;

static void *grow(void *arg)
{
    (void)arg;
    for (;;) {
        char *p = malloc(4 << 20);
        if (!p)
            continue;
        p[0] = 1;
        started = 1;
        char *q = realloc(p, 8 << 20);
        free(q ? q : p);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    pthread_t t;
    for (int i = 0; i < 4; i++)
        pthread_create(&t, NULL, grow, NULL);
    while (!started)
        ;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    execv(argv[1], argv + 1);
    perror("execv");
    return 1;
}
