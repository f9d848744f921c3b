"""Thin command-line layer of vcorr: parse arguments, call a pipeline function."""
