/* Stack unwinding from a signal context, behind one function with a
 * fallback chain: DWARF (.eh_frame through libgcc's _Unwind_Backtrace) for
 * code built without frame pointers, and a bounds-checked frame-pointer walk
 * that can never fault. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <unwind.h>
#include <link.h>
#include <ucontext.h>
#include <sys/syscall.h>
#include "ctprof.h"

/* ---- frame-pointer walk -------------------------------------------------- */

/* Is [addr, addr+16) readable?  Asked of the kernel without touching it:
 * rt_sigprocmask with an invalid `how` copies the new set from `addr` first,
 * so EFAULT means unreadable and EINVAL means readable (gperftools' trick). */
static int readable(uintptr_t addr)
{
    for (uintptr_t p = addr; p < addr + 16; p += 8) {
        long rc = syscall(SYS_rt_sigprocmask, ~0, (void *)p, (void *)0, 8);
        if (rc != -1 || errno != EINVAL)
            return 0;
    }
    return 1;
}

static int fp_walk(uintptr_t pc, uintptr_t fp, uintptr_t sp, const struct stack_bounds *b,
                   uint64_t *ips, int max, int *truncated)
{
    int n = 0;
    uintptr_t checked_page = 0;
    ips[n++] = pc;
    while (1) {
        /* The next frame must be aligned, above the current one and inside
         * the thread's stack; otherwise the chain is garbage: stop. */
        if (fp & 7 || fp < sp)
            break;
        if (b->hi) {
            if (fp < b->lo || fp + 16 > b->hi)
                break;
        } else {
            uintptr_t page = fp & ~(uintptr_t)4095;
            if (page != checked_page || ((fp + 15) & ~(uintptr_t)4095) != page) {
                if (!readable(fp))
                    break;
                checked_page = page;
            }
            if (fp - sp > (uintptr_t)1 << 30)
                break;
        }
        uintptr_t next = ((uintptr_t *)fp)[0];
        uintptr_t ret = ((uintptr_t *)fp)[1];
        if (ret < 4096)
            break;
        if (n == max) {
            *truncated = 1;
            break;
        }
        ips[n++] = ret;
        if (next <= fp)
            break;
        sp = fp + 16;
        fp = next;
    }
    return n;
}

/* ---- DWARF (.eh_frame) walk through libgcc -------------------------------------
 * _Unwind_Backtrace starts in its caller, so leading frames are dropped:
 * up to the interrupted pc (signal handler: the handler's own frames and
 * the trampoline), or while they are in the shim's code (heap hooks). */

struct dwarf_state {
    uintptr_t until_pc;            /* drop frames before this pc, if set */
    uintptr_t skip_lo, skip_hi;    /* else drop leading frames in this range */
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
        if (s->until_pc ? ip != s->until_pc : (ip >= s->skip_lo && ip < s->skip_hi))
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
    /* The first call loads libgcc_s and sets up its caches: do it here, not
     * in the handler. */
    int n = 0;
    _Unwind_Backtrace(count_step, &n);
}

int unwind_stack(enum unwind_mode mode, void *ucv, const struct stack_bounds *b,
                 uint64_t *ips, int max, int *truncated)
{
    ucontext_t *uc = ucv;
    uintptr_t pc = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
    uintptr_t fp = (uintptr_t)uc->uc_mcontext.gregs[REG_RBP];
    uintptr_t sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
    *truncated = 0;
    if (max < 1)
        return 0;
    if (mode != UNWIND_FP) {
        /* Cached CFI rules first; libgcc for frames they cannot express. */
        int n = cfi_unwind(pc, sp, fp, b, ips, max, 0, 0, truncated);
        if (n > 1)
            return n;
        struct dwarf_state s = {pc, 0, 0, ips, max, 0, 0, 0, 0};
        n = dwarf_walk(&s, truncated);
        /* A leaf without unwind info ends the DWARF walk at one frame: the
         * frame-pointer chain may still know the callers. */
        if (n > 1 || mode == UNWIND_DWARF)
            return n > 0 ? n : (ips[0] = pc, 1);
        *truncated = 0;
    }
    return fp_walk(pc, fp, sp, b, ips, max, truncated);
}

__attribute__((noinline)) int unwind_caller(const struct stack_bounds *b, uint64_t *ips, int max, int *truncated)
{
    uint64_t pc, sp, fp;
    __asm__ volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2" : "=r"(pc), "=r"(sp), "=r"(fp));
    *truncated = 0;
    int n = cfi_unwind(pc, sp, fp, b, ips, max, shim_lo, shim_hi, truncated);
    if (n > 0)
        return n;
    struct dwarf_state s = {0, shim_lo, shim_hi, ips, max, 0, 0, 0, 0};
    return dwarf_walk(&s, truncated);
}
