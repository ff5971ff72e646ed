/* Many allocations of mixed sizes from two sites, for sampled mode:
 * big_site allocates ~3x the bytes of small_site. */
#include <stdio.h>
#include <stdlib.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void small_site(unsigned *x)
{
    *x = *x * 1103515245u + 12345u;
    void *p = malloc(16 + (*x >> 8) % 240);
    escape(p);
    free(p);
}

__attribute__((noinline)) void big_site(unsigned *x)
{
    *x = *x * 1103515245u + 12345u;
    void *p = malloc(48 + (*x >> 8) % 720);
    escape(p);
    free(p);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    unsigned x = 7;
    for (long i = 0; i < n; i++) {
        small_site(&x);
        big_site(&x);
    }
    printf("big done\n");
    return 0;
}
