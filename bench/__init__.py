"""Benchmarks: each module writes JSON (`python -m bench.<name> --out DIR`)."""
