/* Leak classes decided by pointers spread over 24 MiB of roots (an
 * anonymous mapping and a bss array, many 1 MiB pieces each, scanned by two
 * threads): per block, a pointer to its start in the far part of one root
 * and one into its middle elsewhere, or only pointers into the middle, or
 * none, or only a pointer from a lost block.
 *   held_start   20 x 96 bytes: a start pointer (at 7 MiB + i * 400 KiB of the mapping) -> still reachable
 *   held_middle  9 x 160 bytes: only pointers 40 bytes in (bss and the mapping's end) -> possibly lost
 *   dropped      6 x 72 bytes: no pointer anywhere -> definitely lost
 *   behind       6 x 56 bytes: pointed to only by a dropped block -> indirectly lost (56 bytes:
 *                the chunk glibc's malloc puts after the block starts inside
 *                it, 48 bytes in, and the C library's malloc state points there) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MIB (1u << 20)
static void *volatile far_bss[(8 * MIB) / sizeof(void *)];
/* The last block: malloc's top chunk, which the C library's own data
 * points to, starts inside the last block allocated. */
void *volatile last;

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void *held_start(void) { void *p = malloc(96); escape(p); return p; }
__attribute__((noinline)) void *held_middle(void) { void *p = malloc(160); escape(p); return p; }
__attribute__((noinline)) void *dropped(void) { void *p = malloc(72); escape(p); return p; }
__attribute__((noinline)) void *behind(void) { void *p = malloc(56); escape(p); return p; }

/* The stack below main, where the last blocks' addresses were, overwritten. */
__attribute__((noinline)) static void scrub(void)
{
    volatile char junk[16384];
    memset((char *)junk, 0, sizeof junk);
}

int main(void)
{
    size_t len = 16 * MIB;
    char *area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED)
        return 1;
    memset(area, 0x11, len);                 /* resident, and no accidental pointers */
    for (int i = 0; i < 20; i++) {
        void *p = held_start();
        memcpy(area + 7 * MIB + (size_t)i * 400 * 1024 + 8 * (size_t)i, &p, sizeof p);
    }
    for (int i = 0; i < 9; i++) {
        char *p = (char *)held_middle() + 40;
        if (i % 2)
            far_bss[(size_t)i * (MIB / sizeof(void *)) - 1 + (i == 0)] = p;
        else
            memcpy(area + len - 8 - 8 * (size_t)i, &p, sizeof p);
    }
    for (int i = 0; i < 6; i++) {
        void **lost = dropped();
        *lost = behind();
        memset((char *)lost + sizeof(void *), 0, 72 - sizeof(void *));
        escape(lost);
        lost = NULL;
    }
    last = malloc(32);
    scrub();
    return 0;
}
