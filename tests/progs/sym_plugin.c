/* Built twice as two plugins: -DPLUGIN_FN=plugin_alpha / plugin_omega (same
 * name length, so both libraries have the same layout). */
volatile int plugin_sink;

__attribute__((noinline)) int PLUGIN_FN(int x)
{
    plugin_sink = x;
    return x * 7 + 1;
}
