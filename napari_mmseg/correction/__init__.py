"""Correcting labels from a user's hints: a learned correction model and non-learned aids."""
