/* A cached DWARF CFI unwinder for x86-64, safe inside a signal handler.
 *
 * libgcc's _Unwind_Backtrace re-parses the CIE and FDE of every frame on
 * every call; per allocation that is where the time goes.  Here the unwind
 * rule of each pc (how to find the CFA, the return address and the saved
 * rbp) is computed once from .eh_frame and cached in a lock-free table, so
 * a cached frame costs one hash probe and two loads.
 *
 * Nothing here calls libgcc: once a JIT registers code with
 * __register_frame, libgcc's _Unwind_Find_FDE takes a mutex, and a sample
 * landing inside a C++ throw (which holds it) would deadlock.  FDEs are
 * found with glibc's _dl_find_object (lock-free, AS-safe, glibc >= 2.35)
 * and the binary-search table of the object's .eh_frame_hdr.  Frames with
 * no usable rule (JIT code, PLT stubs, hand-written assembly) are stepped
 * through the frame-pointer chain instead, and the walk goes on with rules
 * from the next frame.  Signal frames (__restore_rt, "S" CIEs) continue
 * from the registers saved in the kernel's ucontext.
 *
 * Every read of the target's stack is validated (struct reader below): in
 * the thread's known stack it is a plain load; anywhere else (coroutine
 * stacks, sigaltstack, garbage pointers) the page is copied with
 * process_vm_readv on ourselves, which fails instead of faulting. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include "ctprof.h"

enum { REG_RBP_DW = 6, REG_RSP_DW = 7, REG_RA_DW = 16 };
/* RULE_SIGNAL: a sigreturn trampoline; the interrupted registers are in
 * the ucontext_t at the CFA. */
/* RULE_PLT: a lazy-binding PLT entry (see plt_threshold). */
enum { RULE_OK = 1, RULE_END = 2, RULE_COMPLEX = 3, RULE_SIGNAL = 4, RULE_PLT = 5 };
#define NO_OFFSET (-32768)

struct rule {
    uint8_t kind;         /* RULE_* */
    uint8_t cfa_rbp;      /* CFA based on rbp (else rsp) */
    int16_t ra_off;       /* return address at CFA + ra_off */
    int16_t rbp_off;      /* saved rbp at CFA + rbp_off, or NO_OFFSET */
    int32_t cfa_off;      /* CFA = base + cfa_off */
};

/* ---- the cache: open addressing, pc -> rule ----------------------------
 * A rule holds only while the code it was computed from stays mapped:
 * after a dlclose another library may be loaded at the same addresses.
 * So every rule carries the code generation it was computed in (bumped by
 * cfi_code_unmapped, at every dlclose), and a rule of an older generation
 * is recomputed when met, its slot reused in place.  Slots are never
 * emptied, so no probe chain is ever cut.  A writer marks the key BUSY
 * before touching a slot; a reader takes a rule only if the key read after
 * it is still its pc. */
#define CACHE_BITS 16
#define CACHE_SIZE (1u << CACHE_BITS)
#define BUSY (1ull << 63) /* never set in a user pc (pc|1 was: odd return addresses exist) */
struct slot {
    uint64_t key;         /* pc, or 0 (empty), or key|BUSY while being (re)filled */
    struct rule rule;
    uint32_t gen;         /* code_gen when the rule was computed */
};
static struct slot *cache;
static uint32_t cache_used;
static uint32_t code_gen;
static uint64_t memo_total_bytes;  /* every thread's memo (below), for the metadata figure */

void cfi_code_unmapped(void)
{
    __atomic_fetch_add(&code_gen, 1, __ATOMIC_RELEASE);
}

void cfi_init(void)
{
    if (!cache) {
        void *p = mmap(NULL, sizeof(struct slot) * CACHE_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED)
            cache = p;
    }
}

void cfi_cache_range(uint64_t *lo, uint64_t *hi)
{
    *lo = (uint64_t)(uintptr_t)cache;
    *hi = cache ? *lo + sizeof(struct slot) * CACHE_SIZE : 0;
}

uint64_t cfi_cache_bytes(void)
{
    /* The kernel knows which of its pages were touched (mincore). */
    enum { PAGES = (sizeof(struct slot) * CACHE_SIZE + 4095) / 4096 };
    unsigned char vec[PAGES];
    uint64_t resident = 0;
    if (cache && mincore(cache, sizeof(struct slot) * CACHE_SIZE, vec) == 0)
        for (int i = 0; i < PAGES; i++)
            resident += vec[i] & 1;
    return resident * 4096 + __atomic_load_n(&memo_total_bytes, __ATOMIC_RELAXED);
}

/* Nearby pcs share cache pages: each 4 KiB page of code hashes to a run of
 * 64 slots (one per 64-byte line of code), so the cache touches about as
 * many of its pages as the program has hot code pages, not all of them
 * (a plain hash of the pc made it resident in full: 1.5 MiB). */
#define LINE_BITS 6
static inline uint32_t hash_pc(uint64_t pc)
{
    uint64_t page = pc >> 12;
    page ^= page >> 29;
    page *= 0xbf58476d1ce4e5b9ull;
    uint32_t run = (uint32_t)(page >> (64 - (CACHE_BITS - LINE_BITS)));
    return (run << LINE_BITS) | (uint32_t)((pc >> LINE_BITS) & ((1u << LINE_BITS) - 1));
}

/* ---- .eh_frame decoding ---------------------------------------------------- */

static uint64_t uleb(const uint8_t **p, const uint8_t *end)
{
    uint64_t v = 0;
    int shift = 0;
    while (*p < end) {
        uint8_t b = *(*p)++;
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80))
            break;
    }
    return v;
}

