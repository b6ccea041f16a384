"""Dagster wiring per stage. Thin: assets read inputs, call the pure modules, write through resources."""
