/* A library whose hot functions are all static: once stripped, no symbol
 * names them (only the exported entry point is in .dynsym), so a profiler
 * sees only addresses.  Each function loops over different arithmetic so
 * its samples spread over many instructions. */
#include <stdint.h>

static volatile uint64_t sink;

__attribute__((noinline)) static uint64_t mix_a(uint64_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) {
        h ^= i;
        h *= 1099511628211ull;
        h ^= h >> 29;
    }
    return h;
}

__attribute__((noinline)) static uint64_t mix_b(uint64_t n)
{
    uint64_t x = 88172645463325252ull, s = 0;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s += x % 1000003;
    }
    return s;
}

__attribute__((noinline)) static uint64_t mix_c(uint64_t n)
{
    double a = 1.0, b = 0.5;
    for (uint64_t i = 0; i < n; i++) {
        a = a * 1.0000001 + b;
        b = b * 0.9999999 + 1e-9 * (double)(i & 1023);
    }
    return (uint64_t)a ^ (uint64_t)b;
}

/* The exported entry: weights 1 : 2 : 1 of work units. */
uint64_t lib_work(uint64_t units)
{
    uint64_t r = 0;
    for (uint64_t u = 0; u < units; u++) {
        /* n varies with u: the calls cannot be hoisted out of the loop */
        r += mix_a(200000 + u);
        r += mix_b(200000 + u);
        r += mix_b(200001 + u);
        r += mix_c(200000 + u);
    }
    sink = r;
    return r;
}
