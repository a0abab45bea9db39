"""Synthetic data generated in code, for smoke runs and tests (no download)."""
