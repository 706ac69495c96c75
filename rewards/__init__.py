"""Reward functions and the answer parsing they share with evaluation."""
