/* Leak classes over a heap of argv[1] reachable 128-byte blocks
 * (`ballast`, held by an array that a global points to): with a few, the
 * leak scan follows the blocks in its copy of the heap; with 300,000 (over
 * 40 MiB of heap, more than it copies) it reads them one by one.
 *  - ballast:   N blocks of 128 bytes, still reachable
 *  - held_list: 5 nodes of 64 bytes behind a global, still reachable
 *  - lost_list: 1 + 7 nodes of 64 bytes whose head is dropped
 *               (1 definitely lost, 7 indirectly lost)
 *  - interior:  one block of 96 bytes a global points 40 bytes into
 *               (possibly lost) */
#include <stdlib.h>
#include <string.h>

struct node { struct node *next; char pad[56]; };
/* (not static: the compiler keeps what is stored in them) */
void **ballast_blocks;
struct node *held;
char *inside;
volatile unsigned long sink;

__attribute__((noinline)) void ballast(long n)
{
    ballast_blocks = malloc((size_t)n * sizeof *ballast_blocks);
    for (long i = 0; i < n; i++) {
        ballast_blocks[i] = malloc(128);
        memset(ballast_blocks[i], 0, 128);
    }
}

__attribute__((noinline)) struct node *list_of(int n)
{
    struct node *head = NULL;
    for (int i = 0; i < n; i++) {
        struct node *x = malloc(sizeof *x);
        memset(x, 0, sizeof *x);
        x->next = head;
        head = x;
    }
    return head;
}

__attribute__((noinline)) void held_list(void) { held = list_of(5); }

__attribute__((noinline)) void lost_list(void)
{
    struct node *head = list_of(8);
    sink += (unsigned long)(head != NULL);
}

__attribute__((noinline)) void interior(void)
{
    char *p = malloc(96);
    memset(p, 0, 96);
    inside = p + 40;
}

/* Zero the stack below main's frame, where the calls above left copies
 * of their pointers (the exit's frames, whose stack is scanned, lie there). */
__attribute__((noinline)) void scrub_stack(void)
{
    char area[65536];
    memset(area, 0, sizeof area);
    __asm__ volatile("" : : "r"(area) : "memory");   /* (the stores are kept) */
}

int main(int argc, char **argv)
{
    ballast(argc > 1 ? atol(argv[1]) : 1000);
    held_list();
    lost_list();
    interior();
    scrub_stack();
    return 0;
}