static int64_t sleb(const uint8_t **p, const uint8_t *end)
{
    int64_t v = 0;
    int shift = 0;
    uint8_t b = 0;
    while (*p < end) {
        b = *(*p)++;
        if (shift < 64)
            v |= (int64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80))
            break;
    }
    if (shift < 64 && (b & 0x40))
        v |= -((int64_t)1 << shift);
    return v;
}

/* Size in bytes of a pointer with DW_EH_PE encoding `enc` (value format). */
static int enc_size(uint8_t enc)
{
    switch (enc & 0x0f) {
    case 0x00: return 8;            /* absptr */
    case 0x02: case 0x0a: return 2;
    case 0x03: case 0x0b: return 4;
    case 0x04: case 0x0c: return 8;
    default: return -1;             /* uleb/sleb encoded: not used for FDE pointers by gcc */
    }
}

struct rules {
    uint8_t cfa_reg;
    int64_t cfa_off;
    int rbp_kind;                   /* 0 same value, 1 offset, 2 complex */
    int64_t rbp_off;
    int ra_kind;                    /* 0 unset, 1 offset, 2 undefined, 3 complex */
    int64_t ra_off;
    int complex_cfa;
    const uint8_t *cfa_expr;        /* DW_CFA_def_cfa_expression, if complex_cfa */
    uint64_t cfa_expr_len;
};

static void set_reg(struct rules *r, uint64_t reg, int kind, int64_t off)
{
    if (reg == REG_RBP_DW) {
        r->rbp_kind = kind;
        r->rbp_off = off;
    } else if (reg == REG_RA_DW) {
        r->ra_kind = kind == 0 ? 0 : kind == 1 ? 1 : kind == 3 ? 2 : 3;
        r->ra_off = off;
    }
}

/* Run CFA instructions [p, end) until the location passes `target`.
 * Returns 0, or -1 on anything unsupported. */
static int run_cfa(const uint8_t *p, const uint8_t *end, uint64_t loc, uint64_t target,
                   uint64_t code_align, int64_t data_align, struct rules *r, const struct rules *initial)
{
    struct rules stack[8];
    int depth = 0;
    while (p < end) {
        uint8_t op = *p++;
        uint8_t hi = op & 0xc0, lo = op & 0x3f;
        uint64_t delta = 0, reg;
        if (hi == 0x40) {
            delta = lo * code_align;
        } else if (hi == 0x80) {
            reg = lo;
            set_reg(r, reg, 1, (int64_t)uleb(&p, end) * data_align);
            continue;
        } else if (hi == 0xc0) {
            reg = lo;
            if (reg == REG_RBP_DW) { r->rbp_kind = initial->rbp_kind; r->rbp_off = initial->rbp_off; }
            if (reg == REG_RA_DW) { r->ra_kind = initial->ra_kind; r->ra_off = initial->ra_off; }
            continue;
        } else {
            switch (op) {
            case 0x00: continue;                                   /* nop */
            case 0x02: if (p + 1 > end) return -1; delta = p[0] * code_align; p += 1; break;
            case 0x03: if (p + 2 > end) return -1; { uint16_t v; memcpy(&v, p, 2); delta = v * code_align; } p += 2; break;
            case 0x04: if (p + 4 > end) return -1; { uint32_t v; memcpy(&v, p, 4); delta = v * code_align; } p += 4; break;
            case 0x05: reg = uleb(&p, end); set_reg(r, reg, 1, (int64_t)uleb(&p, end) * data_align); continue;
            case 0x06: reg = uleb(&p, end);
                if (reg == REG_RBP_DW) { r->rbp_kind = initial->rbp_kind; r->rbp_off = initial->rbp_off; }
                if (reg == REG_RA_DW) { r->ra_kind = initial->ra_kind; r->ra_off = initial->ra_off; }
                continue;
            case 0x07: reg = uleb(&p, end); set_reg(r, reg, 3, 0); if (reg == REG_RBP_DW) r->rbp_kind = 0; continue;
            case 0x08: reg = uleb(&p, end); set_reg(r, reg, 0, 0); continue;
            case 0x09: reg = uleb(&p, end); uleb(&p, end); set_reg(r, reg, 2, 0); continue;
            case 0x0a: if (depth == 8) return -1; stack[depth++] = *r; continue;
            case 0x0b: if (depth == 0) return -1;
                *r = stack[--depth];   /* the CFA rule too, as libgcc does */
                continue;
            case 0x0c: r->cfa_reg = (uint8_t)uleb(&p, end); r->cfa_off = (int64_t)uleb(&p, end); r->complex_cfa = 0; continue;
            case 0x0d: r->cfa_reg = (uint8_t)uleb(&p, end); r->complex_cfa = 0; continue;
            case 0x0e: r->cfa_off = (int64_t)uleb(&p, end); continue;
            case 0x0f: { uint64_t n = uleb(&p, end); r->cfa_expr = p; r->cfa_expr_len = n; p += n; r->complex_cfa = 1; continue; }
            case 0x10: case 0x16: { reg = uleb(&p, end); uint64_t n = uleb(&p, end); p += n; set_reg(r, reg, 2, 0); continue; }
            case 0x11: reg = uleb(&p, end); set_reg(r, reg, 1, sleb(&p, end) * data_align); continue;
            case 0x12: r->cfa_reg = (uint8_t)uleb(&p, end); r->cfa_off = sleb(&p, end) * data_align; r->complex_cfa = 0; continue;
            case 0x13: r->cfa_off = sleb(&p, end) * data_align; continue;
            case 0x14: reg = uleb(&p, end); uleb(&p, end); set_reg(r, reg, 2, 0); continue;
            case 0x15: reg = uleb(&p, end); sleb(&p, end); set_reg(r, reg, 2, 0); continue;
            case 0x2e: uleb(&p, end); continue;                    /* GNU_args_size */
            case 0x2f: reg = uleb(&p, end); set_reg(r, reg, 1, -(int64_t)uleb(&p, end) * data_align); continue;
            default: return -1;
            }
        }
        if (loc + delta > target)
            return 0;
        loc += delta;
    }
    return 0;
}

