"""Answering questions about a user's own scan (`cli.py ask`)."""
