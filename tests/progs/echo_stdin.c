/* Copies stdin to stdout and writes a line to stderr: stdio must be untouched. */
#include <stdio.h>

int main(void)
{
    int c;
    while ((c = getchar()) != EOF)
        putchar(c);
    fputs("to stderr\n", stderr);
    return 0;
}