/* The FDE whose table entry is the last one at or below `pc`, from the
 * .eh_frame_hdr search table of the object containing `pc`; *func gets the
 * entry's start address (the caller checks the FDE's range).  NULL when no
 * loaded object contains pc or its table is not the usual datarel|sdata4. */
static const uint8_t *find_fde(uint64_t pc, uint64_t *func)
{
    struct dl_find_object obj;
    if (_dl_find_object((void *)pc, &obj) != 0 || !obj.dlfo_eh_frame)
        return NULL;
    const uint8_t *hdr = obj.dlfo_eh_frame;
    if (hdr[0] != 1 || hdr[3] != 0x3b)          /* version 1, DW_EH_PE_datarel|sdata4 */
        return NULL;
    int ptr_size = enc_size(hdr[1]), count_size = enc_size(hdr[2]);
    if (ptr_size < 0 || (count_size != 4 && count_size != 8))
        return NULL;
    const uint8_t *p = hdr + 4 + ptr_size;
    uint64_t count = 0;
    memcpy(&count, p, (size_t)count_size);      /* little-endian: the low bytes */
    const int32_t *table = (const int32_t *)(p + count_size);
    int64_t rel = (int64_t)(pc - (uint64_t)(uintptr_t)hdr);
    if (count == 0 || table[0] > rel)
        return NULL;
    uint64_t lo = 0, hi = count;                /* table[2*lo] <= rel < table[2*hi] */
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (table[2 * mid] <= rel)
            lo = mid;
        else
            hi = mid;
    }
    *func = (uint64_t)(uintptr_t)hdr + (int64_t)table[2 * lo];
    return hdr + table[2 * lo + 1];
}

/* The one DWARF expression that matters for sampling: every call to a
 * shared library goes through a PLT entry, whose FDE (written by the
 * linker) says CFA = rsp + off + ((rip & 15) >= K ? 8 : 0), as
 *   DW_OP_breg7 off; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_litK;
 *   DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus.
 * Returns K (and *off), or -1 for any other expression. */
static int plt_threshold(const uint8_t *e, uint64_t n, int64_t *off)
{
    const uint8_t *end = e + n;
    if (n < 11 || e[0] != 0x77)
        return -1;
    const uint8_t *p = e + 1;
    *off = sleb(&p, end);
    static const uint8_t mid[] = {0x80, 0x00, 0x3f, 0x1a};
    static const uint8_t tail[] = {0x2a, 0x33, 0x24, 0x22};
    if (end - p != 9 || memcmp(p, mid, 4) != 0 || p[4] < 0x30 || p[4] > 0x4f || memcmp(p + 5, tail, 4) != 0)
        return -1;
    return p[4] - 0x30;
}

/* The rule for `pc` (already adjusted: pc-1 for return addresses). */
static struct rule compute_rule(uint64_t pc)
{
    struct rule out = {RULE_COMPLEX, 0, 0, NO_OFFSET, 0};
    uint64_t start;
    const uint8_t *fde = find_fde(pc, &start);
    if (!fde)
        return out;
    uint32_t len32;
    memcpy(&len32, fde, 4);
    if (len32 == 0xffffffffu || len32 == 0)
        return out;
    const uint8_t *fde_end = fde + 4 + len32;
    int32_t cie_ptr;
    memcpy(&cie_ptr, fde + 4, 4);
    const uint8_t *cie = fde + 4 - cie_ptr;
    memcpy(&len32, cie, 4);
    if (len32 == 0xffffffffu || len32 == 0)
        return out;
    const uint8_t *cie_end = cie + 4 + len32;
    const uint8_t *p = cie + 8;           /* skip length and CIE id */
    uint8_t version = *p++;
    const char *aug = (const char *)p;
    size_t auglen = strnlen(aug, 16);
    p += auglen + 1;
    if (aug[0] && aug[0] != 'z')
        return out;
    uint64_t code_align = uleb(&p, cie_end);
    int64_t data_align = sleb(&p, cie_end);
    if (version == 1)
        p++;
    else
        uleb(&p, cie_end);
    uint8_t fde_enc = 0;
    int signal_frame = 0;
    if (aug[0] == 'z') {
        uint64_t n = uleb(&p, cie_end);
        const uint8_t *aug_end = p + n;
        /* Letters without data ('S') may follow the data's end: walk
         * every letter, checking the data bounds per letter. */
        for (size_t i = 1; i < auglen; i++) {
            if (aug[i] != 'S' && p >= aug_end)
                return out;
            switch (aug[i]) {
            case 'R': fde_enc = *p++; break;
            case 'L': p++; break;
            case 'P': { uint8_t e = *p++; int sz = enc_size(e); if (sz < 0) return out; p += sz; break; }
            case 'S': signal_frame = 1; break;
            default: return out;
            }
        }
        p = aug_end;
    }
    int psize = enc_size(fde_enc);
    if (psize < 0)
        return out;
    uint64_t range = 0;                         /* pc_range: the value format, unrelocated */
    memcpy(&range, fde + 8 + psize, (size_t)psize);
    if (pc >= start + range)
        return out;                             /* a gap between FDEs: no rule */
    if (signal_frame) {
        out.kind = RULE_SIGNAL;
        return out;
    }

