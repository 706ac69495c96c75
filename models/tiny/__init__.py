"""Tiny offline models of the evaluation-only VLM families (Gemma 3, LLaVA-OneVision, InternVL, Idefics3, SmolVLM)."""
