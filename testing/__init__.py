"""Test doubles the tests and the benchmarks share (the Stripe fake).

Not shipped in the wheel: only tests/ and bench/ import this package.
"""
