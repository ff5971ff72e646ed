/* Source lines and inlining: record() saves its return address, called from
 * outer() directly (MARK_DIRECT) and through an always_inline helper
 * (MARK_INLINE inside the helper, MARK_OUTER at the helper's call site). */
#include <stdio.h>
#include <unistd.h>

volatile int sink;
static void *ra[2];

__attribute__((noinline, noipa)) void record(int slot)
{
    ra[slot] = __builtin_return_address(0);
}

static inline __attribute__((always_inline)) void helper(int x)
{
    sink = x;
    record(1); /* MARK_INLINE */
    sink = x + 1;
}

__attribute__((noinline, noipa)) void outer(int x)
{
    record(0); /* MARK_DIRECT */
    sink = 0;
    helper(x); /* MARK_OUTER */
    sink = 2;
}

int main(int argc, char **argv)
{
    (void)argv;
    outer(argc);
    printf("record %p\nouter %p\nra_direct %p\nra_inline %p\nREADY\n",
           (void *)&record, (void *)&outer, ra[0], ra[1]);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}
