"""The GPU check: one command that measures ftui on a real GPU in under ten minutes.

The machine as ftui sees it beside nvidia-smi and torch; a memory and speed grid of real
architectures with random weights, each configuration in its own process, against the
planner's predictions; and ftui's own launch path end to end. `--smoke` runs the same code
on the CPU with tiny configurations. See docs/gpu-check.md.
"""
