/* Frame ids of many stacks at once: the symbols stage's inner loop for a
 * memory profile's allocation stacks (controller side, called through
 * ctypes; never in the profiled program).
 *
 * A large program leaves 100,000 allocation stacks of 30 addresses each
 * but only about 10,000 distinct addresses.  Python resolves each distinct
 * address once; what is left -- looking up 3 million addresses and
 * finding the stacks that resolve alike -- is a Python step per address
 * there (0.3 s on a g++ compile) and a hash probe each here. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ctprof.h"

/* Open addressing, keys hashed by a multiply; a key of 0 is kept apart
 * (0 marks an empty slot). */
struct idtable {
    uint64_t *keys;
    uint32_t *ids;
    size_t mask;
    int has_zero;
    uint32_t zero_id;
};

static inline size_t slot_of(uint64_t key, size_t mask)
{
    return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & mask;
}

static int table_init(struct idtable *t, size_t n)
{
    size_t size = 16;
    while (size < 2 * n)
        size <<= 1;
    t->keys = calloc(size, sizeof *t->keys);
    t->ids = malloc(size * sizeof *t->ids);
    t->mask = size - 1;
    t->has_zero = 0;
    t->zero_id = 0;
    return t->keys && t->ids ? 0 : -1;
}

static void table_free(struct idtable *t)
{
    free(t->keys);
    free(t->ids);
}

/* Insert `key` (with `id`) unless present; 1 if it was inserted. */
static int table_add(struct idtable *t, uint64_t key, uint32_t id)
{
    if (key == 0) {
        if (t->has_zero)
            return 0;
        t->has_zero = 1;
        t->zero_id = id;
        return 1;
    }
    for (size_t s = slot_of(key, t->mask);; s = (s + 1) & t->mask) {
        if (t->keys[s] == key)
            return 0;
        if (t->keys[s] == 0) {
            t->keys[s] = key;
            t->ids[s] = id;
            return 1;
        }
    }
}

static int table_find(const struct idtable *t, uint64_t key, uint32_t *id)
{
    if (key == 0) {
        *id = t->zero_id;
        return t->has_zero;
    }
    for (size_t s = slot_of(key, t->mask);; s = (s + 1) & t->mask) {
        if (t->keys[s] == key) {
            *id = t->ids[s];
            return 1;
        }
        if (t->keys[s] == 0)
            return 0;
    }
}

/* out[k]: the id of words[k].  The stacks lie one after the other,
 * lengths[i] addresses each, leaf first; a stack's first address is an
 * interrupted pc, looked up among (pc_keys, pc_ids), the others return
 * addresses, among (ret_keys, ret_ids).  An address in neither is reported
 * once in `missing` as two words (the address, 1 if it is a return
 * address), at most missing_cap of them, and its out is UINT32_MAX.
 * Returns how many were reported; *complete 0 if more were missing than
 * that; -1 without memory. */
CTPROF_API long ctprof_map_stacks(const uint64_t *words, const uint32_t *lengths, size_t nstacks,
                                  const uint64_t *pc_keys, const uint32_t *pc_ids, size_t npc,
                                  const uint64_t *ret_keys, const uint32_t *ret_ids, size_t nret,
                                  uint32_t *out, uint64_t *missing, size_t missing_cap, int *complete)
{
    /* The tables of addresses reported are sized for this block: at most
     * one pc a stack, and no more than it holds (sized for missing_cap
     * alone, each call cleared 3 MiB: 2 ms for a process of a few stacks,
     * a build's hundreds of processes) */
    size_t nwords = 0;
    for (size_t i = 0; i < nstacks; i++)
        nwords += lengths[i];
    struct idtable pcs, rets, seen_pcs, seen_rets;
    int ok = table_init(&pcs, npc) == 0 & table_init(&rets, nret) == 0 &
             table_init(&seen_pcs, nstacks < missing_cap ? nstacks : missing_cap) == 0 &
             table_init(&seen_rets, nwords < missing_cap ? nwords : missing_cap) == 0;
    long reported = -1;
    if (!ok)
        goto out;
    for (size_t i = 0; i < npc; i++)
        table_add(&pcs, pc_keys[i], pc_ids[i]);
    for (size_t i = 0; i < nret; i++)
        table_add(&rets, ret_keys[i], ret_ids[i]);
    reported = 0;
    *complete = 1;
    size_t k = 0;
    for (size_t i = 0; i < nstacks; i++) {
        for (uint32_t j = 0; j < lengths[i]; j++, k++) {
            int is_return = j > 0;
            if (table_find(is_return ? &rets : &pcs, words[k], &out[k]))
                continue;
            out[k] = UINT32_MAX;
            if ((size_t)reported == missing_cap) {
                *complete = 0;
                continue;
            }
            if (table_add(is_return ? &seen_rets : &seen_pcs, words[k], 0)) {
                missing[2 * reported] = words[k];
                missing[2 * reported + 1] = (uint64_t)is_return;
                reported++;
            }
        }
    }
out:
    table_free(&pcs);
    table_free(&rets);
    table_free(&seen_pcs);
    table_free(&seen_rets);
    return reported;
}

/* first[i]: the first stack that has the same ids as stack i (in ids, laid
 * out as ctprof_map_stacks' out) and the same flag; i itself if none
 * before it does.  0, or -1 without memory. */
CTPROF_API int ctprof_first_alike(const uint32_t *ids, const uint32_t *lengths, const uint8_t *flags, size_t nstacks,
                                  uint32_t *first)
{
    size_t size = 16;
    while (size < 2 * nstacks)
        size <<= 1;
    uint32_t *slots = calloc(size, sizeof *slots);         /* stack index + 1; 0: empty */
    uint64_t *start = malloc((nstacks + 1) * sizeof *start);
    if (!slots || !start) {
        free(slots);
        free(start);
        return -1;
    }
    start[0] = 0;
    for (size_t i = 0; i < nstacks; i++)
        start[i + 1] = start[i] + lengths[i];
    for (size_t i = 0; i < nstacks; i++) {
        const uint32_t *s = ids + start[i];
        uint64_t h = 0x84222325cbf29ce4ull ^ flags[i] ^ (uint64_t)lengths[i] << 8;
        for (uint32_t j = 0; j < lengths[i]; j++)
            h = (h ^ s[j]) * 0x100000001b3ull;
        size_t slot = (size_t)(h ^ h >> 29) & (size - 1);
        for (;; slot = (slot + 1) & (size - 1)) {
            uint32_t other = slots[slot];
            if (other == 0) {
                slots[slot] = (uint32_t)i + 1;
                first[i] = (uint32_t)i;
                break;
            }
            other--;
            if (lengths[other] == lengths[i] && flags[other] == flags[i] &&
                memcmp(ids + start[other], s, lengths[i] * sizeof *s) == 0) {
                first[i] = other;
                break;
            }
        }
    }
    free(slots);
    free(start);
    return 0;
}

/* dst[row_of[i] - base] += src[i]: the values of many stacks summed into
 * their rows (dst: `rows` of them, zeroed by the caller).  0, or -1 if a
 * row is out of range (nothing to trust in dst then). */
CTPROF_API int ctprof_sum_rows(const int64_t *src, const int64_t *row_of, size_t n, int64_t base,
                               int64_t *dst, size_t rows)
{
    for (size_t i = 0; i < n; i++) {
        int64_t r = row_of[i] - base;
        if (r < 0 || (uint64_t)r >= rows)
            return -1;
        dst[r] += src[i];
    }
    return 0;
}
