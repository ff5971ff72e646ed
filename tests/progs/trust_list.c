/* A global linked list of NODES 64-byte nodes, reachable to the end.
 * Usage: trust_list NODES */
#include <stdio.h>
#include <stdlib.h>

struct node { struct node *next; char pad[56]; };
static struct node *head;

__attribute__((noinline)) void add_node(void)
{
    struct node *n = malloc(sizeof *n);
    n->next = head;
    head = n;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 20000;
    for (long i = 0; i < n; i++)
        add_node();
    printf("list of %ld\n", n);
    return 0;
}
