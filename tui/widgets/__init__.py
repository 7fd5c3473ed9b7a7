"""Widgets that two or more screens use (one used by a single screen lives beside it)."""
