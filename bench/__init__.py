"""Benchmarks that print measured figures and ratios; never part of the test pass/fail.

Run them with ``.venv/bin/python -m bench.run`` (see bench/README.md).
"""
