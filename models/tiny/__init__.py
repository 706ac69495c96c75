"""Tiny offline models of each supported VLM family (tests, benchmarks, the comparison table)."""
