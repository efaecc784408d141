"""Passes: functions from a model or graph to a graph. Inspect, restore, bind (`--set`), freeze,
optimize, split, splice, mix and audit, and the SavedModel piece that a split keeps when a frozen
graph would not fit.

May import `surgery.core` and `surgery.data`.
"""
