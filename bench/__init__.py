"""Benchmarks: attribution quality (LDS, LOO) and inference cost of the
forward-only method against TRAK and a gradient dot product on digits.
Run ``python -m bench.digits.quality`` from the repository root."""
