"""Experiments that reproduce the paper's claims on the embedded default (see README)."""
