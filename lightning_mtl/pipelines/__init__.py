"""Jobs built from the training pieces: fit CLI, run to completion, sweep, report."""
