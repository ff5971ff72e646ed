/* Allocates 7 x 50 bytes in before_exec, then execs argv[1] in the same
 * process: those blocks vanish with the old image, they are not leaks. */
#include <stdlib.h>
#include <unistd.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void before_exec(void) { for (int i = 0; i < 7; i++) escape(malloc(50)); }

int main(int argc, char **argv)
{
    before_exec();
    if (argc > 1)
        execv(argv[1], argv + 1);
    return 1;
}
