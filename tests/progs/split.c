/* Spends 50%, 30% and 20% of its CPU time in three functions, measured by
 * the process CPU clock, so the expected profile shares are exact. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

#define SPIN(name)                                              \
    __attribute__((noinline)) void name(double seconds)         \
    {                                                           \
        double end = cpu_now() + seconds;                       \
        while (cpu_now() < end)                                 \
            for (int i = 0; i < 2000; i++)                      \
                sink += (unsigned long)i * 7;                   \
    }
SPIN(spin_fifty)
SPIN(spin_thirty)
SPIN(spin_twenty)

int main(int argc, char **argv)
{
    double total = argc > 1 ? atof(argv[1]) : 1.0;
    /* Interleave in slices so any drift in the timer is shared evenly. */
    for (int slice = 0; slice < 10; slice++) {
        spin_fifty(total * 0.05);
        spin_thirty(total * 0.03);
        spin_twenty(total * 0.02);
    }
    printf("split done\n");
    return 0;
}
