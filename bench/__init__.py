"""Benchmarks for jupyter-offline-token (``python -m bench``); reports, not tests.

Each benchmark measures its own baseline in the same run and prints the ratio with PASS/MISS
against its target. Everything runs on 127.0.0.1. See bench/README.md.
"""