    struct rules initial = {REG_RSP_DW, 8, 0, 0, 1, -8, 0};
    if (run_cfa(p, cie_end, 0, 0, code_align, data_align, &initial, &initial) != 0)
        return out;
    struct rules r = initial;
    const uint8_t *q = fde + 8 + 2 * psize;
    if (aug[0] == 'z') {
        uint64_t n = uleb(&q, fde_end);
        q += n;
    }
    if (run_cfa(q, fde_end, start, pc, code_align, data_align, &r, &initial) != 0)
        return out;
    if (r.ra_kind == 2) {
        out.kind = RULE_END;              /* return address undefined: outermost frame */
        return out;
    }
    int64_t plt_off;
    int k;
    if (r.complex_cfa && r.ra_kind == 1 && r.ra_off == -8 && r.rbp_kind == 0 &&
        (k = plt_threshold(r.cfa_expr, r.cfa_expr_len, &plt_off)) >= 0 && plt_off > 0 && plt_off < 4096) {
        out.kind = RULE_PLT;
        out.cfa_off = (int32_t)plt_off;
        out.ra_off = (int16_t)k;           /* the threshold, for RULE_PLT */
        return out;
    }
    if (r.complex_cfa || r.ra_kind != 1 || r.rbp_kind == 2 ||
        (r.cfa_reg != REG_RSP_DW && r.cfa_reg != REG_RBP_DW) ||
        r.cfa_off < -(1 << 30) || r.cfa_off > (1 << 30) || r.ra_off < -30000 || r.ra_off > 30000 ||
        r.rbp_off < -30000 || r.rbp_off > 30000)
        return out;
    out.kind = RULE_OK;
    out.cfa_rbp = r.cfa_reg == REG_RBP_DW;
    out.cfa_off = (int32_t)r.cfa_off;
    out.ra_off = (int16_t)r.ra_off;
    out.rbp_off = r.rbp_kind == 1 ? (int16_t)r.rbp_off : NO_OFFSET;
    return out;
}

/* Put rule `r` for `pc` into slot `s`, whose key was `seen` (0 or a stale
 * entry); a lost race leaves the slot to the other writer. */
