/* The allocator's contract must hold under ctprof: alignment, calloc
 * overflow, realloc(NULL, n), realloc(p, 0), free(NULL), errno. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond) do { if (!(cond)) { printf("FAILED: %s (line %d)\n", #cond, __LINE__); failures++; } } while (0)

__attribute__((noinline)) void aligned_ones(void)
{
    void *p = NULL;
    CHECK(posix_memalign(&p, 64, 1000) == 0 && ((uintptr_t)p & 63) == 0);
    void *q = aligned_alloc(4096, 8192);
    CHECK(q && ((uintptr_t)q & 4095) == 0);
    void *r = memalign(256, 300);
    CHECK(r && ((uintptr_t)r & 255) == 0);
    void *v = valloc(100);
    CHECK(v && ((uintptr_t)v & 4095) == 0);
    void *pv = pvalloc(100);
    CHECK(pv && ((uintptr_t)pv & 4095) == 0);
    free(p); free(q); free(r); free(v); free(pv);
}

int main(void)
{
    aligned_ones();
    errno = 0;
    void *big = calloc(SIZE_MAX / 2, 4);
    CHECK(big == NULL && errno == ENOMEM);
    errno = 0;
    void *arr = reallocarray(NULL, SIZE_MAX / 2, 4);
    CHECK(arr == NULL && errno == ENOMEM);
    char *z = calloc(100, 10);
    int zero = 1;
    for (int i = 0; i < 1000; i++) zero &= z[i] == 0;
    CHECK(zero);
    free(z);
    char *m = realloc(NULL, 50);
    CHECK(m != NULL);
    char *gone = realloc(m, 0);            /* glibc: frees and returns NULL */
    CHECK(gone == NULL);
    free(NULL);
    errno = 1234;
    void *e = malloc(10);
    CHECK(errno == 1234);                  /* a successful malloc leaves errno alone */
    free(e);
    CHECK(errno == 1234);
    char *s = strdup("hello");
    CHECK(s && !strcmp(s, "hello"));
    free(s);
    printf("semantics %s\n", failures ? "FAILED" : "ok");
    return failures != 0;
}
