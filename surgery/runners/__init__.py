"""Runners: the long jobs that run a graph over data. Fine-tuning, precomputing (local, Beam and
Spark) and serving the online piece.

May import every layer below: `surgery.core`, `surgery.data`, `surgery.passes`, `surgery.exporters`.
"""
