"""Benchmarks against peers measured in the same run: figures and ratios, never pass/fail.

Each benchmark is its own module with a `main(args)`; the CLI imports one only when it runs, which
keeps `ponder --help` free of heavy imports.
"""
