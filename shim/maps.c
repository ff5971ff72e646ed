/* Memory-map snapshots: /proc/self/maps copied into the session directory
 * at start, after exec and after every dlopen/dlclose, each under a new
 * generation number that later samples carry.  Only syscalls: no malloc,
 * no stdio, so it is safe in a fork child and inside malloc hooks. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "ctprof.h"

void maps_snapshot(struct ring *r, const char *dir)
{
    struct ring_header *h = r->hdr;
    uint32_t gen = __atomic_fetch_add(&h->maps_next, 1, __ATOMIC_ACQ_REL);
    char path[4096], num[24];
    fmt_u64(num, h->pid);
    path_join3(path, sizeof path, dir, "/", num);
    size_t n = strlen(path);
    fmt_u64(num, gen);
    path_join3(path + n, sizeof path - n, ".maps.", num, "");

    int in = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return;
    int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out >= 0) {
        char buf[4096];
        ssize_t got;
        while ((got = read(in, buf, sizeof buf)) > 0) {
            ssize_t off = 0;
            while (off < got) {
                ssize_t put = write(out, buf + off, (size_t)(got - off));
                if (put <= 0)
                    break;
                off += put;
            }
        }
        close(out);
    }
    close(in);
    /* Publish: samples taken from now on resolve against this snapshot. */
    uint32_t cur = __atomic_load_n(&h->maps_gen, __ATOMIC_RELAXED);
    while (cur < gen && !__atomic_compare_exchange_n(&h->maps_gen, &cur, gen, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
        ;
}
