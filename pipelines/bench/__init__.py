"""Benchmarks behind ``vcorr bench``: each returns a dict of numbers and prints a table."""
