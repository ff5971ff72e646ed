/* A library the user already preloads: ctprof must add its shim to
 * LD_PRELOAD, not replace what is there. */
#include <unistd.h>

__attribute__((constructor)) static void say_loaded(void)
{
    static const char msg[] = "marker library loaded\n";
    (void)!write(2, msg, sizeof msg - 1);
}
