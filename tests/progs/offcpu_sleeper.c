/* Sleeps 10 ms at a time, computing a little in between, for SECONDS. */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) void nap(void)
{
    usleep(10000);
    __asm__ volatile("" ::: "memory"); /* not a tail call: nap stays in the stack */
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 3.0;
    time_t end = time(NULL) + (time_t)secs + 1;
    volatile double x = 0;
    while (time(NULL) < end) {
        nap();
        for (int i = 0; i < 10000; i++)
            x += i;
    }
    return 0;
}
