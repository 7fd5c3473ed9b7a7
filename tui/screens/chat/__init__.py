"""Chat with a run's model: columns, messages, settings."""
