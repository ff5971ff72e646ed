/* The bundled demo: a small program with a clear CPU profile.  Roughly half
 * its work is in compute_primes, 30% in checksum_buffer (through
 * process_block), 20% in sort_records. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile unsigned long sink;

__attribute__((noinline)) static unsigned long compute_primes(unsigned long limit)
{
    unsigned long count = 0;
    for (unsigned long n = 2; n < limit; n++) {
        int prime = 1;
        for (unsigned long d = 2; d * d <= n; d++)
            if (n % d == 0) { prime = 0; break; }
        count += prime;
    }
    return count;
}

__attribute__((noinline)) static unsigned long checksum_buffer(const unsigned char *p, size_t n)
{
    unsigned long h = 1469598103934665603ul;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ul;
    return h;
}

__attribute__((noinline)) static unsigned long process_block(size_t n, int rounds)
{
    unsigned char *buf = malloc(n);
    unsigned long h = 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(i * 31);
    for (int r = 0; r < rounds; r++) {
        buf[(size_t)r % n] ^= (unsigned char)r; /* new data each round: no hoisting */
        h += checksum_buffer(buf, n);
    }
    free(buf);
    return h;
}

static int cmp(const void *a, const void *b)
{
    unsigned a1 = *(const unsigned *)a, b1 = *(const unsigned *)b;
    return (a1 > b1) - (a1 < b1);
}

__attribute__((noinline)) static void sort_records(size_t n, int rounds)
{
    unsigned *v = malloc(n * sizeof *v);
    for (int r = 0; r < rounds; r++) {
        unsigned x = 12345u + (unsigned)r;
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            v[i] = x;
        }
        qsort(v, n, sizeof *v, cmp);
    }
    sink += v[0];
    free(v);
}

int main(int argc, char **argv)
{
    double scale = argc > 1 ? atof(argv[1]) : 1.0;
    sink += compute_primes((unsigned long)(2600000 * scale));
    sink += process_block(1 << 20, (int)(300 * scale));
    sort_records(200000, (int)(20 * scale));
    printf("demo done (%lu)\n", sink & 0xff);
    return 0;
}
