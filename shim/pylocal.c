/* Python frames of the calling thread, read in its own process: by the
 * heap hooks (the "mem" build: each allocation's Python frames) and by the
 * self-profiling signal handler (the "self" build, ctprof.profile()).
 *
 * The preloaded shim's signal sampler (`run --sampler signal`) appends them
 * to its samples as the heap hooks do to their events.
 *
 * The layouts come from the Python side (ctprof/capture/cpython.py): for
 * the preloaded shim in CTPROF_PYLAYOUTS, one per CPython minor version, the
 * one that applies decided here at load time from the interpreter's own
 * exported `Py_Version` (3.11+) or `Py_GetVersion()` text; for
 * self-profiling, the running interpreter's one, through
 * ctprof_self_python_layout.  A program that is not a
 * CPython interpreter has no `_PyRuntime` and pays one branch per event.
 *
 * The thread's PyThreadState is what PyGILState_GetThisThreadState()
 * reads: the interpreter's thread-specific key.  The hooks run on that
 * thread between two of its own steps, so its chain is consistent (the
 * signal handler may find it half updated); every page is checked
 * readable before its first read, so a layout that
 * does not fit (an interpreter patched beyond its minor version) ends the
 * walk instead of faulting.  In the hooks the pages found readable are
 * remembered per thread (the frames of one thread live in a few pages that
 * stay mapped while they are in its chain), so an event costs no syscall
 * once warm.  A signal handler checks every page every time: it may
 * interrupt the interpreter between freeing a frame's chunk and unlinking
 * the frame, so a page readable a moment ago may be gone. */
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "ctprof.h"
#include "pywalk.h"

static int64_t layout[PYL_COUNT];
static uint64_t runtime;
static int ready;

#define KNOWN_PAGES 32
static __thread uint64_t known_pages[KNOWN_PAGES] CTPROF_TLS;
static __thread unsigned known_next CTPROF_TLS;

static int page_known(uint64_t page)
{
    for (int i = 0; i < KNOWN_PAGES; i++)
        if (known_pages[i] == page)
            return 1;
    if (!page_readable(page))
        return 0;
    known_pages[known_next++ % KNOWN_PAGES] = page;
    return 1;
}

/* `ctx` non-NULL: in a signal handler, no remembered pages. */
static int read_local(void *ctx, uint64_t addr, void *buf, size_t len)
{
    if (addr < 4096 || addr + len < addr || addr + len > 0x800000000000ull)
        return -1;
    for (uint64_t page = addr & ~4095ull; page < addr + len; page += 4096)
        if (ctx ? !page_readable(page) : !page_known(page))
            return -1;
    memcpy(buf, (const void *)(uintptr_t)addr, len);
    return 0;
}

/* ---- symbols of the loaded objects, without dlsym ------------------------ */

struct lookup {
    const char *name;
    uint32_t hash;
    void *found;
};

static uint32_t gnu_hash(const char *s)
{
    uint32_t h = 5381;
    for (; *s; s++)
        h = h * 33 + (unsigned char)*s;
    return h;
}

/* dl_iterate_phdr callback: look `name` up in this object's DT_GNU_HASH. */
static int lookup_in_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct lookup *l = arg;
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL;
    const uint32_t *gh = NULL;
    for (; dyn && dyn->d_tag != DT_NULL; dyn++) {
        /* the loader has relocated these to addresses, except in the vdso */
        uintptr_t v = dyn->d_un.d_ptr;
        if (v < info->dlpi_addr)
            v += info->dlpi_addr;
        if (dyn->d_tag == DT_SYMTAB)
            symtab = (const ElfW(Sym) *)v;
        else if (dyn->d_tag == DT_STRTAB)
            strtab = (const char *)v;
        else if (dyn->d_tag == DT_GNU_HASH)
            gh = (const uint32_t *)v;
    }
    if (!symtab || !strtab || !gh)
        return 0;
    uint32_t nbuckets = gh[0], symoffset = gh[1], bloom_size = gh[2];
    if (!nbuckets)
        return 0;
    const uint32_t *buckets = gh + 4 + bloom_size * (sizeof(ElfW(Addr)) / 4);
    const uint32_t *chain = buckets + nbuckets;
    uint32_t i = buckets[l->hash % nbuckets];
    if (i < symoffset)
        return 0;
    for (;; i++) {
        uint32_t h = chain[i - symoffset];
        const ElfW(Sym) *sym = &symtab[i];
        if ((h | 1) == (l->hash | 1) && sym->st_shndx != SHN_UNDEF && sym->st_value
            && strcmp(strtab + sym->st_name, l->name) == 0) {
            l->found = (void *)(info->dlpi_addr + sym->st_value);
            return 1;
        }
        if (h & 1)
            return 0;
    }
}

