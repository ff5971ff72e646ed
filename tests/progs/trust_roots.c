/* Leak classes with every kind of root valgrind has, and more:
 *  - BLOCKED threads, blocked at exit, each holding a 100-byte block only in
 *    a local variable on its own stack (still reachable);
 *  - a joined thread (its DTV, allocated by pthread_create, lives on in
 *    glibc's cache of stacks: not lost);
 *  - a 300-byte block held only by a __thread pointer of the main thread;
 *  - a 5000-byte block held only by a pointer into its middle (possibly lost);
 *  - a 777-byte block nothing points to (definitely lost).
 * Usage: trust_roots BLOCKED */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int ready;
__thread char *volatile tls_held;   /* volatile, extern: the stores must stay */
char *volatile interior;

__attribute__((noinline)) void *hold_on_stack(void *arg)
{
    (void)arg;
    char *volatile mine = malloc(100);
    memset(mine, 1, 100);
    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_broadcast(&cond);
    for (;;)
        pthread_cond_wait(&cond, &lock);   /* never returns: blocked at exit */
    return mine;
}

static void *nothing(void *arg) { return arg; }

__attribute__((noinline)) void tls_alloc(void) { tls_held = malloc(300); memset(tls_held, 2, 300); }
__attribute__((noinline)) void interior_alloc(void) { interior = (char *)malloc(5000) + 2000; }
__attribute__((noinline)) void lost_alloc(void)
{
    char *volatile p = malloc(777);
    memset(p, 3, 777);
    p = NULL;
}

int main(int argc, char **argv)
{
    int blocked = argc > 1 ? atoi(argv[1]) : 70;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (int i = 0; i < blocked; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, hold_on_stack, NULL) != 0)
            return 1;
    }
    pthread_mutex_lock(&lock);
    while (ready < blocked)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    pthread_t j;
    pthread_create(&j, NULL, nothing, NULL);
    pthread_join(j, NULL);
    tls_alloc();
    interior_alloc();
    lost_alloc();
    printf("roots ready %d\n", blocked);
    fflush(stdout);
    exit(0);
}
