"""Review aids: per-organ confidence, volumes and plausibility flags."""
