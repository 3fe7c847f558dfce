"""Benchmarks (`lightning-mtl bench`): prox, data, compaction and meta-step cost."""
