"""The plan wizard and its panels: model, dataset, machine, knobs, summary, spec."""
