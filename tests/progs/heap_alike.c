/* Heap stacks for test_memory's test_heap_rows_alike_in_c_and_in_python:
 * the same sites reached at recursion depths 0..COUNT_DEPTHS-1 (so at the
 * default 32 frames per allocation stack some stacks are truncated, and
 * those alike once truncated, some not), and two call
 * sites in one function, different addresses that resolve to the same
 * frames (rows that merge), and one call through a pointer reaching
 * either site (stacks that differ only in their leaf).  Counts: argv[1]
 * rounds (even): 1.5 times that from each of site_malloc and site_calloc,
 * once from site_path; argv[2]: microseconds between rounds. */
#include <stdlib.h>
#include <unistd.h>

#define COUNT_DEPTHS 40

void *volatile sink;

/* (the empty asm after the call: not a tail call, so a frame of its own) */
__attribute__((noinline)) void *site_malloc(size_t n)
{
    void *p = malloc(n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

__attribute__((noinline)) void *site_calloc(size_t n)
{
    void *p = calloc(1, n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

__attribute__((noinline)) void two_call_sites(int i)
{
    if (i & 1)
        sink = site_malloc(16);
    else
        sink = site_malloc(48);
    free(sink);
}

void *(*volatile sites[2])(size_t) = {site_malloc, site_calloc};

__attribute__((noinline)) void through_pointer(int i)
{
    free(sites[i & 1](24));
}

__attribute__((noinline)) void deep(int depth, int i)
{
    if (depth == 0) {
        two_call_sites(i);
        through_pointer(i);
        free(site_calloc(64));
        return;
    }
    deep(depth - 1, i);
    __asm__ volatile("" ::: "memory");   /* not a tail call: every level is a frame */
}

/* A path of left/right calls spelled by the bits of `bits`: 4096
 * different stacks at depth 12, each first met when the rounds reach it
 * (new stacks all along a longer run). */
__attribute__((noinline)) void *site_path(size_t n)
{
    void *p = malloc(n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

__attribute__((noinline)) void left(unsigned bits, int depth);
__attribute__((noinline)) void right(unsigned bits, int depth);

__attribute__((noinline)) void path(unsigned bits, int depth)
{
    if (depth == 0)
        free(site_path(8));
    else if (bits & 1)
        left(bits >> 1, depth - 1);
    else
        right(bits >> 1, depth - 1);
    __asm__ volatile("" ::: "memory");
}

void left(unsigned bits, int depth) { path(bits, depth); __asm__ volatile("" ::: "memory"); }
void right(unsigned bits, int depth) { path(bits, depth); __asm__ volatile("" ::: "memory"); }

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 1000;
    int pause_us = argc > 2 ? atoi(argv[2]) : 0;     /* between rounds: a longer run */
    for (int i = 0; i < rounds; i++) {
        deep(i % COUNT_DEPTHS, i);
        path((unsigned)i % 4096, 12);
        if (pause_us)
            usleep(pause_us);
    }
    return 0;
}
