"""Tests of the benchmarks' own code (nothing here is timed)."""
