/* Forks CHILDREN children, one after another; each allocates and frees
 * 7 blocks of 100 bytes in child_work and exits; the parent allocates 3
 * blocks of 200 bytes in parent_work, then frees them.
 * Usage: trust_fork_storm CHILDREN */
#include <stdlib.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

void *volatile sink; /* the blocks escape: the compiler may not elide them */

__attribute__((noinline)) void child_work(void)
{
    void *p[7];
    for (int i = 0; i < 7; i++)
        sink = p[i] = malloc(100);
    for (int i = 0; i < 7; i++)
        free(p[i]);
}

__attribute__((noinline)) void parent_work(void)
{
    void *p[3];
    for (int i = 0; i < 3; i++)
        sink = p[i] = malloc(200);
    for (int i = 0; i < 3; i++)
        free(p[i]);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 50;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            child_work();
            _exit(0);
        }
        waitpid(pid, NULL, 0);
    }
    parent_work();
    printf("forked %d\n", n);
    return 0;
}
