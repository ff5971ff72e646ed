/* The churn loop of mem_threads.c and heap_grow.c: `per_thread`
 * malloc/free pairs of mixed sizes (16-527 bytes) from a generator seeded
 * with `seed`, at most 16 blocks held at once.  test_memory's churn_bytes
 * follows the same generator.  Always inlined: the allocation site is the
 * caller's own frame. */
#include <stdlib.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((always_inline)) static inline void churn_loop(long seed, int per_thread)
{
    unsigned x = (unsigned)seed * 2654435761u + 1;
    void *keep[16] = {0};
    for (int i = 0; i < per_thread; i++) {
        x = x * 1103515245u + 12345u;
        size_t n = 16 + (x >> 8) % 512;
        int slot = (int)(x >> 4) % 16;
        if (keep[slot])
            free(keep[slot]);
        keep[slot] = malloc(n);
        escape(keep[slot]);
    }
    for (int i = 0; i < 16; i++)
        free(keep[i]);
}
