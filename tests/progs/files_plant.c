/* Plants things at its own /tmp/perf-PID.map, names its thread, then burns
 * CPU in hot_function for about 0.3 s.
 *   files_plant [MODE [ARG]]
 *   symlink PATH    /tmp/perf-PID.map -> PATH
 *   hardlink PATH   /tmp/perf-PID.map a second name of PATH
 *   fifo            a FIFO nobody writes
 *   nobody          a regular perf map owned by user nobody
 *   own             a regular perf map of our own (the one to accept)
 *   name NAME       set the thread name (prctl)
 *   ignore-term     ignore SIGTERM and SIGINT, then work for 1.5 s
 *   replace-self    after the work, move the executable away and leave a
 *                   FIFO at its path (what a later reader of the path finds)
 * Prints the perf map path on stderr so the test can remove it. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) double hot_function(double seconds)
{
    struct timespec t0, t;
    volatile double x = 0;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    do {
        for (int i = 0; i < 100000; i++)
            x += i * 0.5;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
    return x;
}

int main(int argc, char **argv)
{
    char map[64];
    const char *mode = argc > 1 ? argv[1] : "";
    const char *arg = argc > 2 ? argv[2] : "";
    double seconds = 0.3;
    snprintf(map, sizeof map, "/tmp/perf-%d.map", (int)getpid());
    fprintf(stderr, "perf map: %s\n", map);
    if (!strcmp(mode, "symlink") && symlink(arg, map) != 0)
        return 10;
    if (!strcmp(mode, "hardlink") && link(arg, map) != 0)
        return 10;
    if (!strcmp(mode, "fifo") && mkfifo(map, 0644) != 0)
        return 10;
    if (!strcmp(mode, "nobody") || !strcmp(mode, "own")) {
        FILE *f = fopen(map, "w");
        if (!f)
            return 10;
        fprintf(f, "7f0000001000 100 jit_%s_function\n", mode);
        fclose(f);
        if (!strcmp(mode, "nobody") && chown(map, 65534, 65534) != 0)
            return 10;
    }
    if (!strcmp(mode, "name"))
        prctl(PR_SET_NAME, arg, 0, 0, 0);
    if (!strcmp(mode, "ignore-term")) {
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        seconds = 1.5;
        puts("ready"); /* the test signals ctprof only once the program runs */
        fflush(stdout);
    }
    hot_function(seconds);
    if (!strcmp(mode, "replace-self")) {
        char self[4096], moved[4200];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0)
            return 10;
        self[n] = 0;
        snprintf(moved, sizeof moved, "%s.moved", self);
        if (rename(self, moved) != 0 || mkfifo(self, 0755) != 0)
            return 10;
    }
    return 0;
}
