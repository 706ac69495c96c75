"""Tiny offline models of every supported VLM family, built like the embedded default (models/tiny/builders.py)."""
