#!/bin/sh
# Runs a Google Benchmark binary once per benchmark as a smoke test.
exec "$1" --benchmark_min_time=0.001
