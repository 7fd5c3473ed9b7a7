"""Tier 2 of the estimator: real training steps of the real model on fake tensors, no GPU
and no weights (entry, model building, bitsandbytes stand-ins, the memory tracker)."""
