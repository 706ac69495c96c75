"""Training machinery the modules share: checkpoints (atomic, read as data, selection), faults, schedules, export."""
