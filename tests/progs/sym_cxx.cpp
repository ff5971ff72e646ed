// C++ names: a member function of a class template in a namespace.
#include <cstdio>
#include <unistd.h>
#include <vector>

namespace ns {
template <class T>
struct Box {
    T base;
    __attribute__((noinline)) T run(const std::vector<T> &xs)
    {
        T s = base;
        for (const T &x : xs)
            s += x;
        return s;
    }
};
}  // namespace ns

int main()
{
    ns::Box<int> box{1};
    std::vector<int> xs{1, 2, 3};
    int r = box.run(xs);
    // GCC's bound-member-function extension gives the code address.
    std::printf("run %p\nREADY\n", (void *)(&ns::Box<int>::run));
    std::fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return r == 0;
}
