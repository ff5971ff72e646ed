/* Known heap answers:
 *  - leak_small: 10 blocks of 100 bytes, never freed, no pointer kept
 *  - leak_big:   3 blocks of 5000 bytes, never freed, no pointer kept
 *  - keep_global: 4 blocks of 256 bytes held by a global array (still reachable)
 *  - lost_list:  a linked list of 1 + 7 nodes of 64 bytes whose head is dropped
 *                (1 definitely lost, 7 indirectly lost)
 *  - churn: 1000 blocks of 32 bytes allocated and freed
 * and a peak: 1 MiB held in peak_holder, then freed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node { struct node *next; char pad[56]; };
static void *globals[4];
volatile unsigned long sink;

/* Keep the compiler from eliding a malloc/free pair it can see through. */
static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void leak_small(void)
{
    for (int i = 0; i < 10; i++) {
        char *p = malloc(100);
        memset(p, 1, 100);
        sink += (unsigned long)p[5];
    }
}

__attribute__((noinline)) void leak_big(void)
{
    for (int i = 0; i < 3; i++) {
        char *p = malloc(5000);
        memset(p, 2, 5000);
        sink += (unsigned long)p[7];
    }
}

__attribute__((noinline)) void keep_global(void)
{
    for (int i = 0; i < 4; i++)
        globals[i] = calloc(1, 256);
}

__attribute__((noinline)) void lost_list(void)
{
    struct node *head = NULL;
    for (int i = 0; i < 8; i++) {
        struct node *n = malloc(sizeof *n);
        memset(n, 0, sizeof *n);
        n->next = head;
        head = n;
    }
    sink += (unsigned long)(head != NULL);
    head = NULL;
}

__attribute__((noinline)) void churn(void)
{
    for (int i = 0; i < 1000; i++) {
        void *p = malloc(32);
        escape(p);
        free(p);
    }
}

__attribute__((noinline)) void peak_holder(void)
{
    char *big = malloc(1 << 20);
    escape(big);
    memset(big, 3, 1 << 20);
    sink += (unsigned long)big[100];
    free(big);
}

int main(void)
{
    leak_small();
    leak_big();
    keep_global();
    lost_list();
    churn();
    peak_holder();
    /* wipe the stack area the helpers used, so no stale copy of a lost
     * pointer survives in a dead frame */
    volatile char scrub[4096];
    memset((char *)scrub, 0, sizeof scrub);
    printf("leaks done %p\n", (void *)globals[0] ? "ok" : "?");
    return 0;
}
