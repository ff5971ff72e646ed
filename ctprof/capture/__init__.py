"""Capture: build the shim, launch the target under it, read the ring."""
