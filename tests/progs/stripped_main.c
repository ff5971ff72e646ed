/* Loads the library named in argv[1] and runs its lib_work(argv[2] units). */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s LIBRARY UNITS\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    uint64_t (*work)(uint64_t) = (uint64_t (*)(uint64_t))dlsym(lib, "lib_work");
    if (!work)
        return 1;
    printf("%llu\n", (unsigned long long)work(strtoull(argv[2], NULL, 10)));
    return 0;
}
