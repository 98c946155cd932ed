"""Measuring and showing: checkpoint evaluation, the benchmark, the quick-start demo."""
