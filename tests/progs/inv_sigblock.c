/* Blocks every signal in every thread and takes SIGUSR1 synchronously with
 * sigtimedwait (mode "wait") or signalfd (mode "fd").  Any other signal
 * arriving is an error: exit 3. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) static void blocked_work(double secs)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    volatile double x = 0;
    do {
        for (int i = 0; i < 10000; i++)
            x += i * 0.5;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) * 1e-9 < secs);
}

static void *worker(void *arg)
{
    blocked_work(0.4);
    kill(getpid(), SIGUSR1);
    return arg;
}

int main(int argc, char **argv)
{
    int use_fd = argc > 1 && !strcmp(argv[1], "fd");
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    blocked_work(0.4);
    int sig;
    if (use_fd) {
        int fd = signalfd(-1, &all, 0);
        struct signalfd_siginfo si;
        if (read(fd, &si, sizeof si) != sizeof si)
            return 4;
        sig = (int)si.ssi_signo;
    } else {
        struct timespec ten = {10, 0};
        sig = sigtimedwait(&all, NULL, &ten);
    }
    pthread_join(t, NULL);
    if (sig != SIGUSR1) {
        printf("unexpected signal %d\n", sig);
        return 3;
    }
    puts("got SIGUSR1");
    return 0;
}
