/* Brings its own (trivial bump) allocator: malloc/free defined here. */
#include <stddef.h>
#include <stdio.h>

static char arena[1 << 20];
static size_t used;

void *malloc(size_t n) { void *p = arena + used; used += (n + 15) & ~(size_t)15; return p; }
void free(void *p) { (void)p; }
void *calloc(size_t n, size_t m) { return malloc(n * m); }
void *realloc(void *p, size_t n) { (void)p; return malloc(n); }

int main(void)
{
    char *p = malloc(100);
    p[0] = 1;
    printf("own allocator %d\n", p[0]);
    return 0;
}
