"""Training TKG models (distkg train)."""
