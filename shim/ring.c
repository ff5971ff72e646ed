/* The shared-memory ring: many writer threads (signal handlers), one reader
 * (the controller).  Variable-length records; a writer reserves space with a
 * CAS on write_pos and publishes by storing the record size last.  The data
 * area is mapped twice back to back, so a record that crosses the end of the
 * ring is still one contiguous write.  A full ring drops and counts: a
 * handler never waits. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include "ctprof.h"

/* The first `size` bytes of the data area, mapped twice back to back. */
static unsigned char *map_twice(int fd, uint64_t size)
{
    unsigned char *area = mmap(NULL, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED)
        return NULL;
    if (mmap(area, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, CTPROF_HEADER_SIZE) == MAP_FAILED ||
        mmap(area + size, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, CTPROF_HEADER_SIZE) == MAP_FAILED) {
        munmap(area, 2 * size);
        return NULL;
    }
    return area;
}

/* The file holds file_data_size bytes of data (tmpfs: the pages past
 * data_size cost nothing until written); the ring starts as its first
 * data_size. */
int ring_open(struct ring *r, const char *dir, const char *suffix, uint64_t data_size, uint64_t file_data_size,
              int *reused)
{
    char path[4096], pid[24];
    fmt_u64(pid, (uint64_t)getpid());
    path_join3(path, sizeof path, dir, "/", pid);
    size_t n = strlen(path);
    if (n + strlen(suffix) + 1 >= sizeof path)
        return -1;
    memcpy(path + n, suffix, strlen(suffix) + 1);

    *reused = 0;
    /* O_EXCL|O_NOFOLLOW, 0600: nobody else's file is ever adopted, except
     * our own ring after exec (same pid), which we verify below. */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
        fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0 || st.st_uid != geteuid() ||
            (uint64_t)st.st_size < CTPROF_HEADER_SIZE + 4096) {
            if (fd >= 0)
                close(fd);
            return -1;
        }
        *reused = 1;
    } else if (fd < 0) {
        return -1;
    } else if (ftruncate(fd, (off_t)(CTPROF_HEADER_SIZE + file_data_size)) != 0) {
        close(fd);
        return -1;
    }
    struct ring_header *h = mmap(NULL, CTPROF_HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) {
        close(fd);
        return -1;
    }
    if (*reused) {
        struct stat st;
        if (h->magic != CTPROF_MAGIC || h->version != CTPROF_RING_VERSION || fstat(fd, &st) != 0 ||
            (uint64_t)st.st_size < CTPROF_HEADER_SIZE + h->data_size) {
            munmap(h, CTPROF_HEADER_SIZE);
            close(fd);
            return -1;
        }
        data_size = h->data_size;
        file_data_size = (uint64_t)st.st_size - CTPROF_HEADER_SIZE;
    } else {
        h->version = CTPROF_RING_VERSION;
        h->data_size = data_size;
        h->pid = (uint32_t)getpid();
        h->ppid = (uint32_t)getppid();
        h->start_ns = now_ns();
    }
    r->hdr = h;
    r->data = map_twice(fd, data_size);
    r->grown = NULL;
    r->grown_size = 0;
    /* (a power of two, as positions are taken modulo it) */
    if (r->data && file_data_size > data_size && !(file_data_size & (file_data_size - 1))) {
        r->grown = map_twice(fd, file_data_size);
        r->grown_size = r->grown ? file_data_size : 0;
    }
    close(fd);
    if (!r->data) {
        munmap(h, CTPROF_HEADER_SIZE);
        return -1;
    }
    if (!*reused)
        __atomic_store_n(&h->magic, CTPROF_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

void *ring_reserve(struct ring *r, uint32_t size)
{
    struct ring_header *h = r->hdr;
    uint64_t w = __atomic_load_n(&h->write_pos, __ATOMIC_RELAXED);
    for (;;) {
        uint64_t rd = __atomic_load_n(&h->read_pos, __ATOMIC_ACQUIRE);
        if (w + size - rd > h->data_size) {
            __atomic_fetch_add(&h->dropped, 1, __ATOMIC_RELAXED);
            return NULL;
        }
        if (__atomic_compare_exchange_n(&h->write_pos, &w, w + size, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            break;
    }
    return r->data + (w & (h->data_size - 1));
}

void ring_commit(void *rec, uint32_t size)
{
    __atomic_store_n(&((struct rec_header *)rec)->size, size, __ATOMIC_RELEASE);
}

/* Copy with wrap-around from the singly mapped view the controller has. */
void ring_copy(unsigned char *dst, const unsigned char *data, uint64_t mask, uint64_t pos, uint32_t n)
{
    uint64_t off = pos & mask, first = mask + 1 - off;
    if (first >= n) {
        memcpy(dst, data + off, n);
    } else {
        memcpy(dst, data + off, first);
        memcpy(dst + first, data, n - first);
    }
}

void ring_zero(unsigned char *data, uint64_t mask, uint64_t pos, uint64_t n)
{
    uint64_t off = pos & mask, first = mask + 1 - off;
    if (first >= n) {
        memset(data + off, 0, n);
    } else {
        memset(data + off, 0, first);
        memset(data, 0, n - first);
    }
}

size_t ctprof_ring_drain(void *file_base, void *out, size_t cap)
{
    struct ring_header *h = file_base;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != CTPROF_MAGIC)
        return 0;
    unsigned char *data = (unsigned char *)file_base + CTPROF_HEADER_SIZE;
    uint64_t mask = h->data_size - 1;
    uint64_t rd = __atomic_load_n(&h->read_pos, __ATOMIC_RELAXED);
    uint64_t w = __atomic_load_n(&h->write_pos, __ATOMIC_ACQUIRE);
    size_t copied = 0;
    while (rd < w) {
        /* The size field sits at an 8-aligned offset, so it never wraps. */
        uint32_t size = __atomic_load_n((uint32_t *)(data + (rd & mask)), __ATOMIC_ACQUIRE);
        if (size == 0)
            break;          /* reserved but not yet committed */
        if (size < sizeof(struct rec_header) || (size & 7) || size > w - rd) {
            rd = w;         /* corrupt: skip everything written so far */
            break;
        }
        if (copied + size > cap)
            break;
        ring_copy((unsigned char *)out + copied, data, mask, rd, size);
        /* Zero before publishing read_pos, so the next lap's writer finds
         * size == 0 until it commits. */
        ring_zero(data, mask, rd, size);
        rd += size;
        copied += size;
    }
    __atomic_store_n(&h->read_pos, rd, __ATOMIC_RELEASE);
    return copied;
}

