/* 3^8 = 6561 distinct allocation stacks made in a burst, more than the
 * controller copies over at a time (1000 every 50 ms): its consumer cuts
 * its pool of addresses while stacks it has not taken yet are in it.
 * Each stack is main -> one of step0/step1/step2 eight times (the path
 * spelt by a number's base-3 digits, most significant first) ->
 * leaf_alloc, which allocates ROUNDS blocks of 24 bytes. */
#include <stdio.h>
#include <stdlib.h>

#define LEVELS 8
#define PATHS 6561
#define ROUNDS 2

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void leaf_alloc(void) { escape(malloc(24)); __asm__ volatile(""); }

void step0(int left, int path);
void step1(int left, int path);
void step2(int left, int path);

static int digit(int left, int path)
{
    for (int i = 1; i < left; i++)
        path /= 3;
    return path % 3;
}

/* (the asm after each call: no tail call, every level keeps its frame) */
static inline void next(int left, int path)
{
    if (left == 0)
        leaf_alloc();
    else if (digit(left, path) == 0)
        step0(left - 1, path);
    else if (digit(left, path) == 1)
        step1(left - 1, path);
    else
        step2(left - 1, path);
    __asm__ volatile("");
}

__attribute__((noinline)) void step0(int left, int path) { next(left, path); __asm__ volatile(""); }
__attribute__((noinline)) void step1(int left, int path) { next(left, path); __asm__ volatile(""); }
__attribute__((noinline)) void step2(int left, int path) { next(left, path); __asm__ volatile(""); }

int main(void)
{
    for (int round = 0; round < ROUNDS; round++)
        for (int path = 0; path < PATHS; path++)
            next(LEVELS, path);
    printf("paths %d levels %d rounds %d\n", PATHS, LEVELS, ROUNDS);
    return 0;
}
