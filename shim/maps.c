/* Memory-map snapshots: /proc/self/maps copied into the session directory
 * under a generation number that later samples carry.
 *
 * Written eagerly once per image (start, fork child, exec) and, in the
 * heap-tracking build, after every dlopen.  Otherwise a dlopen/dlclose
 * only starts a new generation; its snapshot is written by
 * the first sample that carries it (from the signal handler: only
 * syscalls, buffers lent by the caller).  Measured reason: a snapshot per
 * call made 10,000 dlopen/dlclose pairs take 3.44 s instead of 0.45 s and
 * left 93 MB of maps; now a generation nobody sampled costs nothing, and
 * every generation a sample refers to has its file.
 *
 * Only syscalls: no malloc, no stdio, so it is safe in a fork child,
 * inside malloc hooks and in the sampling handler. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include "ctprof.h"

/* Raise *p to at least v (atomic max). */
static void raise_to(uint32_t *p, uint32_t v)
{
    uint32_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        ;
}

/* Copy /proc/self/maps to <dir>/<pid>.maps.<gen>.  `buf` holds the path,
 * then serves as the copy buffer. */
static void write_snapshot(struct ring_header *h, const char *dir, uint32_t gen, char *buf, size_t cap)
{
    char num[24];
    if (cap < 4096 + 512)
        return;
    fmt_u64(num, h->pid);
    path_join3(buf, 4096, dir, "/", num);
    size_t n = strlen(buf);
    fmt_u64(num, gen);
    path_join3(buf + n, 4096 - n, ".maps.", num, "");

    int in = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return;
    int out = open(buf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out >= 0) {
        char *data = buf + 4096;
        size_t room = cap - 4096;
        ssize_t got;
        while ((got = read(in, data, room)) > 0) {
            ssize_t off = 0;
            while (off < got) {
                ssize_t put = write(out, data + off, (size_t)(got - off));
                if (put <= 0)
                    break;
                off += put;
            }
        }
        close(out);
    }
    close(in);
}

void maps_ensure(struct ring *r, const char *dir, uint32_t gen, char *buf, size_t cap)
{
    struct ring_header *h = r->hdr;
    uint32_t claimed = __atomic_load_n(&h->maps_claimed, __ATOMIC_ACQUIRE);
    if (claimed >= gen || !dir)
        return;
    /* Claim it: exactly one writer per generation. */
    if (!__atomic_compare_exchange_n(&h->maps_claimed, &claimed, gen, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return;
    write_snapshot(h, dir, gen, buf, cap);
    raise_to(&h->maps_written, gen);
}

void maps_snapshot(struct ring *r, const char *dir)
{
    struct ring_header *h = r->hdr;
    uint32_t gen = __atomic_fetch_add(&h->maps_next, 1, __ATOMIC_ACQ_REL);
    raise_to(&h->maps_claimed, gen);
    /* Threads may call this at once (dlopen in the heap build): a buffer
     * of its own, off the caller's stack. */
    char *buf = mmap(NULL, MAPS_BUF_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf != MAP_FAILED) {
        write_snapshot(h, dir, gen, buf, MAPS_BUF_BYTES);
        munmap(buf, MAPS_BUF_BYTES);
    }
    raise_to(&h->maps_written, gen);
    /* Publish: samples taken from now on resolve against this snapshot. */
    raise_to(&h->maps_gen, gen);
}

void maps_changed(struct ring *r)
{
    struct ring_header *h = r->hdr;
    uint32_t gen = __atomic_load_n(&h->maps_gen, __ATOMIC_ACQUIRE);
    /* A generation no sample has used yet (its snapshot unclaimed) can
     * simply stand for the new map too: its file, written later, shows the
     * map as it is then. */
    if (__atomic_load_n(&h->maps_claimed, __ATOMIC_ACQUIRE) < gen)
        return;
    uint32_t next = __atomic_fetch_add(&h->maps_next, 1, __ATOMIC_ACQ_REL);
    raise_to(&h->maps_gen, next);
}

void maps_settle(struct ring *r)
{
    struct ring_header *h = r->hdr;
    for (int i = 0; i < 20000; i++) {
        uint32_t claimed = __atomic_load_n(&h->maps_claimed, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&h->maps_written, __ATOMIC_ACQUIRE) >= claimed)
            return;
        sched_yield();
    }
}
