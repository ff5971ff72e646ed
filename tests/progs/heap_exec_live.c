/* A process that allocates, then execs itself and allocates on for a
 * while: 7 blocks of 50 bytes in before_exec (gone with the old image),
 * then for argv[2] seconds blocks of 24 bytes under a recursion whose depth
 * cycles through 0..63, so new allocation stacks keep coming while it runs.
 * Prints how many blocks after_exec allocated. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void before_exec(void) { for (int i = 0; i < 7; i++) escape(malloc(50)); }

static long blocks;

__attribute__((noinline)) void after_exec(int depth)
{
    if (depth > 0) {
        after_exec(depth - 1);
        __asm__ volatile("");        /* not a tail call: every level stays on the stack */
        return;
    }
    void *p = malloc(24);
    escape(p);
    free(p);
    blocks++;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "after") == 0) {
        double end = now() + atof(argv[2]);
        for (int round = 0; now() < end; round++)
            for (int i = 0; i < 100; i++)
                after_exec(round % 64);
        printf("after_exec %ld\n", blocks);
        return 0;
    }
    before_exec();
    char *args[] = {argv[0], "after", argc > 1 ? argv[1] : "1.5", NULL};
    execv("/proc/self/exe", args);
    return 1;
}
