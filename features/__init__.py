"""Feature specs, Numba window kernels and per-partition state."""
