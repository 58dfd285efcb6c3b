"""Throughput and latency benchmarks of the ledger: `python -m bench`."""
