"""Heap profiling: collect the shim's heap events, turn them into profile
columns (allocated, peak, leaked, reachable) and reports."""
