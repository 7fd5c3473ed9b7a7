"""A run's live dashboard: header, charts, per-GPU memory, events."""
