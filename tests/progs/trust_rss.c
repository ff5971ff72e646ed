/* An allocation-heavy program with a known working set: keeps a window of
 * WINDOW_KB KiB of live blocks (16..4096 bytes) while allocating and
 * freeing ROUNDS times, then prints its own peak RSS (VmHWM, KiB).
 * Usage: trust_rss WINDOW_KB ROUNDS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    long window_kb = argc > 1 ? atol(argv[1]) : 4096, rounds = argc > 2 ? atol(argv[2]) : 1000000;
    long slots = window_kb * 1024 / 2056;
    char **blocks = calloc(slots, sizeof *blocks);
    unsigned x = 1;
    for (long i = 0; i < rounds; i++) {
        x = x * 1103515245u + 12345u;
        long s = (x >> 8) % slots;
        free(blocks[s]);
        size_t n = 16 + (x >> 4) % 4081;
        blocks[s] = malloc(n);
        memset(blocks[s], 1, n);
    }
    for (long s = 0; s < slots; s++)
        free(blocks[s]);
    free(blocks);
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6))
            printf("hwm_kb %ld\n", atol(line + 6));
    fclose(f);
    return 0;
}
