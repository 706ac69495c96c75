"""Evaluation of chest-CT VQA runs: metrics, run folders, Markdown reports, plots and run comparison."""
