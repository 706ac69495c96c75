"""Data loading: CT slices, VQA samples and the transforms that make model inputs."""
