/* A realloc chain grown 16 -> 16*2^k (k = 1..10), freed; a second chain
 * grown to 4096 and leaked (no pointer kept).  In-place growth counts too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void grow_and_free(void)
{
    char *p = malloc(16);
    for (size_t n = 32; n <= 16384; n *= 2) {
        p = realloc(p, n);
        memset(p, 1, n);
        escape(p);
    }
    free(p);
}

__attribute__((noinline)) void grow_and_leak(void)
{
    char *p = realloc(NULL, 64);           /* realloc(NULL, n) is malloc */
    for (size_t n = 128; n <= 4096; n *= 2) {
        p = realloc(p, n);
        escape(p);
    }
    memset(p, 0, 4096);
    escape(p);
}

int main(void)
{
    grow_and_free();
    grow_and_leak();
    volatile char scrub[2048];
    memset((char *)scrub, 0, sizeof scrub);
    printf("realloc done\n");
    return 0;
}
