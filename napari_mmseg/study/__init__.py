"""The paper's study on real data: cross-validated runs and their report."""
