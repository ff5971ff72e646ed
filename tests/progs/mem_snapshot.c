/* Holds 4 x 1000 bytes from hold_for_a_while, says "ready", sleeps, frees. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void hold_for_a_while(void **out)
{
    for (int i = 0; i < 4; i++) {
        out[i] = malloc(1000);
        escape(out[i]);
    }
}

int main(void)
{
    void *held[4];
    hold_for_a_while(held);
    printf("ready\n");
    fflush(stdout);
    sleep(2);
    for (int i = 0; i < 4; i++)
        free(held[i]);
    return 0;
}
