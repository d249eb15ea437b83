"""Benchmarks: ``python -m bench.run`` (``make bench``) compares Lamina with restic and borg."""
