/* CPython frame walking by offsets (see pywalk.h).
 *
 * The walked process keeps running while it is read from outside, so every
 * value is a guess until checked: pointers must be non-null and aligned, the
 * walks are bounded, and a frame that cannot be read ends the chain (the
 * frames read so far are kept).  No allocation, no locks: the heap hooks
 * call this too. */
#include <string.h>
#include "pywalk.h"

#define MAX_INTERPRETERS 64
#define MAX_THREADS 4096
#define MAX_STEPS 100000
#define MAX_FRAME_BYTES 128

static int read_u64(const struct pyw *w, uint64_t addr, uint64_t *out)
{
    if (addr < 4096 || (addr & 7))
        return -1;
    return w->read(w->ctx, addr, out, 8);
}

static uint64_t ptr_at(const struct pyw *w, uint64_t base, int64_t off)
{
    uint64_t v = 0;
    if (off < 0 || read_u64(w, base + (uint64_t)off, &v) != 0 || (v & 7))
        return 0;
    return v;
}

int pyw_is_thread(const struct pyw *w, uint64_t ts, uint32_t tid)
{
    if (!ts || (ts & 7))
        return 0;
    const int64_t *L = w->layout;
    uint64_t v = 0;
    if (L[PYL_TSTATE_NATIVE_TID] >= 0)
        return read_u64(w, ts + (uint64_t)L[PYL_TSTATE_NATIVE_TID], &v) == 0 && (uint32_t)v == tid;
    /* 3.9/3.10 keep only the pthread_t: the tid is in glibc's struct pthread. */
    uint64_t pth = ptr_at(w, ts, L[PYL_TSTATE_THREAD_ID]);
    uint32_t t = 0;
    return pth && L[PYL_PTHREAD_TID] >= 0
        && w->read(w->ctx, pth + (uint64_t)L[PYL_PTHREAD_TID], &t, 4) == 0 && t == tid;
}

uint64_t pyw_tstate_of(const struct pyw *w, uint64_t runtime, uint32_t tid)
{
    const int64_t *L = w->layout;
    uint64_t interp = ptr_at(w, runtime, L[PYL_RUNTIME_INTERP_HEAD]);
    for (int i = 0; interp && i < MAX_INTERPRETERS; i++) {
        uint64_t ts = ptr_at(w, interp, L[PYL_INTERP_THREADS_HEAD]);
        for (int j = 0; ts && j < MAX_THREADS; j++) {
            if (pyw_is_thread(w, ts, tid))
                return ts;
            ts = ptr_at(w, ts, L[PYL_TSTATE_NEXT]);
        }
        interp = ptr_at(w, interp, L[PYL_INTERP_NEXT]);
    }
    return 0;
}

/* Bytes of a frame the walk needs: up to the furthest field it reads. */
static size_t frame_span(const int64_t *L)
{
    int64_t end = 0;
    const int fields[] = {PYL_FRAME_BACK, PYL_FRAME_CODE, PYL_FRAME_LASTI, PYL_FRAME_INSTR,
                          PYL_FRAME_OWNER, PYL_FRAME_IS_ENTRY};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (L[fields[i]] >= 0 && L[fields[i]] + 8 > end)
            end = L[fields[i]] + 8;
    return end > MAX_FRAME_BYTES ? MAX_FRAME_BYTES : (size_t)end;
}

static uint64_t word(const unsigned char *f, int64_t off)
{
    uint64_t v;
    memcpy(&v, f + off, 8);
    return v;
}

/* The instruction's code-unit index in `code`, from the frame's bytes. */
static uint64_t instruction_index(const int64_t *L, const unsigned char *f, uint64_t code)
{
    if (L[PYL_FRAME_LASTI] >= 0) {
        int32_t lasti;
        memcpy(&lasti, f + L[PYL_FRAME_LASTI], 4);
        if (lasti < 0)
            return 0;
        return L[PYL_VERSION] < 0x030A ? (uint64_t)lasti / 2 : (uint64_t)lasti;
    }
    uint64_t instr = word(f, L[PYL_FRAME_INSTR]);
    uint64_t first = code + (uint64_t)L[PYL_CODE_ADAPTIVE];
    if (instr < first || instr - first > 0x7fffffffull)
        return 0;
    return (instr - first) / 2;
}

