"""The machine: GPUs through NVML (or a scripted stand-in), the host, and `ftui doctor`."""
