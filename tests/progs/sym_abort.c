/* A function whose last instruction is a call to abort() (noreturn): its
 * return address is the first byte after it, i.e. the next function.  The
 * SIGABRT handler prints the stack (glibc backtrace) and the addresses of
 * both functions, then waits on stdin while the test reads /proc/PID/maps. */
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile int sink;

__attribute__((noinline, noipa)) void ends_in_abort(int x)
{
    sink = x;
    abort();
}

__attribute__((noinline, noipa)) void after_abort(void)
{
    sink = 42;
}

static void on_abrt(int sig)
{
    void *buf[64];
    int n = backtrace(buf, 64);
    (void)sig;
    for (int i = 0; i < n; i++)
        printf("bt %p\n", buf[i]);
    printf("ends_in_abort %p\nafter_abort %p\nREADY\n", (void *)&ends_in_abort, (void *)&after_abort);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    _exit(0);
}

int main(int argc, char **argv)
{
    (void)argv;
    signal(SIGABRT, on_abrt);
    ends_in_abort(argc);
    after_abort();
    return 0;
}
