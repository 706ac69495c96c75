"""Training machinery shared by the LightningModules: fault handling, checkpoints and their selection, LR schedules."""
