/* A fork child leaks 3 x 500 bytes from child_site and exits; the parent
 * reaps it, says "ready CHILD_PID", sleeps, exits. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void child_site(void) { for (int i = 0; i < 3; i++) escape(malloc(500)); }

int main(void)
{
    pid_t c = fork();
    if (c == 0) {
        child_site();
        exit(0);
    }
    waitpid(c, NULL, 0);
    printf("ready %d\n", (int)c);
    fflush(stdout);
    sleep(2);
    return 0;
}
