/* CPython frame walking without the interpreter's headers.
 *
 * One walker for every place ctprof reads Python frames: the controller's
 * reader thread reads another process's memory (pyreader.c,
 * process_vm_readv), the heap hooks read their own thread's (heap.c, direct
 * reads checked readable first).  The walker only knows byte offsets, from
 * a layout of one CPython minor version that the Python side computes
 * (ctprof/capture/cpython.py, LAYOUT_FIELDS: keep the order in sync).
 *
 * Output, leaf first, two words per frame: the code object's address, and
 * the code-unit index of the instruction running in it (bytes / 2) ORed with
 * PYFRAME_ENTRY on the last Python frame run by one _PyEval_EvalFrameDefault
 * call (3.9/3.10: every frame; 3.11: `is_entry`; 3.12+: the frame below a
 * C-stack shim frame), so the merge can put each group in place of one
 * native _PyEval_EvalFrameDefault frame. */
#ifndef CTPROF_PYWALK_H
#define CTPROF_PYWALK_H

#include <stddef.h>
#include <stdint.h>

enum pyw_field {
    PYL_VERSION,                 /* 0x0309 .. 0x030D */
    PYL_RUNTIME_INTERP_HEAD,     /* _PyRuntime.interpreters.head */
    PYL_INTERP_NEXT,
    PYL_INTERP_THREADS_HEAD,     /* tstate_head (3.9/3.10), threads.head */
    PYL_TSTATE_NEXT,
    PYL_TSTATE_THREAD_ID,        /* pthread_t */
    PYL_TSTATE_NATIVE_TID,       /* 3.11+, else -1 */
    PYL_TSTATE_FRAME,            /* frame (3.9/3.10), cframe (3.11/3.12), current_frame (3.13) */
    PYL_CFRAME_CURRENT,          /* _PyCFrame.current_frame (3.11/3.12), else -1 */
    PYL_FRAME_BACK,              /* f_back / previous */
    PYL_FRAME_CODE,              /* f_code / f_executable */
    PYL_FRAME_LASTI,             /* int f_lasti (3.9: bytes, 3.10: code units), else -1 */
    PYL_FRAME_INSTR,             /* prev_instr / instr_ptr (3.11+), else -1 */
    PYL_FRAME_OWNER,             /* char owner (3.12+), else -1 */
    PYL_FRAME_IS_ENTRY,          /* char is_entry (3.11), else -1 */
    PYL_CODE_ADAPTIVE,           /* co_code_adaptive (3.11+), else -1 */
    PYL_CODE_NAME,
    PYL_CODE_QUALNAME,           /* 3.11+, else -1 */
    PYL_CODE_FILENAME,
    PYL_CODE_FIRSTLINENO,
    PYL_CODE_LINETABLE,          /* co_lnotab (3.9), co_linetable */
    PYL_RUNTIME_AUTOTSS,         /* Py_tss_t {int initialized; pthread_key_t key;} */
    PYL_PTHREAD_TID,             /* glibc struct pthread's tid (filled at run time) */
    PYL_UNICODE_STATE,
    PYL_UNICODE_LENGTH,
    PYL_UNICODE_ASCII_DATA,
    PYL_UNICODE_COMPACT_DATA,
    PYL_BYTES_SIZE,
    PYL_BYTES_DATA,
    PYL_CODE_CODE,               /* co_code, a bytes object (3.9/3.10), else -1 */
    PYL_COUNT
};

#define PYW_ENTRY (1ull << 32)
#define PYW_OWNED_BY_CSTACK 3

/* Copy `len` bytes at `addr` of the walked process into `buf`: 0 on
 * success, -1 if any byte is unreadable.  Must never fault. */
typedef int (*pyw_read_fn)(void *ctx, uint64_t addr, void *buf, size_t len);

struct pyw {
    const int64_t *layout;       /* PYL_COUNT offsets */
    pyw_read_fn read;
    void *ctx;
};

/* The PyThreadState of native thread `tid`, found in the interpreters'
 * thread lists starting at `runtime` (&_PyRuntime); 0 if none. */
uint64_t pyw_tstate_of(const struct pyw *w, uint64_t runtime, uint32_t tid);

/* Is `tstate` the PyThreadState of native thread `tid`? */
int pyw_is_thread(const struct pyw *w, uint64_t tstate, uint32_t tid);

/* The frames of `tstate`, leaf first, as described above; returns how many
 * pairs were written (at most `max`).  `leaf`, if not NULL, receives the
 * address of the innermost frame recorded. */
int pyw_frames(const struct pyw *w, uint64_t tstate, uint64_t *out, int max, uint64_t *leaf);

/* 31 bits that tell apart two code objects that lived at the same address
 * (from their name and file name pointers); 0 if unreadable. */
uint32_t pyw_fingerprint(const struct pyw *w, uint64_t code);

/* [*lo, *hi): the addresses of `code`'s instructions, where the eval loop's
 * instruction pointer points while it runs that code.  0 on success. */
int pyw_code_range(const struct pyw *w, uint64_t code, uint64_t *lo, uint64_t *hi);

/* Read a str object: its characters' width (1, 2 or 4; 0 when unreadable
 * or not a compact str) and up to `cap` bytes of its data into `buf`.
 * Returns the number of bytes copied. */
size_t pyw_str(const struct pyw *w, uint64_t obj, void *buf, size_t cap, int *width);

/* Read a bytes object's data, up to `cap` bytes; returns the bytes copied
 * (0 if unreadable). */
size_t pyw_bytes(const struct pyw *w, uint64_t obj, void *buf, size_t cap);

#endif
