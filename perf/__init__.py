"""Benchmarks and the codec fuzzer, run by hand; results are appended to perf/RESULTS.md."""
