/* dlopen and dlclose a library N times, computing a little in between. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int n = argc > 2 ? atoi(argv[2]) : 10000;
    volatile double x = 0;
    for (int i = 0; i < n; i++) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "%s\n", dlerror());
            return 2;
        }
        int (*f)(int) = (int (*)(int))dlsym(h, "plugin_work");
        if (f)
            x += f(1);
        dlclose(h);
        for (int j = 0; j < 20000; j++)
            x += j * 0.5;
    }
    printf("loops %d\n", n);
    return 0;
}
