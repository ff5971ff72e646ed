/* A block lost after its address passed through rbp while the heap hooks
 * walked the stack (test_memory's test_a_pointer_the_unwinder_saw_hides_no_leak).
 *
 * leak_through_rbp puts the block's address in rbp and calls a function
 * whose prologue saves rbp: the hook's unwinder reads that saved word (and
 * its memo of the walk keeps it), then the address is forgotten.  valgrind
 * says "definitely lost"; so must ctprof -- a copy kept by the shim is not
 * the program's.  x86-64 (rbp, inline asm). */
#include <stdlib.h>
#include <string.h>

void *volatile sink;

/* Keeps a frame pointer: its prologue saves the caller's rbp. */
__attribute__((noinline, optimize("no-omit-frame-pointer"))) void alloc_with_saved_rbp(void)
{
    sink = malloc(24);
    __asm__ volatile("" ::: "memory");
}

/* Calls alloc_with_saved_rbp with the new block's address in rbp (the
 * stack 16-aligned, past the red zone), then forgets it. */
__attribute__((noinline)) void leak_through_rbp(size_t n)
{
    void *p = malloc(n);
    memset(p, 0, n);
    __asm__ volatile(
        "push %%rbp\n\t"
        "push %%r12\n\t"
        "mov %%rsp, %%r12\n\t"
        "sub $256, %%rsp\n\t"
        "and $-16, %%rsp\n\t"
        "mov %0, %%rbp\n\t"
        "call alloc_with_saved_rbp\n\t"
        "mov %%r12, %%rsp\n\t"
        "pop %%r12\n\t"
        "pop %%rbp\n\t"
        : : "r"(p) : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
}

/* Overwrites the dead stack below main's frame. */
__attribute__((noinline)) void scrub(void)
{
    volatile char buf[4096];
    memset((char *)buf, 0, sizeof buf);
}

int main(void)
{
    leak_through_rbp(4242);
    scrub();
    free(sink);
    return 0;
}
