"""Benchmarks and the chaos run, each a script run as a module from the repository root.

For example ``python -m bench.drain --help`` or ``python -m bench.chaos --help``.
``python -m bench.run_all`` runs the standard benchmark set and writes ``bench/RESULTS.md``;
``bench/README.md`` describes every script.
"""
