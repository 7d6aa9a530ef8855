"""Benchmarks (DESIGN.md §8): `make bench` runs them all; never part of `make test`.

Each module runs one benchmark, prints its figures and appends them, with the date, the machine
and the git commit, to bench/RESULTS.md. Run one alone with ``python -m bench.<name> [--quick]``.
"""
