/* Leaks 5 x 300 bytes in doomed_alloc, then dies as argv[1] says. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void doomed_alloc(void) { for (int i = 0; i < 5; i++) escape(malloc(300)); }

int main(int argc, char **argv)
{
    doomed_alloc();
    if (argc > 1 && !strcmp(argv[1], "segv"))
        *(volatile int *)8 = 1;
    if (argc > 1 && !strcmp(argv[1], "sigkill"))
        kill(getpid(), SIGKILL);
    if (argc > 1 && !strcmp(argv[1], "_exit"))
        _exit(4);
    return 0;
}
