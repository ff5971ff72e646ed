/* Small AS-safe helpers: clocks, tid, formatting without stdio. */
#define _GNU_SOURCE
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include "ctprof.h"

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Cached per thread: the heap hooks ask on every allocation.  A fork child
 * inherits the parent thread's value, so the fork handler resets it. */
static __thread int cached_tid CTPROF_TLS;

int ctprof_gettid(void)
{
    if (!cached_tid)
        cached_tid = (int)syscall(SYS_gettid);
    return cached_tid;
}

void ctprof_forget_tid(void)
{
    cached_tid = 0;
}

size_t fmt_u64(char *out, uint64_t v)
{
    char tmp[24];
    size_t n = 0, i;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = 0;
    return n;
}

/* out = a + b + c, truncated to cap (paths here are short: session dir + name). */
void path_join3(char *out, size_t cap, const char *a, const char *b, const char *c)
{
    size_t n = 0;
    const char *parts[3] = {a, b, c};
    for (int p = 0; p < 3; p++)
        for (const char *s = parts[p]; s && *s && n + 1 < cap; s++)
            out[n++] = *s;
    out[n] = 0;
}
