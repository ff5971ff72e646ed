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
 * thread, filled by process_vm_readv on our own pid, which returns an error
 * for an unmapped address instead of faulting (where it is not allowed, a
 * rt_sigprocmask probe of the page, gperftools' trick, decides).  A walk
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

static int read_word(struct reader *m, uint64_t addr, uint64_t *out)
{
    if (addr & 7)
        return 0;
    if (addr >= m->direct.lo && addr + 8 <= m->direct.hi) {
        *out = *(const uint64_t *)(uintptr_t)addr;
        return 1;
    }
    if (!m->any_memory || addr < 4096)
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
 * rest of the walk would find the same frames: they are copied, not looked
 * up (a load and a compare per frame instead of a cache probe).  Only walks
 * whose every read was a plain load from the thread's own stack, and that
 * ended on their own (the stack's end or the depth limit), are kept. */
struct memo_step {
    uint64_t pc, sp, fp;          /* the state the step started from, */
    uint32_t exact, fp_used;      /* ... and whether its rule or a later one (before rbp is restored) uses rbp */
    uint64_t ra_at, ra;           /* the return address read (ra_at 0: none) */
    uint64_t rbp_at, rbp;         /* the saved rbp read (rbp_at 0: none) */
};
struct memo {
    uint32_t steps;               /* 0: nothing kept */
    uint32_t gen;                 /* code_gen during the walk */
    uint64_t stack_hi;            /* the stack it was on */
    int stopped;                  /* it stopped at its depth limit, in state `rest` */
    struct memo_step rest;
    struct memo_step step[];
};
/* Room for the depth limit's frames plus leading frames that are walked
 * but not recorded (the shim's own, when one interposer calls another:
 * reallocarray's realloc). */
#define MEMO_SPARE_STEPS 16
/* Beside the memo, the thread keeps the rules it used last in a small
 * table of its own: a hit costs no probe of the shared cache (whose
 * slots, spread over a megabyte, mostly miss the CPU's caches). */
#define THREAD_RULE_BITS 7
struct thread_rule {
    uint64_t pc;
    uint32_t gen;
    struct rule rule;
};
static __thread struct thread_rule *thread_rules CTPROF_TLS;
static __thread struct memo *memos[2] CTPROF_TLS;     /* last walk, next walk: mmap'ed on first need */
static __thread uint32_t memo_cap CTPROF_TLS, memo_cur CTPROF_TLS;
static __thread size_t memo_bytes CTPROF_TLS;
static __thread int memo_busy CTPROF_TLS;
static __thread int memo_gone CTPROF_TLS;  /* the thread is exiting: no new mmap to leak */

static void memo_free(void)
{
    void *p = thread_rules;
    size_t bytes = memo_bytes;
    thread_rules = NULL;
    memos[0] = memos[1] = NULL;
    memo_cap = 0;
    memo_bytes = 0;
    if (p) {
        munmap(p, bytes);
        __atomic_fetch_sub(&memo_total_bytes, bytes, __ATOMIC_RELAXED);
    }
}

/* The calling thread's last walk (NULL: none usable) and the record for
 * this one; both NULL when the memo is in use (a nested walk) or cannot
 * be had. */
static void memo_open(struct memo **last, struct memo **next, int max, uint64_t stack_hi)
{
    *last = *next = NULL;
    if (memo_busy || memo_gone || max < 1)
        return;
    if (!memos[0]) {
        uint32_t cap = (uint32_t)max + MEMO_SPARE_STEPS;
        size_t rules = sizeof(struct thread_rule) << THREAD_RULE_BITS;
        size_t one = (sizeof(struct memo) + cap * sizeof(struct memo_step) + 63) & ~(size_t)63;
        size_t bytes = (rules + 2 * one + 4095) & ~(size_t)4095;
        char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return;
        thread_rules = (struct thread_rule *)p;
        memos[0] = (struct memo *)(p + rules);
        memos[1] = (struct memo *)(p + rules + one);
        memo_cap = cap;
        memo_bytes = bytes;
        memo_cur = 0;
        __atomic_fetch_add(&memo_total_bytes, bytes, __ATOMIC_RELAXED);
    }
    memo_busy = 1;
    struct memo *l = memos[memo_cur], *x = memos[memo_cur ^ 1];
    uint32_t gen = __atomic_load_n(&code_gen, __ATOMIC_ACQUIRE);
    *last = l->steps && l->gen == gen && l->stack_hi == stack_hi ? l : NULL;
    x->steps = 0;
    x->gen = gen;
    x->stack_hi = stack_hi;
    x->stopped = 0;
    *next = x;
}

/* This walk becomes the thread's last one (with its steps only if `keep`).
 * A step's rbp need match only where the walk uses it: in most optimized
 * code rbp is an ordinary register, different at every call, and only a
 * frame whose CFA is rbp-based (or the state a stopped walk would resume
 * from) looks at it before some frame's saved rbp replaces it. */
static void memo_close(struct memo *next, uint32_t steps, int keep)
{
    if (!next)
        return;
    next->steps = keep && steps <= memo_cap ? steps : 0;
    uint32_t used = (uint32_t)next->stopped;
    for (uint32_t i = next->steps; i-- > 0;) {
        struct memo_step *s = &next->step[i];
        used = s->fp_used || (!s->rbp_at && used);
        s->fp_used = used;
    }
    memo_cur ^= 1;
    memo_busy = 0;
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

/* Does every word the last walk read from its step j on still hold the
 * value it read? */
static int memo_holds(const struct memo *last, uint32_t j, const struct stack_bounds *direct)
{
    for (uint32_t i = j; i < last->steps; i++) {
        const struct memo_step *s = &last->step[i];
        if (s->ra_at && (s->ra_at < direct->lo || s->ra_at + 8 > direct->hi ||
                         *(const uint64_t *)(uintptr_t)s->ra_at != s->ra))
            return 0;
        if (s->rbp_at && (s->rbp_at < direct->lo || s->rbp_at + 8 > direct->hi ||
                          *(const uint64_t *)(uintptr_t)s->rbp_at != s->rbp))
            return 0;
    }
    return 1;
}

/* Room for the next step of this walk in `next` (NULL: not kept). */
static struct memo_step *memo_record(struct memo *next, uint32_t *kept, uint64_t pc, uint64_t sp, uint64_t fp,
                                     int exact)
{
    if (!next || *kept >= memo_cap) {
        *kept = memo_cap + 1;      /* too long to keep */
        return NULL;
    }
    struct memo_step *s = &next->step[(*kept)++];
    *s = (struct memo_step){pc, sp, fp, (uint32_t)exact, 0, 0, 0, 0, 0};
    return s;
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
    struct memo *last = NULL, *next = NULL;
    if ((flags & CFI_MEMO) && !(flags & CFI_ANY_MEMORY) && m.direct.hi)
        memo_open(&last, &next, max, m.direct.hi);
    uint32_t j = 0, kept = 0;   /* j: the first step of `last` not below sp; kept: steps in `next` */
    int n = 0, keep = 0;
    /* pc is exact (the leaf, or resumed after a signal), not a return address */
    int exact = !(flags & CFI_RETURN_ADDRESS);
    *truncated = 0;
    for (int steps = 0; steps < max + 256; steps++) {
        if (last) {
            while (j < last->steps && last->step[j].sp < sp)
                j++;
            const struct memo_step *at = &last->step[j];
            if (j < last->steps && at->sp == sp && at->pc == pc && (at->fp == fp || !at->fp_used) &&
                at->exact == (uint32_t)exact && memo_holds(last, j, &m.direct)) {
                /* The rest is the last walk's: its frames, then where it
                 * stopped.  Each step's rbp is this walk's (it may differ
                 * where nothing uses it), until a frame restores it. */
                for (uint32_t i = j; i < last->steps; i++, steps++) {
                    struct memo_step s = last->step[i];
                    s.fp = fp;
                    if (n > 0 || s.pc < skip_lo || s.pc >= skip_hi) {
                        if (n == max) {
                            *truncated = 1;
                            next->stopped = 1;
                            next->rest = s;
                            keep = 1;
                            goto done;
                        }
                        ips[n++] = s.pc;
                    }
                    if (kept < memo_cap)
                        next->step[kept] = s;
                    kept++;
                    if (s.rbp_at)
                        fp = s.rbp;
                }
                if (!last->stopped) {
                    keep = 1;
                    goto done;
                }
                pc = last->rest.pc;
                sp = last->rest.sp;
                exact = (int)last->rest.exact;
                last = NULL;
                continue;
            }
        }
        if (n > 0 || pc < skip_lo || pc >= skip_hi) {
            if (n == max) {
                *truncated = 1;
                if (next) {
                    next->stopped = 1;
                    next->rest = (struct memo_step){pc, sp, fp, (uint32_t)exact, 0, 0, 0, 0, 0};
                }
                keep = 1;
                goto done;
            }
            ips[n++] = pc;
        }
        struct memo_step *rec = memo_record(next, &kept, pc, sp, fp, exact);
        struct rule r = {RULE_COMPLEX, 0, 0, NO_OFFSET, 0};
        if (flags & CFI_RULES) {
            /* A return address points after the call: look up the call itself. */
            r = next ? thread_lookup(exact ? pc : pc - 1, next->gen) : lookup(exact ? pc : pc - 1);
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
            kept = memo_cap + 1;      /* not kept: its reads are not recorded */
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
                rec->fp_used = r.cfa_rbp;
                rec->ra_at = ra_at;
                rec->ra = ra;
                if (r.rbp_off != NO_OFFSET) {
                    rec->rbp_at = rbp_at;
                    rec->rbp = next_fp;
                }
            }
        } else {
            /* No rule (JIT code, no FDE, DWARF expressions): the
             * frame-pointer chain, validated like everything else. */
            if (flags & CFI_STRICT) {
                n = -1;
                goto done;
            }
            kept = memo_cap + 1;      /* not kept: its reads are not recorded */
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
    memo_close(next, kept, keep);
    return n;
}
