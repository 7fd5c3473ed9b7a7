"""The demo: a tiny model built locally and a recipe it learns on a CPU in seconds."""
