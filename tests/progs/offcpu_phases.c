/* Phases whose wall time the program measures itself, one after the other:
 * compute, sleep, wait on a mutex another thread holds, wait on a condition
 * variable, read from a pipe nobody writes to yet.  Prints each phase's
 * seconds, the seconds of its wait timed around the blocking call
 * (NAME_wait), and the EINTR count of its waits (0 when nothing
 * interrupts). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double phase_s;
static long eintr;
static double waited;     /* the phase's own wait, timed around the blocking call */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cv_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int cv_ready;
static int pipefd[2];

static void *holder(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    struct timespec ts = {0, (long)(phase_s * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        eintr++;
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *signaller(void *arg)
{
    (void)arg;
    usleep((useconds_t)(phase_s * 1e6));
    pthread_mutex_lock(&cv_lock);
    cv_ready = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&cv_lock);
    return NULL;
}

static void *writer(void *arg)
{
    (void)arg;
    usleep((useconds_t)(phase_s * 1e6));
    if (write(pipefd[1], "x", 1) != 1)
        exit(5);
    return NULL;
}

__attribute__((noinline)) void phase_compute(void)
{
    double end = now() + phase_s;
    volatile double x = 0;
    while (now() < end)
        for (int i = 0; i < 1000; i++)
            x += i * 0.5;
}

__attribute__((noinline)) void phase_sleep(void)
{
    struct timespec ts = {0, (long)(phase_s * 1e9)};
    double t0 = now();
    while (nanosleep(&ts, &ts) < 0)
        if (errno == EINTR)
            eintr++;
    waited = now() - t0;
}

__attribute__((noinline)) void phase_mutex(void)
{
    pthread_t t;
    pthread_create(&t, NULL, holder, NULL);
    usleep(20000); /* the holder takes the lock first */
    double t0 = now();
    pthread_mutex_lock(&lock);
    waited = now() - t0;
    pthread_mutex_unlock(&lock);
    pthread_join(t, NULL);
}

__attribute__((noinline)) void phase_condvar(void)
{
    pthread_t t;
    pthread_create(&t, NULL, signaller, NULL);
    double t0 = now();
    pthread_mutex_lock(&cv_lock);
    while (!cv_ready)
        pthread_cond_wait(&cv, &cv_lock);
    pthread_mutex_unlock(&cv_lock);
    waited = now() - t0;
    pthread_join(t, NULL);
}

__attribute__((noinline)) void phase_pipe(void)
{
    pthread_t t;
    pipe(pipefd);
    pthread_create(&t, NULL, writer, NULL);
    char c;
    ssize_t n;
    double t0 = now();
    while ((n = read(pipefd[0], &c, 1)) < 0 && errno == EINTR)
        eintr++;
    waited = now() - t0;
    pthread_join(t, NULL);
}

int main(int argc, char **argv)
{
    phase_s = argc > 1 ? atof(argv[1]) : 0.3;
    void (*phases[])(void) = {phase_compute, phase_sleep, phase_mutex, phase_condvar, phase_pipe};
    const char *names[] = {"compute", "sleep", "mutex", "condvar", "pipe"};
    for (int i = 0; i < 5; i++) {
        double t0 = now();
        waited = 0;
        phases[i]();
        printf("%s %.6f\n%s_wait %.6f\n", names[i], now() - t0, names[i], waited);
    }
    printf("eintr %ld\n", eintr);
    return 0;
}
