/* One allocation site used by a parent, then by its fork child and by a
 * thread of the child: the parent leaks PARENT blocks of 96 bytes from
 * shared_site, the child CHILD of them and its thread THREAD more, each
 * through the same call chain.  (The shim sends a stack it sent before as its
 * hash alone; a fork child's ring has never seen the parent's stacks.) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define PARENT 5
#define CHILD 3
#define THREAD 4

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void shared_site(int n) { for (int i = 0; i < n; i++) escape(malloc(96)); }

static void *thread_main(void *arg) { shared_site(THREAD); return arg; }

int main(void)
{
    /* Both processes allocate through the one call below: the same stack. */
    static volatile int blocks[2] = {PARENT, CHILD}, rounds = 2;   /* (volatile: no unrolled copies) */
    pid_t c = -1;
    for (int round = 0; round < rounds; round++) {
        if (round == 1 && (c = fork()) != 0)
            break;
        shared_site(blocks[round]);
    }
    if (c == 0) {
        pthread_t t;
        pthread_create(&t, NULL, thread_main, NULL);
        pthread_join(t, NULL);
        exit(0);
    }
    int status = 0;
    waitpid(c, &status, 0);
    printf("parent %d child %d thread %d parent_pid %d child_pid %d\n", PARENT, CHILD, THREAD, (int)getpid(), (int)c);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
