/* Exits at once: a run with no samples. */
int main(void) { return 0; }
