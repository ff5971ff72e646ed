/* Waits for a line on stdin, dlopens argv[1], prints plugin_alpha's address,
 * waits again.  The test reads /proc/PID/maps before and after. */
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

static void wait_line(void)
{
    char c;
    while (read(0, &c, 1) > 0 && c != '\n')
        ;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    printf("READY\n");
    fflush(stdout);
    wait_line();
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        printf("error %s\n", dlerror());
        return 1;
    }
    printf("plugin_alpha %p\nREADY\n", dlsym(h, "plugin_alpha"));
    fflush(stdout);
    wait_line();
    return 0;
}
