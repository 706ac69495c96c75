"""LightningModules (training step logic) and the model loading they share."""
