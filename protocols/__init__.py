"""Experiment protocols as plain data and generators of typed steps (no I/O)."""
