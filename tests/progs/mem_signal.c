/* A signal handler that allocates (not async-signal-safe, but programs do
 * it): ctprof must not hang or crash. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }
static volatile int hits;

static void on_alarm(int sig)
{
    (void)sig;
    void *p = malloc(64);
    escape(p);
    free(p);
    hits++;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 200}, {0, 200}};
    setitimer(ITIMER_REAL, &it, NULL);
    for (int i = 0; i < 300000; i++) {
        void *p = malloc(16 + i % 200);
        escape(p);
        free(p);
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("signal done %d\n", hits > 0);
    return 0;
}
