/* The controller copies stacks over while the program runs, and its
 * consumer then lets go of their addresses, finding such a stack again by
 * its hash.  Here (run with --mem-depth 2) main and a thread started after
 * a pause allocate through via() -> site(): the same two-frame stack,
 * which the thread, having sent nothing yet, sends whole again after the
 * controller has taken and dropped it.  Then main allocates through
 * later() -> site(): a new stack in the cut pool.  Prints what each chain
 * allocated. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAIN_VIA 6
#define THREAD_VIA 9
#define LATER 4

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void site(int n, size_t size) { for (int i = 0; i < n; i++) escape(malloc(size)); }
__attribute__((noinline)) void via(int n) { site(n, 40); __asm__ volatile(""); }
__attribute__((noinline)) void later(int n) { site(n, 72); __asm__ volatile(""); }

static void *thread_main(void *arg) { via(THREAD_VIA); return arg; }

int main(void)
{
    via(MAIN_VIA);
    /* the controller takes new stacks every 50 ms: long enough for it to
     * have taken (and its consumer dropped) this one */
    struct timespec pause = {0, 500 * 1000 * 1000};
    nanosleep(&pause, NULL);
    pthread_t t;
    pthread_create(&t, NULL, thread_main, NULL);
    pthread_join(t, NULL);
    later(LATER);
    printf("via %d later %d\n", MAIN_VIA + THREAD_VIA, LATER);
    return 0;
}