int pyw_frames(const struct pyw *w, uint64_t tstate, uint64_t *out, int max, uint64_t *leaf)
{
    const int64_t *L = w->layout;
    if (!tstate || max <= 0 || L[PYL_FRAME_BACK] < 0 || L[PYL_FRAME_CODE] < 0)
        return 0;
    uint64_t frame = ptr_at(w, tstate, L[PYL_TSTATE_FRAME]);
    if (frame && L[PYL_CFRAME_CURRENT] >= 0)
        frame = ptr_at(w, frame, L[PYL_CFRAME_CURRENT]);
    size_t span = frame_span(L);
    unsigned char f[MAX_FRAME_BYTES];
    int n = 0;
    for (int steps = 0; frame && n < max && steps < MAX_STEPS; steps++) {
        if ((frame & 7) || w->read(w->ctx, frame, f, span) != 0)
            break;
        uint64_t back = word(f, L[PYL_FRAME_BACK]);
        if (L[PYL_FRAME_OWNER] >= 0 && f[L[PYL_FRAME_OWNER]] == PYW_OWNED_BY_CSTACK) {
            /* The shim frame under each _PyEval_EvalFrameDefault call: the
             * frame recorded just before it was that call's first. */
            if (n)
                out[2 * (n - 1) + 1] |= PYW_ENTRY;
            frame = back;
            continue;
        }
        uint64_t code = word(f, L[PYL_FRAME_CODE]);
        if (!code || (code & 7))
            break;
        uint64_t flags = 0;
        if (L[PYL_VERSION] < 0x030B || (L[PYL_FRAME_IS_ENTRY] >= 0 && f[L[PYL_FRAME_IS_ENTRY]]))
            flags = PYW_ENTRY;
        if (!n && leaf)
            *leaf = frame;
        out[2 * n] = code;
        out[2 * n + 1] = (instruction_index(L, f, code) & 0xffffffffull) | flags;
        n++;
        frame = back;
    }
    if (n && L[PYL_FRAME_OWNER] >= 0)
        out[2 * (n - 1) + 1] |= PYW_ENTRY;   /* the outermost call's first frame */
    return n;
}

uint32_t pyw_fingerprint(const struct pyw *w, uint64_t code)
{
    const int64_t *L = w->layout;
    uint64_t file = ptr_at(w, code, L[PYL_CODE_FILENAME]), name = ptr_at(w, code, L[PYL_CODE_NAME]);
    uint64_t h = (file * 0x9E3779B97F4A7C15ull) ^ (name * 0xC2B2AE3D27D4EB4Full);
    h ^= h >> 29;
    return (uint32_t)(h & 0x7fffffffu) | 1u;   /* never 0: 0 means "not read" */
}

int pyw_code_range(const struct pyw *w, uint64_t code, uint64_t *lo, uint64_t *hi)
{
    const int64_t *L = w->layout;
    uint64_t units = 0, bytes = 0, co_code;
    if (L[PYL_CODE_ADAPTIVE] >= 0) {             /* 3.11+: the code object holds them */
        if (read_u64(w, code + (uint64_t)L[PYL_BYTES_SIZE], &units) != 0)
            return -1;
        *lo = code + (uint64_t)L[PYL_CODE_ADAPTIVE];
        *hi = *lo + 2 * units;
        return 0;
    }
    co_code = ptr_at(w, code, L[PYL_CODE_CODE]);  /* 3.9/3.10: a bytes object */
    if (!co_code || read_u64(w, co_code + (uint64_t)L[PYL_BYTES_SIZE], &bytes) != 0)
        return -1;
    *lo = co_code + (uint64_t)L[PYL_BYTES_DATA];
    *hi = *lo + bytes;
    return 0;
}

size_t pyw_str(const struct pyw *w, uint64_t obj, void *buf, size_t cap, int *width)
{
    const int64_t *L = w->layout;
    uint32_t state = 0;
    uint64_t length = 0;
    *width = 0;
    if (!obj || (obj & 7) || w->read(w->ctx, obj + (uint64_t)L[PYL_UNICODE_STATE], &state, 4) != 0
        || read_u64(w, obj + (uint64_t)L[PYL_UNICODE_LENGTH], &length) != 0)
        return 0;
    /* state bits: interned:2 kind:3 compact:1 ascii:1 (3.9 through 3.13) */
    unsigned kind = (state >> 2) & 7, compact = (state >> 5) & 1, ascii = (state >> 6) & 1;
    if (!compact || (kind != 1 && kind != 2 && kind != 4))
        return 0;
    uint64_t data = obj + (uint64_t)(ascii ? L[PYL_UNICODE_ASCII_DATA] : L[PYL_UNICODE_COMPACT_DATA]);
    uint64_t bytes = length * kind;
    if (bytes > cap)
        bytes = cap - cap % kind;
    if (bytes && w->read(w->ctx, data, buf, bytes) != 0)
        return 0;
    *width = (int)kind;
    return bytes;
}

size_t pyw_bytes(const struct pyw *w, uint64_t obj, void *buf, size_t cap)
{
    const int64_t *L = w->layout;
    uint64_t size = 0;
    if (!obj || read_u64(w, obj + (uint64_t)L[PYL_BYTES_SIZE], &size) != 0)
        return 0;
    if (size > cap)
        size = cap;
    if (size && w->read(w->ctx, obj + (uint64_t)L[PYL_BYTES_DATA], buf, size) != 0)
        return 0;
    return size;
}
