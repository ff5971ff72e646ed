/* The parent leaks 2 x 111 bytes in parent_leak; a fork child leaks
 * 3 x 222 bytes in child_leak; an exec'd program (argv[1]) does its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void parent_leak(void) { for (int i = 0; i < 2; i++) escape(malloc(111)); }
__attribute__((noinline)) void child_leak(void) { for (int i = 0; i < 3; i++) escape(malloc(222)); }

int main(int argc, char **argv)
{
    pid_t c = fork();
    if (c == 0) {
        child_leak();
        exit(0);
    }
    if (argc > 1) {
        pid_t e = fork();
        if (e == 0) {
            execv(argv[1], argv + 1);
            _exit(127);
        }
        waitpid(e, NULL, 0);
    }
    parent_leak();
    waitpid(c, NULL, 0);
    printf("fork done\n");
    return 0;
}
