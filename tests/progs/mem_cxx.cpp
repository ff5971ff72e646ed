// C++ new/delete reach malloc through libstdc++.
#include <cstdio>
#include <string>
#include <vector>

static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

namespace store {
struct Item { long a, b, c, d; };
template <typename T> struct Pool {
    __attribute__((noinline)) T *make() { T *t = new T(); escape(t); return t; }
};
}

__attribute__((noinline)) void fill_vector(std::vector<int> &v)
{
    for (int i = 0; i < 10000; i++)
        v.push_back(i);
}

int main()
{
    store::Pool<store::Item> pool;
    for (int i = 0; i < 6; i++)
        (void)pool.make();                 // 6 x 32 bytes leaked
    std::vector<int> v;
    fill_vector(v);
    int *arr = new int[250];               // freed
    escape(arr);
    delete[] arr;
    std::printf("cxx done %zu\n", v.size());
    return 0;
}
