"""Benchmarks: each one runs real processes and writes JSON under ``bench/results/``.

Never part of the test run's pass/fail: targets are recorded, not asserted.
"""
