/* Consecutive allocations from different callers at the same depth of the
 * stack: the heap hooks' unwinder starts from the thread's last walk where
 * it still holds (cfi.c, "the thread's last walk"), and must notice every
 * time the callers above a frame it shares with the last walk changed.
 *
 * Round i allocates through one of three paths, each with its own size:
 * path_a 24 bytes, path_b 40, path_c 56 (path_c's frame is rbp-based: it
 * calls alloca with a size that changes every round), from a recursion
 * `descend` of depth 3 + (i / 2) % 3, and frees the block at once.  Usage:
 * heap_callers ROUNDS.  Which path and depth round i takes is
 * path_of(i) and depth_of(i) below (the test computes the same). */
#include <alloca.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static volatile uintptr_t sink;

__attribute__((noinline)) static void *leaf(size_t n)
{
    void *p = malloc(n);
    sink += (uintptr_t)p;     /* no tail call: leaf keeps its frame */
    return p;
}

__attribute__((noinline)) void *path_a(size_t n) { void *p = leaf(n); sink++; return p; }
__attribute__((noinline)) void *path_b(size_t n) { void *p = leaf(n); sink += 2; return p; }
__attribute__((noinline)) void *path_c(size_t n, size_t pad)
{
    volatile char *b = alloca(pad);
    b[0] = 1;
    void *p = leaf(n);
    sink += b[0];
    return p;
}

static int path_of(long i) { return (int)((i * 7 + i / 3) % 3); }
static int depth_of(long i) { return 3 + (int)((i / 2) % 3); }

__attribute__((noinline)) void descend(int depth, long i)
{
    if (depth > 0) {
        descend(depth - 1, i);
        sink++;
        return;
    }
    int which = path_of(i);
    void *p = which == 0 ? path_a(24) : which == 1 ? path_b(40) : path_c(56, 16 + (size_t)(i % 5) * 32);
    free(p);
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 30000;
    for (long i = 0; i < rounds; i++)
        descend(depth_of(i), i);
    printf("%ld rounds\n", rounds);
    return 0;
}
