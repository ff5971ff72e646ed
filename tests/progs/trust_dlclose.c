/* Loads LIB_A, allocates through its work(), unloads it, loads LIB_B (the
 * same function with another stack frame) and allocates through it.
 * Prints "same address" when LIB_B's work() was loaded where LIB_A's was
 * (the case a stale unwind rule would get wrong). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef void *(*work_fn)(size_t);

__attribute__((noinline)) static void *use_library(const char *path, size_t size, int count, void **where)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "%s\n", dlerror());
        exit(2);
    }
    work_fn work = (work_fn)dlsym(h, "work");
    *where = (void *)work;
    for (int i = 0; i < count; i++)
        free(work(size));
    dlclose(h);
    return h;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    void *a, *b;
    use_library(argv[1], 5555, 100, &a);
    use_library(argv[2], 7777, 100, &b);
    printf("%s\n", a == b ? "same address" : "different addresses");
    return 0;
}
