"""Benchmarks: forward-pass timing on real hardware, mode comparisons, serving load tests."""