static void fill_slot(struct slot *s, uint64_t seen, uint64_t pc, struct rule r, uint32_t gen)
{
    if (!__atomic_compare_exchange_n(&s->key, &seen, pc | BUSY, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return;
    s->rule = r;
    s->gen = gen;
    __atomic_store_n(&s->key, pc, __ATOMIC_RELEASE);
}

static struct rule lookup(uint64_t pc)
{
    if (!cache)
        return compute_rule(pc);
    uint32_t gen = __atomic_load_n(&code_gen, __ATOMIC_ACQUIRE);
    uint32_t i = hash_pc(pc);
    struct slot *stale = NULL;
    uint64_t stale_key = 0;
    for (int probe = 0; probe < 16; probe++, i = (i + 1) & (CACHE_SIZE - 1)) {
        struct slot *s = &cache[i];
        uint64_t key = __atomic_load_n(&s->key, __ATOMIC_ACQUIRE);
        if (key == pc) {
            struct rule r = s->rule;
            uint32_t g = s->gen;
            if (__atomic_load_n(&s->key, __ATOMIC_ACQUIRE) == pc && g == gen)
                return r;
            if (!stale) {              /* computed before a dlclose: recompute here */
                stale = s;
                stale_key = pc;
            }
            continue;
        }
        if (key == 0) {
            struct rule r = compute_rule(pc);
            if (stale)
                fill_slot(stale, stale_key, pc, r, gen);
            else if (__atomic_load_n(&cache_used, __ATOMIC_RELAXED) < CACHE_SIZE / 4 * 3) {
                fill_slot(s, 0, pc, r, gen);
                __atomic_fetch_add(&cache_used, 1, __ATOMIC_RELAXED);
            }
            return r;
        }
        if (!stale && !(key & BUSY) && s->gen != gen) {
            stale = s;                 /* another pc's outdated rule: reusable */
            stale_key = key;
        }
    }
    struct rule r = compute_rule(pc);
    if (stale)
        fill_slot(stale, stale_key, pc, r, gen);
    return r;
}

/* ---- validated reads ----------------------------------------------------------
 * The thread's own stack (bounds from pthread) cannot be unmapped under it:
 * loads there are direct.  Anything else goes through one cached page per
 * thread (kept for one walk), filled by process_vm_readv on our own pid,
 * which returns an error for an unmapped address instead of faulting
 * (where it is not allowed, a rt_sigprocmask probe of the page,
 * gperftools' trick, decides).  A walk
 * may fill at most READ_BUDGET pages, so a sample costs a bounded time. */
#define READ_BUDGET 16
static __thread uint8_t *read_page CTPROF_TLS;     /* mmap'ed on first need */
static __thread uint64_t read_page_addr CTPROF_TLS;
static int vm_readv_refused;

struct reader {
    struct stack_bounds direct;                   /* [sp, top of the thread's stack), or empty */
    int any_memory;                               /* allow validated reads off the stack */
    int budget;
};

/* Is the page at `page` mapped readable?  Asked of the kernel without
 * touching it: rt_sigprocmask with an invalid `how` copies the new set in
 * first, so EFAULT means unreadable and EINVAL readable. */
int page_readable(uint64_t page)
{
    long rc = syscall(SYS_rt_sigprocmask, ~0, (void *)(uintptr_t)page, (void *)0, 8);
    return rc == -1 && errno == EINVAL;
}

static int fill_page(uint64_t page)
{
    if (!read_page) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return 0;
        read_page = p;
    }
    read_page_addr = 0;
    if (!__atomic_load_n(&vm_readv_refused, __ATOMIC_RELAXED)) {
        struct iovec local = {read_page, 4096}, remote = {(void *)(uintptr_t)page, 4096};
        long n = syscall(SYS_process_vm_readv, (long)getpid(), &local, 1L, &remote, 1L, 0L);
        if (n == 4096) {
            read_page_addr = page;
            return 1;
        }
        if (!(n < 0 && (errno == ENOSYS || errno == EPERM)))
            return 0;
        __atomic_store_n(&vm_readv_refused, 1, __ATOMIC_RELAXED);
    }
    if (!page_readable(page))
        return 0;
    memcpy(read_page, (const void *)(uintptr_t)page, 4096);
    read_page_addr = page;
    return 1;
}

/* read_word off the thread's stack. */
static __attribute__((noinline)) int read_word_elsewhere(struct reader *m, uint64_t addr, uint64_t *out)
{
    if (addr & 7 || !m->any_memory || addr < 4096)
        return 0;
    uint64_t page = addr & ~(uint64_t)4095;
    if (page != read_page_addr) {
        if (m->budget <= 0)
            return 0;
        m->budget--;
        if (!fill_page(page))
            return 0;
    }
    memcpy(out, read_page + (addr - page), 8);
    return 1;
}

/* The word at `addr` (8-aligned), or 0 if it cannot be read safely.  A
 * word of the thread's stack is a plain load, inline: the hooks' walks
 * read nothing else. */
static inline int read_word(struct reader *m, uint64_t addr, uint64_t *out)
{
    if (!(addr & 7) && addr >= m->direct.lo && addr + 8 <= m->direct.hi) {
        *out = *(const uint64_t *)(uintptr_t)addr;
        return 1;
    }
    return read_word_elsewhere(m, addr, out);
}

/* ---- the walk ---------------------------------------------------------------------- */

#define MAX_FRAME_BYTES (64ull << 20)   /* a CFA farther than this from sp is garbage */

/* offsetof(ucontext_t, uc_mcontext.gregs) and the gregs indices on x86-64. */
#define UC_GREGS 40
#define GREG_RBP 10
#define GREG_RSP 15
#define GREG_RIP 16

/* ---- the thread's last walk (CFI_MEMO: heap hooks) ----------------------------------
 * Consecutive allocations of a thread mostly come from the same callers:
 * above some frame the stack is the one the last walk found.  So each
 * thread keeps its last walk: the state each step started from (pc, sp,
 * rbp) and the stack words it read there.  A step depends on nothing else:
 * its rule on the pc and the code generation, its next state on those
 * words.  So when a new walk reaches a state of the last one, and every
 * word the last walk read from that step on still holds what it held, the
 * rest of the walk would find the same frames: they are taken from the
 * memo, not looked up (a load and a compare per frame instead of a cache
 * probe).  Only walks whose every read was a plain load from the thread's
 * own stack, at or above the sp of the step that read it, and that ended
 * on their own (the stack's end or the depth limit), are kept.
 *
 * A saved rbp matters only where a later step uses rbp before another
 * frame restores it (fp_used: in most optimized code rbp is an ordinary
 * register and no rule looks at it), so only such words are checked.
 *
 * On a g++ compile 17 of a walk's 20 steps come from the memo, so what a
 * step of it costs is what counts.  It is kept root first: step 0 is the
 * outermost, top-1 the first (sp decreasing upwards), so a walk that meets
 * step h shares steps 0..h with the last walk where they lie: only its own
 * first steps, recorded aside (`fresh`, walk order) until it is known where
 * they go, are written above h.  (Both walks copied whole into a second
 * memo cost a fifth of the unwinder's time there.)  And its fields lie
 * apart by use: the words to check, the pcs to copy, the sps to search,
 * the rest. */
/* The rbp values a memo keeps (each step's, and the saved ones it read)
 * are stored flipped in their top bit.  In optimized code rbp is an
 * ordinary register and often holds a heap pointer; the memo outlives the
 * frames it describes, and the leak scan reads the program's memory as
 * roots: a plain copy would keep a block that was lost "still reachable".
 * Flipped, no copy is a user-space address. */
#define MEMO_HIDE (1ull << 63)

struct memo_step {                /* one step as the walk records it */
    uint64_t pc, sp, fp;          /* the state the step started from (fp ^ MEMO_HIDE), */
    uint32_t exact;               /* ... whether pc is exact (not a return address), */
    uint8_t fp_rule;              /* whether its rule uses rbp */
    uint64_t ra_at, ra;           /* the return address read (ra_at 0: none) */
    uint64_t rbp_at, rbp;         /* the saved rbp read (rbp_at 0: none; rbp ^ MEMO_HIDE) */
};
/* What a step with no return address to check compares: this. */
static const uint64_t no_word = 0;
struct memo_check {
    uint64_t at;                  /* ra_at (&no_word: none) | 1 if the saved rbp is checked too */
    uint64_t ra;
};
struct memo_more {
    uint64_t fp, rbp_at, rbp;     /* (fp and rbp ^ MEMO_HIDE) */
    uint32_t exact;
    uint8_t fp_rule, fp_used;     /* its rule uses rbp; it or a later step does before
                                     a frame restores rbp (or the resumed walk may) */
};
struct memo {
    uint32_t top;                 /* steps 0..top-1 (none: 0) */
    uint32_t gen;                 /* code_gen during the walk */
    uint64_t stack_hi;            /* the stack it was on */
    int stopped;                  /* it stopped at its depth limit, in state rest_* */
    uint32_t rest_exact;
    uint64_t rest_pc, rest_sp;
    uint64_t *pc, *sp;            /* memo_cap steps each */
    struct memo_check *check;
    struct memo_more *more;
};
/* Room for the depth limit's frames plus leading frames that are walked
 * but not recorded (the shim's own, when one interposer calls another:
 * reallocarray's realloc). */
#define MEMO_SPARE_STEPS 16
/* Beside the memo, the thread keeps the rules it used last in a small
 * table of its own: a hit costs no probe of the shared cache (whose
 * slots, spread over a megabyte, mostly miss the CPU's caches).  1024
 * entries (24 KiB): cc1plus's walks found 68% of their rules in 128, 90%
 * in 1024, 94% in 2048. */
#define THREAD_RULE_BITS 10
struct thread_rule {
    uint64_t pc;
    uint32_t gen;
    struct rule rule;
};
static __thread struct thread_rule *thread_rules CTPROF_TLS;
static __thread struct memo *memo CTPROF_TLS;          /* mmap'ed on first need */
static __thread struct memo_step *fresh CTPROF_TLS;    /* memo_cap steps */
static __thread uint32_t memo_cap CTPROF_TLS;
static __thread size_t memo_bytes CTPROF_TLS;
static __thread int memo_busy CTPROF_TLS;
static __thread int memo_gone CTPROF_TLS;  /* the thread is exiting: no new mmap to leak */

static void memo_free(void)
{
    void *p = thread_rules;
    size_t bytes = memo_bytes;
    thread_rules = NULL;
    memo = NULL;
    fresh = NULL;
    memo_cap = 0;
    memo_bytes = 0;
    if (p) {
        munmap(p, bytes);
        __atomic_fetch_sub(&memo_total_bytes, bytes, __ATOMIC_RELAXED);
    }
}

/* The calling thread's memo, taken for this walk (NULL when it is in use
 * by a nested walk or cannot be had); *usable: it holds the last walk. */
static struct memo *memo_open(int *usable, int max, uint64_t stack_hi)
{
    *usable = 0;
    if (memo_busy || memo_gone || max < 1)
        return NULL;
    if (!memo) {
        size_t cap = (size_t)max + MEMO_SPARE_STEPS;
        size_t rules = sizeof(struct thread_rule) << THREAD_RULE_BITS;
        size_t bytes = rules + sizeof(struct memo) +
                       cap * (2 * sizeof(uint64_t) + sizeof(struct memo_check) + sizeof(struct memo_more) +
                              sizeof(struct memo_step));
        bytes = (bytes + 4095) & ~(size_t)4095;
        char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        thread_rules = (struct thread_rule *)p;
        struct memo *m = (struct memo *)(p + rules);
        m->check = (struct memo_check *)(m + 1);
        m->more = (struct memo_more *)(m->check + cap);
        m->pc = (uint64_t *)(m->more + cap);
        m->sp = m->pc + cap;
        fresh = (struct memo_step *)(m->sp + cap);
        memo = m;
        memo_cap = (uint32_t)cap;
        memo_bytes = bytes;
        __atomic_fetch_add(&memo_total_bytes, bytes, __ATOMIC_RELAXED);
    }
    memo_busy = 1;
    uint32_t gen = __atomic_load_n(&code_gen, __ATOMIC_ACQUIRE);
    *usable = memo->top && memo->gen == gen && memo->stack_hi == stack_hi;
    memo->gen = gen;
    memo->stack_hi = stack_hi;
    return memo;
}

/* Step i of the memo becomes `s`. */
static void memo_put(struct memo *m, uint32_t i, const struct memo_step *s)
{
    m->pc[i] = s->pc;
    m->sp[i] = s->sp;
    m->check[i] = s->ra_at ? (struct memo_check){s->ra_at, s->ra} : (struct memo_check){(uint64_t)(uintptr_t)&no_word, 0};
    m->more[i] = (struct memo_more){s->fp, s->rbp_at, s->rbp, s->exact, s->fp_rule, 0};
}

/* Steps src.. (n of them) move to dst.. */
static void memo_move(struct memo *m, uint32_t dst, uint32_t src, uint32_t n)
{
    memmove(&m->pc[dst], &m->pc[src], n * sizeof *m->pc);
    memmove(&m->sp[dst], &m->sp[src], n * sizeof *m->sp);
    memmove(&m->check[dst], &m->check[src], n * sizeof *m->check);
    memmove(&m->more[dst], &m->more[src], n * sizeof *m->more);
}

/* fp_used of steps from..top-1, and whether their saved rbp is checked,
 * from `used`: the step below uses the rbp it arrives with (at step 0:
 * the walk resumed where the memo stopped may). */
static void memo_fp_used(struct memo *m, uint32_t from, int used)
{
    for (uint32_t i = from; i < m->top; i++) {
        struct memo_more *x = &m->more[i];
        m->check[i].at = (m->check[i].at & ~1ull) | (x->rbp_at && used);
        used = x->fp_rule || (!x->rbp_at && used);
        x->fp_used = (uint8_t)used;
    }
}

/* Does every word the last walk read from its step h down (that matters)
 * still hold the value it read?  Returns -1, or the highest step that does
 * not.  (Every such word lies at or above its step's sp, so at or above
 * the sp of step h, which is the current walk's: a plain load of the
 * thread's stack.)  Most hold: all are compared, then the first that
 * failed is looked for. */
static int memo_fails(const struct memo *m, uint32_t h)
{
    uint64_t differ = 0;
    for (uint32_t i = h + 1; i-- > 0;) {
        uint64_t at = m->check[i].at;
        differ |= *(const uint64_t *)(uintptr_t)(at & ~1ull) ^ m->check[i].ra;
        if (at & 1)
            differ |= *(const uint64_t *)(uintptr_t)m->more[i].rbp_at ^ MEMO_HIDE ^ m->more[i].rbp;
    }
    if (!differ)
        return -1;
    for (uint32_t i = h + 1; i-- > 0;) {
        uint64_t at = m->check[i].at;
        if (*(const uint64_t *)(uintptr_t)(at & ~1ull) != m->check[i].ra ||
            ((at & 1) && (*(const uint64_t *)(uintptr_t)m->more[i].rbp_at ^ MEMO_HIDE) != m->more[i].rbp))
            return (int)i;
    }
    return 0;
}

/* lookup() through the thread's own table (only while it holds the memo:
 * an ordinary context, never a signal handler). */
static struct rule thread_lookup(uint64_t pc, uint32_t gen)
{
    struct thread_rule *e = &thread_rules[(pc * 0x9e3779b97f4a7c15ull) >> (64 - THREAD_RULE_BITS)];
    if (e->pc == pc && e->gen == gen)
        return e->rule;
    struct rule r = lookup(pc);
    e->pc = pc;
    e->gen = gen;
    e->rule = r;
    return r;
}

/* How this walk builds the new memo. */
struct memo_walk {
    struct memo *m;               /* NULL: nothing kept */
    int32_t at;                   /* the next step of the last walk to compare (going down) */
    int32_t fails;                /* steps at or above this one no longer hold */
    int32_t hit;                  /* the step met (-1: none) */
    int32_t cut;                  /* with a hit: the steps shared are cut..hit */
    uint32_t nfresh;              /* this walk's own steps, in `fresh` */
    uint32_t inner;               /* ... of which the first ones, above the shared steps
                                     (the rest resumed where the last walk stopped) */
    int outer;                    /* resumed where the last walk stopped */
    int full;                     /* too many steps, or one not kept: nothing kept */
    int stopped;                  /* it stopped at its depth limit, in state m->rest_* */
};

/* Room for the walk's next step (NULL: not kept). */
static struct memo_step *memo_record(struct memo_walk *w, uint64_t pc, uint64_t sp, uint64_t fp, int exact)
{
    if (!w->m || w->full)
        return NULL;
    if (w->nfresh >= memo_cap) {
        w->full = 1;
        return NULL;
    }
    struct memo_step *s = &fresh[w->nfresh++];
    *s = (struct memo_step){pc, sp, fp ^ MEMO_HIDE, (uint32_t)exact, 0, 0, 0, 0, 0};
    return s;
}

/* The walk is over: it becomes the thread's memo if `keep` (it ended on
 * its own): the steps it resumed with where the last walk had stopped
 * (outermost first), those it shared with the last walk, its first ones. */
static void memo_close(struct memo_walk *w, int keep)
{
    struct memo *m = w->m;
    if (!m)
        return;
    uint32_t shared = w->hit >= 0 ? (uint32_t)(w->hit - w->cut + 1) : 0;
    uint32_t inner = w->outer ? w->inner : w->nfresh, outer = w->nfresh - inner;
    if (!keep || w->full || shared + w->nfresh > memo_cap) {
        m->top = 0;
    } else {
        int common = shared && w->cut == 0 && !outer;
        if (shared && (uint32_t)w->cut != outer)
            memo_move(m, outer, (uint32_t)w->cut, shared);
        for (uint32_t t = 0; t < outer; t++)
            memo_put(m, outer - 1 - t, &fresh[inner + t]);
        for (uint32_t t = 0; t < inner; t++)
            memo_put(m, outer + shared + inner - 1 - t, &fresh[t]);
        m->top = outer + shared + inner;
        m->stopped = w->stopped;
        if (common)   /* the steps below are the last walk's, and so is where it ended */
            memo_fp_used(m, shared, m->more[shared - 1].fp_used);
        else
            memo_fp_used(m, 0, m->stopped);
    }
    memo_busy = 0;
}

void cfi_thread_exit(void)
{
    uint8_t *p = read_page;
    read_page = NULL;
    read_page_addr = 0;
    if (p)
        munmap(p, 4096);
    memo_free();
    memo_gone = 1;
}

int cfi_unwind(uint64_t pc, uint64_t sp, uint64_t fp, const struct stack_bounds *b,
               uint64_t *ips, int max, uint64_t skip_lo, uint64_t skip_hi, int flags, int *truncated)
{
    /* Direct loads only between the interrupted sp and the top of the
     * thread's stack: all of that is mapped, whereas below sp (the main
     * thread's bounds reach down to its rlimit) may not be.  A sample
     * taken on another stack (coroutine, sigaltstack) reads everything
     * through the validated path. */
    struct reader m = {{0, 0}, flags & CFI_ANY_MEMORY, READ_BUDGET};
    if (b->hi && sp >= b->lo && sp < b->hi) {
        m.direct.lo = sp;
        m.direct.hi = b->hi;
    } else if (flags & CFI_STRICT) {
        return -1;
    }
    /* The memo holds only plain loads from the thread's stack. */
    struct memo_walk w = {NULL, -1, 0, -1, 0, 0, 0, 0, 0, 0};
    struct memo *last = NULL;     /* the last walk, while it may still be met */
    if ((flags & CFI_MEMO) && !(flags & CFI_ANY_MEMORY) && m.direct.hi) {
        int usable;
        w.m = memo_open(&usable, max, m.direct.hi);
        if (usable) {
            last = w.m;
            w.at = (int32_t)last->top - 1;
            w.fails = (int32_t)last->top;
        }
    }
    int n = 0, keep = 0;
    /* pc is exact (the leaf, or resumed after a signal), not a return address */
    int exact = !(flags & CFI_RETURN_ADDRESS);
    *truncated = 0;
    for (int steps = 0; steps < max + 256; steps++) {
        if (last) {
            int32_t h = w.at;
            while (h >= 0 && last->sp[h] < sp)
                h--;
            w.at = h;
            if (h >= 0 && h < w.fails && last->sp[h] == sp && last->pc[h] == pc &&
                (last->more[h].fp == (fp ^ MEMO_HIDE) || !last->more[h].fp_used) &&
                last->more[h].exact == (uint32_t)exact &&
                (w.fails = memo_fails(last, (uint32_t)h)) < 0) {
                /* The rest is the last walk's: its frames, then where it
                 * stopped. */
                w.hit = h;
                w.cut = 0;
                int32_t i = h;
                while (n == 0 && i >= 0 && last->pc[i] >= skip_lo && last->pc[i] < skip_hi)
                    i--;      /* leading frames of the shim itself */
                if (i + 1 > max - n) {
                    /* it stops at the depth limit: the steps below are dropped */
                    int32_t stop = i - (max - n);
                    while (i > stop)
                        ips[n++] = last->pc[i--];
                    *truncated = 1;
                    w.stopped = 1;
                    last->rest_pc = last->pc[stop];
                    last->rest_sp = last->sp[stop];
                    last->rest_exact = last->more[stop].exact;
                    w.cut = stop + 1;
                    keep = 1;
                    goto done;
                }
                while (i >= 0)
                    ips[n++] = last->pc[i--];
                steps += h + 1;
                if (!last->stopped) {
                    keep = 1;
                    goto done;
                }
                /* On from where it stopped, with the rbp the last step
                 * that restores one restored (else the one this walk
                 * met step h with): fp_used had every word checked. */
                for (int32_t i = 0; i <= h; i++)
                    if (last->more[i].rbp_at) {
                        fp = last->more[i].rbp ^ MEMO_HIDE;
                        break;
                    }
                pc = last->rest_pc;
                sp = last->rest_sp;
                exact = (int)last->rest_exact;
                w.outer = 1;
                w.inner = w.nfresh;
                last = NULL;
                continue;
            }
        }
        if (n > 0 || pc < skip_lo || pc >= skip_hi) {
            if (n == max) {
                *truncated = 1;
                if (w.m) {
                    w.stopped = 1;
                    w.m->rest_pc = pc;
                    w.m->rest_sp = sp;
                    w.m->rest_exact = (uint32_t)exact;
                }
                keep = 1;
                goto done;
            }
            ips[n++] = pc;
        }
        struct memo_step *rec = memo_record(&w, pc, sp, fp, exact);
        struct rule r = {RULE_COMPLEX, 0, 0, NO_OFFSET, 0};
        if (flags & CFI_RULES) {
            /* A return address points after the call: look up the call itself. */
            r = w.m ? thread_lookup(exact ? pc : pc - 1, w.m->gen) : lookup(exact ? pc : pc - 1);
            if (r.kind == RULE_COMPLEX && !exact)
                r = lookup(pc);   /* a sigreturn trampoline's FDE may start at pc itself */
            if (r.kind == RULE_PLT) {
                /* only ever a leaf: turn it into an ordinary rsp-based rule */
                r.kind = RULE_OK;
                r.cfa_rbp = 0;
                r.cfa_off += (int64_t)(pc & 15) >= r.ra_off ? 8 : 0;
                r.ra_off = -8;
                r.rbp_off = NO_OFFSET;
            }
            if (r.kind != RULE_SIGNAL && r.kind != RULE_END && r.kind != RULE_OK)
                r.kind = RULE_COMPLEX;
        }
        uint64_t cfa, ra, next_fp = fp;
        int resumed = 0;    /* the next pc is an interrupted one, not a return address */
        if (r.kind == RULE_END) {
            keep = 1;
            goto done;
        } else if (r.kind == RULE_SIGNAL) {
            /* The kernel's frame: resume from the interrupted registers
             * (the interrupted rsp stands where a cfa would). */
            uint64_t g = sp + UC_GREGS;
            w.full = 1;               /* not kept: its reads are not recorded */
            if (!read_word(&m, g + 8 * GREG_RIP, &ra) || !read_word(&m, g + 8 * GREG_RSP, &cfa) ||
                !read_word(&m, g + 8 * GREG_RBP, &next_fp))
                goto done;
            resumed = 1;
        } else if (r.kind == RULE_OK) {
            cfa = (r.cfa_rbp ? fp : sp) + (int64_t)r.cfa_off;
            if (cfa & 7 || cfa <= sp || cfa - sp > MAX_FRAME_BYTES) {
                keep = 1;
                goto done;
            }
            uint64_t ra_at = cfa + (int64_t)r.ra_off, rbp_at = cfa + (int64_t)r.rbp_off;
            if (!read_word(&m, ra_at, &ra))
                goto done;
            if (r.rbp_off != NO_OFFSET && !read_word(&m, rbp_at, &next_fp))
                goto done;
            if (rec) {
                /* a later walk checks these words from where it met this
                 * step: they must lie at or above its sp */
                if (ra_at < sp || (r.rbp_off != NO_OFFSET && rbp_at < sp))
                    w.full = 1;
                rec->fp_rule = r.cfa_rbp;
                rec->ra_at = ra_at;
                rec->ra = ra;
                if (r.rbp_off != NO_OFFSET) {
                    rec->rbp_at = rbp_at;
                    rec->rbp = next_fp ^ MEMO_HIDE;
                }
            }
        } else {
            /* No rule (JIT code, no FDE, DWARF expressions): the
             * frame-pointer chain, validated like everything else. */
            if (flags & CFI_STRICT) {
                n = -1;
                goto done;
            }
            w.full = 1;               /* not kept: its reads are not recorded */
            if (fp & 7 || fp < sp || fp - sp > MAX_FRAME_BYTES)
                goto done;
            if (!read_word(&m, fp, &next_fp) || !read_word(&m, fp + 8, &ra))
                goto done;
            cfa = fp + 16;
        }
        if (ra < 4096) {
            keep = 1;
            goto done;
        }
        sp = cfa;
        fp = next_fp;
        pc = ra;
        exact = resumed;
    }
done:
    memo_close(&w, keep);
    if (read_page_addr) {
        /* The copied page is this walk's only: the memory it copies may
         * change before the next one, and a copy kept would be a root of
         * the leak scan, a pointer to a block that may be lost since. */
        memset(read_page, 0, 4096);
        read_page_addr = 0;
    }
    return n;
}
