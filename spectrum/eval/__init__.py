"""Evaluation: benchmarks, grading, metrics, the DuckDB store, sweeps, search, reports."""
