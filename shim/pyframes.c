/* Python frames of the interrupted thread, read from inside the sampling
 * signal handler of the "self" shim (ctprof.profile()).
 *
 * CPython 3.11 and 3.12 keep the frames of running Python functions in
 * _PyInterpreterFrame records chained through ->previous from
 * tstate->cframe->current_frame.  The thread's PyThreadState comes from the
 * interpreter's thread-specific key (what PyGILState_GetThisThreadState()
 * reads), so the thread need not hold the GIL (a C extension may have
 * released it).  For each frame we record the code object's address and
 * the instruction offset; names and lines are resolved later in Python.
 *
 * Safety: the handler runs on the interrupted thread, so the chain is that
 * thread's own, but a frame may be half pushed or its chunk just freed.
 * Every structure is checked readable (rt_sigprocmask trick, no fault
 * possible) before it is read, pointers must be aligned, the walk is
 * bounded, and nothing is written or reference-counted.
 *
 * Built with -DCTPROF_PYTHON=1 and -I<the interpreter's include dir>; any
 * other build (or another CPython version) gets the stub at the end. */
#ifdef CTPROF_PYTHON
#define Py_BUILD_CORE 1
#include <Python.h>
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
#include <internal/pycore_runtime.h>
#include <internal/pycore_frame.h>
#define HAVE_PYFRAMES 1
#endif
#else
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
#include "ctprof.h"

#ifdef HAVE_PYFRAMES

static pthread_key_t tss_key;
static int ready;

/* Is [p, p+len) readable?  Asked of the kernel without touching it:
 * rt_sigprocmask with an invalid `how` reads the new set first (EFAULT if
 * unreadable, else EINVAL).  `*page` caches the last page found good. */
static int readable(const void *p, size_t len, uintptr_t *page)
{
    uintptr_t a = (uintptr_t)p, end = a + len;
    if (a < 4096 || end < a)
        return 0;
    for (uintptr_t pg = a & ~(uintptr_t)4095; pg < end; pg += 4096) {
        if (pg == *page)
            continue;
        int saved = errno;
        long rc = syscall(SYS_rt_sigprocmask, ~0, (void *)(pg < a ? a : pg), (void *)0, 8);
        int bad = rc != -1 || errno != EINVAL;
        errno = saved;
        if (bad)
            return 0;
        *page = pg;
    }
    return 1;
}

int pyframes_init(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    Py_tss_t *key = &_PyRuntime.autoTSSkey;
#else
    Py_tss_t *key = &_PyRuntime.gilstate.autoTSSkey;
#endif
    if (!key->_is_initialized)
        return 0;
    tss_key = key->_key;
    ready = 1;
    return 1;
}

int pyframes_capture(uint64_t *out, int max)
{
    if (!ready || max <= 0)
        return 0;
    uintptr_t page = 0;
    PyThreadState *ts = pthread_getspecific(tss_key);
    if (!ts || ((uintptr_t)ts & 7) || !readable(ts, sizeof *ts, &page))
        return 0;
    _PyCFrame *cf = ts->cframe;
    if (!cf || ((uintptr_t)cf & 7) || !readable(cf, sizeof *cf, &page))
        return 0;
    _PyInterpreterFrame *f = cf->current_frame;
    int n = 0, steps = 0;
    while (f && n < max && steps++ < 100000) {
        if (((uintptr_t)f & 7) || !readable(f, sizeof *f, &page))
            break;
#if PY_VERSION_HEX >= 0x030C0000
        if (f->owner == FRAME_OWNED_BY_CSTACK) {
            /* The shim frame below each _PyEval_EvalFrameDefault call: the
             * frame recorded just before it began that C-level call. */
            if (n)
                out[2 * (n - 1) + 1] |= PYFRAME_ENTRY;
            f = f->previous;
            continue;
        }
#endif
        PyCodeObject *co = f->f_code;
        if (!co || ((uintptr_t)co & 7))
            break;
        /* _PyCode_CODE is address arithmetic on the code object: no read. */
        intptr_t lasti = f->prev_instr - _PyCode_CODE(co);
        if (lasti < 0)
            lasti = 0;
        uint64_t flags = 0;
#if PY_VERSION_HEX < 0x030C0000
        if (f->is_entry)
            flags = PYFRAME_ENTRY;
#endif
        out[2 * n] = (uint64_t)(uintptr_t)co;
        out[2 * n + 1] = (uint64_t)(uint32_t)lasti | flags;
        n++;
        f = f->previous;
    }
#if PY_VERSION_HEX >= 0x030C0000
    if (n)
        out[2 * (n - 1) + 1] |= PYFRAME_ENTRY;
#endif
    return n;
}

#else /* no usable Python headers: native frames only */

int pyframes_init(void) { return 0; }

int pyframes_capture(uint64_t *out, int max)
{
    (void)out;
    (void)max;
    return 0;
}

#endif
