"""Runs side by side: one chart per metric with a line per run, the numbers, the spec diff."""