static void *find_symbol(const char *name)
{
    struct lookup l = {name, gnu_hash(name), NULL};
    dl_iterate_phdr(lookup_in_object, &l);
    return l.found;
}

/* The running interpreter's version as 0x03MM, or 0. */
static int64_t interpreter_version(void)
{
    const unsigned long *hex = find_symbol("Py_Version");
    if (hex)
        return (int64_t)((*hex >> 16) & 0xffff);
    const char *(*get_version)(void) = (const char *(*)(void))find_symbol("Py_GetVersion");
    const char *text = get_version ? get_version() : NULL;
    if (!text || text[0] != '3' || text[1] != '.')
        return 0;
    return 0x0300 + strtol(text + 2, NULL, 10);
}

/* CTPROF_PYLAYOUTS: "0x309:v,v,...;0x30a:v,v,..." (PYL_COUNT values each). */
static int pick_layout(const char *spec, int64_t version)
{
    while (spec && *spec) {
        char *end;
        int64_t v = strtoll(spec, &end, 0);
        if (*end != ':')
            return 0;
        const char *p = end + 1;
        int i = 0;
        for (; i < PYL_COUNT; i++) {
            layout[i] = strtoll(p, &end, 10);
            p = *end == ',' ? end + 1 : end;
        }
        if (v == version && layout[PYL_VERSION] == version)
            return 1;
        spec = strchr(p, ';');
        if (spec)
            spec++;
    }
    return 0;
}

void pylocal_init_from_env(void)
{
    ready = 0;
    const char *spec = getenv("CTPROF_PYLAYOUTS");
    void *rt = spec ? find_symbol("_PyRuntime") : NULL;
    if (!rt || find_symbol("_Py_GetRefTotal"))
        return;                                 /* not CPython, or a debug build */
    int64_t version = interpreter_version();
    if (version && pick_layout(spec, version)) {
        runtime = (uint64_t)(uintptr_t)rt;
        ready = 1;
    }
}

int pylocal_set_layout(const int64_t *values)
{
    ready = 0;
    void *rt = find_symbol("_PyRuntime");
    if (!rt)
        return 0;
    memcpy(layout, values, sizeof layout);
    runtime = (uint64_t)(uintptr_t)rt;
    ready = 1;
    return 1;
}

int pylocal_frames(uint64_t *out, int max, int in_signal)
{
    if (!ready || max <= 0)
        return 0;
    void *ctx = in_signal ? (void *)&ready : NULL;
    struct pyw w = {layout, read_local, ctx};
    /* Py_tss_t: {int _is_initialized; pthread_key_t _key;} */
    uint32_t tss[2];
    if (read_local(ctx, runtime + (uint64_t)layout[PYL_RUNTIME_AUTOTSS], tss, 8) != 0 || !tss[0])
        return 0;
    uint64_t ts = (uint64_t)(uintptr_t)pthread_getspecific((pthread_key_t)tss[1]);
    return ts ? pyw_frames(&w, ts, out, max, NULL) : 0;
}

int pylocal_append(uint64_t *out, int room, int in_signal)
{
    int max = (room - 1) / 2;
    if (max > PYHEAP_MAX_FRAMES)
        max = PYHEAP_MAX_FRAMES;
    int n = pylocal_frames(out + 1, max, in_signal);
    if (!n)
        return 0;
    /* The controller names code objects a little later: a fingerprint in
     * the spare high bits of each index word lets it tell the code object
     * recorded here from another allocated at the same address since. */
    struct pyw w = {layout, read_local, in_signal ? (void *)&ready : NULL};
    for (int i = 0; i < n; i++)
        out[2 + 2 * i] |= (uint64_t)pyw_fingerprint(&w, out[1 + 2 * i]) << PYFRAME_PRINT_SHIFT;
    out[0] = PYFRAMES_MARK;
    return 1 + 2 * n;
}
