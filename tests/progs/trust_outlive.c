/* A child that outlives the run: the parent forks it and exits (or, with
 * "stay", sleeps until killed).  The child waits for GO_FILE to exist, then
 * times PAIRS malloc/free pairs and writes the rate (pairs per second) to
 * OUT_FILE.  Usage: trust_outlive exit|stay GO_FILE OUT_FILE PAIRS */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    long pairs = atol(argv[4]);
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid > 0) {
        printf("child %d\n", (int)pid);
        fflush(stdout);
        if (argv[1][0] == 's')
            for (;;)
                pause();
        return 0;
    }
    setsid();
    fclose(stdout);
    while (access(argv[2], F_OK) != 0) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    volatile char sink = 0;
    double t0 = now();
    for (long i = 0; i < pairs; i++) {
        char *p = malloc(16 + (i & 255));
        p[0] = (char)i;
        sink += p[0];
        free(p);
    }
    double dt = now() - t0;
    FILE *f = fopen(argv[3], "w");
    fprintf(f, "%.0f\n", pairs / dt);
    fclose(f);
    return 0;
}
