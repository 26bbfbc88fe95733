"""Benchmarks of the kit against the original study's methods, measured side by side in one run.

Entry point: ``python -m benchmarks.run_all [--quick] [--out outputs/bench]`` (``make bench``).
``benchmarks.train_worker`` runs one training configuration in a fresh process (so its peak memory is its own).
"""
