/* Coroutines on 16 KiB heap stacks switched with swapcontext in a loop. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <ucontext.h>

static ucontext_t main_ctx, co_ctx[4];
static volatile double sink;

__attribute__((noinline)) static void coroutine_work(int id)
{
    for (;;) {
        double x = 0;
        for (int i = 0; i < 2000; i++)
            x += i * (id + 1);
        sink = x;
        swapcontext(&co_ctx[id], &main_ctx);
    }
}

static double cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.5;
    for (int i = 0; i < 4; i++) {
        getcontext(&co_ctx[i]);
        co_ctx[i].uc_stack.ss_sp = malloc(16384);
        co_ctx[i].uc_stack.ss_size = 16384;
        co_ctx[i].uc_link = &main_ctx;
        makecontext(&co_ctx[i], (void (*)(void))coroutine_work, 1, i);
    }
    double end = cpu() + secs;
    long switches = 0;
    while (cpu() < end)
        for (int i = 0; i < 4; i++, switches++)
            swapcontext(&main_ctx, &co_ctx[i]);
    printf("switches %s\n", switches > 0 ? "ok" : "none");
    return 0;
}
