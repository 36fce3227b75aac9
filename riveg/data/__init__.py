"""Readers of the benchmark datasets in ../shared/datasets (see its README for the formats)."""
