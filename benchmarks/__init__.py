"""Benchmarks: jitad against peer AD systems. ``python -m benchmarks.run`` writes RESULTS.md.

``benchmarks.run.smoke()`` runs every adapter once on the smallest workload (for tests).
"""
