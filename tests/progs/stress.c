/* 8 threads: malloc/free churn and dlopen/dlclose in a loop while sampled
 * at a high rate.  Must finish without deadlock or crash. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *plugin;
static double seconds = 0.3;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *churn(void *arg)
{
    long id = (long)arg;
    double end = now() + seconds;
    unsigned long sum = 0;
    while (now() < end) {
        if (id % 2 == 0 && plugin) {
            void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
            if (h) {
                int (*f)(int) = (int (*)(int))dlsym(h, "plugin_work");
                if (f)
                    sum += (unsigned long)f(100);
                dlclose(h);
            }
        }
        for (int i = 0; i < 200; i++) {
            char *p = malloc((size_t)(16 + (i * 37) % 4000));
            memset(p, i, 16);
            sum += (unsigned char)p[3];
            free(p);
        }
    }
    return (void *)sum;
}

int main(int argc, char **argv)
{
    plugin = argc > 1 ? argv[1] : NULL;
    if (argc > 2)
        seconds = atof(argv[2]);
    pthread_t t[8];
    for (long i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, churn, (void *)i);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    printf("stress done\n");
    return 0;
}
