"""The machine view: a panel per GPU, the host, and the simulate dialog."""
