"""Reinforcement learning: sampling completions, the grouped training forward, the vLLM path and the GRPO loss."""
