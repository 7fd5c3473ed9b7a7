"""Planning a run: the memory and speed model, the solver that picks a setup, its report,
the measured corrections and reference data it is checked against."""
