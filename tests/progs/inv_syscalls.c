/* Counts what a profiler's signal would do to system calls: EINTR from
 * poll, nanosleep, select, epoll_wait, futex (condition variable) and
 * sem_timedwait, and short blocking writes to a pipe and a unix socket.
 * Prints "eintr=N short=M"; both are 0 when nothing interrupts the calls. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long eintr, short_io;
#define BIG (8 << 20)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *drain(void *arg)
{
    int fd = *(int *)arg;
    static char buf[65536];
    long got = 0;
    while (got < BIG) {
        usleep(200); /* a slow reader: the writer blocks, often */
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            break;
        got += n;
    }
    return NULL;
}

static void big_write(int wfd, int rfd, int sock)
{
    pthread_t t;
    pthread_create(&t, NULL, drain, &rfd);
    char *data = calloc(1, BIG);
    ssize_t n = sock ? send(wfd, data, BIG, 0) : write(wfd, data, BIG);
    if (n < 0 && errno == EINTR)
        eintr++;
    else if (n != BIG)
        short_io++;
    pthread_join(t, NULL);
    free(data);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    int ep = epoll_create1(0);
    int p[2];
    pipe(p);
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    sem_t sem;
    sem_init(&sem, 0, 0);
    double end = now() + secs;
    while (now() < end) {
        for (int i = 0; i < 200; i++) {
            struct pollfd pf = {p[0], POLLIN, 0};
            if (poll(&pf, 1, 0) < 0 && errno == EINTR)
                eintr++;
        }
        struct timespec ts = {0, 100000};
        if (nanosleep(&ts, NULL) < 0 && errno == EINTR)
            eintr++;
        struct timeval tv = {0, 100};
        if (select(0, NULL, NULL, NULL, &tv) < 0 && errno == EINTR)
            eintr++;
        struct epoll_event ev;
        if (epoll_wait(ep, &ev, 1, 1) < 0 && errno == EINTR)
            eintr++;
        struct timespec abs;
        clock_gettime(CLOCK_REALTIME, &abs);
        abs.tv_nsec += 100000;
        if (abs.tv_nsec >= 1000000000) { abs.tv_sec++; abs.tv_nsec -= 1000000000; }
        pthread_mutex_lock(&m);
        int rc = pthread_cond_timedwait(&c, &m, &abs);
        pthread_mutex_unlock(&m);
        if (rc == EINTR)
            eintr++;
        if (sem_timedwait(&sem, &abs) < 0 && errno == EINTR)
            eintr++;
        volatile double x = 0;
        for (int i = 0; i < 200000; i++)
            x += i * 0.5; /* CPU time, so the timer runs */
    }
    big_write(p[1], p[0], 0);
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    big_write(sv[0], sv[1], 1);
    printf("eintr=%ld short=%ld\n", eintr, short_io);
    return 0;
}
