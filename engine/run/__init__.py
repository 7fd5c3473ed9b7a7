"""Running a fine-tune: the run spec, the run directory, launch commands, the detached
supervisor, the trainer entry and its callback, the probe, and the user-facing operations."""
