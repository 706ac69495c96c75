"""The LightningModules: SFT, GRPO, evaluation, the ROI classifier, and the policy base they share."""
