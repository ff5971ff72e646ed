/* Loads the plugin given as argv[1] after start (after sampling began) and
 * spends its time in it. */
#include <dlfcn.h>
#include <stdio.h>
#include <time.h>

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    int (*f)(int) = (int (*)(int))dlsym(h, "plugin_work");
    double end = cpu_now() + 0.4;
    int s = 0;
    while (cpu_now() < end)
        s += f(50);
    printf("plugin done %d\n", s & 1);
    return 0;
}
