/* Closes every descriptor above 2 at start (as daemons do), runs threads,
 * then writes its output file with stdio at exit; prints how many files it
 * could open at once while 100 threads were alive. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static FILE *out;
static volatile int stop;

static void *spin(void *a)
{
    volatile double x = 0;
    while (!stop)
        for (int i = 0; i < 10000; i++)
            x += i;
    return a;
}

static void finish(void)
{
    for (int i = 0; i < 1000; i++)
        fprintf(out, "line %d of the program's output\n", i);
    /* stdio flushes at exit, after this handler */
}

int main(int argc, char **argv)
{
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    out = fopen(argv[1], "w");
    if (!out)
        return 2;
    atexit(finish);
    pthread_t t[100];
    for (int i = 0; i < 100; i++)
        pthread_create(&t[i], NULL, spin, NULL);
    usleep(300000);
    int fds[2048], n = 0;
    while (n < 2048 && (fds[n] = open("/dev/null", O_RDONLY)) >= 0)
        n++;
    printf("openable=%d\n", n);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    stop = 1;
    for (int i = 0; i < 100; i++)
        pthread_join(t[i], NULL);
    return 0;
}
