/* One function, compiled into two libraries with different stack frames
 * (BIG: 8 KiB of locals, else 512 B) but the same code layout, so that after
 * dlclose of the first, the second is loaded at the same addresses and its
 * return address after malloc is the very same pc with another unwind rule. */
#include <stdlib.h>

__attribute__((noinline)) void *work(size_t n)
{
#ifdef BIG
    volatile char pad[8192];
#else
    volatile char pad[512];
#endif
    pad[0] = 1;
    void *p = malloc(n);
    pad[1] = 2;
    return p;
}
