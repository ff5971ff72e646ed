/* A library loaded with dlopen after sampling has started. */
volatile unsigned long plugin_sink;

__attribute__((noinline)) int plugin_work(int n)
{
    unsigned long x = 0;
    for (int i = 0; i < n * 1000; i++)
        x += (unsigned long)i * 3;
    plugin_sink += x;
    return (int)(x & 0xff);
}
