/* Stack unwinding behind two functions.  unwind_stack (signal handlers)
 * uses only cfi.c's walker: cached .eh_frame rules, the frame-pointer chain
 * where there are none (or only that with --unwind fp), every read
 * validated.  unwind_caller (heap hooks, ordinary context) falls back to
 * libgcc's _Unwind_Backtrace when the rules give nothing: the shim's
 * private copy (linked in statically, see build.py), which knows nothing of
 * frames a JIT registers with the program's libgcc_s -- heap stacks end at
 * such frames. */
#define _GNU_SOURCE
#include <signal.h>
#include <unistd.h>
#include <unwind.h>
#include <link.h>
#include <ucontext.h>
#include "ctprof.h"

/* ---- DWARF (.eh_frame) walk through libgcc (heap hooks only) ------------------
 * _Unwind_Backtrace starts in its caller, so leading frames in the shim's
 * code are dropped. */

struct dwarf_state {
    uintptr_t skip_lo, skip_hi;    /* drop leading frames in this range */
    uint64_t *ips;
    int max, n, found, truncated, seen;
};

static _Unwind_Reason_Code dwarf_step(struct _Unwind_Context *ctx, void *arg)
{
    struct dwarf_state *s = arg;
    int before = 0;
    uintptr_t ip = _Unwind_GetIPInfo(ctx, &before);
    if (++s->seen > s->max + 64)
        return _URC_END_OF_STACK; /* runaway chain */
    if (!s->found) {
        if (ip >= s->skip_lo && ip < s->skip_hi)
            return _URC_NO_REASON;
        s->found = 1;
    }
    if (ip == 0)
        return _URC_END_OF_STACK;
    if (s->n == s->max) {
        s->truncated = 1;
        return _URC_END_OF_STACK;
    }
    s->ips[s->n++] = ip;
    return _URC_NO_REASON;
}

static int dwarf_walk(struct dwarf_state *s, int *truncated)
{
    _Unwind_Backtrace(dwarf_step, s);
    if (!s->found)
        return 0;
    *truncated = s->truncated;
    return s->n;
}

/* ---- the shim's own code ----------------------------------------------------------- */

static uintptr_t shim_lo, shim_hi;

static int find_self(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    uintptr_t probe = (uintptr_t)arg;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (probe >= lo && probe < hi) {
            shim_lo = lo;
            shim_hi = hi;
            return 1;
        }
    }
    return 0;
}

static _Unwind_Reason_Code count_step(struct _Unwind_Context *ctx, void *arg)
{
    (void)ctx;
    ++*(int *)arg;
    return _URC_NO_REASON;
}

void unwind_init(void)
{
    cfi_init();
    if (!shim_hi)
        dl_iterate_phdr(find_self, (void *)(uintptr_t)&unwind_init);
    /* The first call sets up the unwinder's caches (it may allocate): here,
     * not inside a hook. */
    int n = 0;
    _Unwind_Backtrace(count_step, &n);
}

int unwind_stack(enum unwind_mode mode, void *ucv, const struct stack_bounds *b,
                 uint64_t *ips, int max, int *truncated)
{
    ucontext_t *uc = ucv;
    uint64_t pc = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    uint64_t fp = (uint64_t)uc->uc_mcontext.gregs[REG_RBP];
    uint64_t sp = (uint64_t)uc->uc_mcontext.gregs[REG_RSP];
    *truncated = 0;
    if (max < 1)
        return 0;
    int flags = CFI_ANY_MEMORY | (mode == UNWIND_FP ? 0 : CFI_RULES);
    int n = cfi_unwind(pc, sp, fp, b, ips, max, 0, 0, flags, truncated);
    if (n < 1) {
        ips[0] = pc;
        n = 1;
    }
    return n;
}

int unwind_caller(const struct stack_bounds *b, const void *frame, uint64_t *ips, int max, int *truncated)
{
    /* The interposer's frame: the shim keeps frame pointers, so its
     * caller's registers are at hand -- no rule of the shim's own frames is
     * looked up (nor their .eh_frame pages touched). */
    const uint64_t *f = frame;
    uint64_t fp = f[0], pc = f[1], sp = (uint64_t)(uintptr_t)(f + 2);
    *truncated = 0;
    int n = cfi_unwind(pc, sp, fp, b, ips, max, shim_lo, shim_hi, CFI_RULES | CFI_STRICT | CFI_MEMO | CFI_RETURN_ADDRESS,
                       truncated);
    if (n > 0)
        return n;
    struct dwarf_state s = {shim_lo, shim_hi, ips, max, 0, 0, 0, 0};
    return dwarf_walk(&s, truncated);
}
