// Registers the executable's own .eh_frame again with __register_frame_info
// (as JITs register their code's unwind tables), which makes libgcc's
// _Unwind_Find_FDE take its object mutex, then throws and catches in a loop.
#include <link.h>
#include <stdexcept>
#include <cstdio>
#include <cstdlib>
#include <ctime>

extern "C" void __register_frame_info(const void *, void *);
extern "C" void *__deregister_frame_info(const void *);
static const void *eh_frame;
static long object[16];

static int find_eh_frame(struct dl_phdr_info *info, size_t, void *)
{
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_GNU_EH_FRAME) {
            const unsigned char *hdr = (const unsigned char *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
            // version 1, eh_frame_ptr encoded as pcrel sdata4 (0x1b)
            if (hdr[0] == 1 && hdr[1] == 0x1b)
                eh_frame = hdr + 4 + *(const int *)(hdr + 4);
            return 1;
        }
    return 0;
}

__attribute__((noinline)) static void thrower(int i)
{
    if (i >= 0)
        throw std::runtime_error("x");
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    dl_iterate_phdr(find_eh_frame, nullptr);
    if (!eh_frame)
        return 2;
    __register_frame_info(eh_frame, object);
    long caught = 0;
    std::clock_t end = std::clock() + (std::clock_t)(secs * CLOCKS_PER_SEC);
    while (std::clock() < end)
        for (int i = 0; i < 100; i++)
            try { thrower(i); } catch (const std::exception &) { caught++; }
    __deregister_frame_info(eh_frame);
    std::printf("caught %s\n", caught > 0 ? "ok" : "none");
    return 0;
}
