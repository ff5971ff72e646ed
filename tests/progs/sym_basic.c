/* Prints the runtime addresses of its functions and of return addresses
 * taken on a real call chain (main -> sym_mid -> sym_leaf), plus libc's
 * getpid, then waits on stdin while the test reads /proc/PID/maps. */
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

static void *ra_leaf, *ra_mid, *ra_main;
volatile int sink;

__attribute__((noinline, noipa)) int sym_leaf(int x)
{
    ra_leaf = __builtin_return_address(0);   /* inside sym_mid */
    sink = x;
    return x * 3 + 1;
}

__attribute__((noinline, noipa)) int sym_mid(int x)
{
    int r = sym_leaf(x) + 1;
    ra_mid = __builtin_return_address(0);    /* inside main */
    sink = r;
    return r;
}

int main(int argc, char **argv)
{
    (void)argv;
    int r = sym_mid(argc);
    ra_main = __builtin_return_address(0);   /* inside libc's __libc_start_call_main */
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *gp = libc ? dlsym(libc, "getpid") : NULL;
    printf("sym_leaf %p\nsym_mid %p\nmain %p\nra_leaf %p\nra_mid %p\nra_main %p\ngetpid %p\nREADY\n",
           (void *)&sym_leaf, (void *)&sym_mid, (void *)&main, ra_leaf, ra_mid, ra_main, gp);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return r == 0;
}
