"""Kinwire's benchmarks: each scenario beside a bare baseline (docs/BENCHMARKS.md)."""
